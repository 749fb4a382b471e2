//! The on-disk cache of compiled modules, so a restart does not recompile.
//!
//! Files are `<directory>/<engine-compatibility-hash>/<sha256>.cwasm`: a different wasmtime
//! version or engine configuration gets a different folder, so an incompatible artifact is never
//! even opened. Writes go to a temporary file that is renamed into place, so a reader never sees
//! a half-written file.
//!
//! This is the only module of the crate with `unsafe`: loading precompiled machine code.

#![allow(unsafe_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use spearlet_core::{SpearError, SpearResult};
use wasmtime::{Engine, Module};

use crate::engine::compile;
use crate::module::CompileSource;

pub(crate) struct CompiledModuleCache {
    directory: PathBuf,
}

impl CompiledModuleCache {
    pub(crate) fn open(engine: &Engine, root: &Path) -> SpearResult<CompiledModuleCache> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let directory = root.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&directory).map_err(|error| {
            SpearError::internal(format!(
                "creating the compiled-module cache {}: {error}",
                directory.display()
            ))
        })?;
        Ok(CompiledModuleCache { directory })
    }

    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        wasm_bytes: &[u8],
    ) -> SpearResult<(Module, CompileSource)> {
        let path = self.directory.join(format!("{digest}.cwasm"));
        if path.exists() {
            // SAFETY: wasmtime requires that the file was produced by `Module::serialize` of a
            // compatible engine and was not tampered with. We write these files ourselves (below)
            // into the node's own data directory, under a folder keyed by the engine's
            // compatibility hash, and only ever rename complete files into place. The data
            // directory is trusted like the node binary itself.
            match unsafe { Module::deserialize_file(engine, &path) } {
                Ok(module) => return Ok((module, CompileSource::DiskCache)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable compiled module: {error:#}");
                }
            }
        }
        let module = compile(engine, wasm_bytes)?;
        if let Err(error) = self.store(&path, &module) {
            tracing::warn!(path = %path.display(), "could not cache compiled module: {error:#}");
        }
        Ok((module, CompileSource::Compiled))
    }

    fn store(&self, path: &Path, module: &Module) -> anyhow::Result<()> {
        let serialized = module.serialize()?;
        static NEXT_TEMPORARY: AtomicU64 = AtomicU64::new(0);
        let temporary = path.with_extension(format!(
            "tmp-{}-{}",
            std::process::id(),
            NEXT_TEMPORARY.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&temporary, serialized)?;
        std::fs::rename(&temporary, path)?;
        Ok(())
    }
}
