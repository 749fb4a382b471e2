//! How every function process starts: its own process group, an environment holding only what
//! the call declares, a per-instance working directory, and resource limits.
//!
//! Limits are enforced one of two ways, decided once per node by [`detect_enforcement`]:
//! - **cgroup v2** (the node can create groups with the `memory` and `pids` controllers): each
//!   process gets its own group with `memory.max` (from [`ProcessLimits::memory_limit_mb`],
//!   `memory.swap.max` 0) and `pids.max` (from [`ProcessLimits::max_pids`]). The child moves
//!   itself into the group before `exec`, so nothing it starts escapes it, and `cgroup.kill`
//!   reaches descendants that left the process group.
//! - **rlimits** otherwise. `RLIMIT_NPROC` stands in for `pids.max`, but it counts every process
//!   of a uid and does not bind root, so it is set only when the process runs as another user
//!   ([`ProcessLimits::run_as`]); resident memory is then bounded only through the address space.
//!
//! In both setups `RLIMIT_AS` (address space), `RLIMIT_CPU` and `RLIMIT_NOFILE` are set per
//! process, and `run_as` switches uid and gid.
//!
//! # How a process is started: a vfork-style `clone`, not `fork`
//!
//! The node's address space is large (wasmtime's pooling allocator reserves a lot; ~200 MB are
//! resident), and `fork` copies its page tables only for `exec` to tear the copy down again. With
//! std's `Command` and a `pre_exec` hook (which forces fork+exec), perf showed ~39% of a spawn in
//! `fork` (`dup_mmap`/`copy_page_range`) and ~37% in `exec` unmapping the copy (`exit_mmap`/
//! `unmap_page_range`): an exec-mode call of a `#!/bin/sh` + `exec cat` script took 9.8 ms (p50)
//! through the node against 1.4 ms for `hyperfine -N` spawning the same script.
//!
//! So [`spawn_sandboxed`] does what `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)`.
//! The child shares the node's memory and runs on a small stack of its own (mmapped, with a guard
//! page) while the calling thread is suspended until the child execs or exits. Everything the
//! child needs is built before the clone (`ChildPlan`: NUL-terminated strings, the argv and
//! envp pointer arrays, the pipe ends, rlimits, the cgroup's `cgroup.procs` descriptor). The
//! child then only makes raw syscalls on that prepared data: `dup2` of the pipe ends onto 0/1/2,
//! `chdir`, `setpgid(0, 0)`, `close_range` (close-on-exec for every descriptor from 3 up),
//! joining the cgroup, `setrlimit`, `setgroups`/`setgid`/`setuid`, resetting signal dispositions
//! and the signal mask, and `execve`. On failure it writes the failing step and `errno` to a
//! close-on-exec error pipe and `_exit(127)`s; the parent reads that pipe once it resumes (EOF
//! means the exec succeeded).
//!
//! What the child must never do, because it shares the parent's memory, locks and thread-local
//! state: allocate or free, take any lock (including stdio's), panic or unwind, run destructors,
//! or call libc functions with process-wide side effects. In particular `setuid`, `setgid` and
//! `setgroups` go through `syscall(2)` directly: glibc's wrappers see the node's threads and
//! would broadcast the change to all of them (the node would change its own credentials). All
//! signals are blocked in the parent thread around the clone, so no node signal handler runs in
//! the child; the child resets every handled signal (and `SIGPIPE`, which Rust ignores) to its
//! default before unblocking signals for the new program.
//!
//! Since tokio's `Child` cannot adopt a pid, waiting is done here: a `pidfd` (Linux 5.3+) polled
//! through tokio's reactor signals the exit, and `waitpid` reaps (with a timer-driven poll as the
//! fallback on older kernels).
//!
//! This is the only module of the crate with `unsafe`: the child's side of the spawn, the clone
//! itself, and the thin libc calls the standard library does not wrap (`killpg`, `waitpid`,
//! `getrlimit`, `getpwnam_r`, pipes, `mmap`). Every block carries a `// SAFETY:` comment.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, c_void};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spearlet_core::{SpearError, SpearResult};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// The write end of a process's stdin pipe (implements `AsyncWrite`).
pub type ChildStdin = pipe::Sender;
/// The read end of a process's stdout pipe (implements `AsyncRead`).
pub type ChildStdout = pipe::Receiver;
/// The read end of a process's stderr pipe (implements `AsyncRead`).
pub type ChildStderr = pipe::Receiver;
/// The limits one function process runs under. Zero means "unlimited" (inherit the node's own
/// limit) for every numeric field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessLimits {
    /// `memory.max` of the process's cgroup, in MiB (`spearlet.memory_limit_mb`). Enforced only
    /// where cgroups are usable; with rlimits only the address space bounds memory.
    pub memory_limit_mb: u32,
    /// `pids.max` of the process's cgroup (`spearlet.process.max_pids`). Without cgroups it
    /// becomes `RLIMIT_NPROC`, set only together with [`ProcessLimits::run_as`]: that limit
    /// counts every process of the uid (so all instances running as one uid share it) and never
    /// binds root.
    pub max_pids: u32,
    /// `RLIMIT_AS` in MiB (`spearlet.process.address_space_mb`), applied in every setup. It
    /// bounds reserved address space, not memory in use: Node, Go and the JVM reserve far more
    /// than they touch, hence the generous default.
    pub address_space_mb: u64,
    /// `RLIMIT_CPU` in seconds of CPU time. The process gets `SIGXCPU` at the limit and
    /// `SIGKILL` one second of CPU time later.
    pub cpu_seconds: u64,
    /// `RLIMIT_NOFILE`: the most file descriptors the process may hold open.
    pub max_open_files: u64,
    /// The user the process runs as (`spearlet.process.run_as`); `None` keeps the node's own.
    pub run_as: Option<RunAs>,
}

impl Default for ProcessLimits {
    fn default() -> ProcessLimits {
        ProcessLimits {
            memory_limit_mb: 512,
            max_pids: 64,
            address_space_mb: 4096,
            cpu_seconds: 0,
            max_open_files: 1024,
            run_as: None,
        }
    }
}

/// A uid and gid to switch to before `exec`. Supplementary groups are cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Parses `"uid"` (the gid is then the same number), `"uid:gid"`, or a user name looked up
    /// in the node's user database (its uid and primary gid).
    pub fn parse(text: &str) -> SpearResult<RunAs> {
        let invalid = |reason: &str| {
            SpearError::invalid_argument(format!("spearlet.process.run_as: {text:?} {reason}"))
        };
        let text_trimmed = text.trim();
        if text_trimmed.is_empty() {
            return Err(invalid("is empty; expected a uid, uid:gid or a user name"));
        }
        if let Some((uid_text, gid_text)) = text_trimmed.split_once(':') {
            let (Ok(uid), Ok(gid)) = (uid_text.parse::<u32>(), gid_text.parse::<u32>()) else {
                return Err(invalid("is not of the form uid:gid (two numbers)"));
            };
            return Ok(RunAs { uid, gid });
        }
        if let Ok(uid) = text_trimmed.parse::<u32>() {
            return Ok(RunAs { uid, gid: uid });
        }
        match look_up_user(text_trimmed) {
            Ok(Some(run_as)) => Ok(run_as),
            Ok(None) => Err(invalid(
                "is not a uid, uid:gid or a user known to this node",
            )),
            Err(error) => Err(invalid(&format!("cannot be looked up: {error}"))),
        }
    }
}

/// What this node can enforce, decided once per process (see the module documentation).
#[derive(Clone, Debug)]
pub struct Enforcement {
    /// Whether each process gets its own cgroup v2 group with `memory.max` and `pids.max`.
    pub cgroups: bool,
    /// One line for logs and the node's status: which limits apply and, without cgroups, why.
    pub description: String,
}

struct DetectedEnforcement {
    enforcement: Enforcement,
    /// The group under which each process gets its own group, when cgroups are usable.
    instances_parent: Option<PathBuf>,
}

static DETECTED: OnceLock<DetectedEnforcement> = OnceLock::new();

/// Decides (on the first call; later calls return the same answer) whether this node can give
/// each process a cgroup v2 group with the `memory` and `pids` controllers.
///
/// That needs a cgroup v2 hierarchy offering both controllers to the node's group, and the
/// right to create groups there. When the node's group is not the root of the hierarchy, the
/// node moves itself into a leaf `spearlet-node` below it (cgroup v2 forbids a group with
/// processes from handing controllers to children) and creates its instances under
/// `spearlet-instances`; it does so only when it is alone in its group, as under a systemd unit
/// with `Delegate=yes`.
pub fn detect_enforcement() -> Enforcement {
    detected().enforcement.clone()
}

fn detected() -> &'static DetectedEnforcement {
    DETECTED.get_or_init(|| match prepare_cgroup_parent() {
        Ok(instances_parent) => DetectedEnforcement {
            enforcement: Enforcement {
                cgroups: true,
                description: format!(
                    "cgroup v2 under {}: memory.max and pids.max per process; RLIMIT_AS, \
                     RLIMIT_CPU and RLIMIT_NOFILE per process",
                    instances_parent.display()
                ),
            },
            instances_parent: Some(instances_parent),
        },
        Err(reason) => DetectedEnforcement {
            enforcement: Enforcement {
                cgroups: false,
                description: format!(
                    "rlimits only ({reason}): RLIMIT_AS, RLIMIT_CPU and RLIMIT_NOFILE per \
                     process, RLIMIT_NPROC per run_as uid (max_pids is not enforced without \
                     run_as); memory_limit_mb is not enforced"
                ),
            },
            instances_parent: None,
        },
    })
}

/// Everything needed to start one function process.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub program: PathBuf,
    /// `argv[1..]`; `argv[0]` is the program path.
    pub arguments: Vec<String>,
    /// The only variables the process sees: the node's environment is not inherited.
    pub environment: Vec<(String, String)>,
    /// Created by the caller (see [`SandboxWorkdir`]). With [`ProcessLimits::run_as`] it is
    /// handed to that user, and every directory above it must be searchable by that user, as
    /// must the program.
    pub working_directory: PathBuf,
    pub limits: ProcessLimits,
    /// A piped stdin (exec mode) instead of `/dev/null` (warm workers).
    pub stdin: bool,
}

/// A started process, leader of its own process group (and alone in its cgroup when cgroups are
/// usable). stdout and stderr are piped.
///
/// Dropping it SIGKILLs the whole group if that has not happened yet and reaps the leader (in the
/// background when a tokio runtime is at hand), so no zombie is left behind.
pub struct SandboxedChild {
    process_id: u32,
    /// The process group id, equal to the leader's pid.
    process_group: libc::pid_t,
    /// How the leader's exit is noticed.
    exit_watch: ExitWatch,
    /// The leader's status once reaped. Until then its pid cannot be reused, so signalling the
    /// pid directly is safe.
    status: Option<ExitStatus>,
    /// Set when the leader can no longer be reaped by this process (`waitpid` failed with
    /// `ECHILD`): nothing is left to wait for.
    lost: bool,
    /// Set once the leader is reaped and the rest of its group killed: the group id may then be
    /// reused, so it must never be signalled again.
    group_finished: bool,
    cgroup: Option<PathBuf>,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

/// How the leader's exit is noticed.
enum ExitWatch {
    /// A pidfd, readable once the process has exited.
    Pidfd(AsyncFd<OwnedFd>),
    /// Kernels without `pidfd_open` (before 5.3): `waitpid(WNOHANG)` on a timer.
    Poll,
}

/// How often [`ExitWatch::Poll`] checks.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(2);

impl SandboxedChild {
    pub fn pid(&self) -> u32 {
        self.process_id
    }

    /// The process's own cgroup, when cgroups are usable.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// The write end of stdin, when the spec asked for a piped stdin. Dropping it closes stdin.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// SIGKILLs the whole process group (and cgroup), then reaps the leader. Idempotent.
    pub async fn kill_group(&mut self) {
        if !self.group_finished {
            self.kill_everything();
            // The leader is dead or dying: reap it. An error means it cannot be reaped here.
            let _ = self.wait_for_leader().await;
            self.group_finished = true;
        }
    }

    /// Waits for the leader to exit and reaps it, then SIGKILLs whatever is left of its group
    /// (descendants it left running in the background). Cancel-safe; after the first success
    /// returns the same status again.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.wait_for_leader().await?;
        if !self.group_finished {
            // The leader was reaped just now, in this same poll: its pid is still held by the
            // remaining members of the group if there are any, so the group id is still theirs.
            self.kill_everything();
            self.group_finished = true;
        }
        Ok(status)
    }

    /// Whether the leader is still running, checked without waiting. A leader found exited is
    /// reaped and the rest of its group killed, as by [`SandboxedChild::wait`].
    pub fn is_running(&mut self) -> bool {
        match self.try_reap() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                if !self.group_finished {
                    self.kill_everything();
                    self.group_finished = true;
                }
                false
            }
        }
    }

    /// Reaps the leader if it has exited. Cancel-safe: the status is recorded in the same poll
    /// that reaps it.
    async fn wait_for_leader(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(status);
            }
            match &self.exit_watch {
                ExitWatch::Pidfd(pidfd) => {
                    let mut ready = pidfd.readable().await?;
                    // A readable pidfd means the process has exited: the reap succeeds.
                    match reap_now(self.process_group) {
                        Ok(Some(status)) => {
                            self.status = Some(status);
                            return Ok(status);
                        }
                        Ok(None) => ready.clear_ready(),
                        Err(error) => {
                            self.lost = true;
                            return Err(error);
                        }
                    }
                }
                ExitWatch::Poll => tokio::time::sleep(EXIT_POLL_INTERVAL).await,
            }
        }
    }

    /// The leader's status if it is reaped now or was before; `Ok(None)` while it runs.
    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        if self.lost {
            return Err(io::Error::from_raw_os_error(libc::ECHILD));
        }
        match reap_now(self.process_group) {
            Ok(reaped) => {
                self.status = reaped;
                Ok(reaped)
            }
            Err(error) => {
                self.lost = true;
                Err(error)
            }
        }
    }

    fn kill_everything(&mut self) {
        kill_process_group(self.process_group);
        if let Some(cgroup) = &self.cgroup {
            // `cgroup.kill` (Linux 5.14+) also reaches descendants that left the process group.
            let _ = fs::write(cgroup.join("cgroup.kill"), "1");
        }
        if self.status.is_none() && !self.lost {
            // SAFETY: plain syscall on integers. The leader is not reaped yet, so its pid still
            // names it (a zombie at worst).
            unsafe {
                libc::kill(self.process_group, libc::SIGKILL);
            }
        }
    }
}

impl Drop for SandboxedChild {
    fn drop(&mut self) {
        if !self.group_finished {
            self.kill_everything();
        }
        if let Ok(None) = self.try_reap() {
            // SIGKILLed just now but not gone yet: reap it once it is.
            let exit_watch = std::mem::replace(&mut self.exit_watch, ExitWatch::Poll);
            reap_in_background(self.process_group, exit_watch);
        }
        if let Some(cgroup) = self.cgroup.take() {
            remove_cgroup_when_empty(cgroup);
        }
    }
}

/// Reaps `pid` (already SIGKILLed) once it exits: in a task when a tokio runtime is at hand,
/// otherwise right here, blocking until the kill has taken effect.
fn reap_in_background(pid: libc::pid_t, exit_watch: ExitWatch) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        reap_blocking(pid);
        return;
    };
    runtime.spawn(async move {
        loop {
            match reap_now(pid) {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return,
            }
            let notified = match &exit_watch {
                ExitWatch::Pidfd(pidfd) => match pidfd.readable().await {
                    Ok(mut ready) => {
                        ready.clear_ready();
                        true
                    }
                    Err(_) => false,
                },
                ExitWatch::Poll => false,
            };
            if !notified {
                tokio::time::sleep(EXIT_POLL_INTERVAL).await;
            }
        }
    });
}

/// `waitpid(pid, WNOHANG)`: the status if `pid` was reaped now, `None` while it runs.
fn reap_now(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    loop {
        let mut raw_status: libc::c_int = 0;
        // SAFETY: `raw_status` is writable for the duration of the call.
        let reaped = unsafe { libc::waitpid(pid, &mut raw_status, libc::WNOHANG) };
        if reaped == pid {
            return Ok(Some(ExitStatus::from_raw(raw_status)));
        }
        if reaped == 0 {
            return Ok(None);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// `waitpid(pid, 0)`, for a child that has exited or been SIGKILLed.
fn reap_blocking(pid: libc::pid_t) {
    loop {
        let mut raw_status: libc::c_int = 0;
        // SAFETY: `raw_status` is writable for the duration of the call.
        let reaped = unsafe { libc::waitpid(pid, &mut raw_status, 0) };
        if reaped == pid || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// A per-instance working directory, removed with everything in it on drop.
pub struct SandboxWorkdir {
    directory: tempfile::TempDir,
}

impl SandboxWorkdir {
    /// Creates a fresh directory under `base` (created first if missing), readable only by its
    /// owner.
    pub fn create(base: &Path) -> SpearResult<SandboxWorkdir> {
        let created = fs::create_dir_all(base).and_then(|()| {
            tempfile::Builder::new()
                .prefix("instance-")
                .tempdir_in(base)
        });
        match created {
            Ok(directory) => Ok(SandboxWorkdir { directory }),
            Err(error) => Err(SpearError::internal(format!(
                "cannot create a working directory under {}: {error}",
                base.display()
            ))),
        }
    }

    pub fn path(&self) -> &Path {
        self.directory.path()
    }
}

/// Starts `spec.program` sandboxed. An `Internal` error naming the program when it cannot be
/// started (missing, not executable, not a program for this machine, limits or identity
/// refused).
pub fn spawn_sandboxed(spec: SandboxSpec) -> SpearResult<SandboxedChild> {
    let program_display = spec.program.display().to_string();
    let cannot_start = |reason: String| {
        SpearError::internal(format!("cannot start process {program_display}: {reason}"))
    };
    check_executable_header(&spec.program).map_err(&cannot_start)?;
    if let Some(run_as) = spec.limits.run_as {
        std::os::unix::fs::chown(&spec.working_directory, Some(run_as.uid), Some(run_as.gid))
            .map_err(|error| {
                cannot_start(format!(
                    "cannot hand the working directory {} to uid {}: {error}",
                    spec.working_directory.display(),
                    run_as.uid
                ))
            })?;
    }

    let cgroup = match &detected().instances_parent {
        Some(instances_parent) => {
            Some(InstanceCgroup::create(instances_parent, &spec.limits).map_err(&cannot_start)?)
        }
        None => None,
    };
    let setup = ChildSetup {
        descriptor_scan_end: libc::c_int::try_from(
            current_soft_limit(libc::RLIMIT_NOFILE).min(DESCRIPTOR_SCAN_CAP),
        )
        .unwrap_or(libc::c_int::MAX),
        cgroup_procs_fd: cgroup.as_ref().map(|cgroup| cgroup.procs.as_raw_fd()),
        rlimits: rlimits_for(&spec.limits, cgroup.is_some()),
        run_as: spec.limits.run_as,
    };
    // `cgroup` (which owns the `cgroup.procs` descriptor the child writes to) outlives the spawn.
    let started = start_process(&spec, setup);
    let cgroup = cgroup.map(InstanceCgroup::into_path);
    match started {
        Ok(started) => Ok(SandboxedChild {
            process_id: started.process_id,
            process_group: started.pid,
            exit_watch: started.exit_watch,
            status: None,
            lost: false,
            group_finished: false,
            cgroup,
            stdin: started.stdin,
            stdout: Some(started.stdout),
            stderr: Some(started.stderr),
        }),
        Err(error) => {
            if let Some(cgroup) = &cgroup {
                let _ = fs::remove_dir(cgroup);
            }
            Err(cannot_start(error.to_string()))
        }
    }
}

/// A process that has exec'd its program.
struct StartedProcess {
    pid: libc::pid_t,
    process_id: u32,
    exit_watch: ExitWatch,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

/// Builds everything the child needs, clones it and learns whether its exec succeeded.
fn start_process(spec: &SandboxSpec, setup: ChildSetup) -> io::Result<StartedProcess> {
    let nul_error =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains NUL"));
    // The program is resolved against the node's working directory, as the header check did,
    // and executed by path (no PATH search); argv[0] is the path as given.
    let program = CString::new(std::path::absolute(&spec.program)?.as_os_str().as_bytes())
        .map_err(|_| nul_error("the program path"))?;
    let mut arguments = Vec::with_capacity(spec.arguments.len() + 1);
    arguments.push(
        CString::new(spec.program.as_os_str().as_bytes())
            .map_err(|_| nul_error("the program path"))?,
    );
    for argument in &spec.arguments {
        arguments.push(CString::new(argument.as_bytes()).map_err(|_| nul_error("an argument"))?);
    }
    // Later declarations of a name win, as with `Command::env`.
    let variables: BTreeMap<&str, &str> = spec
        .environment
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let mut environment = Vec::with_capacity(variables.len());
    for (name, value) in variables {
        if name.is_empty() || name.contains('=') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid environment variable name {name:?}"),
            ));
        }
        environment.push(
            CString::new(format!("{name}={value}"))
                .map_err(|_| nul_error("an environment variable"))?,
        );
    }
    let argv = null_terminated(&arguments);
    let envp = null_terminated(&environment);
    let working_directory = CString::new(spec.working_directory.as_os_str().as_bytes())
        .map_err(|_| nul_error("the working directory"))?;

    let (stdin_parent, stdin_child) = if spec.stdin {
        let (read, write) = cloexec_pipe()?;
        (Some(write), read)
    } else {
        (None, fs::File::open("/dev/null")?.into())
    };
    let (stdout_parent, stdout_child) = cloexec_pipe()?;
    let (stderr_parent, stderr_child) = cloexec_pipe()?;
    let (error_read, error_write) = cloexec_pipe()?;
    // The child dup2s its ends onto 0, 1 and 2: none of them may be one of those already.
    let stdin_child = above_stdio(stdin_child)?;
    let stdout_child = above_stdio(stdout_child)?;
    let stderr_child = above_stdio(stderr_child)?;
    let error_write = above_stdio(error_write)?;
    let stdin = stdin_parent.map(pipe::Sender::from_owned_fd).transpose()?;
    let stdout = pipe::Receiver::from_owned_fd(stdout_parent)?;
    let stderr = pipe::Receiver::from_owned_fd(stderr_parent)?;

    // SAFETY: `sigset_t` is plain data; sigemptyset initialises it.
    let mut empty_signal_set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty_signal_set` is writable.
    unsafe { libc::sigemptyset(&mut empty_signal_set) };
    let plan = ChildPlan {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        working_directory: working_directory.as_ptr(),
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        error_fd: error_write.as_raw_fd(),
        last_signal: libc::SIGRTMAX(),
        empty_signal_set,
        setup,
    };
    let pid = clone_and_exec(&plan)?;
    // The child has exec'd or exited: its ends (and the strings `plan` points into) are no
    // longer needed here.
    drop((stdin_child, stdout_child, stderr_child, error_write));

    if let Some(failure) = read_child_failure(&error_read) {
        // Normally the child has exited already; after a failed read of the pipe it may be
        // running, so make sure it ends before reaping it.
        // SAFETY: plain syscall on integers; `pid` is an unreaped child of this process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        reap_blocking(pid);
        return Err(failure);
    }
    let process_id = u32::try_from(pid).map_err(|_| io::Error::other("negative process id"))?;
    Ok(StartedProcess {
        pid,
        process_id,
        exit_watch: watch_exit(pid),
        stdin,
        stdout,
        stderr,
    })
}

/// The pointers of `strings`, then a null pointer: an argv or envp array. Valid while `strings`
/// is.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A pipe, both ends close-on-exec: `(read, write)`.
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut ends: [libc::c_int; 2] = [-1; 2];
    // SAFETY: `ends` is writable for two descriptors.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) })
}

/// `descriptor`, moved to a number from 3 up (close-on-exec) if it is 0, 1 or 2 (the node was
/// started with some of them closed).
fn above_stdio(descriptor: OwnedFd) -> io::Result<OwnedFd> {
    if descriptor.as_raw_fd() > 2 {
        return Ok(descriptor);
    }
    // SAFETY: plain syscall on an open descriptor owned by `descriptor`.
    let moved = unsafe { libc::fcntl(descriptor.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl succeeded, so `moved` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// A pidfd for `pid` registered with tokio's reactor, or polling where that is unavailable.
fn watch_exit(pid: libc::pid_t) -> ExitWatch {
    // SAFETY: plain syscall on integers. `pid` is an unreaped child of this process, so it
    // cannot name another process.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(pidfd) = RawFd::try_from(pidfd) else {
        return ExitWatch::Poll;
    };
    if pidfd < 0 {
        return ExitWatch::Poll;
    }
    // SAFETY: pidfd_open succeeded, so `pidfd` is a fresh descriptor owned by nobody else (and
    // close-on-exec, as pidfds always are).
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: the `OwnedFd` keeps the descriptor open, unchanged, for as long as the `AsyncFd`
    // owns it.
    match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
        Ok(pidfd) => ExitWatch::Pidfd(pidfd),
        Err(_) => ExitWatch::Poll,
    }
}

/// Waits (blocking, but only until the child has exec'd or exited, which it has by the time
/// `clone` returns) for the child's report on the error pipe: `None` when it exec'd.
fn read_child_failure(error_read: &OwnedFd) -> Option<io::Error> {
    let mut report = [0u8; 8];
    loop {
        // SAFETY: `report` is writable for its length; the descriptor is open.
        let read = unsafe {
            libc::read(
                error_read.as_raw_fd(),
                report.as_mut_ptr().cast(),
                report.len(),
            )
        };
        if read == 0 {
            return None;
        }
        if read == 8 {
            let report = u64::from_ne_bytes(report);
            let step = (report >> 32) as u32;
            let error = io::Error::from_raw_os_error(report as u32 as i32);
            return Some(match ChildStep::describe(step) {
                None => error,
                Some(step) => io::Error::new(error.kind(), format!("{step}: {error}")),
            });
        }
        if read > 0 {
            return Some(io::Error::other(
                "a truncated report from the starting process",
            ));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Some(error);
        }
    }
}

/// Refuses files the kernel would not execute before glibc's `execvp` gets to them: on
/// `ENOEXEC` it would run the file with `/bin/sh` instead of failing.
fn check_executable_header(program: &Path) -> Result<(), String> {
    let header = read_header(program).map_err(|error| error.to_string())?;
    if header.starts_with(b"#!") {
        return Ok(());
    }
    if !header.starts_with(b"\x7fELF") {
        return Err("not an executable: neither an ELF file nor a script starting with #!".into());
    }
    static NODE_HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    let node_header =
        NODE_HEADER.get_or_init(|| read_header(Path::new("/proc/self/exe")).unwrap_or_default());
    // Class (32/64-bit) and byte order at 4..6, machine at 18..20.
    let describes_this_machine = header.len() >= 20
        && node_header.len() >= 20
        && header[4..6] == node_header[4..6]
        && header[18..20] == node_header[18..20];
    if describes_this_machine {
        Ok(())
    } else {
        Err("an ELF executable for another machine or word size".into())
    }
}

fn read_header(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut header = Vec::with_capacity(20);
    fs::File::open(path)?.take(20).read_to_end(&mut header)?;
    Ok(header)
}

#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

/// What the cloned child does before exec. Plain data: the child must not allocate.
struct ChildSetup {
    /// Where to stop marking inherited descriptors close-on-exec one by one, on kernels
    /// without `close_range` (before 5.11).
    descriptor_scan_end: libc::c_int,
    cgroup_procs_fd: Option<libc::c_int>,
    rlimits: [(RlimitResource, Option<libc::rlimit>); 4],
    run_as: Option<RunAs>,
}

/// The rlimits for `limits`, each clamped to the node's own hard limit (a process without
/// privileges cannot raise it, and the child should not exceed the node anyway).
fn rlimits_for(
    limits: &ProcessLimits,
    cgroups: bool,
) -> [(RlimitResource, Option<libc::rlimit>); 4] {
    const MIB: u64 = 1024 * 1024;
    let limit = |resource: RlimitResource, soft: u64, hard: u64| {
        let node_hard = current_hard_limit(resource);
        Some(libc::rlimit {
            rlim_cur: soft.min(node_hard),
            rlim_max: hard.min(node_hard),
        })
    };
    let address_space = (limits.address_space_mb > 0).then(|| {
        let bytes = limits.address_space_mb.saturating_mul(MIB);
        (bytes, bytes)
    });
    let cpu = (limits.cpu_seconds > 0)
        .then(|| (limits.cpu_seconds, limits.cpu_seconds.saturating_add(1)));
    let open_files =
        (limits.max_open_files > 0).then_some((limits.max_open_files, limits.max_open_files));
    let processes = (!cgroups && limits.run_as.is_some() && limits.max_pids > 0)
        .then_some((u64::from(limits.max_pids), u64::from(limits.max_pids)));
    [
        (libc::RLIMIT_AS, address_space),
        (libc::RLIMIT_CPU, cpu),
        (libc::RLIMIT_NOFILE, open_files),
        (libc::RLIMIT_NPROC, processes),
    ]
    .map(|(resource, values)| {
        (
            resource,
            values.and_then(|(soft, hard)| limit(resource, soft, hard)),
        )
    })
}

/// The most descriptors the fallback of [`run_child`] looks at.
const DESCRIPTOR_SCAN_CAP: u64 = 65536;

fn current_hard_limit(resource: RlimitResource) -> u64 {
    current_limit(resource).rlim_max
}

fn current_soft_limit(resource: RlimitResource) -> u64 {
    current_limit(resource).rlim_cur
}

fn current_limit(resource: RlimitResource) -> libc::rlimit {
    let mut current = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `current` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(resource, &mut current) } == 0 {
        current
    } else {
        libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        }
    }
}

/// Everything the cloned child needs, built before the clone. The pointers point into strings
/// and arrays owned by [`start_process`], which outlive the child's use of them (the parent is
/// suspended until the child execs or exits).
struct ChildPlan {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    working_directory: *const libc::c_char,
    /// The child's ends of stdin, stdout and stderr, all numbered 3 or higher.
    stdio: [RawFd; 3],
    /// The write end of the close-on-exec error pipe, 3 or higher.
    error_fd: RawFd,
    /// The highest signal number (`SIGRTMAX`).
    last_signal: libc::c_int,
    /// What the signal mask becomes before exec.
    empty_signal_set: libc::sigset_t,
    setup: ChildSetup,
}

/// The step of the child's setup that failed, reported with `errno` through the error pipe.
#[derive(Clone, Copy)]
#[repr(u32)]
enum ChildStep {
    Exec = 0,
    Stdio,
    Chdir,
    ProcessGroup,
    Cgroup,
    Rlimit,
    Groups,
    Gid,
    Uid,
    SignalMask,
}

impl ChildStep {
    /// What failed, for the error message; `None` for exec (the error speaks for itself).
    fn describe(step: u32) -> Option<&'static str> {
        Some(match step {
            1 => "connecting stdin, stdout and stderr",
            2 => "entering the working directory",
            3 => "creating the process group",
            4 => "joining the cgroup",
            5 => "setting a resource limit",
            6 => "clearing the supplementary groups",
            7 => "switching gid",
            8 => "switching uid",
            9 => "resetting the signal mask",
            _ => return None,
        })
    }
}

/// Size of the child's stack (touched only as far as used), above one guard page.
const CHILD_STACK_BYTES: usize = 256 * 1024;

/// `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` running [`child_main`] with `plan` on a fresh stack.
/// Returns once the child has exec'd or exited, with its pid.
fn clone_and_exec(plan: &ChildPlan) -> io::Result<libc::pid_t> {
    // SAFETY: sysconf is a plain query.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let length = CHILD_STACK_BYTES + page;
    // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let unmap = StackMapping {
        start: stack,
        length,
    };
    // The stack grows down: its lowest page becomes the guard.
    // SAFETY: the first page lies within the mapping just created.
    if unsafe { libc::mprotect(stack, page, libc::PROT_NONE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `length` bytes past `stack` is the end of the mapping; the end of a page-aligned
    // mapping is 16-byte aligned as the ABI wants for a stack top.
    let stack_top = unsafe { stack.cast::<u8>().add(length) }.cast::<c_void>();

    // Block every signal in this thread while the child runs, so that no handler of the node
    // runs in the child (which shares the node's memory) before it has reset the dispositions.
    // SAFETY: `sigset_t` is plain data; sigfillset initialises it.
    let mut all_signals: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all_signals` is writable.
    unsafe { libc::sigfillset(&mut all_signals) };
    // SAFETY: as above.
    let mut previous_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid for the call.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all_signals, &mut previous_mask) };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: the child runs `child_main` on its own stack (`stack_top`, unused by anyone else,
    // unmapped only after clone returns, when the child has exec'd or exited). With CLONE_VFORK
    // this thread is suspended until then, so `plan` and everything it points into stay valid
    // and unchanged while the child reads them. `child_main` only makes raw syscalls on that
    // data (see the module documentation) and never returns.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack_top,
            flags,
            std::ptr::from_ref(plan).cast_mut().cast(),
        )
    };
    // Read before anything else can change errno (the child may have, but only if pid > 0).
    let clone_error = io::Error::last_os_error();
    // SAFETY: `previous_mask` is the valid mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous_mask, std::ptr::null_mut()) };
    drop(unmap);
    if pid < 0 {
        return Err(clone_error);
    }
    Ok(pid)
}

/// Unmaps the child's stack.
struct StackMapping {
    start: *mut c_void,
    length: usize,
}

impl Drop for StackMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `clone_and_exec`, no longer used by anyone.
        unsafe {
            libc::munmap(self.start, self.length);
        }
    }
}

/// The cloned child: sets itself up as `plan` says and execs, or reports the failing step and
/// `errno` on the error pipe and exits with 127. Never returns.
///
/// Runs in the parent's memory, on its own stack, while the parent's thread is suspended: only
/// raw syscalls on prepared data, no allocation, no locks, no panics.
extern "C" fn child_main(plan: *mut c_void) -> libc::c_int {
    // SAFETY: `plan` is the `&ChildPlan` passed to clone, valid until the child execs or exits.
    let plan = unsafe { &*plan.cast_const().cast::<ChildPlan>() };
    let (step, errno) = run_child(plan);
    let report = (u64::from(step as u32) << 32) | u64::from(errno as u32);
    let report = report.to_ne_bytes();
    loop {
        // SAFETY: `report` is readable for its length; the error pipe is open until exec.
        let written = unsafe { libc::write(plan.error_fd, report.as_ptr().cast(), report.len()) };
        if written >= 0 || last_errno() != libc::EINTR {
            break;
        }
    }
    // SAFETY: ends the child at once, without running any of the parent's exit handlers.
    unsafe { libc::_exit(127) }
}

/// `errno` of the calling thread (the child shares the suspended parent thread's).
fn last_errno() -> libc::c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(any(target_arch = "x86", target_arch = "arm"))]
mod credential_syscalls {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
    pub const SETGID: libc::c_long = libc::SYS_setgid32;
    pub const SETUID: libc::c_long = libc::SYS_setuid32;
}
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
mod credential_syscalls {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups;
    pub const SETGID: libc::c_long = libc::SYS_setgid;
    pub const SETUID: libc::c_long = libc::SYS_setuid;
}

/// The child's setup, in std's order: stdio, working directory, process group; then what std's
/// `pre_exec` hook used to do: close-on-exec for inherited descriptors, the cgroup, rlimits and
/// the identity; then signals, and exec. Returns only on failure, with the step and `errno`.
fn run_child(plan: &ChildPlan) -> (ChildStep, libc::c_int) {
    let setup = &plan.setup;
    for (target, source) in (0..).zip(plan.stdio) {
        // SAFETY: plain syscall on integers. `source` is 3 or higher, so no earlier dup2 has
        // replaced it, and dup2 leaves the copy without close-on-exec.
        if unsafe { libc::dup2(source, target) } < 0 {
            return (ChildStep::Stdio, last_errno());
        }
    }
    // SAFETY: `working_directory` is a NUL-terminated string owned by the suspended parent.
    if unsafe { libc::chdir(plan.working_directory) } != 0 {
        return (ChildStep::Chdir, last_errno());
    }
    // SAFETY: plain syscall on integers.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return (ChildStep::ProcessGroup, last_errno());
    }
    // Descriptors the node opens are close-on-exec already, but the node may have inherited some
    // that are not from whatever started it. They are marked, not closed: the error pipe must
    // stay open until exec.
    let first_inherited: libc::c_uint = 3;
    // SAFETY: plain syscall on integers; it changes only descriptor flags of the child's own
    // descriptor table (no CLONE_FILES).
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first_inherited,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked != 0 {
        for descriptor in 3..setup.descriptor_scan_end {
            // SAFETY: plain syscall on integers; a descriptor that is not open fails with EBADF.
            unsafe {
                libc::fcntl(descriptor, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    if let Some(procs_fd) = setup.cgroup_procs_fd {
        // Writing "0" to cgroup.procs moves the writing process.
        // SAFETY: `procs_fd` is open (owned by the suspended parent, closed here only by exec)
        // and the buffer is a one-byte static.
        if unsafe { libc::write(procs_fd, b"0".as_ptr().cast(), 1) } != 1 {
            return (ChildStep::Cgroup, last_errno());
        }
    }
    for (resource, limit) in &setup.rlimits {
        let Some(limit) = limit else { continue };
        // SAFETY: `limit` is a valid rlimit for the duration of the call; glibc's setrlimit is a
        // plain prlimit64 syscall.
        if unsafe { libc::setrlimit(*resource, limit) } != 0 {
            return (ChildStep::Rlimit, last_errno());
        }
    }
    if let Some(run_as) = setup.run_as {
        // Raw syscalls, not glibc's wrappers: those would apply the change to every thread of
        // the node (see the module documentation).
        // Clearing supplementary groups needs CAP_SETGID; a node without it keeps its own
        // groups (and can only "switch" to its own uid and gid anyway).
        // SAFETY: a zero-length list with a null pointer is the documented way to clear groups.
        let cleared =
            unsafe { libc::syscall(credential_syscalls::SETGROUPS, 0, std::ptr::null::<u32>()) };
        if cleared != 0 && last_errno() != libc::EPERM {
            return (ChildStep::Groups, last_errno());
        }
        // The gid first: once the uid has changed, the process may no longer change its gid.
        // SAFETY: plain syscall on integers.
        if unsafe { libc::syscall(credential_syscalls::SETGID, run_as.gid) } != 0 {
            return (ChildStep::Gid, last_errno());
        }
        // SAFETY: plain syscall on integers.
        if unsafe { libc::syscall(credential_syscalls::SETUID, run_as.uid) } != 0 {
            return (ChildStep::Uid, last_errno());
        }
    }
    // Every signal is blocked (the parent blocked them around the clone). Put every handled
    // signal back to its default, so that none of the node's handlers can run here once they are
    // unblocked, and SIGPIPE too (Rust ignores it; programs expect the default). Other ignored
    // signals stay ignored across exec, as with std.
    for signal in 1..=plan.last_signal {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `sigaction` is plain data; all zeroes is valid.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `current` is writable; a null new action only queries. Signals glibc reserves
        // for itself fail with EINVAL and are skipped (exec resets them anyway).
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } != 0 {
            continue;
        }
        let handled =
            current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
        if handled || (signal == libc::SIGPIPE && current.sa_sigaction != libc::SIG_DFL) {
            // SAFETY: as above; all zeroes with `SIG_DFL` is the default disposition.
            let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
            default.sa_sigaction = libc::SIG_DFL;
            // SAFETY: `default` is a valid action for the duration of the call. The child has
            // its own copy of the dispositions (no CLONE_SIGHAND).
            unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
        }
    }
    // SAFETY: `empty_signal_set` is a valid, empty set; glibc's sigprocmask is a plain
    // rt_sigprocmask syscall.
    let unblocked = unsafe {
        libc::sigprocmask(
            libc::SIG_SETMASK,
            &plan.empty_signal_set,
            std::ptr::null_mut(),
        )
    };
    if unblocked != 0 {
        return (ChildStep::SignalMask, last_errno());
    }
    // SAFETY: the program path and the NUL-terminated argv and envp arrays of NUL-terminated
    // strings are owned by the suspended parent.
    unsafe { libc::execve(plan.program, plan.argv, plan.envp) };
    (ChildStep::Exec, last_errno())
}

/// SIGKILLs every process of the group `process_group`. Refuses ids that would name the
/// caller's own group or every process (0, 1 and negative ids).
fn kill_process_group(process_group: libc::pid_t) {
    if process_group > 1 {
        // SAFETY: plain syscall on integers, no memory involved. (That the id still names the
        // group this module created is `SandboxedChild::group_finished`'s concern.)
        unsafe {
            libc::killpg(process_group, libc::SIGKILL);
        }
    }
}

/// Looks `name` up in the user database (files, and whatever else NSS is configured with).
fn look_up_user(name: &str) -> io::Result<Option<RunAs>> {
    let Ok(name) = CString::new(name) else {
        return Ok(None);
    };
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: `passwd` is plain data (integers and raw pointers); all zeroes is valid.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `entry` and
        // `found` are writable, and `buffer` is writable for `buffer.len()` bytes. `entry`'s
        // strings point into `buffer`, but only its integer fields are read.
        let result = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        if result == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if result != 0 {
            return Err(io::Error::from_raw_os_error(result));
        }
        if found.is_null() {
            return Ok(None);
        }
        return Ok(Some(RunAs {
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }));
    }
}

/// A process's own cgroup, created with its limits, and `cgroup.procs` opened for the child to
/// join through.
struct InstanceCgroup {
    path: PathBuf,
    procs: fs::File,
}

static NEXT_INSTANCE_CGROUP: AtomicU64 = AtomicU64::new(0);

impl InstanceCgroup {
    fn create(instances_parent: &Path, limits: &ProcessLimits) -> Result<InstanceCgroup, String> {
        let name = format!(
            "instance-{}-{}",
            std::process::id(),
            NEXT_INSTANCE_CGROUP.fetch_add(1, Ordering::Relaxed)
        );
        let path = instances_parent.join(name);
        fs::create_dir(&path)
            .map_err(|error| format!("cannot create cgroup {}: {error}", path.display()))?;
        match Self::configure(&path, limits) {
            Ok(procs) => Ok(InstanceCgroup { path, procs }),
            Err(error) => {
                let _ = fs::remove_dir(&path);
                Err(format!(
                    "cannot configure cgroup {}: {error}",
                    path.display()
                ))
            }
        }
    }

    fn configure(path: &Path, limits: &ProcessLimits) -> io::Result<fs::File> {
        let memory_max = match limits.memory_limit_mb {
            0 => "max".to_string(),
            megabytes => (u64::from(megabytes) * 1024 * 1024).to_string(),
        };
        let pids_max = match limits.max_pids {
            0 => "max".to_string(),
            pids => pids.to_string(),
        };
        fs::write(path.join("memory.max"), memory_max)?;
        // Without this, a host with swap lets the process page out past memory.max. The file
        // exists only when swap accounting is on.
        let _ = fs::write(path.join("memory.swap.max"), "0");
        fs::write(path.join("pids.max"), pids_max)?;
        fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
    }

    fn into_path(self) -> PathBuf {
        self.path
    }
}

/// Removes a process's cgroup once its killed members have exited (rmdir fails while any is
/// still there). Retries in the background for a second when a tokio runtime is at hand.
fn remove_cgroup_when_empty(cgroup: PathBuf) {
    if fs::remove_dir(&cgroup).is_ok() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if fs::remove_dir(&cgroup).is_ok() || !cgroup.exists() {
                return;
            }
        }
        tracing::warn!(cgroup = %cgroup.display(), "could not remove a process cgroup");
    });
}

/// Finds or makes the group under which each process gets its own cgroup; `Err` says why
/// cgroups are not usable.
fn prepare_cgroup_parent() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|error| format!("cannot read /proc/self/mountinfo: {error}"))?;
    let mount_point = cgroup2_mount_point(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
    let membership = fs::read_to_string("/proc/self/cgroup")
        .map_err(|error| format!("cannot read /proc/self/cgroup: {error}"))?;
    let own_path = unified_cgroup_path(&membership).ok_or("the node is in no cgroup v2 group")?;
    let own_group = mount_point.join(own_path.trim_start_matches('/'));
    let controllers = fs::read_to_string(own_group.join("cgroup.controllers")).unwrap_or_default();
    if !offers_controllers(&controllers, &["memory", "pids"]) {
        return Err(format!(
            "cgroup v2 group {} does not offer the memory and pids controllers (offers {:?})",
            own_group.display(),
            controllers.trim()
        ));
    }
    let at_root = own_path.trim_matches('/').is_empty();
    let instances_parent = if at_root {
        own_group.join("spearlet")
    } else {
        move_into_leaf(&own_group)?;
        own_group.join("spearlet-instances")
    };
    let prepared = enable_controllers(&own_group)
        .and_then(|()| match fs::create_dir(&instances_parent) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => Err(error),
            _ => Ok(()),
        })
        .and_then(|()| enable_controllers(&instances_parent))
        .and_then(|()| probe_instance_group(&instances_parent));
    if let Err(error) = prepared {
        if !at_root {
            move_back_from_leaf(&own_group);
        }
        return Err(format!(
            "cannot set up cgroup {}: {error}",
            instances_parent.display()
        ));
    }
    Ok(instances_parent)
}

/// Moves the node into `<own_group>/spearlet-node`, so that `own_group` holds no process and
/// may hand controllers to its children. Only when the node is alone in its group.
fn move_into_leaf(own_group: &Path) -> Result<(), String> {
    let procs = fs::read_to_string(own_group.join("cgroup.procs"))
        .map_err(|error| format!("cannot read {}/cgroup.procs: {error}", own_group.display()))?;
    let own_pid = std::process::id().to_string();
    if procs.lines().any(|pid| pid.trim() != own_pid) {
        return Err(format!(
            "cgroup v2 group {} holds other processes besides the node",
            own_group.display()
        ));
    }
    let leaf = own_group.join("spearlet-node");
    let moved = match fs::create_dir(&leaf) {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => Err(error),
        _ => Ok(()),
    }
    .and_then(|()| fs::write(leaf.join("cgroup.procs"), &own_pid));
    moved.map_err(|error| format!("cannot move the node into {}: {error}", leaf.display()))
}

fn move_back_from_leaf(own_group: &Path) {
    let _ = fs::write(
        own_group.join("cgroup.procs"),
        std::process::id().to_string(),
    );
    let _ = fs::remove_dir(own_group.join("spearlet-node"));
}

fn enable_controllers(group: &Path) -> io::Result<()> {
    let enabled = fs::read_to_string(group.join("cgroup.subtree_control"))?;
    if offers_controllers(&enabled, &["memory", "pids"]) {
        return Ok(());
    }
    fs::write(group.join("cgroup.subtree_control"), "+memory +pids")
}

/// Creates and removes one group with both limits written, proving that instances can.
fn probe_instance_group(instances_parent: &Path) -> io::Result<()> {
    let probe = instances_parent.join(format!("probe-{}", std::process::id()));
    fs::create_dir(&probe)?;
    let written = fs::write(probe.join("memory.max"), "max")
        .and_then(|()| fs::write(probe.join("pids.max"), "max"));
    let removed = fs::remove_dir(&probe);
    written.and(removed)
}

/// The mount point of the first cgroup v2 hierarchy in a `/proc/self/mountinfo` text.
fn cgroup2_mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount_fields, filesystem_fields) = line.split_once(" - ")?;
        if filesystem_fields.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = mount_fields.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut unescaped = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match escape {
            Some(byte) if bytes[index] == b'\\' => {
                unescaped.push(byte);
                index += 4;
            }
            _ => {
                unescaped.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&unescaped).into_owned()
}

/// The cgroup v2 path (`0::<path>`) in a `/proc/self/cgroup` text.
fn unified_cgroup_path(membership: &str) -> Option<&str> {
    membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim)
}

fn offers_controllers(listed: &str, wanted: &[&str]) -> bool {
    wanted.iter().all(|controller| {
        listed
            .split_whitespace()
            .any(|listed| listed == *controller)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_accepts_uid_uid_gid_and_user_names() {
        assert_eq!(
            RunAs::parse("1000").unwrap(),
            RunAs {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            RunAs::parse("1000:50").unwrap(),
            RunAs { uid: 1000, gid: 50 }
        );
        assert_eq!(RunAs::parse("root").unwrap(), RunAs { uid: 0, gid: 0 });
    }

    #[test]
    fn run_as_errors_name_the_setting() {
        for text in ["", "1000:", "x:1", "no-such-user-spearlet", "a\0b"] {
            let error = RunAs::parse(text).unwrap_err();
            assert_eq!(
                error.kind,
                spearlet_core::ErrorKind::InvalidArgument,
                "{text:?}"
            );
            assert!(
                error.message.contains("spearlet.process.run_as"),
                "{text:?}: {}",
                error.message
            );
        }
    }

    #[test]
    fn finds_the_cgroup2_mount_point() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
33 25 0:28 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory
26 25 0:23 / /sys/fs/cgroup/uni\\040fied rw,nosuid shared:5 - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            cgroup2_mount_point(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/uni fied"))
        );
        assert_eq!(
            cgroup2_mount_point("25 30 0:22 / /a rw - tmpfs tmpfs rw"),
            None
        );
    }

    #[test]
    fn finds_the_unified_cgroup_path() {
        let membership =
            "12:pids:/user.slice\n1:name=systemd:/x\n0::/system.slice/spearlet.service\n";
        assert_eq!(
            unified_cgroup_path(membership),
            Some("/system.slice/spearlet.service")
        );
        assert_eq!(unified_cgroup_path("12:pids:/user.slice\n"), None);
    }

    #[test]
    fn controllers_must_all_be_offered() {
        assert!(offers_controllers(
            "cpuset cpu io memory pids\n",
            &["memory", "pids"]
        ));
        assert!(!offers_controllers("cpu memory\n", &["memory", "pids"]));
        assert!(!offers_controllers("", &["memory"]));
    }

    #[test]
    fn rlimits_follow_the_limits() {
        let limits = ProcessLimits {
            cpu_seconds: 5,
            ..ProcessLimits::default()
        };
        let [address_space, cpu, open_files, processes] = rlimits_for(&limits, false);
        assert_eq!(address_space.1.unwrap().rlim_max, 4096 * 1024 * 1024);
        assert_eq!((cpu.1.unwrap().rlim_cur, cpu.1.unwrap().rlim_max), (5, 6));
        assert_eq!(open_files.1.unwrap().rlim_cur, 1024);
        assert!(processes.1.is_none(), "RLIMIT_NPROC needs run_as");

        let limits = ProcessLimits {
            address_space_mb: 0,
            run_as: Some(RunAs {
                uid: 65534,
                gid: 65534,
            }),
            ..ProcessLimits::default()
        };
        let [address_space, cpu, _, processes] = rlimits_for(&limits, false);
        assert!(address_space.1.is_none() && cpu.1.is_none());
        assert_eq!(processes.1.unwrap().rlim_max, 64);
        let [.., processes] = rlimits_for(&limits, true);
        assert!(processes.1.is_none(), "cgroups enforce pids.max instead");
    }
}
