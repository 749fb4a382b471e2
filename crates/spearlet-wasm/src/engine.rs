//! The shared wasmtime `Engine`: configuration, the epoch ticker and module compilation.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use spearlet_core::{SpearError, SpearResult};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Linker, PoolingAllocationConfig};

use crate::compiled_module_cache::{CompiledArtifact, CompiledModuleCache};
use crate::component::{ComponentState, WasmComponent, component_linker, is_component};
use crate::module::{CompileSource, GuestState, WasmModule};

/// Bytes of each linear memory kept resident between calls and reset with memset. Typical
/// Rust and C guests start with 1–2 MiB of memory; beyond this, memory is returned to the OS.
const LINEAR_MEMORY_KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;
/// Bytes of each table kept resident between calls.
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;
/// Slot decommits gathered into one batch of madvise calls.
const DECOMMIT_BATCH_SIZE: usize = 32;

// Components share the engine and its pool. A Rust component holds a few core instances (its
// code plus the WASI adapter's shims); a Python (componentize-py) or JavaScript
// (componentize-js) one about ten, with two or three linear memories and tables of tens of
// thousands of elements. Each slot only reserves address space until used, so the pool is sized
// for the large ones: per instance slot, up to CORE_INSTANCES_PER_SLOT core instances and
// MEMORIES_PER_SLOT memories node-wide.
/// Core instances (and their vmctx slots) per instance slot, node-wide.
const CORE_INSTANCES_PER_SLOT: u32 = 4;
/// Linear memories per instance slot, node-wide.
const MEMORIES_PER_SLOT: u32 = 2;
/// Tables per instance slot, node-wide.
const TABLES_PER_SLOT: u32 = 4;
/// Core instances one component may hold (componentize-py: about ten).
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Linear memories one component may hold.
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
/// Tables one component may hold.
const MAX_TABLES_PER_COMPONENT: u32 = 16;
/// Elements per table (the interpreter runtimes inside componentize-py and componentize-js
/// guests need more than wasmtime's default of 20 000).
const MAX_TABLE_ELEMENTS: usize = 200_000;
/// The vmctx of one component instance (its metadata, not its memories).
const MAX_COMPONENT_INSTANCE_SIZE: usize = 16 * 1024 * 1024;

/// Node-wide settings of the WebAssembly engine.
#[derive(Clone, Debug)]
pub struct WasmEngineConfig {
    /// How many wasm instances may be alive at once across all tasks. Each slot reserves virtual
    /// address space for one linear memory (`max_memory_limit_mb` plus guard pages) up front, but
    /// commits no physical memory until used. 1000 slots of 4 GiB reserve about 4 TiB of the
    /// 128 TiB x86-64 user address space; more slots cost nothing else, fewer bound concurrency.
    pub max_instances: u32,
    /// The largest `spearlet.memory_limit_mb` a task may ask for, in MiB. The pooling allocator
    /// sizes every memory slot for it.
    pub max_memory_limit_mb: u32,
    /// Period of the epoch ticker. Busy guests yield to the scheduler once per tick, so this
    /// bounds how late a timeout or cancellation lands; each tick costs one atomic increment plus
    /// one yield per running guest. 2 ms keeps stop latency far below the 50 ms target.
    pub epoch_tick: Duration,
    /// Where compiled modules are cached across restarts (`None` = no disk cache).
    pub compiled_module_cache_directory: Option<PathBuf>,
}

impl Default for WasmEngineConfig {
    fn default() -> WasmEngineConfig {
        WasmEngineConfig {
            max_instances: 1000,
            max_memory_limit_mb: 4096,
            epoch_tick: Duration::from_millis(2),
            compiled_module_cache_directory: None,
        }
    }
}

/// The node's WebAssembly engine. Cheap to clone; clones share the engine, linker and caches.
#[derive(Clone)]
pub struct WasmEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    linker: Linker<GuestState>,
    component_linker: wasmtime::component::Linker<ComponentState>,
    compiled_module_cache: Option<CompiledModuleCache>,
    max_memory_limit_mb: u32,
    epoch_ticker_stop: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.epoch_ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl WasmEngine {
    pub fn new(config: &WasmEngineConfig) -> SpearResult<WasmEngine> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(CORE_INSTANCES_PER_SLOT))
            .total_memories(config.max_instances.saturating_mul(MEMORIES_PER_SLOT))
            .total_tables(config.max_instances.saturating_mul(TABLES_PER_SLOT))
            .total_stacks(config.max_instances)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_component_instance_size(MAX_COMPONENT_INSTANCE_SIZE)
            .max_memory_size(config.max_memory_limit_mb as usize * 1024 * 1024)
            // Resetting a freed slot with madvise makes the kernel shoot down TLB entries on
            // every core (IPIs) and the next call page-faults the memory back in; profiles of
            // warm echo calls were dominated by exactly that. Instead, keep the low part of
            // each memory resident and reset it with memset (only the pages actually touched,
            // where the kernel has PAGEMAP_SCAN), and batch the madvise calls that remain.
            .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT_BYTES)
            .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .decommit_batch_size(DECOMMIT_BATCH_SIZE);
        let mut wasmtime_config = Config::new();
        wasmtime_config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasmtime_config).map_err(|error| {
            SpearError::internal(format!("creating the wasm engine: {error:#}"))
        })?;

        let mut linker: Linker<GuestState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut GuestState| {
            &mut state.wasi
        })
        .map_err(|error| SpearError::internal(format!("linking WASI: {error:#}")))?;

        let component_linker = component_linker(&engine)?;

        let compiled_module_cache = match &config.compiled_module_cache_directory {
            Some(directory) => Some(CompiledModuleCache::open(&engine, directory)?),
            None => None,
        };

        let epoch_ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), config.epoch_tick, epoch_ticker_stop.clone())?;

        Ok(WasmEngine {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                component_linker,
                compiled_module_cache,
                max_memory_limit_mb: config.max_memory_limit_mb,
                epoch_ticker_stop,
            }),
        })
    }

    /// The largest memory limit a task may configure, in MiB.
    pub fn max_memory_limit_mb(&self) -> u32 {
        self.inner.max_memory_limit_mb
    }

    /// Compiles (or loads from the disk cache) and links the artifact whose content has the
    /// given sha256 `digest`: a core module or a component, told apart by its header.
    /// CPU-heavy: call it from a blocking thread. Malformed artifacts, modules importing anything
    /// but WASI preview 1 and components importing anything but WASI 0.2 and wasi:http are
    /// `InvalidArgument`.
    pub fn load(&self, digest: &str, wasm_bytes: &[u8]) -> SpearResult<LoadedWasm> {
        if is_component(wasm_bytes) {
            let (component, source) = self.compile::<Component>(digest, wasm_bytes)?;
            return WasmComponent::link(
                &self.inner.engine,
                &self.inner.component_linker,
                component,
                source,
            )
            .map(LoadedWasm::Component);
        }
        let (module, source) = self.compile::<wasmtime::Module>(digest, wasm_bytes)?;
        WasmModule::link(&self.inner.engine, &self.inner.linker, module, source)
            .map(LoadedWasm::Module)
    }

    /// Compiles and links a core module (see [`WasmEngine::load`]); a component is
    /// `InvalidArgument`.
    pub fn load_module(&self, digest: &str, wasm_bytes: &[u8]) -> SpearResult<WasmModule> {
        match self.load(digest, wasm_bytes)? {
            LoadedWasm::Module(module) => Ok(module),
            LoadedWasm::Component(_) => Err(SpearError::invalid_argument(
                "artifact is a WebAssembly component, not a core module",
            )),
        }
    }

    fn compile<Artifact: CompiledArtifact>(
        &self,
        digest: &str,
        wasm_bytes: &[u8],
    ) -> SpearResult<(Artifact, CompileSource)> {
        match &self.inner.compiled_module_cache {
            Some(cache) => cache.load_or_compile(&self.inner.engine, digest, wasm_bytes),
            None => Ok((
                Artifact::compile(&self.inner.engine, wasm_bytes)?,
                CompileSource::Compiled,
            )),
        }
    }
}

/// A loaded wasm artifact: a core module (WASI preview 1) or a component (WASI 0.2).
#[derive(Clone, Debug)]
pub enum LoadedWasm {
    Module(WasmModule),
    Component(WasmComponent),
}

/// One thread for the whole node advances the epoch; stores decide per tick whether to yield.
/// A thread per call would cost a thread spawn on every invocation (wasmtime issue 11814).
fn spawn_epoch_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) -> SpearResult<()> {
    std::thread::Builder::new()
        .name("spearlet-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
        .map_err(|error| SpearError::internal(format!("spawning the epoch ticker: {error}")))
}
