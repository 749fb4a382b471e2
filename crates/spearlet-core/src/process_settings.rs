//! Settings of a process task (`artifact_type` "process"): the `spearlet.process.*` keys.
//!
//! Plain data; the process runtime (`spearlet-process`) enforces them. Every key is documented
//! in `docs/FUNCTIONS.md`.

/// How a process task runs its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProcessMode {
    /// A new process per call: input on stdin, output on stdout.
    #[default]
    Exec,
    /// Warm worker processes speaking the AWS Lambda Runtime API.
    Lambda,
}

impl ProcessMode {
    pub fn parse(text: &str) -> Option<ProcessMode> {
        match text {
            "exec" => Some(ProcessMode::Exec),
            "lambda" => Some(ProcessMode::Lambda),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProcessMode::Exec => "exec",
            ProcessMode::Lambda => "lambda",
        }
    }
}

/// Memory limit of a process task that sets no `spearlet.memory_limit_mb`, in MiB.
pub const PROCESS_DEFAULT_MEMORY_LIMIT_MB: u32 = 512;

/// The `spearlet.process.*` keys of one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSettings {
    pub mode: ProcessMode,
    /// Path of the executable inside the artifact (default `bootstrap`).
    pub entrypoint: String,
    /// `auto` | `exe` | `zip` | `tar.gz`.
    pub format: String,
    /// The handler a lambda worker serves (`_HANDLER`); `None` = the registering function name.
    pub handler: Option<String>,
    /// Processes (and threads) one instance may have.
    pub max_pids: u32,
    /// RLIMIT_AS in MiB (0 = unlimited).
    pub address_space_mb: u64,
    /// RLIMIT_CPU in seconds (0 = unlimited).
    pub cpu_seconds: u64,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// A uid, `uid:gid` or user name to run as; `None` = the node default.
    pub run_as: Option<String>,
    /// How long a lambda worker may take to poll for its first invocation, in milliseconds.
    pub init_timeout_ms: u64,
}

impl Default for ProcessSettings {
    fn default() -> ProcessSettings {
        ProcessSettings {
            mode: ProcessMode::Exec,
            entrypoint: "bootstrap".into(),
            format: "auto".into(),
            handler: None,
            max_pids: 64,
            // Node, Go and the JVM reserve far more address space than they use.
            address_space_mb: 4096,
            cpu_seconds: 0,
            max_open_files: 1024,
            run_as: None,
            init_timeout_ms: 10_000,
        }
    }
}
