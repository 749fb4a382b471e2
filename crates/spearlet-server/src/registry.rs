//! The task registry: registered tasks with their loaded (compiled and linked) modules, and the
//! artifact catalog that keeps artifact ids honest.
//!
//! Registration is three steps: validate (names, artifact type, the configuration keys for that
//! runtime — `TaskConfig::for_runtime` owns the per-runtime key rules), load (fetch, verify,
//! compile or unpack; single-flight per digest, no lock held) and commit (the naming and
//! versioning rules, the durable write, the swap).
//!
//! Invariants: a task in the registry is always runnable: its artifact was fetched, verified,
//! compiled and linked before it was inserted. The state lock is held only to read the rules'
//! inputs and to swap an entry — never across a fetch, a compile or a disk write, so resolving
//! a task on the call path never waits for any of them. Commits and removals are serialised by
//! an async lock of their own, and their SQLite writes run off the async workers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use tokio::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::{Mutex, RwLock};
use spearlet_artifact::ArtifactFetcher;
use spearlet_core::ids::{random_id, validate_id, validate_task_name};
use spearlet_core::task_config::configuration_keys;
use spearlet_core::{
    ArtifactRecord, ExecutionStatus, Isolation, ProcessMode, RuntimeKind, SpearError, SpearResult,
    TaskConfig, TaskConfigDefaults, TaskRecord,
};
use spearlet_pool::{Dispatcher, InstanceFactory, PoolHandle};
use spearlet_process::archive::{ProcessArtifactFormat, UnpackLimits, prepare_process_artifact};
use spearlet_process::sandbox::{ProcessLimits, RunAs};
use spearlet_process::task::ProcessTask;
use spearlet_runtime::CallLimits;
use spearlet_store::DurableStore;
use spearlet_wasm::{
    ComponentWorld, EntryPoint, LoadedWasm, WasmComponent, WasmEngine, WasmModule, WasmTaskSettings,
};

use crate::clock::unix_ms;
use crate::instances::{
    CallTarget, ComponentInstanceFactory, InstanceRuntime, ProcessInstanceFactory,
    WasmInstanceFactory,
};

/// Where process artifacts live on disk and who their processes run as by default.
#[derive(Clone, Debug)]
pub struct ProcessRuntimeConfig {
    /// Unpacked artifacts, one directory per digest.
    pub unpack_directory: PathBuf,
    /// Per-instance working directories are created under it.
    pub workdir_base: PathBuf,
    /// `[process] run_as`: the user processes run as when a task sets none.
    pub default_run_as: Option<String>,
}

/// What runs a task's calls.
pub enum TaskRuntime {
    Wasm {
        module: WasmModule,
        /// The task's environment and preopened directories, shared by every instance.
        settings: Arc<WasmTaskSettings>,
    },
    /// A WASI 0.2 component: a command or an HTTP handler, always per-call.
    Component {
        component: WasmComponent,
        settings: Arc<WasmTaskSettings>,
    },
    Process(Arc<ProcessTask>),
}

/// Where a registration came from, which decides what the cluster is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegistrationSource {
    /// CreateTask, NEW_TASK, `create_if_not_exists`, HTTP: the cluster's rules decide.
    #[default]
    Client,
    /// A bundled example at start: adopts the cluster's task of that name when it has one.
    Example,
    /// A task this node recorded before it restarted; the cluster reconciles it when it joins.
    Restore,
    /// Installed from the cluster's task bucket: told to nobody.
    Cluster,
}

/// What the cluster made of a registration.
pub enum ClusterPublication {
    /// The task as the cluster holds it now: the registered record, or the cluster's own record
    /// of the same content (its id, version and times), which this node adopts.
    Accepted(Box<TaskRecord>),
    /// A bundled example whose name the cluster already uses for other content: the cluster's
    /// version wins and arrives through the task watcher.
    Superseded,
}

/// What the registry asks of a cluster (`cluster_link::ClusterLink` extends it): tasks
/// registered here go to every node, and removals too.
pub trait ClusterTaskCatalog: Send + Sync + 'static {
    /// Puts a task registered here (its artifact first) into the cluster under the cluster's
    /// naming and versioning rules.
    fn publish_task(
        &self,
        record: TaskRecord,
        artifact: bytes::Bytes,
        source: RegistrationSource,
    ) -> BoxFuture<'_, SpearResult<ClusterPublication>>;

    /// Removes a task from every node.
    fn withdraw_task(&self, record: TaskRecord) -> BoxFuture<'_, SpearResult<()>>;
}

/// What a client asked to register.
#[derive(Clone, Debug, Default)]
pub struct TaskRegistration {
    /// A client-chosen id (EXISTING_TASK with `create_if_not_exists`); `None` = generate.
    pub requested_task_id: Option<String>,
    pub task_name: String,
    /// The function name of the NEW_TASK or CreateTask that registered it (the default lambda
    /// handler).
    pub function_name: String,
    pub description: String,
    pub artifact_id: String,
    pub artifact_type: String,
    pub location: String,
    pub version: String,
    pub checksum: String,
    pub metadata: BTreeMap<String, String>,
    /// When restoring a task after a restart (or installing one from the cluster): its
    /// original (created, updated) times.
    pub restored_timestamps: Option<(i64, i64)>,
    /// Who asked; decides what a cluster is told (nothing without one).
    pub source: RegistrationSource,
}

/// What registering did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationOutcome {
    Created,
    Updated,
    /// The task already existed with the same artifact and configuration.
    Unchanged,
}

/// Counters that survive task updates (a new version keeps the task's history).
#[derive(Default)]
pub struct TaskCounters {
    pub execution_count: AtomicU64,
    /// `ExecutionStatus` as u8 + 1; 0 = none yet.
    last_status: AtomicU8,
    /// Executions running a guest now.
    pub running: AtomicUsize,
    /// Executions pending or running now.
    pub live: AtomicUsize,
    /// Exponentially weighted mean run time in microseconds (0 = no run yet).
    mean_duration_us: AtomicU64,
    /// Prometheus counters and histograms per function (`/metrics`).
    pub metrics: crate::metrics::TaskMetrics,
}

impl TaskCounters {
    pub fn set_last_status(&self, status: ExecutionStatus) {
        self.last_status
            .store(status_to_u8(status) + 1, Ordering::Relaxed);
    }

    /// Folds one run time into the recent mean (weight 0.2 for the newest).
    pub fn record_duration(&self, run_ms: f64) {
        let sample_us = (run_ms * 1000.0).max(1.0) as u64;
        let previous = self.mean_duration_us.load(Ordering::Relaxed);
        let updated = if previous == 0 {
            sample_us
        } else {
            (previous * 4 + sample_us) / 5
        };
        self.mean_duration_us.store(updated, Ordering::Relaxed);
    }

    /// The recent mean run time in milliseconds, once the task has run.
    pub fn recent_duration_ms(&self) -> Option<f64> {
        match self.mean_duration_us.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(micros as f64 / 1000.0),
        }
    }

    pub fn last_status(&self) -> Option<ExecutionStatus> {
        match self.last_status.load(Ordering::Relaxed) {
            0 => None,
            value => Some(status_from_u8(value - 1)),
        }
    }
}

fn status_to_u8(status: ExecutionStatus) -> u8 {
    match status {
        ExecutionStatus::Pending => 0,
        ExecutionStatus::Running => 1,
        ExecutionStatus::Completed => 2,
        ExecutionStatus::Failed => 3,
        ExecutionStatus::Cancelled => 4,
        ExecutionStatus::Timeout => 5,
    }
}

fn status_from_u8(value: u8) -> ExecutionStatus {
    match value {
        0 => ExecutionStatus::Pending,
        1 => ExecutionStatus::Running,
        2 => ExecutionStatus::Completed,
        3 => ExecutionStatus::Failed,
        4 => ExecutionStatus::Cancelled,
        _ => ExecutionStatus::Timeout,
    }
}

/// A registered, runnable task.
pub struct LoadedTask {
    pub record: TaskRecord,
    pub config: TaskConfig,
    /// The `spearlet.*` keys as registered, for comparing re-registrations.
    pub configuration_keys: BTreeMap<String, String>,
    pub runtime: TaskRuntime,
    /// The task's InstancePool; dropping the task (update or removal) retires it.
    pub pool: PoolHandle<InstanceRuntime>,
    /// The caps every call of this version runs under, from `config`.
    pub call_limits: CallLimits,
    pub counters: Arc<TaskCounters>,
    /// Milliseconds spent fetching, verifying, compiling and linking when this version loaded.
    pub load_ms: f64,
}

impl LoadedTask {
    /// Resolves a call's `function_name` (and, for an HTTP handler component, the method and
    /// path in its invocation `metadata`) to what it runs, or an `InvalidArgument` naming the
    /// field.
    pub fn resolve_call_target(
        &self,
        function_name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> SpearResult<CallTarget> {
        match &self.runtime {
            TaskRuntime::Component { component, .. } => Ok(CallTarget::Component(
                component.resolve_entry(function_name, metadata)?,
            )),
            TaskRuntime::Wasm { module, .. } => {
                let entry_point = module.resolve_entry_point(function_name)?;
                if entry_point == EntryPoint::Start
                    && self.config.pool.isolation == Isolation::Reuse
                {
                    return Err(SpearError::invalid_argument(format!(
                        "function_name {function_name:?}: task {:?} reuses instances \
                         (spearlet.isolation = reuse), which run named exports; a command's \
                         _start cannot run twice on one instance",
                        self.record.task_name
                    )));
                }
                Ok(CallTarget::Wasm(entry_point))
            }
            TaskRuntime::Process(process) => {
                if process.settings.mode == ProcessMode::Lambda
                    && !function_name.is_empty()
                    && function_name != process.handler
                {
                    return Err(SpearError::invalid_argument(format!(
                        "function_name {function_name:?}: task {:?} runs warm lambda workers for \
                         handler {:?} (spearlet.process.handler); a worker serves one handler",
                        self.record.task_name, process.handler
                    )));
                }
                Ok(CallTarget::Process)
            }
        }
    }

    /// Whether the task is a `wasi:http` handler component (served under
    /// `/v1/tasks/{name}/http/`).
    pub fn is_http_handler(&self) -> bool {
        matches!(&self.runtime, TaskRuntime::Component { component, .. }
            if component.world() == ComponentWorld::HttpHandler)
    }

    /// What the task can be asked to run, for listings: wasm exports or the lambda handler.
    pub fn callable_functions(&self) -> Vec<String> {
        match &self.runtime {
            TaskRuntime::Wasm { module, .. } => module.exported_functions().to_vec(),
            TaskRuntime::Component { component, .. } => component.callable_functions(),
            TaskRuntime::Process(process) if process.settings.mode == ProcessMode::Lambda => {
                vec![process.handler.clone()]
            }
            TaskRuntime::Process(_) => Vec::new(),
        }
    }
}

type InFlightLoad = Shared<BoxFuture<'static, SpearResult<LoadedWasm>>>;

#[derive(Default)]
struct RegistryState {
    tasks_by_id: foldhash::HashMap<String, Arc<LoadedTask>>,
    task_id_by_name: BTreeMap<String, String>,
    /// artifact id → version → digest.
    artifact_versions: HashMap<String, BTreeMap<String, String>>,
}

pub struct TaskRegistry {
    state: RwLock<RegistryState>,
    fetcher: ArtifactFetcher,
    engine: WasmEngine,
    store: Arc<DurableStore>,
    dispatcher: Dispatcher<InstanceRuntime>,
    process_runtime: ProcessRuntimeConfig,
    defaults: TaskConfigDefaults,
    modules_by_digest: Mutex<HashMap<String, LoadedWasm>>,
    loads_in_flight: Mutex<HashMap<String, InFlightLoad>>,
    /// Serialises commits and removals, so the rules decided under the read lock still hold
    /// when the entry is swapped in, without holding the state lock across the disk write.
    commits: tokio::sync::Mutex<()>,
    /// Cluster mode: registrations and removals are published to every node.
    cluster: Option<Arc<dyn ClusterTaskCatalog>>,
}

impl TaskRegistry {
    pub fn new(
        fetcher: ArtifactFetcher,
        engine: WasmEngine,
        store: Arc<DurableStore>,
        dispatcher: Dispatcher<InstanceRuntime>,
        process_runtime: ProcessRuntimeConfig,
        defaults: TaskConfigDefaults,
        cluster: Option<Arc<dyn ClusterTaskCatalog>>,
    ) -> TaskRegistry {
        TaskRegistry {
            state: RwLock::new(RegistryState::default()),
            fetcher,
            engine,
            store,
            dispatcher,
            process_runtime,
            defaults,
            modules_by_digest: Mutex::new(HashMap::new()),
            loads_in_flight: Mutex::new(HashMap::new()),
            commits: tokio::sync::Mutex::new(()),
            cluster,
        }
    }

    pub fn fetcher(&self) -> &ArtifactFetcher {
        &self.fetcher
    }

    /// A task by id, or by name when no task has that id.
    pub fn resolve(&self, id_or_name: &str) -> Option<Arc<LoadedTask>> {
        let state = self.state.read();
        if let Some(task) = state.tasks_by_id.get(id_or_name) {
            return Some(task.clone());
        }
        state
            .task_id_by_name
            .get(id_or_name)
            .and_then(|task_id| state.tasks_by_id.get(task_id))
            .cloned()
    }

    pub fn by_name(&self, task_name: &str) -> Option<Arc<LoadedTask>> {
        let state = self.state.read();
        state
            .task_id_by_name
            .get(task_name)
            .and_then(|task_id| state.tasks_by_id.get(task_id))
            .cloned()
    }

    /// Tasks ordered by name, after `start_after`, with the name prefix.
    pub fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> (Vec<Arc<LoadedTask>>, bool) {
        let state = self.state.read();
        let mut tasks: Vec<Arc<LoadedTask>> = state
            .task_id_by_name
            .range::<str, _>((
                std::ops::Bound::Excluded(start_after),
                std::ops::Bound::Unbounded,
            ))
            .filter(|(name, _)| name.starts_with(prefix))
            .take(limit + 1)
            .filter_map(|(_, task_id)| state.tasks_by_id.get(task_id).cloned())
            .collect();
        let has_more = tasks.len() > limit;
        tasks.truncate(limit);
        (tasks, has_more)
    }

    pub fn all(&self) -> Vec<Arc<LoadedTask>> {
        self.state.read().tasks_by_id.values().cloned().collect()
    }

    /// Distinct artifact contents currently loaded.
    pub fn artifact_count(&self) -> usize {
        let state = self.state.read();
        let digests: std::collections::HashSet<&str> = state
            .tasks_by_id
            .values()
            .map(|task| task.record.artifact.digest.as_str())
            .collect();
        digests.len()
    }

    /// Registers, updates or reuses the task named in `registration` (the NEW_TASK rules), in
    /// three steps: validate the request, load the artifact (fetch, verify, compile or unpack;
    /// no lock held), then commit under the naming and versioning rules.
    pub async fn register(
        &self,
        registration: TaskRegistration,
    ) -> SpearResult<(Arc<LoadedTask>, RegistrationOutcome)> {
        let load_started = Instant::now();
        let validated = self.validate(&registration)?;
        let artifact = self
            .fetcher
            .fetch(&registration.location, &registration.checksum)
            .await?;
        let runtime = self
            .load_runtime(
                &registration,
                &validated,
                &artifact.digest,
                artifact.bytes.clone(),
            )
            .await?;
        let load_ms = load_started.elapsed().as_secs_f64() * 1000.0;
        self.commit(
            registration,
            validated,
            artifact.digest,
            artifact.bytes,
            runtime,
            load_ms,
        )
        .await
    }

    /// Checks everything about a registration that needs no artifact: names, ids, the artifact
    /// type and the configuration keys for that runtime.
    fn validate(&self, registration: &TaskRegistration) -> SpearResult<ValidatedRegistration> {
        validate_task_name("task_name", &registration.task_name)?;
        if let Some(task_id) = &registration.requested_task_id {
            validate_id("task_id", task_id)?;
        }
        let runtime_kind = RuntimeKind::of_artifact_type(&registration.artifact_type)?;
        let default_handler = if registration.function_name.is_empty() {
            &registration.task_name
        } else {
            &registration.function_name
        };
        let mut metadata = registration.metadata.clone();
        let config =
            TaskConfig::for_runtime(&mut metadata, runtime_kind, default_handler, &self.defaults)?;
        if runtime_kind == RuntimeKind::Wasm
            && config.memory_limit_mb > self.engine.max_memory_limit_mb()
        {
            return Err(SpearError::invalid_argument(format!(
                "artifact_spec.metadata[\"spearlet.memory_limit_mb\"] = {} exceeds the node's \
                 wasm.max_memory_limit_mb ({})",
                config.memory_limit_mb,
                self.engine.max_memory_limit_mb()
            )));
        }
        let preopened_directories = self.resolve_preopens(&config)?;
        let configuration_keys = configuration_keys(&metadata);
        Ok(ValidatedRegistration {
            runtime_kind,
            metadata,
            config,
            preopened_directories,
            configuration_keys,
        })
    }

    /// Turns fetched, verified bytes into something runnable: a compiled and linked module, or
    /// an unpacked process artifact.
    async fn load_runtime(
        &self,
        registration: &TaskRegistration,
        validated: &ValidatedRegistration,
        digest: &str,
        bytes: bytes::Bytes,
    ) -> SpearResult<TaskRuntime> {
        match validated.runtime_kind {
            RuntimeKind::Process => Ok(TaskRuntime::Process(Arc::new(
                self.prepare_process(registration, &validated.config, digest, bytes)
                    .await?,
            ))),
            RuntimeKind::Wasm => {
                let settings = Arc::new(WasmTaskSettings {
                    environment: validated.config.environment.clone(),
                    preopened_directories: validated.preopened_directories.clone(),
                    allowed_outbound_hosts: Arc::new(
                        validated.config.allowed_outbound_hosts.clone(),
                    ),
                });
                match self.load_wasm(digest, bytes).await? {
                    LoadedWasm::Module(module) => {
                        if validated.config.pool.isolation == Isolation::Reuse {
                            module.check_reusable()?;
                        }
                        Ok(TaskRuntime::Wasm { module, settings })
                    }
                    LoadedWasm::Component(component) => {
                        // Refused when the task asks for reuse; a node default of reuse does not
                        // apply to components.
                        if validated.config.pool.isolation == Isolation::Reuse
                            && validated.metadata.contains_key("spearlet.isolation")
                        {
                            return Err(SpearError::invalid_argument(
                                "artifact_spec.metadata[\"spearlet.isolation\"] = reuse: the \
                                 artifact is a WASI 0.2 component, and a component instance \
                                 serves exactly one call (its command runs once; its HTTP \
                                 handler's resources belong to one request), so components \
                                 always run per_call",
                            ));
                        }
                        Ok(TaskRuntime::Component {
                            component,
                            settings,
                        })
                    }
                }
            }
        }
    }

    /// Applies the naming and versioning rules to a loaded registration and, unless it changes
    /// nothing, writes the task durably and installs it. One commit at a time; the state lock is
    /// held only to read the rules' inputs and to swap the entry, never across the disk write,
    /// which runs off the async workers.
    async fn commit(
        &self,
        registration: TaskRegistration,
        validated: ValidatedRegistration,
        digest: String,
        artifact_bytes: bytes::Bytes,
        runtime: TaskRuntime,
        load_ms: f64,
    ) -> SpearResult<(Arc<LoadedTask>, RegistrationOutcome)> {
        let _one_commit_at_a_time = self.commits.lock().await;
        let artifact_id = if registration.artifact_id.is_empty() {
            format!("sha256:{digest}")
        } else {
            registration.artifact_id.clone()
        };
        let decision = {
            let state = self.state.read();
            if registration.source == RegistrationSource::Cluster {
                // The cluster's bucket already applied the rules, cluster-wide.
                decide_cluster_installation(&state, &registration, &validated, &digest)
            } else {
                check_artifact_catalog(&state, &artifact_id, &registration.version, &digest)?;
                decide_registration(&state, &registration, &validated, &digest)?
            }
        };
        let (task_id, created_at_ms, counters, outcome) = match decision {
            RegistrationDecision::Unchanged(existing) => {
                return Ok((existing, RegistrationOutcome::Unchanged));
            }
            RegistrationDecision::Install {
                task_id,
                created_at_ms,
                counters,
                outcome,
            } => (task_id, created_at_ms, counters, outcome),
        };
        let now = unix_ms();
        let updated_at_ms = match registration.restored_timestamps {
            Some((_, updated_at_ms))
                if outcome == RegistrationOutcome::Created
                    || registration.source == RegistrationSource::Cluster =>
            {
                updated_at_ms
            }
            _ => now,
        };
        let mut task_record = TaskRecord {
            task_id,
            task_name: registration.task_name.clone(),
            description: registration.description.clone(),
            artifact: ArtifactRecord {
                artifact_id: artifact_id.clone(),
                artifact_type: validated.runtime_kind.as_str().to_owned(),
                location: registration.location.clone(),
                version: registration.version.clone(),
                checksum: registration.checksum.clone(),
                metadata: validated.metadata,
                digest: digest.clone(),
            },
            created_at_ms: created_at_ms.unwrap_or(now),
            updated_at_ms,
        };
        if let Some(cluster) = &self.cluster
            && matches!(
                registration.source,
                RegistrationSource::Client | RegistrationSource::Example
            )
        {
            match cluster
                .publish_task(task_record.clone(), artifact_bytes, registration.source)
                .await?
            {
                ClusterPublication::Accepted(published) => task_record = *published,
                ClusterPublication::Superseded => {
                    return Err(SpearError::already_exists(format!(
                        "task_name {:?}: the cluster holds other content under this name; \
                         its version is installed from the cluster",
                        registration.task_name
                    )));
                }
            }
        }
        // Adopting the cluster's id for a name this node knew under another id: the old row
        // goes with the new one written, or a restart would restore both.
        let replaced_id = self
            .state
            .read()
            .task_id_by_name
            .get(&task_record.task_name)
            .filter(|previous_id| **previous_id != task_record.task_id)
            .cloned();
        let store = self.store.clone();
        let written = task_record.clone();
        let replaced = replaced_id.clone();
        tokio::task::spawn_blocking(move || {
            store.put_task(&written)?;
            if let Some(previous_id) = &replaced {
                store.delete_task(previous_id)?;
            }
            Ok::<(), SpearError>(())
        })
        .await
        .map_err(|error| SpearError::internal(format!("recording the task panicked: {error}")))??;

        let config = validated.config;
        let factory: Arc<dyn InstanceFactory<InstanceRuntime>> = match &runtime {
            TaskRuntime::Wasm { module, settings } => Arc::new(WasmInstanceFactory::new(
                module.clone(),
                &config,
                settings.clone(),
            )),
            TaskRuntime::Component {
                component,
                settings,
            } => Arc::new(ComponentInstanceFactory {
                component: component.clone(),
                settings: settings.clone(),
            }),
            TaskRuntime::Process(process) => Arc::new(ProcessInstanceFactory {
                task: process.clone(),
                max_response_bytes: config.max_output_bytes,
                max_log_bytes: config.max_log_bytes,
            }),
        };
        let pool = self
            .dispatcher
            .add_pool(&task_record.task_id, config.pool, factory);
        let task = Arc::new(LoadedTask {
            pool,
            runtime,
            call_limits: CallLimits {
                memory_limit_bytes: u64::from(config.memory_limit_mb) * 1024 * 1024,
                max_output_bytes: config.max_output_bytes,
                max_log_bytes: config.max_log_bytes,
            },
            record: task_record,
            config,
            configuration_keys: validated.configuration_keys,
            counters,
            load_ms,
        });
        {
            let mut state = self.state.write();
            if let Some(previous_id) = &replaced_id {
                state.tasks_by_id.remove(previous_id);
            }
            state
                .artifact_versions
                .entry(task.record.artifact.artifact_id.clone())
                .or_default()
                .insert(task.record.artifact.version.clone(), digest);
            state
                .task_id_by_name
                .insert(task.record.task_name.clone(), task.record.task_id.clone());
            state
                .tasks_by_id
                .insert(task.record.task_id.clone(), task.clone());
        }
        tracing::info!(
            task_id = %task.record.task_id,
            task_name = %task.record.task_name,
            digest = %task.record.artifact.digest,
            ?outcome,
            load_ms,
            "task registered"
        );
        Ok((task, outcome))
    }

    /// Registers the tasks a previous run of the node recorded. Their artifacts come from the
    /// content cache (the checksum is the recorded digest) and their modules from the
    /// compiled-module cache, so this is cheap. A task that cannot be restored is logged and
    /// skipped; its record stays so a later start can try again.
    pub async fn restore(&self, tasks: Vec<TaskRecord>) -> usize {
        let mut restored = 0;
        for task in tasks {
            let registration = TaskRegistration {
                requested_task_id: Some(task.task_id.clone()),
                task_name: task.task_name.clone(),
                // The lambda handler, if any, was recorded in the metadata.
                function_name: String::new(),
                description: task.description.clone(),
                artifact_id: task.artifact.artifact_id.clone(),
                artifact_type: task.artifact.artifact_type.clone(),
                location: task.artifact.location.clone(),
                version: task.artifact.version.clone(),
                checksum: format!("sha256:{}", task.artifact.digest),
                metadata: task.artifact.metadata.clone(),
                restored_timestamps: Some((task.created_at_ms, task.updated_at_ms)),
                source: RegistrationSource::Restore,
            };
            match self.register(registration).await {
                Ok(_) => restored += 1,
                Err(error) => tracing::error!(
                    task_id = %task.task_id,
                    task_name = %task.task_name,
                    "could not restore task: {}",
                    error.message
                ),
            }
        }
        restored
    }

    /// Removes a task a client asked to delete, from every node in cluster mode; returns it
    /// when it existed.
    pub async fn remove(&self, task_id: &str) -> SpearResult<Option<Arc<LoadedTask>>> {
        self.remove_from(task_id, RegistrationSource::Client).await
    }

    /// Removes a task; returns it when it existed. A client's removal is withdrawn from the
    /// cluster first (if that fails nothing changes). The durable delete runs off the async
    /// workers, with no registry lock held.
    pub async fn remove_from(
        &self,
        task_id: &str,
        source: RegistrationSource,
    ) -> SpearResult<Option<Arc<LoadedTask>>> {
        let _one_commit_at_a_time = self.commits.lock().await;
        if let Some(cluster) = &self.cluster
            && source == RegistrationSource::Client
        {
            let task = self.state.read().tasks_by_id.get(task_id).cloned();
            if let Some(task) = task {
                cluster.withdraw_task(task.record.clone()).await?;
            }
        }
        let removed = {
            let mut state = self.state.write();
            let Some(task) = state.tasks_by_id.remove(task_id) else {
                return Ok(None);
            };
            state.task_id_by_name.remove(&task.record.task_name);
            let digest_still_used = state
                .tasks_by_id
                .values()
                .any(|other| other.record.artifact.digest == task.record.artifact.digest);
            if !digest_still_used {
                self.modules_by_digest
                    .lock()
                    .remove(&task.record.artifact.digest);
            }
            task
        };
        let store = self.store.clone();
        let task_id = task_id.to_owned();
        tokio::task::spawn_blocking(move || store.delete_task(&task_id))
            .await
            .map_err(|error| {
                SpearError::internal(format!("deleting the task panicked: {error}"))
            })??;
        Ok(Some(removed))
    }

    fn resolve_preopens(&self, config: &TaskConfig) -> SpearResult<Vec<(PathBuf, String)>> {
        config
            .preopened_directories
            .iter()
            .map(|(guest_directory, host_directory)| {
                let field =
                    format!("artifact_spec.metadata[\"spearlet.wasi.preopen.{guest_directory}\"]");
                let resolved = self
                    .fetcher
                    .allowed_roots()
                    .resolve(&field, std::path::Path::new(host_directory))?;
                if !resolved.is_dir() {
                    return Err(SpearError::invalid_argument(format!(
                        "{field}: {host_directory} is not a directory"
                    )));
                }
                Ok((resolved, guest_directory.clone()))
            })
            .collect()
    }

    /// Compiles and links the module with this digest once, however many requests ask.
    /// Unpacks a process artifact (once per digest) and resolves how its processes run.
    async fn prepare_process(
        &self,
        registration: &TaskRegistration,
        config: &TaskConfig,
        digest: &str,
        bytes: bytes::Bytes,
    ) -> SpearResult<ProcessTask> {
        let format_key = "artifact_spec.metadata[\"spearlet.process.format\"]";
        let format = ProcessArtifactFormat::parse(&config.process.format).ok_or_else(|| {
            SpearError::invalid_argument(format!(
                "{format_key} = {:?} is not one of auto, exe, zip, tar.gz",
                config.process.format
            ))
        })?;
        let run_as = match config
            .process
            .run_as
            .as_ref()
            .or(self.process_runtime.default_run_as.as_ref())
        {
            Some(text) => Some(RunAs::parse(text)?),
            None => None,
        };
        let unpack_directory = self.process_runtime.unpack_directory.clone();
        let digest_owned = digest.to_owned();
        let entrypoint = config.process.entrypoint.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            prepare_process_artifact(
                &bytes,
                &digest_owned,
                format,
                &entrypoint,
                &unpack_directory,
                &UnpackLimits::default(),
            )
        })
        .await
        .map_err(|error| SpearError::internal(format!("unpacking panicked: {error}")))??;
        let handler = config
            .process
            .handler
            .clone()
            .unwrap_or_else(|| registration.task_name.clone());
        Ok(ProcessTask {
            root: prepared.root,
            entrypoint: prepared.entrypoint,
            settings: config.process.clone(),
            environment: config.environment.clone(),
            memory_limit_mb: config.memory_limit_mb,
            limits: ProcessLimits {
                memory_limit_mb: config.memory_limit_mb,
                max_pids: config.process.max_pids,
                address_space_mb: config.process.address_space_mb,
                cpu_seconds: config.process.cpu_seconds,
                max_open_files: config.process.max_open_files,
                run_as,
            },
            handler,
            workdir_base: self.process_runtime.workdir_base.clone(),
            task_name: registration.task_name.clone(),
            version: if registration.version.is_empty() {
                "$LATEST".into()
            } else {
                registration.version.clone()
            },
            function_arn: format!(
                "arn:aws:lambda:spearlet:000000000000:function:{}",
                registration.task_name
            ),
        })
    }

    async fn load_wasm(&self, digest: &str, bytes: bytes::Bytes) -> SpearResult<LoadedWasm> {
        if let Some(module) = self.modules_by_digest.lock().get(digest) {
            return Ok(module.clone());
        }
        let shared = {
            let mut in_flight = self.loads_in_flight.lock();
            if let Some(existing) = in_flight.get(digest) {
                existing.clone()
            } else {
                let engine = self.engine.clone();
                let digest_owned = digest.to_owned();
                let future = async move {
                    tokio::task::spawn_blocking(move || engine.load(&digest_owned, &bytes))
                        .await
                        .map_err(|error| {
                            SpearError::internal(format!("module compilation panicked: {error}"))
                        })?
                }
                .boxed()
                .shared();
                in_flight.insert(digest.to_owned(), future.clone());
                future
            }
        };
        let result = shared.await;
        self.loads_in_flight.lock().remove(digest);
        if let Ok(module) = &result {
            self.modules_by_digest
                .lock()
                .insert(digest.to_owned(), module.clone());
        }
        result
    }
}

/// A registration whose request is valid, before its artifact is loaded.
struct ValidatedRegistration {
    runtime_kind: RuntimeKind,
    /// The request's metadata plus what the runtime records (a lambda task's handler).
    metadata: BTreeMap<String, String>,
    config: TaskConfig,
    preopened_directories: Vec<(PathBuf, String)>,
    /// The `spearlet.*` keys, for comparing re-registrations.
    configuration_keys: BTreeMap<String, String>,
}

/// What the naming and versioning rules decided for a loaded registration.
enum RegistrationDecision {
    /// The task already exists with the same artifact and configuration.
    Unchanged(Arc<LoadedTask>),
    /// Install the task under `task_id`: a new task, or a new version of an existing one
    /// (which keeps its creation time and counters).
    Install {
        task_id: String,
        created_at_ms: Option<i64>,
        counters: Arc<TaskCounters>,
        outcome: RegistrationOutcome,
    },
}

/// A task from the cluster's bucket, under the bucket's id: it replaces whatever this node has
/// under that name (keeping its counters when the id is the same).
fn decide_cluster_installation(
    state: &RegistryState,
    registration: &TaskRegistration,
    validated: &ValidatedRegistration,
    digest: &str,
) -> RegistrationDecision {
    let task_id = registration
        .requested_task_id
        .clone()
        .expect("a task from the cluster carries its id");
    let existing = state.tasks_by_id.get(&task_id);
    if let Some(existing) = existing
        && existing.record.artifact.digest == digest
        && existing.record.artifact.version == registration.version
        && existing.configuration_keys == validated.configuration_keys
    {
        // This node published it itself, or installed it already.
        return RegistrationDecision::Unchanged(existing.clone());
    }
    RegistrationDecision::Install {
        created_at_ms: registration
            .restored_timestamps
            .map(|(created_at_ms, _)| created_at_ms),
        counters: existing
            .map(|task| task.counters.clone())
            .unwrap_or_default(),
        outcome: if existing.is_some() {
            RegistrationOutcome::Updated
        } else {
            RegistrationOutcome::Created
        },
        task_id,
    }
}

/// The NEW_TASK rules: a new name creates a task; an existing name with the same artifact and
/// configuration is unchanged; different content needs a newer version (the same version is
/// ALREADY_EXISTS, an older one FAILED_PRECONDITION); a requested task id must match.
fn decide_registration(
    state: &RegistryState,
    registration: &TaskRegistration,
    validated: &ValidatedRegistration,
    digest: &str,
) -> SpearResult<RegistrationDecision> {
    let existing = state
        .task_id_by_name
        .get(&registration.task_name)
        .and_then(|task_id| state.tasks_by_id.get(task_id));
    let Some(existing) = existing else {
        let task_id = match &registration.requested_task_id {
            Some(task_id) if state.tasks_by_id.contains_key(task_id) => {
                return Err(SpearError::already_exists(format!(
                    "task_id {task_id:?} is already used by another task"
                )));
            }
            Some(task_id) => task_id.clone(),
            None => random_id("task", rand::random()),
        };
        return Ok(RegistrationDecision::Install {
            task_id,
            created_at_ms: registration
                .restored_timestamps
                .map(|(created_at_ms, _)| created_at_ms),
            counters: Arc::new(TaskCounters::default()),
            outcome: RegistrationOutcome::Created,
        });
    };
    if let Some(requested) = &registration.requested_task_id
        && requested != &existing.record.task_id
    {
        return Err(SpearError::already_exists(format!(
            "task_name {:?} is already registered under task_id {:?}",
            registration.task_name, existing.record.task_id
        )));
    }
    let same_artifact = existing.record.artifact.digest == digest;
    let same_config = existing.configuration_keys == validated.configuration_keys;
    if same_artifact && same_config {
        return Ok(RegistrationDecision::Unchanged(existing.clone()));
    }
    let existing_version = &existing.record.artifact.version;
    if !same_artifact {
        match compare_versions(&registration.version, existing_version) {
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => {
                return Err(SpearError::already_exists(format!(
                    "task {:?} already has artifact version {:?} with digest sha256:{}; \
                     different content (sha256:{digest}) needs a new artifact_spec.version",
                    registration.task_name, existing_version, existing.record.artifact.digest,
                )));
            }
            std::cmp::Ordering::Less => {
                return Err(SpearError::failed_precondition(format!(
                    "artifact_spec.version {:?} is older than the registered version {:?} of \
                     task {:?}",
                    registration.version, existing_version, registration.task_name
                )));
            }
        }
    }
    Ok(RegistrationDecision::Install {
        task_id: existing.record.task_id.clone(),
        created_at_ms: Some(existing.record.created_at_ms),
        counters: existing.counters.clone(),
        outcome: RegistrationOutcome::Updated,
    })
}

fn check_artifact_catalog(
    state: &RegistryState,
    artifact_id: &str,
    version: &str,
    digest: &str,
) -> SpearResult<()> {
    let Some(versions) = state.artifact_versions.get(artifact_id) else {
        return Ok(());
    };
    match versions.get(version) {
        Some(registered) if registered != digest => Err(SpearError::already_exists(format!(
            "artifact_spec.artifact_id {artifact_id:?} version {version:?} is registered with \
             digest sha256:{registered}; this content is sha256:{digest}; give it a new \
             artifact_spec.version"
        ))),
        _ => Ok(()),
    }
}

/// Compares versions numerically part by part when both look like `1.2.3`, else as text.
pub fn compare_versions(left: &str, right: &str) -> std::cmp::Ordering {
    let numeric = |version: &str| -> Option<Vec<u64>> {
        version
            .trim_start_matches('v')
            .split('.')
            .map(|part| part.parse::<u64>().ok())
            .collect()
    };
    match (numeric(left), numeric(right)) {
        (Some(left_parts), Some(right_parts)) => left_parts.cmp(&right_parts),
        _ => left.cmp(right),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_compare_numerically_when_they_can() {
        let table = [
            ("2", "10", Less),
            ("1.10.0", "1.9.3", Greater),
            ("v2.0", "2.0", Equal),
            ("", "1", Less),
            ("beta", "alpha", Greater),
        ];
        for (left, right, expected) in table {
            assert_eq!(compare_versions(left, right), expected, "{left} vs {right}");
        }
    }
}
