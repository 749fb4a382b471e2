//! Mode `exec` end to end with real `/bin/sh` scripts: input and output, exit codes, the
//! sandbox (environment, arguments, working directory, file descriptors), deadlines,
//! cancellation and caps, and the guarantees that nothing survives a call (no zombies, no stray
//! descendants) and that the resource limits bind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use spearlet_core::{ErrorCode, Outcome};
use spearlet_process::exec::{ProcessCall, ProcessReport, run_exec};
use spearlet_process::sandbox::{ProcessLimits, RunAs, detect_enforcement};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A directory holding test scripts and the working directories of their runs. Searchable by
/// everyone, so that scripts run as `nobody` can reach both.
struct Scratch {
    directory: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let directory = tempfile::tempdir().unwrap();
        std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch { directory }
    }

    /// Writes an executable `/bin/sh` script with `body`.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.directory.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn workdirs(&self) -> PathBuf {
        self.directory.path().join("work")
    }

    async fn run(&self, program: &Path, call: ProcessCall) -> ProcessReport {
        self.run_with(program, call, &ProcessLimits::default())
            .await
    }

    async fn run_with(
        &self,
        program: &Path,
        call: ProcessCall,
        limits: &ProcessLimits,
    ) -> ProcessReport {
        run_exec(program, call, limits, &self.workdirs()).await
    }
}

fn new_call(stdin: &str) -> ProcessCall {
    ProcessCall {
        stdin: Bytes::copy_from_slice(stdin.as_bytes()),
        arguments: vec!["handler".into()],
        environment: vec![("PATH".into(), "/usr/bin:/bin".into())],
        max_output_bytes: 1 << 20,
        max_log_bytes: 1 << 20,
        deadline: Instant::now() + Duration::from_secs(10),
        cancellation: CancellationToken::new(),
        output_chunks: None,
    }
}

fn text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn failed(code: ErrorCode, message: &str) -> Outcome {
    Outcome::Failed {
        code,
        message: message.into(),
    }
}

/// Whether `pid` names a live process (zombies count as dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => process_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/<pid>/stat` line (after the parenthesised command name).
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The parent pid of a `/proc/<pid>/stat` line.
fn parent_pid(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits up to two seconds for every pid in `pids` to die (SIGKILL is delivered
/// asynchronously); returns those still alive.
async fn survivors(pids: &[u32]) -> Vec<u32> {
    let give_up = Instant::now() + Duration::from_secs(2);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
        if alive.is_empty() || Instant::now() > give_up {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (10 s at most) until `path` exists, e.g. a marker a script leaves once it runs.
async fn wait_for_file(path: &Path) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < give_up,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pids of every process in `/proc` whose entry satisfies `select`.
fn processes_matching(select: impl Fn(&std::fs::DirEntry) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| select(entry))
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// The pids of every process whose stat line satisfies `select`.
fn processes_where(select: impl Fn(&str) -> bool) -> Vec<u32> {
    processes_matching(|entry| {
        std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| select(&stat))
    })
}

/// The pids of every process (zombies included) owned by `uid`.
fn processes_of_uid(uid: u32) -> Vec<u32> {
    processes_matching(|entry| {
        entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.parse::<u32>().is_ok())
            && entry.metadata().is_ok_and(|metadata| metadata.uid() == uid)
    })
}

fn parse_pids(output: &str) -> Vec<u32> {
    output
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

#[tokio::test]
async fn stdin_comes_back_on_stdout() {
    let scratch = Scratch::new();
    let program = scratch.script("cat.sh", "exec cat");
    let report = scratch.run(&program, new_call("hello, process")).await;
    assert_eq!(report.outcome, Outcome::Completed, "{}", text(&report.logs));
    assert_eq!(text(&report.output), "hello, process");
    assert!(report.process_id > 1);
}

#[tokio::test]
async fn large_input_and_output_flow_both_ways() {
    let scratch = Scratch::new();
    let program = scratch.script("cat.sh", "exec cat");
    let input = "0123456789abcdef".repeat(40_000);
    let report = scratch.run(&program, new_call(&input)).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.output.len(), input.len());
}

#[tokio::test]
async fn non_zero_exit_fails_with_the_code() {
    let scratch = Scratch::new();
    let program = scratch.script("exit.sh", "echo partial; exit 3");
    let report = scratch.run(&program, new_call("")).await;
    assert_eq!(
        report.outcome,
        failed(ErrorCode::ExitCode, "exited with code 3")
    );
    assert_eq!(text(&report.output), "partial\n");
}

#[tokio::test]
async fn a_signal_fails_naming_it() {
    let scratch = Scratch::new();
    let program = scratch.script("kill.sh", "kill -SEGV $$");
    let report = scratch.run(&program, new_call("")).await;
    let Outcome::Failed { code, message } = &report.outcome else {
        panic!("{:?}", report.outcome);
    };
    assert_eq!(*code, ErrorCode::ExitCode);
    assert!(
        message.starts_with("killed by signal 11 (SIGSEGV"),
        "{message}"
    );
}

#[tokio::test]
async fn stderr_becomes_the_logs() {
    let scratch = Scratch::new();
    let program = scratch.script("logs.sh", "echo out; echo 'a log line' >&2");
    let report = scratch.run(&program, new_call("")).await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(text(&report.output), "out\n");
    assert_eq!(text(&report.logs), "a log line\n");
}

#[tokio::test]
async fn the_environment_holds_only_declared_variables() {
    let scratch = Scratch::new();
    // The shell's own initial environment, exactly as exec gave it (the shell adds PWD to what
    // it exports, so `env` would not do).
    let program = scratch.script("env.sh", "tr '\\0' '\\n' < /proc/$$/environ");
    let mut call = new_call("");
    call.environment = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("SPEAR_FUNCTION".into(), "handler".into()),
        ("WITH_SPACE".into(), "a b=c".into()),
    ];
    let report = scratch.run(&program, call).await;
    assert_eq!(report.outcome, Outcome::Completed, "{}", text(&report.logs));
    let mut seen: Vec<String> = text(&report.output).lines().map(String::from).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "PATH=/usr/bin:/bin",
            "SPEAR_FUNCTION=handler",
            "WITH_SPACE=a b=c"
        ]
    );
}

#[tokio::test]
async fn argv_is_the_program_then_the_arguments() {
    let scratch = Scratch::new();
    let program = scratch.script("argv.sh", "printf '%s|' \"$0\" \"$@\"");
    let mut call = new_call("");
    call.arguments = vec!["handler".into(), "two words".into()];
    let report = scratch.run(&program, call).await;
    assert_eq!(
        text(&report.output),
        format!("{}|handler|two words|", program.display())
    );
}

#[tokio::test]
async fn the_working_directory_is_fresh_and_removed_afterwards() {
    let scratch = Scratch::new();
    let program = scratch.script("cwd.sh", "pwd; ls -A; touch left-behind");
    let first = scratch.run(&program, new_call("")).await;
    let second = scratch.run(&program, new_call("")).await;
    assert_eq!(first.outcome, Outcome::Completed, "{}", text(&first.logs));
    let (first_lines, second_lines) = (text(&first.output), text(&second.output));
    // Each run sees an empty directory of its own, under the base, gone once the run is over.
    assert_eq!(first_lines.lines().count(), 1, "{first_lines}");
    assert_eq!(second_lines.lines().count(), 1, "{second_lines}");
    let first_directory = PathBuf::from(first_lines.trim());
    assert_ne!(first_lines, second_lines);
    assert!(first_directory.starts_with(scratch.workdirs()));
    assert!(!first_directory.exists());
    assert_eq!(std::fs::read_dir(scratch.workdirs()).unwrap().count(), 0);
}

#[tokio::test]
async fn the_process_sees_only_stdin_stdout_and_stderr() {
    let scratch = Scratch::new();
    // `ls` runs as a child of the inner shell and lists the shell's descriptors; `; true` keeps
    // the shell from exec'ing `ls` in its place. The outer script shell keeps its script open on
    // a close-on-exec descriptor, which the inner shell must not inherit either.
    let program = scratch.script("fds.sh", "exec sh -c 'ls /proc/$$/fd; true'");
    let report = scratch.run(&program, new_call("")).await;
    assert_eq!(report.outcome, Outcome::Completed, "{}", text(&report.logs));
    assert_eq!(parse_pids(&text(&report.output)), [0, 1, 2]);
}

#[tokio::test]
async fn the_deadline_kills_the_whole_group() {
    let scratch = Scratch::new();
    let program = scratch.script("slow.sh", "sleep 300 & echo $!; sleep 30");
    let mut call = new_call("");
    call.deadline = Instant::now() + Duration::from_millis(200);
    let started = Instant::now();
    let report = scratch.run(&program, call).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(report.outcome, Outcome::TimedOut { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.outcome.error_code(), Some(ErrorCode::Timeout));
    let grandchild = parse_pids(&text(&report.output));
    assert_eq!(grandchild.len(), 1, "{}", text(&report.output));
    assert_eq!(
        survivors(&[report.process_id, grandchild[0]]).await,
        Vec::<u32>::new()
    );
}

#[tokio::test]
async fn background_descendants_die_after_a_normal_exit() {
    let scratch = Scratch::new();
    let program = scratch.script("daemon.sh", "sleep 300 >/dev/null 2>&1 & echo $!");
    let report = scratch.run(&program, new_call("")).await;
    assert_eq!(report.outcome, Outcome::Completed);
    let grandchild = parse_pids(&text(&report.output));
    assert_eq!(grandchild.len(), 1);
    assert_eq!(survivors(&grandchild).await, Vec::<u32>::new());
}

#[tokio::test]
async fn cancellation_stops_the_call_promptly() {
    let scratch = Scratch::new();
    let started_marker = scratch.directory.path().join("started");
    let program = scratch.script(
        "slow.sh",
        &format!("touch '{}'; sleep 30", started_marker.display()),
    );
    let call = new_call("");
    let cancellation = call.cancellation.clone();
    // Cancels once the process is surely running (it has left its marker), and says when.
    let canceller = tokio::spawn(async move {
        wait_for_file(&started_marker).await;
        cancellation.cancel();
        Instant::now()
    });
    let report = scratch.run(&program, call).await;
    let cancelled_at = canceller.await.unwrap();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "the call ended {:?} after its cancellation",
        cancelled_at.elapsed()
    );
    assert_eq!(report.outcome.error_code(), Some(ErrorCode::Cancelled));
    assert_eq!(survivors(&[report.process_id]).await, Vec::<u32>::new());
}

#[tokio::test]
async fn a_stdout_flood_is_cut_at_the_cap() {
    let scratch = Scratch::new();
    let program = scratch.script("flood.sh", "yes");
    let started = Instant::now();
    let report = scratch.run(&program, new_call("")).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        report.outcome,
        failed(
            ErrorCode::OutputTooLarge,
            "the process wrote more than the stdout cap of 1048576 bytes"
        )
    );
    assert_eq!(report.output.len(), 1 << 20);
    assert_eq!(survivors(&[report.process_id]).await, Vec::<u32>::new());
}

#[tokio::test]
async fn a_stderr_flood_is_cut_at_the_cap() {
    let scratch = Scratch::new();
    let program = scratch.script("flood.sh", "yes >&2");
    let mut call = new_call("");
    call.max_log_bytes = 1000;
    let report = scratch.run(&program, call).await;
    assert_eq!(
        report.outcome,
        failed(
            ErrorCode::OutputTooLarge,
            "the process wrote more than the stderr cap of 1000 bytes"
        )
    );
    assert_eq!(report.logs.len(), 1000);
}

#[tokio::test]
async fn stdout_chunks_stream_as_written() {
    let scratch = Scratch::new();
    // The script writes its second line only once the test has received the first and says so
    // (by creating `go`), so the first line reaches the caller while the process still runs.
    let go_marker = scratch.directory.path().join("go");
    let program = scratch.script(
        "chunks.sh",
        &format!(
            "echo one; while [ ! -e '{}' ]; do sleep 0.01; done; echo two",
            go_marker.display()
        ),
    );
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut call = new_call("");
    call.output_chunks = Some(sender);
    let run = scratch.run(&program, call);
    let first_chunk_then_go = async {
        let first_chunk = receiver.recv().await;
        std::fs::write(&go_marker, "").unwrap();
        first_chunk
    };
    let (report, first_chunk) = tokio::join!(run, first_chunk_then_go);
    assert_eq!(report.outcome, Outcome::Completed, "{}", text(&report.logs));
    let mut streamed: Vec<Bytes> = first_chunk.into_iter().collect();
    while let Ok(chunk) = receiver.try_recv() {
        streamed.push(chunk);
    }
    assert_eq!(streamed, [Bytes::from("one\n"), Bytes::from("two\n")]);
    assert_eq!(text(&report.output), "one\ntwo\n");
    assert!(receiver.is_closed(), "the sender is dropped with the call");
}

#[tokio::test]
async fn a_file_the_kernel_cannot_execute_fails_to_start() {
    let scratch = Scratch::new();
    let program = scratch.directory.path().join("not-a-program");
    std::fs::write(
        &program,
        "echo this would run under /bin/sh without the check\n",
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    for program in [program, scratch.directory.path().join("missing")] {
        let report = scratch.run(&program, new_call("")).await;
        let Outcome::Failed { code, message } = &report.outcome else {
            panic!("{:?}", report.outcome);
        };
        assert_eq!(*code, ErrorCode::InitFailed);
        assert!(
            message.contains(&format!("cannot start process {}", program.display())),
            "{message}"
        );
        assert_eq!(report.process_id, 0);
    }
    assert_eq!(std::fs::read_dir(scratch.workdirs()).unwrap().count(), 0);
}

#[tokio::test]
async fn many_runs_leave_no_zombies() {
    let scratch = Scratch::new();
    let program = scratch.script("short.sh", "echo $$; true & exit 1");
    let mut pids = Vec::new();
    for _ in 0..50 {
        let report = scratch.run(&program, new_call("")).await;
        assert_eq!(report.outcome.error_code(), Some(ErrorCode::ExitCode));
        pids.push(report.process_id);
    }
    let own_pid = std::process::id();
    let zombie_children = processes_where(|stat| {
        parent_pid(stat) == Some(own_pid) && process_state(stat) == Some('Z')
    });
    // Other tests run processes concurrently, and one may be caught between its exit and its
    // reaping; none of this test's 50 may be left over.
    let leftovers: Vec<u32> = zombie_children
        .iter()
        .copied()
        .filter(|pid| pids.contains(pid))
        .collect();
    assert_eq!(
        leftovers,
        Vec::<u32>::new(),
        "zombie children: {zombie_children:?}"
    );
    assert!(pids.iter().all(|pid| !alive(*pid)));
}

/// Runs as root, RLIMIT_NPROC does not bind: with `run_as` nobody and no cgroups, it does.
#[tokio::test]
async fn a_fork_bomb_stops_at_the_process_limit() {
    let enforcement = detect_enforcement();
    let scratch = Scratch::new();
    // dash exits with "Cannot fork" when a fork fails, so the loop ends by itself.
    let program = scratch.script(
        "bomb.sh",
        "count=0\n\
         while [ $count -lt 200 ]; do\n\
           sleep 30 &\n\
           echo \"$!\"\n\
           count=$((count + 1))\n\
         done",
    );
    let nobody = RunAs::parse("nobody").unwrap();
    // RLIMIT_NPROC counts every process of the uid, zombies included: wait for init to reap
    // what an earlier run of this test left.
    let give_up = Instant::now() + Duration::from_secs(5);
    while !processes_of_uid(nobody.uid).is_empty() && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limits = ProcessLimits {
        max_pids: 16,
        run_as: Some(nobody),
        ..ProcessLimits::default()
    };
    let mut call = new_call("");
    call.deadline = Instant::now() + Duration::from_secs(5);
    let report = scratch.run_with(&program, call, &limits).await;
    let started = parse_pids(&text(&report.output));
    assert!(
        !started.is_empty() && started.len() < 16,
        "{} processes started under a limit of 16 ({}); {:?}: {}",
        started.len(),
        enforcement.description,
        report.outcome,
        text(&report.logs)
    );
    assert_eq!(report.outcome.error_code(), Some(ErrorCode::ExitCode));
    assert!(
        text(&report.logs).contains("fork"),
        "{}",
        text(&report.logs)
    );
    assert_eq!(survivors(&started).await, Vec::<u32>::new());
    // The limit belonged to that process alone: the next run, without it, forks freely.
    let program = scratch.script(
        "forks.sh",
        "for i in $(seq 40); do sleep 30 & done; echo started",
    );
    let report = scratch.run(&program, new_call("")).await;
    assert_eq!(report.outcome, Outcome::Completed, "{}", text(&report.logs));
}

#[tokio::test]
async fn a_memory_bomb_fails_under_the_address_space_limit() {
    let scratch = Scratch::new();
    // `tail` keeps the whole (newline-free) input in memory to find its last lines.
    let program = scratch.script("bomb.sh", "head -c 400000000 /dev/zero | tail > /dev/null");
    let limits = ProcessLimits {
        address_space_mb: 256,
        ..ProcessLimits::default()
    };
    let report = scratch.run_with(&program, new_call(""), &limits).await;
    assert_eq!(report.outcome.error_code(), Some(ErrorCode::ExitCode));
    assert!(
        text(&report.logs).contains("memory exhausted"),
        "{}",
        text(&report.logs)
    );
    // The same program under the default limits (4096 MiB of address space) succeeds.
    let report = scratch.run(&program, new_call("")).await;
    assert_eq!(report.outcome, Outcome::Completed, "{}", text(&report.logs));
}
