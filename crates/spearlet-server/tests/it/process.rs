//! Process tasks, checked from outside: a real node on 127.0.0.1:0 running shell-script
//! functions in exec mode, archives, limits and bad artifacts.

use crate::support;

use std::io::Write;

use spearlet_proto as proto;
use support::*;
use tonic::Code;

fn process_artifact(bytes: &[u8], metadata: &[(&str, &str)]) -> proto::ArtifactSpec {
    proto::ArtifactSpec {
        artifact_type: "process".into(),
        ..wasm_artifact(bytes, metadata)
    }
}

async fn create_process_task(
    node: &mut TestNode,
    name: &str,
    bytes: &[u8],
    metadata: &[(&str, &str)],
) -> Result<proto::TaskInfo, tonic::Status> {
    node.client
        .create_task(proto::CreateTaskRequest {
            task_name: name.into(),
            artifact_spec: Some(process_artifact(bytes, metadata)),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A gzip'd tar holding `entries` (path, mode, contents); paths are written verbatim, so a test
/// can build a hostile archive.
fn tar_gz(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut archive = Vec::new();
    for (path, mode, contents) in entries {
        let mut header = [0u8; 512];
        header[..path.len()].copy_from_slice(path.as_bytes());
        write_octal(&mut header[100..108], u64::from(*mode));
        write_octal(&mut header[108..116], 0);
        write_octal(&mut header[116..124], 0);
        write_octal(&mut header[124..136], contents.len() as u64);
        write_octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let checksum: u32 = header.iter().map(|byte| u32::from(*byte)).sum();
        write_octal(&mut header[148..155], u64::from(checksum));
        archive.extend_from_slice(&header);
        archive.extend_from_slice(contents);
        archive.resize(archive.len().div_ceil(512) * 512, 0);
    }
    archive.resize(archive.len() + 1024, 0);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&archive).unwrap();
    encoder.finish().unwrap()
}

fn write_octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

#[tokio::test]
async fn exec_mode_runs_a_process_per_call() {
    let mut node = start_node().await;
    let echo = b"#!/bin/sh\ncat\necho \"called $1 in $(pwd)\" >&2\n";
    let task = create_process_task(&mut node, "sh-echo", echo, &[])
        .await
        .unwrap();
    assert_eq!(task.artifact_spec.unwrap().artifact_type, "process");
    let response = node
        .client
        .invoke_function(invoke("sh-echo", b"hello process"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&response), proto::ExecutionStatus::Completed);
    assert_eq!(output(&response), b"hello process");
    let first_pid = result(&response).metrics["process_id"].clone();
    let again = node
        .client
        .invoke_function(invoke("sh-echo", b"again"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        result(&again).metrics["process_id"],
        first_pid,
        "a new process per call"
    );

    let failing = b"#!/bin/sh\necho broken >&2\nexit 3\n";
    create_process_task(&mut node, "sh-fail", failing, &[])
        .await
        .unwrap();
    let response = node
        .client
        .invoke_function(invoke("sh-fail", b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&response), proto::ExecutionStatus::Failed);
    assert_eq!(result(&response).error_code, "EXIT_CODE");
}

#[tokio::test]
async fn archives_are_unpacked_and_hostile_ones_refused() {
    let mut node = start_node().await;
    let archive = tar_gz(&[
        (
            "bootstrap",
            0o755,
            b"#!/bin/sh\ncat \"$LAMBDA_TASK_ROOT/greeting.txt\"\n",
        ),
        ("greeting.txt", 0o644, b"hello from the archive"),
    ]);
    create_process_task(&mut node, "archived", &archive, &[])
        .await
        .unwrap();
    let response = node
        .client
        .invoke_function(invoke("archived", b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response), b"hello from the archive", "{response:?}");

    let hostile = tar_gz(&[
        ("bootstrap", 0o755, b"#!/bin/sh\n"),
        ("../escaped", 0o644, b"x"),
    ]);
    let error = create_process_task(&mut node, "hostile", &hostile, &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{}", error.message());
    assert!(error.message().contains(".."), "{}", error.message());

    let error = create_process_task(&mut node, "garbage", b"not a program", &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("spearlet.process.format"),
        "{}",
        error.message()
    );

    let error = create_process_task(
        &mut node,
        "wrong-keys",
        b"#!/bin/sh\n",
        &[("spearlet.isolation", "reuse")],
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("spearlet.isolation"));
}

#[tokio::test]
async fn bombs_are_stopped_by_limits_and_the_node_keeps_serving() {
    let mut node = start_node().await;
    // Runs as nobody so the process-count limit binds (RLIMIT_NPROC does not bind root).
    let fork_bomb = b"#!/bin/sh\nwhile true; do sleep 30 & done\n";
    create_process_task(
        &mut node,
        "fork-bomb",
        fork_bomb,
        &[
            ("spearlet.process.max_pids", "16"),
            ("spearlet.process.run_as", "65534"),
            ("spearlet.timeout_ms", "2000"),
        ],
    )
    .await
    .unwrap();
    let memory_bomb = b"#!/bin/sh\nexec python3 -c 'bytearray(2 * 1024 ** 3)'\n";
    create_process_task(
        &mut node,
        "memory-bomb",
        memory_bomb,
        &[
            ("spearlet.process.address_space_mb", "256"),
            ("spearlet.timeout_ms", "20000"),
        ],
    )
    .await
    .unwrap();
    let bombs = concurrent_calls(&node, "fork-bomb", b"", 1)
        .into_iter()
        .chain(concurrent_calls(&node, "memory-bomb", b"", 1));
    // Meanwhile another function is served.
    let response = node
        .client
        .invoke_function(invoke("echo", b"still here"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response), b"still here");
    for bomb in bombs {
        let response = bomb.await.unwrap().unwrap();
        assert_ne!(
            status(&response),
            proto::ExecutionStatus::Completed,
            "{response:?}"
        );
    }
}
