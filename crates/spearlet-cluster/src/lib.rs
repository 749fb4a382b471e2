//! Cluster mode: spearlet nodes as one, on NATS JetStream (docs/CLUSTER.md).
//!
//! [`join`] connects to NATS, creates the cluster's buckets idempotently (no operator
//! pre-creates anything) and returns the node's [`ClusterLink`]; the node starts it once both
//! its listeners serve. The pieces:
//! - `membership`: heartbeats in the `<name>_nodes` KV bucket and the view of the peers;
//! - `catalog`: tasks in the `<name>_tasks` KV bucket (compare-and-swap), artifacts in the
//!   `<name>_artifacts` Object Store, and the watcher that installs them on every node;
//! - `forwarding`: sync and stream calls the local dispatcher cannot grant now, run on a peer
//!   with capacity over gRPC (at most one hop);
//! - `queue`: async calls through the `<name>_work` work-queue stream, each execution's state in
//!   the `<name>_executions` KV bucket, fenced by compare-and-swap;
//! - `names`: every bucket name and key.
//!
//! Invariants: the single-node path never calls into this crate (a node without `[cluster]`
//! holds no link); nothing here runs on a call the local node can grant at once; the link to
//! NATS reconnects by itself, and while it is down the node keeps serving the tasks it has and
//! reports `degraded` with the reason.

pub mod catalog;
pub mod forwarding;
pub mod membership;
pub mod names;
pub mod queue;

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use spearlet_core::{ExecutionRecord, SpearError, SpearResult, TaskRecord};
use spearlet_proto as proto;
use spearlet_server::cluster_link::{ClusterLink, ExecutionResultStream, Forwarding};
use spearlet_server::manager::{CancelResult, ExecutionRequest};
use spearlet_server::registry::{ClusterPublication, ClusterTaskCatalog, RegistrationSource};
use spearlet_server::{ClusterJoin, Node};

use crate::catalog::TaskCatalog;
use crate::forwarding::Forwarder;
use crate::membership::Membership;
use crate::names::ClusterNames;
use crate::queue::WorkQueue;

/// The file in the data directory that keeps a generated node id across restarts.
pub const NODE_ID_FILE: &str = "cluster-node-id";

/// The file in the data directory that says this node has joined its cluster before. On the
/// first join the node's own tasks are published; afterwards the cluster's task bucket is the
/// authority (a task deleted while the node was down stays deleted).
pub const JOINED_MARKER_FILE: &str = "cluster-joined";

/// How long connecting to NATS at start may take.
const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's link to its cluster.
pub struct NatsCluster {
    node_id: String,
    names: ClusterNames,
    data_dir: std::path::PathBuf,
    client: async_nats::Client,
    membership: Arc<Membership>,
    catalog: Arc<TaskCatalog>,
    forwarder: Forwarder,
    queue: Arc<WorkQueue>,
    heartbeat_interval: Duration,
    node: Mutex<Weak<Node>>,
    /// The last heartbeat write's failure, for health.
    last_heartbeat_error: Arc<Mutex<Option<String>>>,
}

/// Connects to NATS and prepares the cluster's buckets; the node starts the link once built.
pub async fn join(join: ClusterJoin) -> SpearResult<Arc<dyn ClusterLink>> {
    let config = &join.config;
    std::fs::create_dir_all(&join.data_dir).map_err(|error| {
        SpearError::internal(format!(
            "creating data_dir {}: {error}",
            join.data_dir.display()
        ))
    })?;
    let node_id = if config.node_id.is_empty() {
        stable_node_id(&join.data_dir)?
    } else {
        config.node_id.clone()
    };
    let advertise_addr = if config.advertise_addr.is_empty() {
        join.grpc_url.clone()
    } else {
        config.advertise_addr.clone()
    };
    let heartbeat_interval = Duration::from_millis(config.heartbeat_interval_ms);
    let names = ClusterNames::new(&config.name);

    let mut options = async_nats::ConnectOptions::new()
        .name(format!("spearlet {node_id}"))
        .connection_timeout(NATS_CONNECT_TIMEOUT);
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(password) = &config.password {
        options = options.user_and_password(config.user.clone(), password.expose().to_owned());
    }
    if let Some(ca_file) = &config.tls_ca_file {
        options = options
            .add_root_certificates(ca_file.clone())
            .require_tls(true);
    }
    let client = tokio::time::timeout(
        NATS_CONNECT_TIMEOUT,
        options.connect(config.nats_url.as_str()),
    )
    .await
    .map_err(|_| {
        SpearError::unavailable(format!(
            "cluster.nats_url {}: no answer within {} s",
            config.nats_url,
            NATS_CONNECT_TIMEOUT.as_secs()
        ))
    })?
    .map_err(|error| {
        SpearError::unavailable(format!("cluster.nats_url {}: {error}", config.nats_url))
    })?;
    let jetstream = jetstream::new(client.clone());
    let nodes = jetstream
        .create_or_update_key_value(jetstream::kv::Config {
            num_replicas: config.replicas,
            ..Membership::bucket_config(&names.nodes_bucket, heartbeat_interval)
        })
        .await
        .map_err(|error| bucket_error(&names.nodes_bucket, error))?;
    let tasks = jetstream
        .create_or_update_key_value(jetstream::kv::Config {
            num_replicas: config.replicas,
            ..TaskCatalog::tasks_bucket_config(&names.tasks_bucket)
        })
        .await
        .map_err(|error| bucket_error(&names.tasks_bucket, error))?;
    let artifacts = match jetstream.get_object_store(&names.artifacts_bucket).await {
        Ok(store) => store,
        Err(_) => jetstream
            .create_object_store(jetstream::object_store::Config {
                num_replicas: config.replicas,
                ..TaskCatalog::artifacts_bucket_config(&names.artifacts_bucket)
            })
            .await
            .map_err(|error| bucket_error(&names.artifacts_bucket, error))?,
    };
    let queue = Arc::new(
        WorkQueue::open(
            client.clone(),
            names.clone(),
            node_id.clone(),
            Duration::from_millis(config.ack_wait_ms),
            config.replicas,
        )
        .await?,
    );
    let membership = Arc::new(Membership::new(
        nodes,
        node_id.clone(),
        advertise_addr,
        heartbeat_interval,
    ));
    let peer_tls = match &config.peer_ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|error| {
                SpearError::invalid_argument(format!(
                    "cluster.peer_ca_file {}: {error}",
                    path.display()
                ))
            })?;
            Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
        }
        None => Some(tonic::transport::ClientTlsConfig::new().with_webpki_roots()),
    };
    let forwarder = Forwarder::new(
        node_id.clone(),
        membership.clone(),
        peer_tls,
        join.max_request_bytes,
    );
    tracing::info!(
        node_id = %node_id,
        cluster = %names.cluster_name,
        nats = %config.nats_url,
        "joined the NATS cluster"
    );
    Ok(Arc::new(NatsCluster {
        catalog: Arc::new(TaskCatalog::new(tasks, artifacts, node_id.clone())),
        node_id,
        names,
        data_dir: join.data_dir,
        client,
        membership,
        forwarder,
        queue,
        heartbeat_interval,
        node: Mutex::new(Weak::new()),
        last_heartbeat_error: Arc::new(Mutex::new(None)),
    }))
}

fn bucket_error(bucket: &str, error: impl std::fmt::Display) -> SpearError {
    SpearError::unavailable(format!(
        "preparing the cluster bucket {bucket} (is JetStream enabled on the NATS server?): \
         {error}"
    ))
}

/// The node id kept in the data directory, generated on the first join.
fn stable_node_id(data_dir: &Path) -> SpearResult<String> {
    let path = data_dir.join(NODE_ID_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let node_id = text.trim().to_owned();
        spearlet_core::ids::validate_id(&format!("{}", path.display()), &node_id)?;
        return Ok(node_id);
    }
    let node_id = format!("node-{:08x}", rand::random::<u32>());
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{node_id}\n"))
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|error| SpearError::internal(format!("writing {}: {error}", path.display())))?;
    Ok(node_id)
}

impl NatsCluster {
    /// Makes this node's tasks equal to the cluster's: installs the bucket's, and either
    /// publishes this node's own (first join) or removes those the cluster no longer has.
    async fn reconcile(&self, node: &Node) -> SpearResult<()> {
        let cluster_tasks = self.catalog.all_tasks().await?;
        for record in &cluster_tasks {
            if let Err(error) = self.catalog.install(node, record.clone()).await {
                tracing::error!(
                    task_name = %record.task_name,
                    "could not install the cluster's task here: {}",
                    error.message
                );
            }
        }
        let marker = self.data_dir.join(JOINED_MARKER_FILE);
        let first_join = !marker.exists();
        for task in node.registry.all() {
            if cluster_tasks
                .iter()
                .any(|record| record.task_name == task.record.task_name)
            {
                continue;
            }
            if first_join {
                let bytes = node
                    .registry
                    .fetcher()
                    .fetch(
                        &task.record.artifact.location,
                        &format!("sha256:{}", task.record.artifact.digest),
                    )
                    .await?
                    .bytes;
                self.catalog
                    .publish(task.record.clone(), bytes, RegistrationSource::Client)
                    .await?;
            } else {
                tracing::info!(
                    task_name = %task.record.task_name,
                    "the cluster deleted this task while the node was away; removing it"
                );
                node.registry
                    .remove_from(&task.record.task_id, RegistrationSource::Cluster)
                    .await?;
            }
        }
        std::fs::write(&marker, format!("{}\n", self.names.cluster_name))
            .map_err(|error| SpearError::internal(format!("writing {}: {error}", marker.display())))
    }

    /// The whole output of a cluster execution from the record of the node that ran it: this
    /// node's store, or the owner's GetExecutionStatus while it is routable. `None` if neither
    /// has it (the bucket's first 64 KiB are answered, marked truncated).
    async fn owner_output(
        &self,
        record: &ExecutionRecord,
        authorization: Option<String>,
    ) -> Option<Bytes> {
        let owner = record.metrics.get("node_id")?;
        if owner == &self.node_id {
            let node = self.node.lock().upgrade()?;
            let local = node
                .manager
                .store()
                .execution(&record.execution_id)
                .ok()??;
            return (local.attempt == record.attempt).then_some(local.output);
        }
        let peer = self
            .membership
            .routable_peers()
            .into_iter()
            .find(|peer| &peer.node_id == owner)?;
        self.forwarder
            .owner_output(
                &peer.advertise_addr,
                &record.execution_id,
                record.attempt,
                authorization,
            )
            .await
    }

    fn nats_message(&self) -> String {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => {
                self.last_heartbeat_error.lock().clone().unwrap_or_default()
            }
            state => format!(
                "the link to NATS is down ({state:?}); reconnecting. Calls run on this node only; \
                 tasks registered meanwhile are refused"
            ),
        }
    }
}

impl ClusterTaskCatalog for NatsCluster {
    fn publish_task(
        &self,
        record: TaskRecord,
        artifact: Bytes,
        source: RegistrationSource,
    ) -> BoxFuture<'_, SpearResult<ClusterPublication>> {
        self.catalog.publish(record, artifact, source).boxed()
    }

    fn withdraw_task(&self, record: TaskRecord) -> BoxFuture<'_, SpearResult<()>> {
        async move { self.catalog.withdraw(&record).await }.boxed()
    }
}

impl ClusterLink for NatsCluster {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn start(&self, node: Weak<Node>) -> BoxFuture<'_, SpearResult<()>> {
        async move {
            *self.node.lock() = node.clone();
            let Some(strong) = node.upgrade() else {
                return Ok(());
            };
            self.reconcile(&strong).await?;
            if let Err(error) = self.membership.beat(&strong).await {
                tracing::warn!("cluster heartbeat: {error}");
            }
            drop(strong);
            tokio::spawn(self.membership.clone().watch_forever());
            tokio::spawn(self.queue.clone().serve_cancels(node.clone()));
            tokio::spawn(
                self.queue
                    .clone()
                    .supervise(node.clone(), self.heartbeat_interval),
            );
            tokio::spawn(
                self.catalog
                    .clone()
                    .follow(node.clone(), self.heartbeat_interval),
            );
            let membership = self.membership.clone();
            let errors = self.last_heartbeat_error.clone();
            let interval = self.heartbeat_interval;
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    if membership.is_draining() {
                        return;
                    }
                    let Some(node) = node.upgrade() else {
                        return;
                    };
                    let result = membership.beat(&node).await;
                    *errors.lock() = result.err().map(|error| {
                        format!("the cluster heartbeat could not be written: {error}")
                    });
                }
            });
            Ok(())
        }
        .boxed()
    }

    fn forward_invoke(
        &self,
        request: proto::InvokeFunctionRequest,
        forwarding: Forwarding,
    ) -> BoxFuture<'_, Option<SpearResult<proto::InvokeFunctionResponse>>> {
        self.forwarder.invoke(request, forwarding).boxed()
    }

    fn forward_stream(
        &self,
        request: proto::InvokeFunctionRequest,
        forwarding: Forwarding,
    ) -> BoxFuture<'_, Option<SpearResult<ExecutionResultStream>>> {
        self.forwarder.stream(request, forwarding).boxed()
    }

    fn submit_async<'a>(
        &'a self,
        request: &'a ExecutionRequest,
    ) -> BoxFuture<'a, SpearResult<ExecutionRecord>> {
        self.queue.submit(request).boxed()
    }

    fn execution(
        &self,
        execution_id: String,
        authorization: Option<String>,
    ) -> BoxFuture<'_, SpearResult<Option<ExecutionRecord>>> {
        async move {
            let Some(mut record) = self.queue.execution(&execution_id).await? else {
                return Ok(None);
            };
            if record.metrics.contains_key("output_truncated")
                && let Some(output) = self.owner_output(&record, authorization).await
            {
                record.output = output;
                record.metrics.remove("output_truncated");
            }
            Ok(Some(record))
        }
        .boxed()
    }

    fn wait_execution(
        &self,
        execution_id: String,
        budget: Duration,
    ) -> BoxFuture<'_, SpearResult<Option<ExecutionRecord>>> {
        async move { self.queue.wait(&execution_id, budget).await }.boxed()
    }

    fn cancel_execution(
        &self,
        execution_id: String,
        reason: String,
    ) -> BoxFuture<'_, SpearResult<Option<CancelResult>>> {
        async move { self.queue.cancel(&execution_id, &reason).await }.boxed()
    }

    fn status(&self) -> proto::ClusterStatus {
        proto::ClusterStatus {
            node_id: self.node_id.clone(),
            cluster_name: self.names.cluster_name.clone(),
            nats_connected: self.client.connection_state()
                == async_nats::connection::State::Connected,
            message: self.nats_message(),
            nodes: self.membership.nodes(),
        }
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        async move {
            let node = self.node.lock().upgrade();
            self.queue.stop_pulling();
            self.membership.leave(node.as_deref()).await;
            tracing::info!(node_id = %self.node_id, "left the cluster");
        }
        .boxed()
    }
}
