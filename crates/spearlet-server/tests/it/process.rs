//! Process tasks, checked from outside: a real node on 127.0.0.1:0 running shell-script
//! functions in exec mode, archives, limits and bad artifacts.

use crate::support;

use std::io::Write;
use std::time::{Duration, Instant};

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

/// The unprivileged user the fork bomb runs as: RLIMIT_NPROC, which stands in for `max_pids`
/// without cgroups, never binds root, and it counts every process of its user, so a user of its
/// own keeps the bomb from sharing its budget with anything else (`nobody` is used elsewhere).
const FORK_BOMB_USER: &str = "spearlet-forkbomb";
const FORK_BOMB_MAX_PIDS: usize = 16;

/// A fork bomb: every copy starts two more in the background and then becomes `sleep`, so the
/// number of its processes doubles with every generation until a fork fails (dash then prints
/// "Cannot fork" and that copy exits). It is bounded at seven generations (255 processes) so
/// that, should the limit ever stop binding, a run of this test cannot take the machine down;
/// that is still sixteen times `FORK_BOMB_MAX_PIDS`. The call's own process forks only the first
/// copy (its one fork cannot fail) and then sleeps past the call's timeout, so the call ends by
/// the node killing the whole group.
const FORK_BOMB: &[u8] = b"#!/bin/sh
bomb() {
  if [ \"$1\" -gt 0 ]; then
    bomb $(($1 - 1)) &
    bomb $(($1 - 1)) &
  fi
  exec sleep 60
}
bomb 7 &
exec sleep 60
";

/// The pids of every process (zombies included) whose real uid is `uid`, which is what
/// RLIMIT_NPROC counts: the first field of the `Uid:` line of `/proc/<pid>/status`.
fn processes_of_uid(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next())
                .is_some_and(|real_uid| real_uid == uid.to_string())
        })
        .collect()
}

/// The uid of `user`, created as a system user without a home when it does not exist yet.
/// `None` (after reporting the missing prerequisite) when it can be neither found nor created.
fn unprivileged_user(user: &str) -> Option<u32> {
    let uid_of = |user: &str| {
        let output = std::process::Command::new("id")
            .args(["-u", user])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    if let Some(uid) = uid_of(user) {
        return Some(uid);
    }
    let created = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            user,
        ])
        .output();
    // Another test run may have created the user meanwhile: look again whatever useradd said.
    if let Some(uid) = uid_of(user) {
        return Some(uid);
    }
    let why = match created {
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        Err(error) => format!("cannot run useradd: {error}"),
    };
    missing_prerequisite(
        &format!("the unprivileged user {user}"),
        &format!("useradd could not create it: {why}"),
    );
    None
}

/// Polls GetExecutionStatus until the execution is terminal (30 s at most) and returns its
/// result, calling `meanwhile` after every poll.
async fn wait_until_terminal(
    node: &mut TestNode,
    execution_id: &str,
    mut meanwhile: impl FnMut(),
) -> proto::ExecutionResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_of(node, execution_id).await;
        meanwhile();
        if let Some(result) = status.result
            && is_terminal(result.status)
        {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{execution_id} did not end within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_terminal(status: i32) -> bool {
    ![
        proto::ExecutionStatus::Pending as i32,
        proto::ExecutionStatus::Running as i32,
    ]
    .contains(&status)
}

/// A fork bomb run as an unprivileged user with `max_pids` 16 has at most 16 processes and hits
/// the limit (its forks fail, as its logs show); the node serves another call while the bomb
/// runs, ends the bomb at its timeout and leaves none of its processes behind.
#[tokio::test]
async fn a_fork_bomb_stops_at_max_pids_and_the_node_keeps_serving() {
    if !running_as_root() {
        return missing_prerequisite(
            "root",
            "spearlet.process.run_as switches to another user, which needs root; CI runs as root",
        );
    }
    let Some(bomb_uid) = unprivileged_user(FORK_BOMB_USER) else {
        return;
    };
    // RLIMIT_NPROC counts zombies too: let init reap what an earlier run left (a run that was
    // killed mid-way, or one in another checkout) before counting.
    let give_up = Instant::now() + Duration::from_secs(10);
    while !processes_of_uid(bomb_uid).is_empty() && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut node = start_node().await;
    // The task's program lives in the node's data directory, which must be reachable by the
    // user it runs as (a temporary directory is private to root).
    std::fs::set_permissions(
        node.data_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let max_pids = FORK_BOMB_MAX_PIDS.to_string();
    create_process_task(
        &mut node,
        "fork-bomb",
        FORK_BOMB,
        &[
            ("spearlet.process.max_pids", max_pids.as_str()),
            ("spearlet.process.run_as", FORK_BOMB_USER),
            ("spearlet.timeout_ms", "5000"),
        ],
    )
    .await
    .unwrap();
    let accepted = node
        .client
        .invoke_function(asynchronous(invoke("fork-bomb", b"")))
        .await
        .unwrap()
        .into_inner();
    let bomb_id = accepted.execution_id;
    let mut most_processes_seen = 0;
    let mut count_bomb_processes = || {
        most_processes_seen = most_processes_seen.max(processes_of_uid(bomb_uid).len());
        most_processes_seen
    };

    // Wait until the bomb is RUNNING and has at least half its limit of processes: it is going.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_of(&mut node, &bomb_id).await;
        let result = status.result.expect("the bomb's execution has a result");
        assert!(
            !is_terminal(result.status),
            "the bomb ended before it got going: {result:?}\n{}",
            status.logs.join("\n")
        );
        if result.status == proto::ExecutionStatus::Running as i32
            && count_bomb_processes() >= FORK_BOMB_MAX_PIDS / 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bomb never got going: {result:?}; {} processes of {FORK_BOMB_USER}",
            count_bomb_processes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Meanwhile another function is served, and the bomb is still running after it answered.
    let response = node
        .client
        .invoke_function(invoke("echo", b"still here"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response), b"still here");
    let bomb_status = status_of(&mut node, &bomb_id).await.result.unwrap();
    assert_eq!(
        bomb_status.status,
        proto::ExecutionStatus::Running as i32,
        "the echo call was answered while the bomb ran: {bomb_status:?}"
    );

    let ended = wait_until_terminal(&mut node, &bomb_id, || {
        count_bomb_processes();
    })
    .await;
    let most_processes_seen = count_bomb_processes();
    let logs = status_of(&mut node, &bomb_id).await.logs.join("\n");
    assert_eq!(
        ended.status,
        proto::ExecutionStatus::Timeout as i32,
        "the bomb runs until its timeout kills it: {ended:?}\n{logs}"
    );
    assert!(
        most_processes_seen <= FORK_BOMB_MAX_PIDS,
        "{most_processes_seen} processes of {FORK_BOMB_USER} under max_pids \
         {FORK_BOMB_MAX_PIDS}\n{logs}"
    );
    // dash says "Cannot fork"; bash, as /bin/sh elsewhere, "Resource temporarily unavailable".
    assert!(
        logs.contains("Cannot fork") || logs.contains("Resource temporarily unavailable"),
        "the bomb's forks never failed, so max_pids did not bind: {logs}"
    );

    // The timeout killed the whole group; init reaps what the killed copies left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of_uid(bomb_uid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes of {FORK_BOMB_USER} outlived the bomb: {:?}",
            processes_of_uid(bomb_uid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `python3` is on the PATH the node gives function processes.
fn python3_in_function_path() -> bool {
    FUNCTION_PATH
        .split(':')
        .any(|directory| std::path::Path::new(directory).join("python3").is_file())
}

/// The PATH of a process function (see `manager.rs`).
const FUNCTION_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A Python program that asks for 2 GiB under a 256 MiB address-space limit fails with Python's
/// `MemoryError`: the limit, not anything else, stopped it.
#[tokio::test]
async fn a_memory_bomb_fails_at_the_address_space_limit() {
    if !python3_in_function_path() {
        return missing_prerequisite(
            "python3",
            &format!("the memory bomb is a Python program; install python3 into {FUNCTION_PATH}"),
        );
    }
    let mut node = start_node().await;
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
    let response = node
        .client
        .invoke_function(invoke("memory-bomb", b""))
        .await
        .unwrap()
        .into_inner();
    let logs = status_of(&mut node, &response.execution_id)
        .await
        .logs
        .join("\n");
    assert_eq!(
        status(&response),
        proto::ExecutionStatus::Failed,
        "{response:?}\n{logs}"
    );
    assert_eq!(result(&response).error_code, "EXIT_CODE", "{response:?}");
    assert!(
        logs.contains("MemoryError"),
        "the bomb did not fail at the address-space limit: {logs}"
    );
}
