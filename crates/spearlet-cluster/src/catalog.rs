//! Tasks and artifacts cluster-wide: the `<name>_tasks` KV bucket holds every task's record
//! under one id; the `<name>_artifacts` Object Store holds every artifact by its sha256.
//!
//! Registering on any node: the node has already fetched, verified and loaded the artifact; it
//! puts the bytes into the Object Store (unless that digest is there) and then writes the task
//! with compare-and-swap under the node's versioning rules, now applied cluster-wide: a new name
//! is created; the same content is adopted (its id, version and times); different content needs
//! a newer version (the same version is ALREADY_EXISTS, an older one FAILED_PRECONDITION). A
//! lost race re-reads and decides again.
//!
//! Every node watches the bucket and installs what it does not have: it fetches the artifact by
//! digest, verifies it (nothing is used before its digest matches; a corrupt object is refused
//! with both digests in the error), stores it in its content cache and registers the task under
//! the bucket's id, so `file://` locations are only ever read by the node that registered. A
//! deleted key removes the task here.
//!
//! Invariants: a task is published only after its artifact is in the Object Store; a peer's
//! task is installed only after its bytes matched the digest; installing is idempotent (same id,
//! digest, version and configuration → nothing happens).

use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::ObjectStore;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use spearlet_core::task_config::configuration_keys;
use spearlet_core::{SpearError, SpearResult, TaskRecord};
use spearlet_server::Node;
use spearlet_server::registry::{
    ClusterPublication, RegistrationSource, TaskRegistration, compare_versions,
};
use tokio::io::AsyncReadExt;

use crate::names::task_key;

/// How many times a registration re-reads the bucket after losing a compare-and-swap race.
const MAX_PUBLISH_ATTEMPTS: usize = 8;

/// A task as the bucket holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterTask {
    pub record: TaskRecord,
    /// The node that wrote this version.
    pub published_by: String,
}

pub struct TaskCatalog {
    tasks: kv::Store,
    artifacts: ObjectStore,
    node_id: String,
}

impl TaskCatalog {
    pub fn new(tasks: kv::Store, artifacts: ObjectStore, node_id: String) -> TaskCatalog {
        TaskCatalog {
            tasks,
            artifacts,
            node_id,
        }
    }

    /// The task bucket: a short history (operators can see the previous versions), on disk.
    pub fn tasks_bucket_config(bucket: &str) -> kv::Config {
        kv::Config {
            bucket: bucket.to_owned(),
            description: "spearlet cluster tasks: task key → task record".into(),
            history: 5,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }

    pub fn artifacts_bucket_config(bucket: &str) -> async_nats::jetstream::object_store::Config {
        async_nats::jetstream::object_store::Config {
            bucket: bucket.to_owned(),
            description: Some("spearlet cluster artifacts: sha256 hex → bytes".into()),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Puts the artifact into the Object Store unless its digest is already there.
    async fn ensure_artifact(&self, digest: &str, bytes: Bytes) -> SpearResult<()> {
        if self.artifacts.info(digest).await.is_ok() {
            return Ok(());
        }
        let mut reader = std::io::Cursor::new(bytes);
        self.artifacts
            .put(digest, &mut reader)
            .await
            .map_err(|error| unavailable(format!("storing artifact sha256:{digest}: {error}")))?;
        Ok(())
    }

    /// Applies the registration rules against the bucket (see the module documentation).
    pub async fn publish(
        &self,
        record: TaskRecord,
        artifact: Bytes,
        source: RegistrationSource,
    ) -> SpearResult<ClusterPublication> {
        self.ensure_artifact(&record.artifact.digest, artifact)
            .await?;
        let key = task_key(&record.task_name);
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            let existing = self
                .tasks
                .entry(key.as_str())
                .await
                .map_err(|error| unavailable(format!("reading the cluster's tasks: {error}")))?
                .filter(|entry| entry.operation == kv::Operation::Put);
            let Some(entry) = existing else {
                let value = self.encode(&record)?;
                match self.tasks.create(key.as_str(), value).await {
                    Ok(_) => return Ok(ClusterPublication::Accepted(Box::new(record))),
                    Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(error) => {
                        return Err(unavailable(format!(
                            "writing task {:?} to the cluster: {error}",
                            record.task_name
                        )));
                    }
                }
            };
            let held: ClusterTask = decode(&entry.value)?;
            let held = held.record;
            let same_artifact = held.artifact.digest == record.artifact.digest;
            let same_config = configuration_keys(&held.artifact.metadata)
                == configuration_keys(&record.artifact.metadata);
            if same_artifact && same_config {
                return Ok(ClusterPublication::Accepted(Box::new(held)));
            }
            if source == RegistrationSource::Example {
                return Ok(ClusterPublication::Superseded);
            }
            if !same_artifact {
                match compare_versions(&record.artifact.version, &held.artifact.version) {
                    std::cmp::Ordering::Greater => {}
                    std::cmp::Ordering::Equal => {
                        return Err(SpearError::already_exists(format!(
                            "task {:?} already has artifact version {:?} with digest \
                             sha256:{} in the cluster; different content (sha256:{}) needs a \
                             new artifact_spec.version",
                            record.task_name,
                            held.artifact.version,
                            held.artifact.digest,
                            record.artifact.digest
                        )));
                    }
                    std::cmp::Ordering::Less => {
                        return Err(SpearError::failed_precondition(format!(
                            "artifact_spec.version {:?} is older than the cluster's version \
                             {:?} of task {:?}",
                            record.artifact.version, held.artifact.version, record.task_name
                        )));
                    }
                }
            }
            // A new version keeps the cluster's id and creation time.
            let updated = TaskRecord {
                task_id: held.task_id.clone(),
                created_at_ms: held.created_at_ms,
                ..record.clone()
            };
            let value = self.encode(&updated)?;
            match self.tasks.update(key.as_str(), value, entry.revision).await {
                Ok(_) => return Ok(ClusterPublication::Accepted(Box::new(updated))),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => {
                    return Err(unavailable(format!(
                        "writing task {:?} to the cluster: {error}",
                        record.task_name
                    )));
                }
            }
        }
        Err(unavailable(format!(
            "task {:?}: the cluster's record kept changing while registering; retry",
            record.task_name
        )))
    }

    /// Removes the task from the bucket; every node's watcher removes it there.
    pub async fn withdraw(&self, record: &TaskRecord) -> SpearResult<()> {
        self.tasks
            .delete(task_key(&record.task_name))
            .await
            .map_err(|error| {
                unavailable(format!(
                    "removing task {:?} from the cluster: {error}",
                    record.task_name
                ))
            })
    }

    fn encode(&self, record: &TaskRecord) -> SpearResult<Bytes> {
        serde_json::to_vec(&ClusterTask {
            record: record.clone(),
            published_by: self.node_id.clone(),
        })
        .map(Bytes::from)
        .map_err(|error| SpearError::internal(format!("encoding a task record: {error}")))
    }

    /// Every task the bucket holds now.
    pub async fn all_tasks(&self) -> SpearResult<Vec<TaskRecord>> {
        let mut keys = self
            .tasks
            .keys()
            .await
            .map_err(|error| unavailable(format!("listing the cluster's tasks: {error}")))?;
        let mut tasks = Vec::new();
        while let Some(key) = keys.next().await {
            let key =
                key.map_err(|error| unavailable(format!("listing the cluster's tasks: {error}")))?;
            if let Some(value) = self
                .tasks
                .get(key.as_str())
                .await
                .map_err(|error| unavailable(format!("reading the cluster's tasks: {error}")))?
            {
                tasks.push(decode::<ClusterTask>(&value)?.record);
            }
        }
        Ok(tasks)
    }

    /// Installs a task from the bucket on this node unless it already has exactly that.
    pub async fn install(&self, node: &Node, record: TaskRecord) -> SpearResult<()> {
        if let Some(local) = node.registry.resolve(&record.task_id)
            && local.record.task_id == record.task_id
            && local.record.artifact.digest == record.artifact.digest
            && local.record.artifact.version == record.artifact.version
            && local.record.artifact.metadata == record.artifact.metadata
        {
            return Ok(());
        }
        let digest = record.artifact.digest.clone();
        let bytes = self.fetch_verified(&digest).await?;
        node.registry.fetcher().store_upload(bytes).await?;
        let registration = TaskRegistration {
            requested_task_id: Some(record.task_id.clone()),
            task_name: record.task_name.clone(),
            // A lambda task's handler is in its metadata.
            function_name: String::new(),
            description: record.description.clone(),
            artifact_id: record.artifact.artifact_id.clone(),
            artifact_type: record.artifact.artifact_type.clone(),
            location: record.artifact.location.clone(),
            version: record.artifact.version.clone(),
            checksum: format!("sha256:{digest}"),
            metadata: record.artifact.metadata.clone(),
            restored_timestamps: Some((record.created_at_ms, record.updated_at_ms)),
            source: RegistrationSource::Cluster,
        };
        node.registry.register(registration).await?;
        Ok(())
    }

    /// The artifact's bytes from the Object Store, refused unless their sha256 is `digest`.
    async fn fetch_verified(&self, digest: &str) -> SpearResult<Bytes> {
        let mut object = self.artifacts.get(digest).await.map_err(|error| {
            unavailable(format!(
                "fetching artifact sha256:{digest} from the cluster: {error}"
            ))
        })?;
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|error| {
            unavailable(format!(
                "reading artifact sha256:{digest} from the cluster: {error}"
            ))
        })?;
        verify_digest(digest, &bytes)?;
        Ok(Bytes::from(bytes))
    }

    /// Follows the bucket and keeps this node's tasks equal to it, until the node is gone.
    pub async fn follow(self: Arc<Self>, node: Weak<Node>, retry_interval: Duration) {
        loop {
            match self.tasks.watch_all().await {
                Ok(mut watch) => {
                    while let Some(entry) = watch.next().await {
                        let Some(node) = node.upgrade() else {
                            return;
                        };
                        match entry {
                            Ok(entry) => self.apply(&node, entry).await,
                            Err(error) => {
                                tracing::warn!("cluster task watch: {error}");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!("cluster task watch: {error}"),
            }
            if node.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(retry_interval).await;
        }
    }

    async fn apply(&self, node: &Node, entry: kv::Entry) {
        match entry.operation {
            kv::Operation::Put => {
                let record = match decode::<ClusterTask>(&entry.value) {
                    Ok(task) => task.record,
                    Err(error) => {
                        tracing::warn!(key = %entry.key, "cluster task: {}", error.message);
                        return;
                    }
                };
                let task_name = record.task_name.clone();
                if let Err(error) = self.install(node, record).await {
                    tracing::error!(
                        task_name = %task_name,
                        "could not install the cluster's task here: {}",
                        error.message
                    );
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                let Some(task) = node
                    .registry
                    .all()
                    .into_iter()
                    .find(|task| task_key(&task.record.task_name) == entry.key)
                else {
                    return;
                };
                if let Err(error) = node
                    .registry
                    .remove_from(&task.record.task_id, RegistrationSource::Cluster)
                    .await
                {
                    tracing::error!(
                        task_id = %task.record.task_id,
                        "could not remove a task the cluster deleted: {}",
                        error.message
                    );
                }
            }
        }
    }
}

/// Refuses bytes whose sha256 is not the expected digest, naming both.
pub fn verify_digest(expected: &str, bytes: &[u8]) -> SpearResult<()> {
    let actual = spearlet_artifact::sha256_hex(bytes);
    if actual != expected {
        return Err(SpearError::failed_precondition(format!(
            "the cluster's artifact sha256:{expected} is corrupt: its bytes hash to \
             sha256:{actual}; it is not used"
        )));
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> SpearResult<T> {
    serde_json::from_slice(bytes).map_err(|error| {
        SpearError::internal(format!("a cluster record that is not JSON: {error}"))
    })
}

fn unavailable(message: String) -> SpearError {
    SpearError::unavailable(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_artifact_is_refused_naming_both_digests() {
        let expected = spearlet_artifact::sha256_hex(b"good");
        assert!(verify_digest(&expected, b"good").is_ok());
        let error = verify_digest(&expected, b"evil").unwrap_err();
        assert!(error.message.contains(&expected), "{}", error.message);
        assert!(
            error
                .message
                .contains(&spearlet_artifact::sha256_hex(b"evil")),
            "{}",
            error.message
        );
    }
}
