//! Tests of process artifacts on disk (`spearlet_process::archive`): format sniffing, unpacking
//! zip and tar.gz archives and single executables into the cache, the path and size rules that
//! keep an archive inside its root, the entrypoint check, and reuse of an unpacked digest.
//!
//! Archives are built here, entry by entry. Tar headers are written by hand where the `tar` crate
//! would refuse a hostile name (`..`, absolute paths), because such archives are the point.
//! Every test works in its own temporary directory, with the cache in `<temp>/cache` and an
//! `<temp>/outside` directory that hostile archives aim at and must leave empty.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use spearlet_core::{ErrorKind, SpearError};
use spearlet_process::archive::{
    PreparedProcessArtifact, ProcessArtifactFormat, UnpackLimits, prepare_process_artifact,
    sniff_format,
};

const FORMAT_FIELD: &str = r#"artifact_spec.metadata["spearlet.process.format"]"#;
const ENTRYPOINT_FIELD: &str = r#"artifact_spec.metadata["spearlet.process.entrypoint"]"#;
const DIGEST: &str = "0123456789abcdef";
const SCRIPT: &[u8] = b"#!/bin/sh\necho hello\n";

/// One archive entry as the tests describe it.
#[derive(Clone)]
enum TestEntry {
    File {
        name: String,
        mode: u32,
        contents: Vec<u8>,
    },
    Directory {
        name: String,
        mode: u32,
    },
    Symlink {
        name: String,
        target: String,
    },
    /// Tar only.
    HardLink {
        name: String,
        target: String,
    },
    /// Tar only: a fifo.
    Fifo {
        name: String,
    },
    /// Tar only: a character device.
    CharacterDevice {
        name: String,
    },
}

fn file(name: &str, mode: u32, contents: &[u8]) -> TestEntry {
    TestEntry::File {
        name: name.to_owned(),
        mode,
        contents: contents.to_vec(),
    }
}

fn directory(name: &str, mode: u32) -> TestEntry {
    TestEntry::Directory {
        name: name.to_owned(),
        mode,
    }
}

fn symlink(name: &str, target: &str) -> TestEntry {
    TestEntry::Symlink {
        name: name.to_owned(),
        target: target.to_owned(),
    }
}

fn hard_link(name: &str, target: &str) -> TestEntry {
    TestEntry::HardLink {
        name: name.to_owned(),
        target: target.to_owned(),
    }
}

/// Writes `bytes` into a NUL-padded tar header field, bypassing the `tar` crate's path checks.
fn set_raw_field(field: &mut [u8], bytes: &[u8]) {
    assert!(
        bytes.len() <= field.len(),
        "name too long for a raw tar field"
    );
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
}

/// A tar.gz holding `entries`, with names written verbatim.
fn tar_gz(entries: &[TestEntry]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, contents): (&str, &[u8]) = match entry {
            TestEntry::File {
                name,
                mode,
                contents,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                (name, contents)
            }
            TestEntry::Directory { name, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                (name, &[])
            }
            TestEntry::Symlink { name, target } | TestEntry::HardLink { name, target } => {
                let entry_type = match entry {
                    TestEntry::Symlink { .. } => tar::EntryType::Symlink,
                    _ => tar::EntryType::Link,
                };
                header.set_entry_type(entry_type);
                header.set_mode(0o777);
                set_raw_field(&mut header.as_old_mut().linkname, target.as_bytes());
                (name, &[])
            }
            TestEntry::Fifo { name } => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_mode(0o644);
                (name, &[])
            }
            TestEntry::CharacterDevice { name } => {
                header.set_entry_type(tar::EntryType::Char);
                header.set_mode(0o644);
                (name, &[])
            }
        };
        set_raw_field(&mut header.as_old_mut().name, name.as_bytes());
        header.set_size(contents.len() as u64);
        header.set_cksum();
        builder.append(&header, contents).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A zip (deflated) holding `entries`; names are written verbatim.
fn zip_archive(entries: &[TestEntry]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for entry in entries {
        match entry {
            TestEntry::File {
                name,
                mode,
                contents,
            } => {
                writer
                    .start_file(name, options.unix_permissions(*mode))
                    .unwrap();
                writer.write_all(contents).unwrap();
            }
            TestEntry::Directory { name, mode } => {
                writer
                    .add_directory(name, options.unix_permissions(*mode))
                    .unwrap();
            }
            TestEntry::Symlink { name, target } => {
                writer.add_symlink(name, target, options).unwrap();
            }
            TestEntry::HardLink { .. }
            | TestEntry::Fifo { .. }
            | TestEntry::CharacterDevice { .. } => {
                panic!("zip archives in these tests hold no hard links or special files")
            }
        }
    }
    writer.finish().unwrap().into_inner()
}

/// A temporary directory with `cache/` (created by the code under test) and `outside/`.
struct Workspace {
    directory: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let directory = tempfile::tempdir().unwrap();
        fs::create_dir(directory.path().join("outside")).unwrap();
        Workspace { directory }
    }

    fn cache(&self) -> PathBuf {
        self.directory.path().join("cache")
    }

    fn outside(&self) -> PathBuf {
        self.directory.path().join("outside")
    }

    fn prepare(
        &self,
        bytes: &[u8],
        format: ProcessArtifactFormat,
        entrypoint: &str,
        limits: &UnpackLimits,
    ) -> Result<PreparedProcessArtifact, SpearError> {
        prepare_process_artifact(bytes, DIGEST, format, entrypoint, &self.cache(), limits)
    }

    fn prepare_default(&self, bytes: &[u8]) -> Result<PreparedProcessArtifact, SpearError> {
        self.prepare(
            bytes,
            ProcessArtifactFormat::Auto,
            "bootstrap",
            &UnpackLimits::default(),
        )
    }

    /// After a refused archive: nothing in `outside/`, nothing next to `cache/`, and no root or
    /// staging directory left in the cache.
    fn assert_nothing_written(&self) {
        let outside: Vec<_> = fs::read_dir(self.outside()).unwrap().collect();
        assert!(outside.is_empty(), "files written outside: {outside:?}");
        let mut top_level: Vec<String> = fs::read_dir(self.directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top_level.sort();
        assert!(
            top_level == ["outside"] || top_level == ["cache", "outside"],
            "unexpected files next to the cache: {top_level:?}"
        );
        let digest_directory = self.cache().join(DIGEST);
        if digest_directory.exists() {
            let left: Vec<_> = fs::read_dir(&digest_directory).unwrap().collect();
            assert!(left.is_empty(), "left in the cache: {left:?}");
        }
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn assert_invalid_argument(result: Result<PreparedProcessArtifact, SpearError>, expected: &[&str]) {
    let error = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(error.kind, ErrorKind::InvalidArgument, "{error}");
    for fragment in expected {
        assert!(
            error.message.contains(fragment),
            "error {:?} does not mention {fragment:?}",
            error.message
        );
    }
}

#[test]
fn archive_format_names_round_trip() {
    for format in [
        ProcessArtifactFormat::Auto,
        ProcessArtifactFormat::Executable,
        ProcessArtifactFormat::Zip,
        ProcessArtifactFormat::TarGz,
    ] {
        assert_eq!(ProcessArtifactFormat::parse(format.as_str()), Some(format));
    }
    for unknown in ["", "tgz", "ZIP", "tar", "executable"] {
        assert_eq!(ProcessArtifactFormat::parse(unknown), None, "{unknown:?}");
    }
}

#[test]
fn archive_sniffing_reads_magic_bytes_only() {
    let table: &[(&[u8], Result<ProcessArtifactFormat, &str>)] = &[
        (
            b"\x7FELF\x02\x01\x01\0rest",
            Ok(ProcessArtifactFormat::Executable),
        ),
        (
            b"#!/bin/sh\nexit 0\n",
            Ok(ProcessArtifactFormat::Executable),
        ),
        (b"\x1F\x8B\x08\0", Ok(ProcessArtifactFormat::TarGz)),
        (b"PK\x03\x04\x14\0", Ok(ProcessArtifactFormat::Zip)),
        (b"<html>not an artifact", Err("3c 68 74 6d")),
        (b"PK\x05\x06", Err("50 4b 05 06")),
        (b"#", Err("23")),
        (b"", Err("empty")),
    ];
    for (bytes, expected) in table {
        match (sniff_format(bytes), expected) {
            (Ok(found), Ok(expected)) => assert_eq!(found, *expected, "{bytes:?}"),
            (Err(error), Err(fragment)) => {
                assert_eq!(error.kind, ErrorKind::InvalidArgument);
                assert!(error.message.contains(FORMAT_FIELD), "{}", error.message);
                assert!(error.message.contains(fragment), "{}", error.message);
            }
            (found, expected) => panic!("{bytes:?}: found {found:?}, expected {expected:?}"),
        }
    }
    // Real archives, as the crates write them.
    assert_eq!(
        sniff_format(&tar_gz(&[file("a", 0o644, b"a")])).unwrap(),
        ProcessArtifactFormat::TarGz
    );
    assert_eq!(
        sniff_format(&zip_archive(&[file("a", 0o644, b"a")])).unwrap(),
        ProcessArtifactFormat::Zip
    );
}

/// A bundle as a Lambda custom runtime ships it: `bootstrap`, a data file, a nested library.
fn bundle_entries() -> Vec<TestEntry> {
    vec![
        file("bootstrap", 0o755, SCRIPT),
        file("data.txt", 0o640, b"some data"),
        directory("lib/", 0o750),
        file("lib/helper.sh", 0o700, b"#!/bin/sh\n"),
        symlink("lib/current", "helper.sh"),
    ]
}

fn assert_bundle_unpacked(prepared: &PreparedProcessArtifact, workspace: &Workspace) {
    assert!(prepared.root.starts_with(workspace.cache().join(DIGEST)));
    assert_eq!(prepared.entrypoint, prepared.root.join("bootstrap"));
    assert_eq!(fs::read(&prepared.entrypoint).unwrap(), SCRIPT);
    assert_eq!(mode_of(&prepared.entrypoint), 0o755);
    assert_eq!(mode_of(&prepared.root), 0o755);
    assert_eq!(mode_of(&prepared.root.join("data.txt")), 0o640);
    assert_eq!(mode_of(&prepared.root.join("lib")), 0o750);
    assert_eq!(mode_of(&prepared.root.join("lib/helper.sh")), 0o700);
    assert_eq!(
        fs::read_link(prepared.root.join("lib/current")).unwrap(),
        Path::new("helper.sh")
    );
}

#[test]
fn archive_tar_gz_bundle_is_unpacked_with_its_modes() {
    let workspace = Workspace::new();
    let prepared = workspace
        .prepare_default(&tar_gz(&bundle_entries()))
        .unwrap();
    assert_eq!(prepared.format, ProcessArtifactFormat::TarGz);
    assert_bundle_unpacked(&prepared, &workspace);
}

#[test]
fn archive_zip_bundle_is_unpacked_with_its_modes() {
    let workspace = Workspace::new();
    let prepared = workspace
        .prepare_default(&zip_archive(&bundle_entries()))
        .unwrap();
    assert_eq!(prepared.format, ProcessArtifactFormat::Zip);
    assert_bundle_unpacked(&prepared, &workspace);
}

#[test]
fn explicit_archive_formats_unpack_too() {
    let workspace = Workspace::new();
    let tar = workspace
        .prepare(
            &tar_gz(&bundle_entries()),
            ProcessArtifactFormat::TarGz,
            "bootstrap",
            &UnpackLimits::default(),
        )
        .unwrap();
    assert_eq!(tar.format, ProcessArtifactFormat::TarGz);
    let zip = workspace
        .prepare(
            &zip_archive(&bundle_entries()),
            ProcessArtifactFormat::Zip,
            "bootstrap",
            &UnpackLimits::default(),
        )
        .unwrap();
    assert_eq!(zip.format, ProcessArtifactFormat::Zip);
    assert_ne!(tar.root, zip.root);
}

#[test]
fn archive_setuid_and_setgid_bits_are_dropped() {
    let workspace = Workspace::new();
    let archive = tar_gz(&[
        file("bootstrap", 0o4755, SCRIPT),
        file("tool", 0o2750, b"x"),
        directory("shared/", 0o1777),
    ]);
    let prepared = workspace.prepare_default(&archive).unwrap();
    assert_eq!(mode_of(&prepared.entrypoint), 0o755);
    assert_eq!(mode_of(&prepared.root.join("tool")), 0o750);
    assert_eq!(mode_of(&prepared.root.join("shared")), 0o777);
}

#[test]
fn archive_read_only_directories_are_filled_and_stay_owner_writable() {
    let workspace = Workspace::new();
    let archive = tar_gz(&[
        directory("ro/", 0o555),
        file("ro/inner", 0o444, b"inner"),
        file("bootstrap", 0o755, SCRIPT),
    ]);
    let prepared = workspace.prepare_default(&archive).unwrap();
    assert_eq!(mode_of(&prepared.root.join("ro")), 0o755);
    assert_eq!(mode_of(&prepared.root.join("ro/inner")), 0o444);
}

#[test]
fn archive_single_script_is_stored_as_bootstrap_with_mode_0755() {
    let workspace = Workspace::new();
    let prepared = workspace.prepare_default(SCRIPT).unwrap();
    assert_eq!(prepared.format, ProcessArtifactFormat::Executable);
    assert_eq!(prepared.entrypoint, prepared.root.join("bootstrap"));
    assert_eq!(fs::read(&prepared.entrypoint).unwrap(), SCRIPT);
    assert_eq!(mode_of(&prepared.entrypoint), 0o755);
    let names: Vec<_> = fs::read_dir(&prepared.root).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn archive_single_executable_takes_the_entrypoint_name() {
    let workspace = Workspace::new();
    let elf = b"\x7FELF\x02\x01\x01\0 pretend binary";
    let nested = workspace
        .prepare(
            elf,
            ProcessArtifactFormat::Auto,
            "./bin/handler",
            &UnpackLimits::default(),
        )
        .unwrap();
    assert_eq!(nested.entrypoint, nested.root.join("bin/handler"));
    assert_eq!(mode_of(&nested.entrypoint), 0o755);
    // The same bytes under another name get their own root, with that name.
    let plain = workspace.prepare_default(elf).unwrap();
    assert_ne!(plain.root, nested.root);
    assert_eq!(plain.entrypoint, plain.root.join("bootstrap"));
    // An explicit `exe` takes any non-empty bytes.
    let explicit = workspace
        .prepare(
            b"not sniffable",
            ProcessArtifactFormat::Executable,
            "bootstrap",
            &UnpackLimits::default(),
        )
        .unwrap();
    assert_eq!(explicit.format, ProcessArtifactFormat::Executable);
    assert_invalid_argument(
        workspace.prepare(
            b"",
            ProcessArtifactFormat::Executable,
            "bootstrap",
            &UnpackLimits::default(),
        ),
        &[FORMAT_FIELD, "empty"],
    );
}

#[test]
fn archive_explicit_format_must_match_the_bytes() {
    let workspace = Workspace::new();
    let tar = tar_gz(&bundle_entries());
    let zip = zip_archive(&bundle_entries());
    let table: &[(&[u8], ProcessArtifactFormat, &str)] = &[
        (&tar, ProcessArtifactFormat::Zip, "\"tar.gz\""),
        (&zip, ProcessArtifactFormat::TarGz, "\"zip\""),
        (SCRIPT, ProcessArtifactFormat::Zip, "\"exe\""),
        (
            b"\x1F\x8Bnot really gzip",
            ProcessArtifactFormat::TarGz,
            "tar.gz",
        ),
        (b"garbage", ProcessArtifactFormat::Auto, "67 61 72 62"),
    ];
    for (bytes, format, fragment) in table {
        assert_invalid_argument(
            workspace.prepare(bytes, *format, "bootstrap", &UnpackLimits::default()),
            &[FORMAT_FIELD, fragment],
        );
        workspace.assert_nothing_written();
    }
}

#[test]
fn archive_hostile_entries_are_refused_and_nothing_is_written() {
    let workspace = Workspace::new();
    let outside_file = workspace.outside().join("x");
    let absolute = outside_file.to_str().unwrap().to_owned();
    let bootstrap = file("bootstrap", 0o755, SCRIPT);
    // (archive entries, the entry name the error must mention). Each archive is built as tar.gz,
    // and as zip when it has no tar-only entry.
    let table: Vec<(Vec<TestEntry>, &str)> = vec![
        (
            vec![bootstrap.clone(), file("../evil", 0o644, b"x")],
            "../evil",
        ),
        (
            vec![bootstrap.clone(), file("lib/../../evil", 0o644, b"x")],
            "lib/../../evil",
        ),
        (
            vec![bootstrap.clone(), file(&absolute, 0o644, b"x")],
            &absolute,
        ),
        (
            vec![bootstrap.clone(), symlink("passwd", "/etc/passwd")],
            "passwd",
        ),
        (vec![bootstrap.clone(), symlink("up", "../../x")], "up"),
        (
            vec![bootstrap.clone(), symlink("lib/up", "../../x")],
            "lib/up",
        ),
        // Allowed on its own (`sub/up` points at the root), but `..` after a name is refused.
        (
            vec![
                bootstrap.clone(),
                symlink("sub/up", ".."),
                symlink("escape", "sub/up/.."),
            ],
            "escape",
        ),
        // A symlink inside the root, then an entry written through it.
        (
            vec![
                bootstrap.clone(),
                symlink("here", "."),
                file("here/through", 0o644, b"x"),
            ],
            "here/through",
        ),
        (
            vec![
                symlink("out", &workspace.outside().to_string_lossy()),
                file("out/x", 0o644, b"x"),
            ],
            "out",
        ),
        (
            vec![bootstrap.clone(), hard_link("stolen", "../../etc/passwd")],
            "stolen",
        ),
        (
            vec![bootstrap.clone(), hard_link("stolen", "/etc/passwd")],
            "stolen",
        ),
        (
            vec![
                bootstrap.clone(),
                symlink("link", "bootstrap"),
                hard_link("copy", "link"),
            ],
            "copy",
        ),
        (
            vec![
                bootstrap.clone(),
                TestEntry::Fifo {
                    name: "pipe".to_owned(),
                },
            ],
            "pipe",
        ),
        (
            vec![
                bootstrap.clone(),
                TestEntry::CharacterDevice {
                    name: "null".to_owned(),
                },
            ],
            "null",
        ),
    ];
    for (entries, entry_name) in &table {
        let zip_compatible = entries.iter().all(|entry| {
            matches!(
                entry,
                TestEntry::File { .. } | TestEntry::Directory { .. } | TestEntry::Symlink { .. }
            )
        });
        let mut archives = vec![("tar.gz", tar_gz(entries))];
        if zip_compatible {
            archives.push(("zip", zip_archive(entries)));
        }
        for (kind, archive) in archives {
            let result = workspace.prepare_default(&archive);
            let error = result.as_ref().err().map(|error| error.message.clone());
            assert_invalid_argument(result, &[&format!("{entry_name:?}")]);
            eprintln!("{kind} {entry_name}: {}", error.unwrap());
            workspace.assert_nothing_written();
        }
    }
    assert!(!outside_file.exists());
}

#[test]
fn archive_links_that_stay_inside_are_allowed() {
    let workspace = Workspace::new();
    let archive = tar_gz(&[
        directory("bin/", 0o755),
        file("bin/real", 0o755, SCRIPT),
        symlink("bootstrap", "bin/real"),
        directory("lib/deep/", 0o755),
        symlink("lib/deep/up", "../../bin/real"),
        symlink("sub/root", ".."),
        hard_link("copy", "bin/real"),
    ]);
    let prepared = workspace.prepare_default(&archive).unwrap();
    assert_eq!(prepared.entrypoint, prepared.root.join("bootstrap"));
    assert_eq!(fs::read(prepared.root.join("lib/deep/up")).unwrap(), SCRIPT);
    assert_eq!(fs::read(prepared.root.join("copy")).unwrap(), SCRIPT);
    assert!(prepared.root.join("sub/root/bootstrap").exists());
}

#[test]
fn archive_entry_count_is_capped() {
    let workspace = Workspace::new();
    let limits = UnpackLimits {
        max_entries: 3,
        ..UnpackLimits::default()
    };
    let entries: Vec<TestEntry> = (0..5)
        .map(|index| file(&format!("file{index}"), 0o755, SCRIPT))
        .collect();
    for archive in [tar_gz(&entries), zip_archive(&entries)] {
        assert_invalid_argument(
            workspace.prepare(&archive, ProcessArtifactFormat::Auto, "file0", &limits),
            &["max_entries = 3"],
        );
        workspace.assert_nothing_written();
    }
    // Exactly at the cap is fine.
    let at_cap = tar_gz(&entries[..3]);
    workspace
        .prepare(&at_cap, ProcessArtifactFormat::Auto, "file0", &limits)
        .unwrap();
}

#[test]
fn archive_uncompressed_bytes_are_capped_as_written() {
    let workspace = Workspace::new();
    let limits = UnpackLimits {
        max_total_bytes: 1024 * 1024,
        ..UnpackLimits::default()
    };
    let zeros = vec![0_u8; 10 * 1024 * 1024];
    let entries = vec![
        file("bootstrap", 0o755, SCRIPT),
        file("zeros", 0o644, &zeros),
    ];
    for archive in [tar_gz(&entries), zip_archive(&entries)] {
        assert!(archive.len() < 100 * 1024, "the bomb compresses well");
        assert_invalid_argument(
            workspace.prepare(&archive, ProcessArtifactFormat::Auto, "bootstrap", &limits),
            &["\"zeros\"", "max_total_bytes = 1048576"],
        );
        workspace.assert_nothing_written();
    }
    // Many small files add up too.
    let many: Vec<TestEntry> = (0..3)
        .map(|index| file(&format!("part{index}"), 0o755, &zeros[..400 * 1024]))
        .collect();
    assert_invalid_argument(
        workspace.prepare(
            &tar_gz(&many),
            ProcessArtifactFormat::Auto,
            "part0",
            &limits,
        ),
        &["\"part2\"", "max_total_bytes"],
    );
    // A single executable is held to the same cap.
    let mut big_script = SCRIPT.to_vec();
    big_script.resize(2 * 1024 * 1024, b'#');
    assert_invalid_argument(
        workspace.prepare(
            &big_script,
            ProcessArtifactFormat::Auto,
            "bootstrap",
            &limits,
        ),
        &["max_total_bytes = 1048576"],
    );
    workspace.assert_nothing_written();
}

#[test]
fn archive_oversized_tar_metadata_is_capped_too() {
    // A GNU long-name record is read into memory whole by the tar crate, before any entry is
    // seen: 3 MiB of name with max_total_bytes 1 MiB and 10 entries must stop at the stream cap.
    let workspace = Workspace::new();
    let limits = UnpackLimits {
        max_total_bytes: 1024 * 1024,
        max_entries: 10,
    };
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    let long_name = vec![b'a'; 3 * 1024 * 1024];
    let mut long_name_header = tar::Header::new_gnu();
    set_raw_field(&mut long_name_header.as_old_mut().name, b"././@LongLink");
    long_name_header.set_entry_type(tar::EntryType::GNULongName);
    long_name_header.set_size(long_name.len() as u64);
    long_name_header.set_cksum();
    builder
        .append(&long_name_header, long_name.as_slice())
        .unwrap();
    let mut file_header = tar::Header::new_gnu();
    set_raw_field(&mut file_header.as_old_mut().name, b"short");
    file_header.set_entry_type(tar::EntryType::Regular);
    file_header.set_mode(0o755);
    file_header.set_size(0);
    file_header.set_cksum();
    builder.append(&file_header, &[][..]).unwrap();
    let archive = builder.into_inner().unwrap().finish().unwrap();

    assert_invalid_argument(
        workspace.prepare(&archive, ProcessArtifactFormat::Auto, "bootstrap", &limits),
        &[
            "decompresses to more than",
            "max_total_bytes",
            "max_entries",
        ],
    );
    workspace.assert_nothing_written();
}

#[test]
fn archive_entrypoint_must_exist_be_a_file_and_be_executable() {
    let workspace = Workspace::new();
    let archive = tar_gz(&[
        file("data.txt", 0o644, b"data"),
        file("notes.md", 0o644, b"notes"),
        directory("bin/", 0o755),
        file("bin/tool", 0o755, SCRIPT),
    ]);
    let limits = UnpackLimits::default();
    let table: &[(&str, &[&str])] = &[
        (
            "bootstrap",
            &[
                "does not exist",
                "the artifact root holds: bin, data.txt, notes.md",
            ],
        ),
        ("data.txt", &["not executable", "0644"]),
        ("bin", &["not a regular file"]),
        ("../bootstrap", &["\"..\""]),
        ("/bin/sh", &["absolute"]),
        ("", &["names no file"]),
        (".", &["names no file"]),
    ];
    for (entrypoint, fragments) in table {
        let mut expected = vec![ENTRYPOINT_FIELD];
        expected.extend_from_slice(fragments);
        assert_invalid_argument(
            workspace.prepare(&archive, ProcessArtifactFormat::Auto, entrypoint, &limits),
            &expected,
        );
    }
    // The same unpacked root serves a valid entrypoint.
    let prepared = workspace
        .prepare(&archive, ProcessArtifactFormat::Auto, "bin/tool", &limits)
        .unwrap();
    assert_eq!(prepared.entrypoint, prepared.root.join("bin/tool"));
}

#[test]
fn archive_long_root_listing_is_cut_at_twenty_names() {
    let workspace = Workspace::new();
    let entries: Vec<TestEntry> = (0..25)
        .map(|index| file(&format!("f{index:02}"), 0o644, b""))
        .collect();
    assert_invalid_argument(
        workspace.prepare_default(&zip_archive(&entries)),
        &[ENTRYPOINT_FIELD, "f00, f01", "f19 (and 5 more)"],
    );
}

#[test]
fn archive_second_prepare_reuses_the_unpacked_root() {
    let workspace = Workspace::new();
    let archive = tar_gz(&bundle_entries());
    let first = workspace.prepare_default(&archive).unwrap();
    let marker = first.root.join("marker-left-by-the-test");
    fs::write(&marker, b"still here").unwrap();
    let second = workspace.prepare_default(&archive).unwrap();
    assert_eq!(second.root, first.root);
    assert_eq!(fs::read(&marker).unwrap(), b"still here");
    // Reuse goes by digest: the bytes are not looked at again beyond the format.
    let only_root: Vec<_> = fs::read_dir(workspace.cache().join(DIGEST))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(only_root.len(), 1, "{only_root:?}");
}

#[test]
fn archive_concurrent_prepares_of_one_digest_all_succeed() {
    let workspace = Arc::new(Workspace::new());
    let entries: Vec<TestEntry> = std::iter::once(file("bootstrap", 0o755, SCRIPT))
        .chain((0..200).map(|index| file(&format!("data/{index}"), 0o644, &[b'x'; 1000])))
        .collect();
    let archive = Arc::new(tar_gz(&entries));
    let callers = 8;
    let barrier = Arc::new(Barrier::new(callers));
    let threads: Vec<_> = (0..callers)
        .map(|_| {
            let workspace = Arc::clone(&workspace);
            let archive = Arc::clone(&archive);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                workspace.prepare_default(&archive)
            })
        })
        .collect();
    let roots: Vec<PathBuf> = threads
        .into_iter()
        .map(|thread| thread.join().unwrap().unwrap().root)
        .collect();
    assert!(roots.iter().all(|root| root == &roots[0]));
    assert_eq!(fs::read_dir(roots[0].join("data")).unwrap().count(), 200);
    // The losers' staging directories are gone.
    let left: Vec<_> = fs::read_dir(workspace.cache().join(DIGEST))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn archive_entrypoint_runs() {
    let workspace = Workspace::new();
    let prepared = workspace
        .prepare_default(&zip_archive(&bundle_entries()))
        .unwrap();
    let output = std::process::Command::new(&prepared.entrypoint)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout, b"hello\n");
}
