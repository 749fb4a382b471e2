//! The node: every long-lived component, built once from the configuration.

use std::sync::Arc;
use std::time::Duration;

use spearlet_artifact::{ArtifactFetcher, ArtifactFetcherConfig};
use spearlet_core::{SpearError, SpearResult};
use spearlet_pool::{Dispatcher, DispatcherConfig};
use spearlet_store::{DurableStore, DurableStoreConfig};
use spearlet_wasm::{WasmEngine, WasmEngineConfig};

use crate::auth::AccessPolicy;
use crate::cluster_link::ClusterLink;
use crate::config::NodeConfig;
use crate::history::{SAMPLE_INTERVAL, StatsHistory};
use crate::manager::{ManagerConfig, TaskExecutionManager};
use crate::observer::ProcessObserver;
use crate::registry::{
    ClusterTaskCatalog, ProcessRuntimeConfig, RegistrationSource, TaskRegistration, TaskRegistry,
};

pub struct Node {
    pub config: NodeConfig,
    pub registry: TaskRegistry,
    pub manager: Arc<TaskExecutionManager>,
    pub observer: Arc<ProcessObserver>,
    /// The configured bearer tokens; handlers authorize requests against it.
    pub access: Arc<AccessPolicy>,
    /// Cluster mode (`spearlet-cluster`); `None` on a node of its own.
    pub cluster: Option<Arc<dyn ClusterLink>>,
    /// The last 15 minutes at one point per second (`history.rs`), sampled from the start.
    pub history: StatsHistory,
}

impl Node {
    /// Builds the node: data directories, engine, fetcher, store, registry, manager. Must run
    /// inside a tokio runtime.
    pub async fn build(config: NodeConfig) -> SpearResult<Arc<Node>> {
        Node::build_in_cluster(config, None).await
    }

    /// As [`Node::build`], in cluster mode when `cluster` is given: registrations go to the
    /// cluster, instance ids and results carry the node id. The caller starts the link once
    /// the node is built.
    pub async fn build_in_cluster(
        config: NodeConfig,
        cluster: Option<Arc<dyn ClusterLink>>,
    ) -> SpearResult<Arc<Node>> {
        let node_id = cluster
            .as_ref()
            .map(|link| Arc::<str>::from(link.node_id()));
        std::fs::create_dir_all(&config.data_dir).map_err(|error| {
            SpearError::internal(format!(
                "creating data_dir {}: {error}",
                config.data_dir.display()
            ))
        })?;
        let data_dir = config.data_dir.canonicalize().map_err(|error| {
            SpearError::internal(format!(
                "resolving data_dir {}: {error}",
                config.data_dir.display()
            ))
        })?;
        let engine = WasmEngine::new(&WasmEngineConfig {
            max_instances: config.wasm.max_instances,
            max_memory_limit_mb: config.wasm.max_memory_limit_mb,
            epoch_tick: Duration::from_millis(config.wasm.epoch_tick_ms),
            compiled_module_cache_directory: Some(data_dir.join("compiled")),
        })?;
        let mut allowed_roots = vec![data_dir.clone()];
        allowed_roots.extend(config.artifacts.allowed_roots.iter().cloned());
        let fetcher = ArtifactFetcher::new(ArtifactFetcherConfig {
            cache_directory: data_dir.join("artifacts"),
            allowed_roots,
            max_artifact_bytes: config.artifacts.max_artifact_bytes,
            http_connect_timeout: Duration::from_millis(config.artifacts.http_connect_timeout_ms),
            http_total_timeout: Duration::from_millis(config.artifacts.http_total_timeout_ms),
            http_attempts: config.artifacts.http_attempts,
        })?;
        let mut store_config = DurableStoreConfig::new(data_dir.join("spearlet.db"));
        store_config.max_execution_records = config.max_execution_records;
        store_config.execution_ttl =
            (config.execution_ttl_ms > 0).then(|| Duration::from_millis(config.execution_ttl_ms));
        let (store, recovered) = DurableStore::open(store_config)?;
        let store = Arc::new(store);
        let enforcement = spearlet_process::sandbox::detect_enforcement();
        tracing::info!(
            cgroups = enforcement.cgroups,
            "process limits: {}",
            enforcement.description
        );
        let dispatcher = Dispatcher::new(DispatcherConfig {
            max_concurrent_executions: config.max_concurrent_executions,
            max_queue_length: config.max_queue_length,
            priority_aging: Duration::from_millis(config.pool.priority_aging_ms),
            health_check_interval: Duration::from_millis(config.pool.health_check_interval_ms),
            autoscale_tick: Duration::from_millis(config.pool.autoscale_tick_ms),
            // Unique cluster-wide: `<node id>/<task id>/i<n>`.
            instance_id_prefix: node_id
                .as_ref()
                .map(|node_id| format!("{node_id}/"))
                .unwrap_or_default(),
        });
        dispatcher.start_maintenance();
        let registry = TaskRegistry::new(
            fetcher,
            engine,
            store.clone(),
            dispatcher.clone(),
            ProcessRuntimeConfig {
                unpack_directory: data_dir.join("processes"),
                workdir_base: data_dir.join("work"),
                default_run_as: config.process.run_as.clone(),
            },
            config.task_defaults.to_task_config_defaults(),
            cluster
                .clone()
                .map(|cluster| cluster as Arc<dyn ClusterTaskCatalog>),
        );
        let restored_tasks = registry.restore(recovered.tasks).await;
        restore_task_counters(&registry, &store)?;
        let manager = TaskExecutionManager::new(
            store,
            ManagerConfig {
                max_async_pending: config.max_async_pending,
                max_retries: config.max_retries,
                node_id,
            },
            dispatcher,
            recovered.highest_sequence,
        );
        let recovery = manager
            .recover(recovered.unfinished_executions, &registry)
            .await;
        tracing::info!(
            restored_tasks,
            resumed = recovery.resumed,
            retried = recovery.retried,
            failed = recovery.failed,
            handed_back_to_cluster = recovery.handed_back,
            "recovered state from the data dir"
        );
        let node = Arc::new(Node {
            registry,
            manager,
            observer: ProcessObserver::start(),
            access: Arc::new(AccessPolicy::new(&config.auth)),
            config: NodeConfig { data_dir, ..config },
            cluster,
            history: StatsHistory::default(),
        });
        start_history_sampler(&node);
        if node.config.register_examples {
            node.register_examples().await?;
        }
        Ok(node)
    }

    /// Registers the bundled examples as tasks, unless a task already has the name. The module
    /// bytes are written to `<data_dir>/examples/` so the tasks point at real files.
    async fn register_examples(&self) -> SpearResult<()> {
        let directory = self.config.data_dir.join("examples");
        std::fs::create_dir_all(&directory).map_err(|error| {
            SpearError::internal(format!("creating {}: {error}", directory.display()))
        })?;
        for example in spearlet_examples::EXAMPLES {
            if self.registry.by_name(example.name).is_some() {
                continue;
            }
            let path = directory.join(format!("{}.wasm", example.name));
            let current = std::fs::read(&path).ok();
            if current.as_deref() != Some(example.wasm) {
                std::fs::write(&path, example.wasm).map_err(|error| {
                    SpearError::internal(format!("writing {}: {error}", path.display()))
                })?;
            }
            let registration = TaskRegistration {
                task_name: example.name.to_owned(),
                description: example.description.to_owned(),
                artifact_type: "wasm".into(),
                location: format!("file://{}", path.display()),
                version: env!("CARGO_PKG_VERSION").into(),
                checksum: format!("sha256:{}", spearlet_artifact::sha256_hex(example.wasm)),
                metadata: [("example".to_string(), "true".to_string())].into(),
                restored_timestamps: None,
                source: RegistrationSource::Example,
                ..TaskRegistration::default()
            };
            match self.registry.register(registration).await {
                Ok(_) => {}
                // The cluster has its own task of that name; it arrives from the cluster.
                Err(error)
                    if self.cluster.is_some()
                        && error.kind == spearlet_core::ErrorKind::AlreadyExists =>
                {
                    tracing::info!(example = example.name, "{}", error.message);
                }
                Err(error) => {
                    return Err(error.context(format!("registering example {}", example.name)));
                }
            }
        }
        Ok(())
    }
}

/// Takes a history point every [`SAMPLE_INTERVAL`] until the node is dropped (the task holds
/// only a weak reference between samples).
fn start_history_sampler(node: &Arc<Node>) {
    let node = Arc::downgrade(node);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(node) = node.upgrade() else {
                return;
            };
            node.history
                .sample(&node.registry, &node.manager, &node.observer);
        }
    });
}

/// Execution counts and last statuses of restored tasks, from the records.
fn restore_task_counters(registry: &TaskRegistry, store: &DurableStore) -> SpearResult<()> {
    let tasks = registry.all();
    let by_id: std::collections::HashMap<&str, &crate::registry::LoadedTask> = tasks
        .iter()
        .map(|task| (task.record.task_id.as_str(), task.as_ref()))
        .collect();
    store.visit_executions(&mut |record| {
        if let Some(task) = by_id.get(record.task_id.as_str()) {
            task.counters
                .execution_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if record.status.is_terminal() {
                task.counters.set_last_status(record.status);
            }
        }
    })
}
