//! Artifacts: turning an `ArtifactSpec` location into verified bytes on local disk.
//!
//! Architecture invariants:
//! - Nothing is used or cached before its sha256 matches the requested checksum.
//! - The cache is content-addressed (`<data>/artifacts/sha256/<hex>`), written by rename so a
//!   reader never sees a partial file, and the same location is fetched once even when many
//!   requests ask for it at the same moment (single-flight).
//! - `file://` locations are confined to the configured allowed roots; `..` and symlinks out of
//!   the roots are refused. The same check guards WASI preopened directories.
//! - This crate knows nothing about WebAssembly or tasks: it deals in bytes and digests.

#![forbid(unsafe_code)]

mod allowed_roots;
mod fetcher;
mod location;

pub use allowed_roots::AllowedRoots;
pub use fetcher::{ArtifactFetcher, ArtifactFetcherConfig, CacheStats, FetchedArtifact};
pub use location::{ArtifactLocation, parse_checksum, sha256_hex};
