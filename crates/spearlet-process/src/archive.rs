//! Process artifacts on disk: one executable, or a zip / tar.gz archive holding one, unpacked once
//! per content digest into the artifact cache.
//!
//! The format comes from `spearlet.process.format` (`auto` | `exe` | `zip` | `tar.gz`). `auto`
//! looks at the first bytes, never at a file name: gzip (`1F 8B`) is a tar.gz, `PK\x03\x04` a
//! zip, ELF (`\x7FELF`) or a `#!` script a single executable. The entrypoint comes from
//! `spearlet.process.entrypoint` (default `bootstrap`, as for AWS Lambda custom runtimes).
//!
//! Layout: every way of unpacking one digest gets its own directory under
//! `<cache_directory>/<digest>/`: `zip`, `tar-gz`, or, for a single executable,
//! `exe-<entrypoint, percent-escaped>` (the file is stored under the entrypoint's name, so the
//! same bytes asked for under another name land in another directory). That directory is the
//! artifact root (`LAMBDA_TASK_ROOT`).
//!
//! Invariants:
//! - An artifact root that exists is complete and never changes: it is built in a staging
//!   directory next to it (`.unpack-*`) and renamed into place in one step. When two callers race,
//!   the loser deletes its staging directory and uses the winner's root.
//! - Nothing is written outside the staging directory. Entry paths must be relative and free of
//!   `..`; every parent directory of an entry must be a real directory (symlinks are never
//!   followed while writing); symlink targets must stay inside the root (see
//!   `check_symlink_target`); hard links must name a regular file already unpacked; devices and
//!   fifos are refused. A refusal is `INVALID_ARGUMENT` naming the entry.
//! - [`UnpackLimits`] are enforced on bytes actually written and entries actually seen, never on
//!   sizes an archive header claims, so a decompression bomb stops at the cap.
//! - File modes are kept except setuid, setgid and sticky bits; directories keep their modes but
//!   always give their owner (the node) `rwx`, so the node can always delete its cache.
//! - Blocking: callers run [`prepare_process_artifact`] on a blocking thread.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use spearlet_core::{SpearError, SpearResult};

/// The metadata key (and its place in the request) that chooses the format, as errors name it.
const FORMAT_FIELD: &str = r#"artifact_spec.metadata["spearlet.process.format"]"#;

/// The metadata key that names the entrypoint, as errors name it.
const ENTRYPOINT_FIELD: &str = r#"artifact_spec.metadata["spearlet.process.entrypoint"]"#;

/// The entrypoint when `spearlet.process.entrypoint` is absent, as for Lambda custom runtimes.
pub const DEFAULT_ENTRYPOINT: &str = "bootstrap";

const GZIP_MAGIC: &[u8] = &[0x1F, 0x8B];
const ZIP_LOCAL_FILE_MAGIC: &[u8] = b"PK\x03\x04";
const ELF_MAGIC: &[u8] = b"\x7FELF";
const SCRIPT_MAGIC: &[u8] = b"#!";

/// The longest symlink target accepted, in bytes (Linux `PATH_MAX`).
const MAX_SYMLINK_TARGET_BYTES: u64 = 4096;

/// How many top-level names an "entrypoint not found" error lists.
const MAX_LISTED_ROOT_ENTRIES: usize = 20;

/// The file-type bits of a unix mode (`S_IFMT`) and the types an archive may hold.
const FILE_TYPE_MASK: u32 = 0o170_000;
const FILE_TYPE_REGULAR: u32 = 0o100_000;

/// The permission bits kept from an archive: setuid, setgid and sticky are dropped.
const KEPT_PERMISSION_BITS: u32 = 0o777;

/// How a process artifact's bytes are laid out (`spearlet.process.format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessArtifactFormat {
    /// Decide from the first bytes ([`sniff_format`]).
    Auto,
    /// One executable file (ELF binary or `#!` script), stored with mode 0755.
    Executable,
    /// A zip archive.
    Zip,
    /// A gzip-compressed tar archive.
    TarGz,
}

impl ProcessArtifactFormat {
    /// Parses the metadata value: `auto`, `exe`, `zip` or `tar.gz`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Self::Auto),
            "exe" => Some(Self::Executable),
            "zip" => Some(Self::Zip),
            "tar.gz" => Some(Self::TarGz),
            _ => None,
        }
    }

    /// The metadata value of this format; [`ProcessArtifactFormat::parse`] reads it back.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Executable => "exe",
            Self::Zip => "zip",
            Self::TarGz => "tar.gz",
        }
    }
}

/// What `auto` finds in the bytes; never [`ProcessArtifactFormat::Auto`].
///
/// Empty bytes and bytes of no known kind are `INVALID_ARGUMENT` naming the format field.
pub fn sniff_format(bytes: &[u8]) -> SpearResult<ProcessArtifactFormat> {
    if bytes.is_empty() {
        return Err(SpearError::invalid_argument(format!(
            "{FORMAT_FIELD} is \"auto\" but the artifact is empty (0 bytes)"
        )));
    }
    if let Some(format) = recognised_format(bytes) {
        return Ok(format);
    }
    Err(SpearError::invalid_argument(format!(
        "{FORMAT_FIELD} is \"auto\" but the artifact starts with bytes {}, which are none of: \
         ELF (7f 45 4c 46) or \"#!\" (a single executable), gzip (1f 8b, a tar.gz) or \
         zip (50 4b 03 04); set the format explicitly to \"exe\", \"zip\" or \"tar.gz\"",
        hex_prefix(bytes)
    )))
}

/// The format the magic bytes announce, if any.
fn recognised_format(bytes: &[u8]) -> Option<ProcessArtifactFormat> {
    if bytes.starts_with(GZIP_MAGIC) {
        Some(ProcessArtifactFormat::TarGz)
    } else if bytes.starts_with(ZIP_LOCAL_FILE_MAGIC) {
        Some(ProcessArtifactFormat::Zip)
    } else if bytes.starts_with(ELF_MAGIC) || bytes.starts_with(SCRIPT_MAGIC) {
        Some(ProcessArtifactFormat::Executable)
    } else {
        None
    }
}

/// The first (up to) eight bytes in hex, for error messages.
fn hex_prefix(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    shown.join(" ")
}

/// Caps on what one archive may unpack to. Checked against entries seen and bytes written, not
/// against what headers claim.
#[derive(Clone, Debug)]
pub struct UnpackLimits {
    /// Total uncompressed bytes of all files (default 512 MiB). The single-executable format is
    /// held to it too. Large enough for any function bundle Lambda accepts unzipped (250 MiB),
    /// small enough that a decompression bomb cannot fill the cache disk.
    pub max_total_bytes: u64,
    /// Entries of any kind: files, directories, links (default 10 000). Bounds the inode use and
    /// the time spent per archive.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_total_bytes: 512 * 1024 * 1024,
            max_entries: 10_000,
        }
    }
}

/// An artifact unpacked on disk.
#[derive(Clone, Debug)]
pub struct PreparedProcessArtifact {
    /// The artifact root, `LAMBDA_TASK_ROOT` (`<cache_directory>/<digest>/<format tag>`).
    pub root: PathBuf,
    /// The entrypoint: a regular, owner-executable file under `root` (it may be a symlink that
    /// resolves inside `root`).
    pub entrypoint: PathBuf,
    /// The format the bytes were unpacked as; never [`ProcessArtifactFormat::Auto`].
    pub format: ProcessArtifactFormat,
}

/// Unpacks `bytes` (whose content digest, in hex, is `digest`) under
/// `<cache_directory>/<digest>/` once, and checks its entrypoint.
///
/// An artifact root that already exists is reused as it is (the limits are not checked again).
/// Otherwise the bytes are unpacked into a staging directory and renamed into place; a caller
/// losing a race uses the winner's root. A single executable is written as
/// `<root>/<entrypoint>` with mode 0755.
///
/// `entrypoint` must be a relative path inside the root; it must exist, resolve (through
/// symlinks) to a regular file inside the root, and be executable by its owner. Every refusal is
/// `INVALID_ARGUMENT` naming the format field, the entrypoint field, the offending archive entry
/// or the limit; IO failures of the cache itself are `INTERNAL`.
pub fn prepare_process_artifact(
    bytes: &[u8],
    digest: &str,
    format: ProcessArtifactFormat,
    entrypoint: &str,
    cache_directory: &Path,
    limits: &UnpackLimits,
) -> SpearResult<PreparedProcessArtifact> {
    check_digest(digest)?;
    let relative_entrypoint = relative_entrypoint_path(entrypoint)?;
    let resolved_format = resolve_format(bytes, format)?;
    let digest_directory = cache_directory.join(digest);
    let root = digest_directory.join(root_directory_name(
        resolved_format,
        &relative_entrypoint,
        entrypoint,
    )?);

    if !is_real_directory(&root) {
        unpack_into_place(
            bytes,
            resolved_format,
            &relative_entrypoint,
            &digest_directory,
            &root,
            limits,
        )?;
    }

    let entrypoint_path = check_entrypoint(&root, &relative_entrypoint, entrypoint)?;
    Ok(PreparedProcessArtifact {
        root,
        entrypoint: entrypoint_path,
        format: resolved_format,
    })
}

/// The digest becomes a directory name, so it must be plain hex. The caller computes it, so a bad
/// one is a node bug.
fn check_digest(digest: &str) -> SpearResult<()> {
    let is_plain_hex = !digest.is_empty()
        && digest.len() <= 128
        && digest.bytes().all(|byte| byte.is_ascii_hexdigit());
    if is_plain_hex {
        return Ok(());
    }
    Err(SpearError::internal(format!(
        "process artifact digest {digest:?} is not a hex string of 1 to 128 digits"
    )))
}

/// Normalises the entrypoint into a relative path of plain names (`.` components dropped).
fn relative_entrypoint_path(entrypoint: &str) -> SpearResult<PathBuf> {
    let refuse = |reason: &str| {
        SpearError::invalid_argument(format!("{ENTRYPOINT_FIELD} = {entrypoint:?} {reason}"))
    };
    if entrypoint.contains('\0') {
        return Err(refuse("contains a NUL byte"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(entrypoint).components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(
                    "contains a \"..\" component; it must be a path inside the artifact",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(
                    "is absolute; it must be a path relative to the artifact root",
                ));
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(refuse("names no file"));
    }
    Ok(relative)
}

/// Turns `auto` into what the bytes are, and checks the bytes fit an explicit archive format as
/// far as the magic bytes tell (a zip is checked fully when it is opened: a zip may carry a
/// prefix, such as a self-extracting stub).
fn resolve_format(
    bytes: &[u8],
    format: ProcessArtifactFormat,
) -> SpearResult<ProcessArtifactFormat> {
    match format {
        ProcessArtifactFormat::Auto => sniff_format(bytes),
        ProcessArtifactFormat::Executable => {
            if bytes.is_empty() {
                return Err(SpearError::invalid_argument(format!(
                    "{FORMAT_FIELD} is \"exe\" but the artifact is empty (0 bytes)"
                )));
            }
            Ok(format)
        }
        ProcessArtifactFormat::TarGz => {
            if !bytes.starts_with(GZIP_MAGIC) {
                return Err(format_mismatch(
                    format,
                    bytes,
                    "it does not start with gzip magic 1f 8b",
                ));
            }
            Ok(format)
        }
        ProcessArtifactFormat::Zip => Ok(format),
    }
}

/// The error for bytes that are not what an explicit format says.
fn format_mismatch(format: ProcessArtifactFormat, bytes: &[u8], reason: &str) -> SpearError {
    let looks_like = match recognised_format(bytes) {
        Some(recognised) => format!("the bytes look like \"{}\"", recognised.as_str()),
        None => format!("the bytes start with {}", hex_prefix(bytes)),
    };
    SpearError::invalid_argument(format!(
        "{FORMAT_FIELD} is \"{}\" but the artifact is not one ({reason}; {looks_like})",
        format.as_str()
    ))
}

/// The name of the artifact root inside `<cache_directory>/<digest>/`, one per way of unpacking.
fn root_directory_name(
    format: ProcessArtifactFormat,
    relative_entrypoint: &Path,
    entrypoint: &str,
) -> SpearResult<String> {
    match format {
        ProcessArtifactFormat::Zip => Ok("zip".to_owned()),
        ProcessArtifactFormat::TarGz => Ok("tar-gz".to_owned()),
        ProcessArtifactFormat::Executable => {
            let mut name = String::from("exe-");
            for byte in relative_entrypoint.as_os_str().as_bytes() {
                let is_plain = byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
                if is_plain {
                    name.push(char::from(*byte));
                } else {
                    name.push_str(&format!("%{byte:02X}"));
                }
            }
            // Directory names are limited to 255 bytes; leave room for nothing else.
            if name.len() > 255 {
                return Err(SpearError::invalid_argument(format!(
                    "{ENTRYPOINT_FIELD} = {entrypoint:?} is too long for a single executable"
                )));
            }
            Ok(name)
        }
        ProcessArtifactFormat::Auto => Err(SpearError::internal(
            "process artifact format \"auto\" reached the cache layout unresolved",
        )),
    }
}

/// `symlink_metadata` says it is a directory (a symlink to one does not count).
fn is_real_directory(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_dir())
}

/// An `INTERNAL` error for an IO failure on the node's own cache.
fn cache_io_error(action: &str, path: &Path, error: io::Error) -> SpearError {
    SpearError::internal(format!(
        "process artifact cache: cannot {action} {}: {error}",
        path.display()
    ))
}

/// Builds the root in a staging directory beside it and renames it into place.
fn unpack_into_place(
    bytes: &[u8],
    format: ProcessArtifactFormat,
    relative_entrypoint: &Path,
    digest_directory: &Path,
    root: &Path,
    limits: &UnpackLimits,
) -> SpearResult<()> {
    fs::create_dir_all(digest_directory)
        .map_err(|error| cache_io_error("create", digest_directory, error))?;
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(digest_directory)
        .map_err(|error| {
            cache_io_error("create a staging directory in", digest_directory, error)
        })?;

    match format {
        ProcessArtifactFormat::Executable => {
            write_single_executable(bytes, staging.path(), relative_entrypoint, limits)?
        }
        ProcessArtifactFormat::Zip => {
            let mut extractor = ArchiveExtractor::new(staging.path(), limits);
            unpack_zip(bytes, &mut extractor)?;
            extractor.finish()?;
        }
        ProcessArtifactFormat::TarGz => {
            let mut extractor = ArchiveExtractor::new(staging.path(), limits);
            unpack_tar_gz(bytes, &mut extractor)?;
            extractor.finish()?;
        }
        ProcessArtifactFormat::Auto => {
            return Err(SpearError::internal(
                "process artifact format \"auto\" reached unpacking unresolved",
            ));
        }
    }
    // The staging directory is created 0700; the root is readable like any unpacked directory.
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .map_err(|error| cache_io_error("set the mode of", staging.path(), error))?;

    let staging_path = staging.keep();
    match fs::rename(&staging_path, root) {
        Ok(()) => Ok(()),
        Err(rename_error) => {
            // Best effort: a leftover staging directory only costs disk space.
            let _ = fs::remove_dir_all(&staging_path);
            if is_real_directory(root) {
                // Another caller unpacked the same digest first; its root is complete.
                return Ok(());
            }
            Err(cache_io_error("move into place", root, rename_error))
        }
    }
}

/// Stores a single executable as `<staging>/<entrypoint>` with mode 0755.
fn write_single_executable(
    bytes: &[u8],
    staging: &Path,
    relative_entrypoint: &Path,
    limits: &UnpackLimits,
) -> SpearResult<()> {
    if bytes.len() as u64 > limits.max_total_bytes {
        return Err(SpearError::invalid_argument(format!(
            "the executable is {} bytes, more than the unpack limit max_total_bytes = {}",
            bytes.len(),
            limits.max_total_bytes
        )));
    }
    let destination = staging.join(relative_entrypoint);
    if let Some(parent) = destination.parent() {
        // The staging directory is new and holds only what this function creates.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|error| cache_io_error("create", parent, error))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&destination)
        .map_err(|error| cache_io_error("create", &destination, error))?;
    file.write_all(bytes)
        .map_err(|error| cache_io_error("write", &destination, error))?;
    file.set_permissions(fs::Permissions::from_mode(0o755))
        .map_err(|error| cache_io_error("set the mode of", &destination, error))
}

/// Unpacks a zip archive through `extractor`.
fn unpack_zip(bytes: &[u8], extractor: &mut ArchiveExtractor) -> SpearResult<()> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|error| {
        format_mismatch(
            ProcessArtifactFormat::Zip,
            bytes,
            &format!("cannot read it as a zip archive: {error}"),
        )
    })?;
    // The central directory's count is a lower bound worth failing early on; entries are still
    // counted one by one below.
    extractor.check_announced_entry_count(archive.len() as u64)?;

    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|error| {
            SpearError::invalid_argument(format!(
                "zip archive entry #{index} cannot be read: {error}"
            ))
        })?;
        let name = entry
            .name()
            .map_err(|error| {
                SpearError::invalid_argument(format!(
                    "zip archive entry #{index} has an unreadable name: {error}"
                ))
            })?
            .into_owned();
        extractor.count_entry(&name)?;
        let relative = archive_entry_path(Path::new(&name), &name)?;
        let unix_mode = entry.unix_mode();
        let file_type = unix_mode.map_or(0, |mode| mode & FILE_TYPE_MASK);

        if entry.is_symlink() {
            let mut target = Vec::new();
            entry
                .by_ref()
                .take(MAX_SYMLINK_TARGET_BYTES + 1)
                .read_to_end(&mut target)
                .map_err(|error| entry_read_error(&name, error))?;
            if target.len() as u64 > MAX_SYMLINK_TARGET_BYTES {
                return Err(refuse_entry(&name, "is a symlink whose target is too long"));
            }
            let relative = require_path(relative, &name)?;
            extractor.create_symlink(&name, &relative, Path::new(OsStr::from_bytes(&target)))?;
        } else if entry.is_dir() {
            if let Some(relative) = relative {
                extractor.create_directory(&name, &relative, unix_mode.unwrap_or(0o755))?;
            }
        } else if file_type == 0 || file_type == FILE_TYPE_REGULAR {
            let relative = require_path(relative, &name)?;
            let mode = unix_mode.unwrap_or(0o644);
            extractor.write_regular_file(&name, &relative, &mut entry, mode)?;
        } else {
            return Err(refuse_entry(
                &name,
                "is a device, fifo or socket; only files, directories and links are allowed",
            ));
        }
    }
    Ok(())
}

/// Unpacks a gzip-compressed tar archive through `extractor`.
fn unpack_tar_gz(bytes: &[u8], extractor: &mut ArchiveExtractor) -> SpearResult<()> {
    let not_a_tar_gz = |error: io::Error| {
        format_mismatch(
            ProcessArtifactFormat::TarGz,
            bytes,
            &format!("cannot read it as a tar.gz archive: {error}"),
        )
    };
    // The tar crate reads long names and PAX records into memory whole, before any entry is
    // seen, so the decompressed stream as a whole is capped too.
    let stream_cap = extractor.limits.max_total_bytes.saturating_add(
        (extractor.limits.max_entries + 2).saturating_mul(TAR_METADATA_BYTES_PER_ENTRY),
    );
    let stream_cap_hit = Rc::new(Cell::new(false));
    let capped_stream = CappedReader {
        inner: flate2::read::MultiGzDecoder::new(bytes),
        remaining: stream_cap,
        cap: stream_cap,
        cap_hit: Rc::clone(&stream_cap_hit),
    };
    let stream_error = |error: io::Error| {
        if stream_cap_hit.get() {
            return SpearError::invalid_argument(format!("the tar.gz archive {error}"));
        }
        not_a_tar_gz(error)
    };
    let mut archive = tar::Archive::new(capped_stream);
    let entries = archive.entries().map_err(stream_error)?;

    for entry_result in entries {
        let mut entry = entry_result.map_err(stream_error)?;
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            // Archive-wide metadata (a comment, a default mtime): nothing to unpack.
            continue;
        }
        extractor.count_entry(&name)?;
        let relative = archive_entry_path(Path::new(OsStr::from_bytes(&raw_path)), &name)?;
        let mode = entry
            .header()
            .mode()
            .map_err(|error| refuse_entry(&name, &format!("has an unreadable mode: {error}")))?;

        if entry_type.is_file() || entry_type.is_contiguous() || entry_type.is_gnu_sparse() {
            let relative = require_path(relative, &name)?;
            extractor.write_regular_file(&name, &relative, &mut entry, mode)?;
        } else if entry_type.is_dir() {
            if let Some(relative) = relative {
                extractor.create_directory(&name, &relative, mode)?;
            }
        } else if entry_type.is_symlink() || entry_type.is_hard_link() {
            let relative = require_path(relative, &name)?;
            let link_name = entry
                .link_name_bytes()
                .map(|bytes| bytes.into_owned())
                .ok_or_else(|| refuse_entry(&name, "is a link without a target"))?;
            let target = Path::new(OsStr::from_bytes(&link_name));
            if entry_type.is_symlink() {
                extractor.create_symlink(&name, &relative, target)?;
            } else {
                extractor.create_hard_link(&name, &relative, target)?;
            }
        } else if entry_type.is_character_special()
            || entry_type.is_block_special()
            || entry_type.is_fifo()
        {
            return Err(refuse_entry(
                &name,
                "is a device or fifo; only files, directories and links are allowed",
            ));
        } else {
            return Err(refuse_entry(
                &name,
                &format!(
                    "has an unsupported tar entry type {:?}",
                    entry_type.as_byte()
                ),
            ));
        }
    }
    Ok(())
}

/// What a tar may spend per entry beyond file data: a 512-byte header, up to 511 bytes of
/// padding, and GNU long-name / long-link or PAX records with their own headers. 16 KiB covers
/// names of several KiB; the default limits allow 512 MiB + 160 MB of decompressed stream.
const TAR_METADATA_BYTES_PER_ENTRY: u64 = 16 * 1024;

/// A reader that fails once more than `cap` bytes come out of `inner`, recording that in
/// `cap_hit` (errors can come back wrapped by the tar crate).
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    cap: u64,
    cap_hit: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // At the cap: fine if the stream ends here, an error if it goes on.
            let mut probe = [0_u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.cap_hit.set(true);
            return Err(io::Error::other(format!(
                "decompresses to more than {} bytes (the unpack limit max_total_bytes plus {} \
                 bytes of headers for each of max_entries)",
                self.cap, TAR_METADATA_BYTES_PER_ENTRY
            )));
        }
        let allowed = buffer
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buffer[..allowed])?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// `INVALID_ARGUMENT` naming an archive entry.
fn refuse_entry(name: &str, reason: &str) -> SpearError {
    SpearError::invalid_argument(format!("archive entry {name:?} {reason}"))
}

/// A read failure inside an archive means the archive is corrupt (or lies about itself).
fn entry_read_error(name: &str, error: io::Error) -> SpearError {
    refuse_entry(name, &format!("cannot be read (corrupt archive?): {error}"))
}

/// The entry's path as plain names below the root; `None` for the root itself (`./`).
/// Absolute paths, `..` components and NUL bytes are refused.
fn archive_entry_path(path: &Path, name: &str) -> SpearResult<Option<PathBuf>> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(refuse_entry(name, "has a NUL byte in its path"));
    }
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse_entry(
                    name,
                    "has a \"..\" component; entries must stay inside the artifact root",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse_entry(
                    name,
                    "has an absolute path; entries must stay inside the artifact root",
                ));
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(relative))
}

/// Files and links need a name below the root.
fn require_path(relative: Option<PathBuf>, name: &str) -> SpearResult<PathBuf> {
    relative.ok_or_else(|| refuse_entry(name, "names the artifact root itself"))
}

/// Checks a symlink target keeps every lookup through the link inside the root.
///
/// A target must be relative and of the form `../../name/name`: `..` components only at the
/// start, no more of them than the link has parent directories, then plain names. Why that is
/// enough: the link's parent directories are real directories (no entry is ever written through a
/// symlink), so the leading `..`s land on a real directory inside the root; each following name is
/// a real file or directory, or a symlink that obeys the same rule, so by induction no lookup
/// leaves the root. A `..` after a name could step back out of a symlinked directory, so it is
/// refused.
fn check_symlink_target(relative_link: &Path, target: &Path, name: &str) -> SpearResult<()> {
    let target_text = target.to_string_lossy();
    let refuse = |reason: &str| {
        refuse_entry(
            name,
            &format!("is a symlink to {target_text:?}, which {reason}"),
        )
    };
    if target.as_os_str().is_empty() {
        return Err(refuse("is empty"));
    }
    if target.as_os_str().as_bytes().contains(&0) {
        return Err(refuse("contains a NUL byte"));
    }
    let parent_depth = relative_link.components().count().saturating_sub(1);
    let mut levels_up = 0;
    let mut seen_name = false;
    for component in target.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(
                    "is absolute; symlinks must stay inside the artifact root",
                ));
            }
            Component::CurDir => {}
            Component::Normal(_) => seen_name = true,
            Component::ParentDir if seen_name => {
                return Err(refuse(
                    "has a \"..\" after a name; only leading \"..\" components are allowed",
                ));
            }
            Component::ParentDir => {
                levels_up += 1;
                if levels_up > parent_depth {
                    return Err(refuse("leaves the artifact root"));
                }
            }
        }
    }
    Ok(())
}

/// Writes archive entries below one staging root, enforcing the limits and the path rules of the
/// module doc. Every write goes through [`ArchiveExtractor::destination`], which makes sure no
/// symlink or file sits where a parent directory should.
struct ArchiveExtractor<'limits> {
    root: PathBuf,
    limits: &'limits UnpackLimits,
    entries_seen: u64,
    bytes_written: u64,
    /// Directories below `root` known to be real directories (created or checked).
    known_directories: HashSet<PathBuf>,
    /// Modes of directory entries, applied at the end so that a read-only directory can still be
    /// filled.
    directory_modes: Vec<(PathBuf, u32)>,
    copy_buffer: Vec<u8>,
}

impl<'limits> ArchiveExtractor<'limits> {
    fn new(root: &Path, limits: &'limits UnpackLimits) -> Self {
        ArchiveExtractor {
            root: root.to_path_buf(),
            limits,
            entries_seen: 0,
            bytes_written: 0,
            known_directories: HashSet::new(),
            directory_modes: Vec::new(),
            copy_buffer: vec![0; 64 * 1024],
        }
    }

    fn too_many_entries(&self, count: u64) -> SpearError {
        SpearError::invalid_argument(format!(
            "the archive holds {count} or more entries, more than the unpack limit \
             max_entries = {}",
            self.limits.max_entries
        ))
    }

    fn check_announced_entry_count(&self, announced: u64) -> SpearResult<()> {
        if announced > self.limits.max_entries {
            return Err(self.too_many_entries(announced));
        }
        Ok(())
    }

    fn count_entry(&mut self, name: &str) -> SpearResult<()> {
        self.entries_seen += 1;
        if self.entries_seen > self.limits.max_entries {
            return Err(self
                .too_many_entries(self.entries_seen)
                .context(format!("at archive entry {name:?}")));
        }
        Ok(())
    }

    /// Makes every parent of `relative` a real directory (creating missing ones, mode 0755) and
    /// returns the absolute destination. Refuses when a parent is a symlink or a file.
    fn destination(&mut self, name: &str, relative: &Path) -> SpearResult<PathBuf> {
        let mut current = self.root.clone();
        let mut components = relative.components().peekable();
        while let Some(component) = components.next() {
            current.push(component);
            if components.peek().is_none() {
                break;
            }
            if self.known_directories.contains(&current) {
                continue;
            }
            match fs::symlink_metadata(&current) {
                Ok(metadata) if metadata.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(refuse_entry(
                        name,
                        &format!(
                            "goes through {:?}, which is a symlink or a file; entries are never \
                             written through symlinks",
                            self.relative_display(&current)
                        ),
                    ));
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    create_directory_with_mode(&current)?;
                }
                Err(error) => return Err(cache_io_error("inspect", &current, error)),
            }
            self.known_directories.insert(current.clone());
        }
        Ok(current)
    }

    /// Clears a non-directory left by an earlier entry of the same name (later entries win, as
    /// in tar); a directory there is a conflict.
    fn clear_destination(&self, name: &str, destination: &Path) -> SpearResult<()> {
        match fs::symlink_metadata(destination) {
            Ok(metadata) if metadata.file_type().is_dir() => Err(refuse_entry(
                name,
                "has the name of a directory unpacked before it",
            )),
            Ok(_) => fs::remove_file(destination)
                .map_err(|error| cache_io_error("replace", destination, error)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(cache_io_error("inspect", destination, error)),
        }
    }

    fn relative_display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// Copies `reader` into a new file, counting every byte against `max_total_bytes`.
    fn write_regular_file(
        &mut self,
        name: &str,
        relative: &Path,
        reader: &mut dyn Read,
        mode: u32,
    ) -> SpearResult<()> {
        let destination = self.destination(name, relative)?;
        self.clear_destination(name, &destination)?;
        // `create_new` (O_EXCL) never follows a symlink at the destination.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&destination)
            .map_err(|error| cache_io_error("create", &destination, error))?;
        loop {
            let read = match reader.read(&mut self.copy_buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(entry_read_error(name, error)),
            };
            if self.bytes_written + read as u64 > self.limits.max_total_bytes {
                return Err(refuse_entry(
                    name,
                    &format!(
                        "takes the archive past the unpack limit max_total_bytes = {} \
                         (uncompressed bytes)",
                        self.limits.max_total_bytes
                    ),
                ));
            }
            self.bytes_written += read as u64;
            file.write_all(&self.copy_buffer[..read])
                .map_err(|error| cache_io_error("write", &destination, error))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode & KEPT_PERMISSION_BITS))
            .map_err(|error| cache_io_error("set the mode of", &destination, error))
    }

    fn create_directory(&mut self, name: &str, relative: &Path, mode: u32) -> SpearResult<()> {
        let destination = self.destination(name, relative)?;
        match fs::symlink_metadata(&destination) {
            Ok(metadata) if metadata.file_type().is_dir() => {}
            Ok(_) => {
                return Err(refuse_entry(
                    name,
                    "is a directory with the name of a file or symlink unpacked before it",
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                create_directory_with_mode(&destination)?;
            }
            Err(error) => return Err(cache_io_error("inspect", &destination, error)),
        }
        self.known_directories.insert(destination.clone());
        self.directory_modes.push((destination, mode));
        Ok(())
    }

    fn create_symlink(&mut self, name: &str, relative: &Path, target: &Path) -> SpearResult<()> {
        check_symlink_target(relative, target, name)?;
        let destination = self.destination(name, relative)?;
        self.clear_destination(name, &destination)?;
        std::os::unix::fs::symlink(target, &destination)
            .map_err(|error| cache_io_error("create the symlink", &destination, error))
    }

    /// A tar hard link names, relative to the archive root, a regular file unpacked before it.
    fn create_hard_link(&mut self, name: &str, relative: &Path, target: &Path) -> SpearResult<()> {
        let target_text = target.to_string_lossy().into_owned();
        let refuse_target = |reason: &str| {
            refuse_entry(
                name,
                &format!("is a hard link to {target_text:?}, which {reason}"),
            )
        };
        let relative_target = match archive_entry_path(target, name) {
            Ok(Some(relative_target)) => relative_target,
            Ok(None) => return Err(refuse_target("names the artifact root")),
            Err(_) => return Err(refuse_target("leaves the artifact root")),
        };
        let Some(source) = self.existing_regular_file(&relative_target) else {
            return Err(refuse_target("is not a regular file unpacked before it"));
        };
        let destination = self.destination(name, relative)?;
        if destination == source {
            return Ok(());
        }
        self.clear_destination(name, &destination)?;
        fs::hard_link(&source, &destination)
            .map_err(|error| cache_io_error("create the hard link", &destination, error))
    }

    /// The path of `relative` if it is a regular file reached through real directories only
    /// (no symlink followed on the way); creates nothing.
    fn existing_regular_file(&self, relative: &Path) -> Option<PathBuf> {
        let mut current = self.root.clone();
        let mut components = relative.components().peekable();
        while let Some(component) = components.next() {
            current.push(component);
            let metadata = fs::symlink_metadata(&current).ok()?;
            let is_expected_type = if components.peek().is_some() {
                metadata.file_type().is_dir()
            } else {
                metadata.file_type().is_file()
            };
            if !is_expected_type {
                return None;
            }
        }
        Some(current)
    }

    /// Applies directory modes, keeping `rwx` for the owner so the cache stays removable.
    fn finish(self) -> SpearResult<()> {
        for (directory, mode) in &self.directory_modes {
            let kept_mode = (mode & KEPT_PERMISSION_BITS) | 0o700;
            fs::set_permissions(directory, fs::Permissions::from_mode(kept_mode))
                .map_err(|error| cache_io_error("set the mode of", directory, error))?;
        }
        Ok(())
    }
}

/// Creates one directory with mode 0755 whatever the umask.
fn create_directory_with_mode(path: &Path) -> SpearResult<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|error| cache_io_error("create", path, error))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(|error| cache_io_error("set the mode of", path, error))
}

/// Checks the entrypoint of an unpacked root and returns its path.
fn check_entrypoint(
    root: &Path,
    relative_entrypoint: &Path,
    entrypoint: &str,
) -> SpearResult<PathBuf> {
    let candidate = root.join(relative_entrypoint);
    let refuse = |reason: String| {
        SpearError::invalid_argument(format!(
            "{ENTRYPOINT_FIELD} = {entrypoint:?} {reason}; {}",
            describe_root_entries(root)
        ))
    };
    let canonical_root = root
        .canonicalize()
        .map_err(|error| cache_io_error("resolve", root, error))?;
    let canonical_entrypoint = match candidate.canonicalize() {
        Ok(path) => path,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(refuse("does not exist in the artifact".to_owned()));
        }
        Err(error) => {
            return Err(refuse(format!(
                "cannot be resolved in the artifact ({error})"
            )));
        }
    };
    if !canonical_entrypoint.starts_with(&canonical_root) {
        return Err(refuse(
            "resolves (through symlinks) outside the artifact root".to_owned(),
        ));
    }
    let metadata = fs::metadata(&canonical_entrypoint)
        .map_err(|error| cache_io_error("inspect", &canonical_entrypoint, error))?;
    if !metadata.file_type().is_file() {
        return Err(refuse("is not a regular file".to_owned()));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    // The node owns every unpacked file, so the owner's execute bit is the one that counts.
    if mode & 0o100 == 0 {
        return Err(refuse(format!(
            "is not executable (mode {mode:04o}); give it mode 0755 in the archive"
        )));
    }
    Ok(candidate)
}

/// "the artifact root holds: a, b, …" with up to [`MAX_LISTED_ROOT_ENTRIES`] sorted names.
fn describe_root_entries(root: &Path) -> String {
    let mut names: Vec<String> = match fs::read_dir(root) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(error) => return format!("the artifact root cannot be listed ({error})"),
    };
    if names.is_empty() {
        return "the artifact root is empty".to_owned();
    }
    names.sort();
    let total = names.len();
    names.truncate(MAX_LISTED_ROOT_ENTRIES);
    let mut description = format!("the artifact root holds: {}", names.join(", "));
    if total > MAX_LISTED_ROOT_ENTRIES {
        description.push_str(&format!(" (and {} more)", total - MAX_LISTED_ROOT_ENTRIES));
    }
    description
}
