//! Membership: every node writes a small heartbeat into the `<name>_nodes` KV bucket about once
//! a second and watches the bucket to know its peers.
//!
//! The bucket's entries expire after three heartbeat intervals (`max_age`), so a node killed
//! with `kill -9` disappears without anyone cleaning up. Because an entry that expires is not
//! announced to watchers on every server version, routing also ignores a heartbeat older than
//! three intervals by its own timestamp (node clocks are assumed to agree within an interval;
//! NTP gives that). A node leaving gracefully writes `draining` and then deletes its entry.
//!
//! Invariants: the view only ever holds the newest heartbeat per node; this node never routes to
//! itself; a heartbeat is built from the node's live state at the moment it is written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use spearlet_proto as proto;
use spearlet_server::Node;
use spearlet_server::clock::unix_ms;

use crate::names::node_key;

/// How many heartbeat intervals a heartbeat stays valid for routing (and in the bucket).
pub const HEARTBEATS_TO_EXPIRY: u32 = 3;

/// One node's state as its heartbeat says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub node_id: String,
    /// The gRPC URL peers forward calls to.
    pub advertise_addr: String,
    pub draining: bool,
    /// Run slots free now (`max_concurrent_executions` − running).
    pub free_slots: u32,
    pub running: u32,
    /// Sync and stream calls waiting for an instance.
    pub queue_length: u32,
    /// Tasks runnable on the node.
    pub tasks: Vec<TaskReadiness>,
    /// Unix milliseconds when the heartbeat was written.
    pub timestamp_ms: i64,
}

/// A task's readiness on one node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskReadiness {
    pub task_id: String,
    pub task_name: String,
    /// Live instances (starting, idle or busy).
    pub instances: u32,
    /// Ready instances with room for another call.
    pub idle_instances: u32,
    /// Below `spearlet.pool.max_instances`, so a call could start one.
    pub can_start_instance: bool,
}

impl TaskReadiness {
    /// Whether a call forwarded now could be granted an instance (as far as the heartbeat
    /// knows).
    pub fn could_take_a_call(&self) -> bool {
        self.idle_instances > 0 || self.can_start_instance
    }
}

impl Heartbeat {
    /// The node's live state as a heartbeat.
    pub fn of(node: &Node, node_id: &str, advertise_addr: &str, draining: bool) -> Heartbeat {
        let snapshot = node.manager.dispatcher().snapshot();
        let pools: BTreeMap<&str, &spearlet_pool::PoolSnapshot> = snapshot
            .pools
            .iter()
            .filter(|pool| !pool.retired)
            .map(|pool| (pool.task_id.as_str(), pool))
            .collect();
        let tasks = node
            .registry
            .all()
            .iter()
            .map(|task| {
                let pool = pools.get(task.record.task_id.as_str());
                let instances = pool.map_or(0, |pool| pool.instances.len() as u32);
                let idle_instances = pool.map_or(0, |pool| {
                    pool.instances
                        .iter()
                        .filter(|instance| {
                            instance.state == spearlet_pool::InstanceState::Ready
                                && instance.active < instance.capacity
                        })
                        .count() as u32
                });
                TaskReadiness {
                    task_id: task.record.task_id.clone(),
                    task_name: task.record.task_name.clone(),
                    instances,
                    idle_instances,
                    can_start_instance: instances < task.config.pool.max_instances,
                }
            })
            .collect();
        Heartbeat {
            node_id: node_id.to_owned(),
            advertise_addr: advertise_addr.to_owned(),
            draining,
            free_slots: snapshot
                .max_concurrent_executions
                .saturating_sub(snapshot.running) as u32,
            running: snapshot.running as u32,
            queue_length: snapshot.queued as u32,
            tasks,
            timestamp_ms: unix_ms(),
        }
    }

    pub fn age_ms(&self, now_ms: i64) -> i64 {
        (now_ms - self.timestamp_ms).max(0)
    }

    pub fn task(&self, task_id: &str) -> Option<&TaskReadiness> {
        self.tasks.iter().find(|task| task.task_id == task_id)
    }
}

/// This node's heartbeat writer and its view of the others.
pub struct Membership {
    bucket: kv::Store,
    node_id: String,
    advertise_addr: String,
    interval: Duration,
    draining: AtomicBool,
    /// node id → its newest heartbeat.
    view: RwLock<BTreeMap<String, Heartbeat>>,
}

impl Membership {
    pub fn new(
        bucket: kv::Store,
        node_id: String,
        advertise_addr: String,
        interval: Duration,
    ) -> Membership {
        Membership {
            bucket,
            node_id,
            advertise_addr,
            interval,
            draining: AtomicBool::new(false),
            view: RwLock::new(BTreeMap::new()),
        }
    }

    /// The bucket's settings: entries expire after three heartbeats, only the newest is kept.
    pub fn bucket_config(bucket: &str, interval: Duration) -> kv::Config {
        kv::Config {
            bucket: bucket.to_owned(),
            description: "spearlet cluster membership: node id → heartbeat".into(),
            history: 1,
            max_age: interval * HEARTBEATS_TO_EXPIRY,
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn stale_after_ms(&self) -> i64 {
        (self.interval * HEARTBEATS_TO_EXPIRY).as_millis() as i64
    }

    /// Writes this node's heartbeat now (and keeps it in the view, so the node sees itself
    /// even before the watch delivers it).
    pub async fn beat(&self, node: &Node) -> Result<(), String> {
        let heartbeat = Heartbeat::of(
            node,
            &self.node_id,
            &self.advertise_addr,
            self.is_draining(),
        );
        let bytes = serde_json::to_vec(&heartbeat).map_err(|error| error.to_string())?;
        self.view
            .write()
            .insert(heartbeat.node_id.clone(), heartbeat);
        self.bucket
            .put(node_key(&self.node_id), bytes.into())
            .await
            .map(|_| ())
            .map_err(|error| format!("writing the heartbeat: {error}"))
    }

    /// Follows the bucket: every heartbeat replaces the node's previous one; a deleted entry
    /// removes the node. Re-subscribes after the watch ends (NATS restarted, link lost).
    pub async fn watch_forever(self: Arc<Self>) {
        loop {
            match self.bucket.watch_all().await {
                Ok(mut watch) => {
                    while let Some(entry) = watch.next().await {
                        match entry {
                            Ok(entry) => self.apply(entry),
                            Err(error) => {
                                tracing::warn!("cluster membership watch: {error}");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!("cluster membership watch: {error}"),
            }
            if self.is_draining() {
                return;
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    fn apply(&self, entry: kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Heartbeat>(&entry.value) {
                Ok(heartbeat) => {
                    let mut view = self.view.write();
                    let newer = view
                        .get(&heartbeat.node_id)
                        .is_none_or(|known| known.timestamp_ms <= heartbeat.timestamp_ms);
                    if newer {
                        view.insert(heartbeat.node_id.clone(), heartbeat);
                    }
                }
                Err(error) => {
                    tracing::warn!(key = %entry.key, "a heartbeat that is not JSON: {error}")
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                let mut view = self.view.write();
                view.retain(|node_id, _| node_key(node_id) != entry.key);
            }
        }
    }

    /// Peers calls may be forwarded to now: a fresh heartbeat, not draining, not this node.
    pub fn routable_peers(&self) -> Vec<Heartbeat> {
        let now_ms = unix_ms();
        let stale_after_ms = self.stale_after_ms();
        self.view
            .read()
            .values()
            .filter(|heartbeat| {
                heartbeat.node_id != self.node_id
                    && !heartbeat.draining
                    && heartbeat.age_ms(now_ms) <= stale_after_ms
            })
            .cloned()
            .collect()
    }

    /// Every node in the view, for GetHealth / GetStats / `spearlet cluster ls`. Heartbeats
    /// long past expiry (ten intervals) are dropped from the view here.
    pub fn nodes(&self) -> Vec<proto::ClusterNode> {
        let now_ms = unix_ms();
        let stale_after_ms = self.stale_after_ms();
        let mut view = self.view.write();
        view.retain(|_, heartbeat| heartbeat.age_ms(now_ms) <= stale_after_ms * 10 / 3);
        view.values()
            .map(|heartbeat| {
                let age_ms = heartbeat.age_ms(now_ms);
                let is_self = heartbeat.node_id == self.node_id;
                proto::ClusterNode {
                    node_id: heartbeat.node_id.clone(),
                    advertise_addr: heartbeat.advertise_addr.clone(),
                    draining: heartbeat.draining,
                    free_slots: heartbeat.free_slots as i32,
                    running: heartbeat.running as i32,
                    queue_length: heartbeat.queue_length as i32,
                    heartbeat_age_ms: age_ms,
                    routable: !is_self && !heartbeat.draining && age_ms <= stale_after_ms,
                    is_self,
                    tasks: heartbeat
                        .tasks
                        .iter()
                        .map(|task| proto::ClusterNodeTask {
                            task_id: task.task_id.clone(),
                            task_name: task.task_name.clone(),
                            instances: task.instances as i32,
                            idle_instances: task.idle_instances as i32,
                            can_start_instance: task.can_start_instance,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Graceful leave: one `draining` heartbeat (peers stop routing at once), then the entry
    /// goes. The heartbeat loop stops.
    pub async fn leave(&self, node: Option<&Node>) {
        self.draining.store(true, Ordering::Relaxed);
        if let Some(node) = node
            && let Err(error) = self.beat(node).await
        {
            tracing::warn!("cluster leave: {error}");
        }
        if let Err(error) = self.bucket.delete(node_key(&self.node_id)).await {
            tracing::warn!("cluster leave: deleting the heartbeat: {error}");
        }
    }
}
