//! Checks that the embedded guests are exactly what their sources build to: rebuilds `examples/`
//! with `examples/build.sh` into a temporary directory and compares every file it produces byte
//! for byte with the checked-in `examples/wasm/` (the `wasm32-wasip1` modules, `<name>.wasm`) and
//! `examples/wasm/p2/` (the `wasm32-wasip2` components), in both directions, and the embedded
//! bytes with the checked-in files.
//!
//! Needs the `wasm32-wasip1` and `wasm32-wasip2` rustup targets. Each target that is missing (or
//! rustup itself) fails the test under CI and is skipped elsewhere, saying so on stderr (see
//! `prerequisites`); the other target is still checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use spearlet_examples::EXAMPLES;

use crate::prerequisites::missing_prerequisite;

/// Each target `build.sh` builds, with the directory under `examples/wasm/` its outputs go to.
const TARGETS: [(&str, &str); 2] = [("wasm32-wasip1", ""), ("wasm32-wasip2", "p2")];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The targets `rustup` reports as installed; if it cannot tell, why not (what
/// [`missing_prerequisite`] prints as the way to get them).
fn installed_targets() -> Result<BTreeSet<String>, String> {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|err| format!("cannot run `rustup target list --installed`: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`rustup target list --installed` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().map(|line| line.trim().to_owned()).collect())
}

/// The names of the `.wasm` files directly in `dir` (none if it does not exist).
fn wasm_files(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .map(|entry| entry.expect("read dir entry").file_name())
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.ends_with(".wasm"))
        .collect()
}

#[test]
fn embedded_guests_match_a_fresh_build() {
    let installed = match installed_targets() {
        Ok(installed) => installed,
        Err(why) => {
            return missing_prerequisite(
                "the wasm32-wasip1 and wasm32-wasip2 rustup targets",
                &why,
            );
        }
    };
    let mut targets = Vec::new();
    for (target, subdir) in TARGETS {
        if installed.contains(target) {
            targets.push((target, subdir));
        } else {
            missing_prerequisite(
                &format!("the {target} rustup target"),
                &format!("rustup lists it as not installed; run `rustup target add {target}`"),
            );
        }
    }
    if targets.is_empty() {
        return;
    }
    let names: Vec<&str> = targets.iter().map(|(target, _)| *target).collect();

    let out = tempfile::tempdir().expect("temp dir");
    let target = tempfile::tempdir().expect("temp dir");
    let build = Command::new("bash")
        .arg(examples_dir().join("build.sh"))
        .arg(out.path())
        .env("SPEARLET_EXAMPLES_TARGET_DIR", target.path())
        .env("SPEARLET_EXAMPLES_TARGETS", names.join(" "))
        .output()
        .expect("run examples/build.sh");
    assert!(
        build.status.success(),
        "examples/build.sh failed ({}):\n{}",
        build.status,
        String::from_utf8_lossy(&build.stderr)
    );

    let mut mismatches = Vec::new();
    for (target, subdir) in &targets {
        let built_dir = out.path().join(subdir);
        let committed_dir = examples_dir().join("wasm").join(subdir);
        let built = wasm_files(&built_dir);
        assert!(!built.is_empty(), "build.sh built nothing for {target}");
        for file in built.union(&wasm_files(&committed_dir)) {
            let shown = Path::new("examples/wasm").join(subdir).join(file);
            let shown = shown.display();
            match (
                std::fs::read(built_dir.join(file)),
                std::fs::read(committed_dir.join(file)),
            ) {
                (Ok(built), Ok(committed)) if built == committed => {}
                (Ok(built), Ok(committed)) => mismatches.push(format!(
                    "{shown} ({} bytes) differs from a fresh {target} build ({} bytes)",
                    committed.len(),
                    built.len()
                )),
                (Ok(_), Err(err)) => {
                    mismatches.push(format!("{shown} is built but missing: {err}"))
                }
                (Err(_), Ok(_)) => mismatches.push(format!("{shown} is no longer built")),
                (Err(err), Err(_)) => panic!("{shown}: {err}"),
            }
        }
    }

    // The embedded copies are compiled into this test; they must match the committed files.
    for example in EXAMPLES {
        let built_here = targets.iter().any(|(_, subdir)| {
            Path::new(example.path).parent() == Some(&Path::new("wasm").join(subdir))
        });
        if !built_here {
            continue;
        }
        let committed = std::fs::read(examples_dir().join(example.path))
            .unwrap_or_else(|err| panic!("cannot read examples/{}: {err}", example.path));
        assert!(
            example.wasm == committed.as_slice(),
            "{}: the embedded copy of examples/{} is stale; rebuild spearlet-examples",
            example.name,
            example.path
        );
    }
    assert!(
        mismatches.is_empty(),
        "guests not reproducible from their sources (run examples/build.sh and commit \
         examples/wasm/):\n{}",
        mismatches.join("\n")
    );
}
