//! Records the version of wasmtime this crate is linked against, read from the workspace's
//! `Cargo.lock`, as `SPEARLET_WASMTIME_VERSION` (wasmtime exports no version constant).
//!
//! Only the lock file knows the exact version cargo resolved; the manifest holds a requirement.
//! When the lock file is not there (the crate built outside this workspace) or holds more than
//! one wasmtime, nothing is recorded and `spearlet_wasm::WASMTIME_VERSION` is `None`: absent
//! rather than guessed.

use std::path::Path;

fn main() {
    let lock_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock_file.display());
    let Ok(lock_text) = std::fs::read_to_string(&lock_file) else {
        println!(
            "cargo:warning=no Cargo.lock at {}; the wasmtime version is not recorded",
            lock_file.display()
        );
        return;
    };
    let versions = locked_versions_of(&lock_text, "wasmtime");
    match versions.as_slice() {
        [version] => println!("cargo:rustc-env=SPEARLET_WASMTIME_VERSION={version}"),
        _ => println!(
            "cargo:warning=Cargo.lock holds {} versions of wasmtime ({versions:?}); the wasmtime \
             version is not recorded",
            versions.len()
        ),
    }
}

/// The `version` of every `[[package]]` entry named `package_name` in a `Cargo.lock`.
fn locked_versions_of(lock_text: &str, package_name: &str) -> Vec<String> {
    let wanted_name_line = format!("name = \"{package_name}\"");
    let mut versions = Vec::new();
    for package_entry in lock_text.split("[[package]]").skip(1) {
        let mut lines = package_entry.lines().map(str::trim);
        let is_wanted = lines.any(|line| line == wanted_name_line);
        if !is_wanted {
            continue;
        }
        let version = package_entry.lines().map(str::trim).find_map(|line| {
            line.strip_prefix("version = \"")
                .and_then(|rest| rest.strip_suffix('"'))
        });
        if let Some(version) = version {
            versions.push(version.to_owned());
        }
    }
    versions
}
