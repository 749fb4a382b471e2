//! The shared wasmtime `Engine`: configuration, the epoch ticker and module compilation.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use spearlet_core::{SpearError, SpearResult};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Linker, PoolingAllocationConfig};

use crate::compiled_module_cache::CompiledModuleCache;
use crate::module::{CompileSource, GuestState, WasmModule};

/// Bytes of each linear memory kept resident between calls and reset with memset. Typical
/// Rust and C guests start with 1–2 MiB of memory; beyond this, memory is returned to the OS.
const LINEAR_MEMORY_KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;
/// Bytes of each table kept resident between calls.
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;
/// Slot decommits gathered into one batch of madvise calls.
const DECOMMIT_BATCH_SIZE: usize = 32;

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
            .total_core_instances(config.max_instances)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .total_stacks(config.max_instances)
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

    /// Compiles (or loads from the disk cache) and links the module whose content has the given
    /// sha256 `digest`. CPU-heavy: call it from a blocking thread. Malformed modules and modules
    /// importing anything but WASI preview1 are `InvalidArgument`.
    pub fn load_module(&self, digest: &str, wasm_bytes: &[u8]) -> SpearResult<WasmModule> {
        let (module, source) = match &self.inner.compiled_module_cache {
            Some(cache) => cache.load_or_compile(&self.inner.engine, digest, wasm_bytes)?,
            None => (
                compile(&self.inner.engine, wasm_bytes)?,
                CompileSource::Compiled,
            ),
        };
        WasmModule::link(&self.inner.engine, &self.inner.linker, module, source)
    }
}

/// Compiles `wasm_bytes` (binary or text format).
pub(crate) fn compile(engine: &Engine, wasm_bytes: &[u8]) -> SpearResult<wasmtime::Module> {
    wasmtime::Module::new(engine, wasm_bytes).map_err(|error| {
        SpearError::invalid_argument(format!(
            "artifact is not a valid WebAssembly module: {error:#}"
        ))
    })
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
