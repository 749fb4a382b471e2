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
//! This is the only module of the crate with `unsafe`: the code that runs in the forked child
//! between `fork` and `exec` (`pre_exec`, which may only make async-signal-safe calls), and the
//! thin libc calls the standard library does not wrap (`killpg`, `getrlimit`, `getpwnam_r`).
//! Every block carries a `// SAFETY:` comment.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spearlet_core::{SpearError, SpearResult};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

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
/// Dropping it SIGKILLs the whole group if that has not happened yet; tokio reaps the leader in
/// the background.
pub struct SandboxedChild {
    child: Child,
    process_id: u32,
    /// The process group id, equal to the leader's pid.
    process_group: libc::pid_t,
    /// Set once the leader is reaped and the rest of its group killed: the group id may then be
    /// reused, so it must never be signalled again.
    group_finished: bool,
    cgroup: Option<PathBuf>,
}

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
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// SIGKILLs the whole process group (and cgroup), then reaps the leader. Idempotent.
    pub async fn kill_group(&mut self) {
        if !self.group_finished {
            self.kill_everything();
            // The leader is dead or dying: reap it. An error means it was reaped already.
            let _ = self.child.wait().await;
            self.group_finished = true;
        }
    }

    /// Waits for the leader to exit and reaps it, then SIGKILLs whatever is left of its group
    /// (descendants it left running in the background). Cancel-safe; after the first success
    /// returns the same status again.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await?;
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
        match self.child.try_wait() {
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

    fn kill_everything(&mut self) {
        kill_process_group(self.process_group);
        if let Some(cgroup) = &self.cgroup {
            // `cgroup.kill` (Linux 5.14+) also reaches descendants that left the process group.
            let _ = fs::write(cgroup.join("cgroup.kill"), "1");
        }
        let _ = self.child.start_kill();
    }
}

impl Drop for SandboxedChild {
    fn drop(&mut self) {
        if !self.group_finished {
            self.kill_everything();
        }
        if let Some(cgroup) = self.cgroup.take() {
            remove_cgroup_when_empty(cgroup);
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

    let mut command = Command::new(&spec.program);
    command
        .args(&spec.arguments)
        .env_clear()
        .envs(spec.environment.iter().map(|(name, value)| (name, value)))
        .current_dir(&spec.working_directory)
        .stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let hook = move || prepare_child(&setup);
    // SAFETY: `prepare_child` runs in the forked child before exec and makes only raw syscalls
    // (close_range, fcntl, write, setrlimit, setgroups, setgid, setuid, the last two as std's
    // own `uid`/`gid` support does) and errno reads; it neither allocates nor takes locks. The
    // fd it writes to stays open until the spawn returns, because `cgroup` (which owns it)
    // outlives `command.spawn()`.
    unsafe {
        command.pre_exec(hook);
    }
    let spawned = command.spawn();
    let Some(cgroup) = cgroup.map(InstanceCgroup::into_path) else {
        return finish_spawn(spawned, None).map_err(|error| cannot_start(error.to_string()));
    };
    match finish_spawn(spawned, Some(cgroup.clone())) {
        Ok(child) => Ok(child),
        Err(error) => {
            let _ = fs::remove_dir(&cgroup);
            Err(cannot_start(error.to_string()))
        }
    }
}

fn finish_spawn(spawned: io::Result<Child>, cgroup: Option<PathBuf>) -> io::Result<SandboxedChild> {
    let child = spawned?;
    let Some(process_id) = child.id() else {
        return Err(io::Error::other(
            "the process exited before it could be tracked",
        ));
    };
    let process_group = libc::pid_t::try_from(process_id)
        .map_err(|_| io::Error::other(format!("process id {process_id} out of range")))?;
    Ok(SandboxedChild {
        child,
        process_id,
        process_group,
        group_finished: false,
        cgroup,
    })
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

/// What the forked child does before exec. Plain data: the child must not allocate.
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

/// The most descriptors the fallback of [`prepare_child`] looks at.
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

/// Runs in the forked child between fork and exec (after std has set up stdio, the working
/// directory and the process group): keeps every descriptor but 0, 1 and 2 from crossing exec,
/// joins the cgroup, sets the rlimits, drops to `run_as`. Async-signal-safe: raw syscalls only,
/// no allocation.
fn prepare_child(setup: &ChildSetup) -> io::Result<()> {
    // Descriptors this process opens are close-on-exec already (std opens them so), but the node
    // may have inherited some that are not from whatever started it. They are marked, not
    // closed: std reports exec failures through a close-on-exec pipe that must stay open.
    let first_inherited: libc::c_uint = 3;
    // SAFETY: plain syscall on integers; it changes only descriptor flags.
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
        // SAFETY: `procs_fd` is open (inherited from the parent, closed only by exec) and the
        // buffer is a one-byte static.
        if unsafe { libc::write(procs_fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    for (resource, limit) in &setup.rlimits {
        let Some(limit) = limit else { continue };
        // SAFETY: `limit` is a valid rlimit borrowed for the duration of the call.
        if unsafe { libc::setrlimit(*resource, limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(run_as) = setup.run_as {
        // Clearing supplementary groups needs CAP_SETGID; a node without it keeps its own
        // groups (and can only "switch" to its own uid and gid anyway).
        // SAFETY: a zero-length list with a null pointer is the documented way to clear groups.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
        {
            return Err(io::Error::last_os_error());
        }
        // The gid first: once the uid has changed, the process may no longer change its gid.
        // SAFETY: plain syscall on integers.
        if unsafe { libc::setgid(run_as.gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain syscall on integers.
        if unsafe { libc::setuid(run_as.uid) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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
