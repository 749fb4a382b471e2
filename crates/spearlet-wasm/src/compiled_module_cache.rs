//! The on-disk cache of compiled modules and components, so a restart does not recompile.
//!
//! Files are `<directory>/<engine-compatibility-hash>/<sha256>.cwasm` for core modules and
//! `<sha256>.component.cwasm` for components: a different wasmtime version or engine
//! configuration gets a different folder, so an incompatible artifact is never even opened, and
//! the two kinds never read each other's files. Writes go to a temporary file that is renamed
//! into place, so a reader never sees a half-written file.
//!
//! This is the only module of the crate with `unsafe`: loading precompiled machine code.

#![allow(unsafe_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use spearlet_core::{SpearError, SpearResult};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::module::CompileSource;

/// What the cache holds: a compiled core module or a compiled component.
pub(crate) trait CompiledArtifact: Sized {
    /// The file name after the digest.
    const FILE_SUFFIX: &'static str;

    /// Compiles `wasm_bytes` (binary or text format); malformed input is `InvalidArgument`.
    fn compile(engine: &Engine, wasm_bytes: &[u8]) -> SpearResult<Self>;

    /// Loads a file this cache wrote.
    ///
    /// # Safety
    /// `path` must hold the output of [`CompiledArtifact::serialize`] of a compatible engine,
    /// untampered with.
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self>;

    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
}

impl CompiledArtifact for wasmtime::Module {
    const FILE_SUFFIX: &'static str = "cwasm";

    fn compile(engine: &Engine, wasm_bytes: &[u8]) -> SpearResult<Self> {
        wasmtime::Module::new(engine, wasm_bytes).map_err(|error| {
            SpearError::invalid_argument(format!(
                "artifact is not a valid WebAssembly module: {error:#}"
            ))
        })
    }

    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { wasmtime::Module::deserialize_file(engine, path) }
    }

    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        wasmtime::Module::serialize(self)
    }
}

impl CompiledArtifact for Component {
    const FILE_SUFFIX: &'static str = "component.cwasm";

    fn compile(engine: &Engine, wasm_bytes: &[u8]) -> SpearResult<Self> {
        Component::new(engine, wasm_bytes).map_err(|error| {
            SpearError::invalid_argument(format!(
                "artifact is not a valid WebAssembly component: {error:#}"
            ))
        })
    }

    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { Component::deserialize_file(engine, path) }
    }

    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Component::serialize(self)
    }
}

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

    pub(crate) fn load_or_compile<Artifact: CompiledArtifact>(
        &self,
        engine: &Engine,
        digest: &str,
        wasm_bytes: &[u8],
    ) -> SpearResult<(Artifact, CompileSource)> {
        let path = self
            .directory
            .join(format!("{digest}.{}", Artifact::FILE_SUFFIX));
        if path.exists() {
            // SAFETY: wasmtime requires that the file was produced by `serialize` of a
            // compatible engine and was not tampered with. We write these files ourselves (below)
            // into the node's own data directory, under a folder keyed by the engine's
            // compatibility hash, with a suffix per artifact kind, and only ever rename complete
            // files into place. The data directory is trusted like the node binary itself.
            match unsafe { Artifact::deserialize_file(engine, &path) } {
                Ok(artifact) => return Ok((artifact, CompileSource::DiskCache)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable compiled artifact: {error:#}");
                }
            }
        }
        let artifact = Artifact::compile(engine, wasm_bytes)?;
        if let Err(error) = self.store(&path, &artifact) {
            tracing::warn!(path = %path.display(), "could not cache compiled artifact: {error:#}");
        }
        Ok((artifact, CompileSource::Compiled))
    }

    fn store<Artifact: CompiledArtifact>(
        &self,
        path: &Path,
        artifact: &Artifact,
    ) -> anyhow::Result<()> {
        let serialized = artifact
            .serialize()
            .map_err(|error| anyhow::anyhow!("{error:#}"))?;
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
