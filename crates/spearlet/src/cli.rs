//! The command line: every subcommand, flag and environment variable, as clap derive types.
//!
//! Parsing has no side effects. Values are only checked for shape here (a `K=V` pair, a
//! `spearlet.` prefix); `main` hands the parsed arguments to the module that runs the command,
//! which turns them into requests or configuration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use spearlet_core::Priority;
use spearlet_server::LogFormat;

/// Where the client commands connect when neither `--addr` nor `SPEARLET_ADDR` is given: the
/// node's default gRPC address.
pub const DEFAULT_NODE_ADDRESS: &str = "http://127.0.0.1:50052";

/// The prefix every task setting key (`--set`) carries; see docs/FUNCTIONS.md.
pub const TASK_SETTING_PREFIX: &str = "spearlet.";

#[derive(Debug, Parser)]
#[command(
    name = "spearlet",
    version,
    about = "Run a spearlet node, or talk to one: invoke functions, manage tasks, inspect \
             executions, measure throughput.",
    propagate_version = true
)]
pub struct CommandLine {
    /// gRPC address of the node the client commands talk to (`host:port` is accepted too).
    #[arg(
        long = "addr",
        global = true,
        env = "SPEARLET_ADDR",
        default_value = DEFAULT_NODE_ADDRESS,
        value_name = "URL"
    )]
    pub node_address: String,

    /// Print machine-readable JSON instead of tables.
    #[arg(long = "json", global = true)]
    pub json_output: bool,

    /// Bearer token sent with every request to a node that requires one.
    #[arg(
        long = "token",
        global = true,
        env = "SPEARLET_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// PEM file with the CA certificate(s) that signed the node's TLS certificate, for
    /// `https://` addresses (without it the system's roots are used).
    #[arg(
        long = "tls-ca",
        global = true,
        env = "SPEARLET_TLS_CA",
        value_name = "PATH"
    )]
    pub tls_ca_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: serve spearlet.FunctionService until SIGINT or SIGTERM.
    Serve(ServeArguments),
    /// Run a function of a registered task once and print its output.
    Invoke(InvokeArguments),
    /// Register, list, show and delete tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Show, list and cancel executions.
    #[command(subcommand)]
    Exec(ExecutionCommand),
    /// Show the node's health.
    Health,
    /// Show node, task and execution statistics.
    Stats(StatsArguments),
    /// Cluster mode: the nodes of the cluster the node belongs to.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Measure invocation throughput and latency, optionally against a bare gRPC echo baseline.
    Bench(BenchArguments),
    /// Serve only the bare tonic echo method that `bench --baseline` compares against, on
    /// `--grpc-addr` (default a free loopback port, printed as `grpc://ADDR`), until stdin closes
    /// or SIGTERM. `bench` starts it itself; it is here to run the baseline in its own process.
    #[command(hide = true)]
    EchoServer(EchoServerArguments),
}

#[derive(Debug, Args)]
pub struct EchoServerArguments {
    #[arg(
        long = "grpc-addr",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:0"
    )]
    pub grpc_address: SocketAddr,
}

/// Flags of `spearlet serve`. Each one replaces the config file's value; unset flags leave it.
#[derive(Debug, Args)]
pub struct ServeArguments {
    /// TOML configuration file (see docs/CONFIG.md). Unknown keys are an error.
    #[arg(long = "config", env = "SPEARLET_CONFIG", value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// gRPC listen address; port 0 picks a free port (the chosen one is printed).
    #[arg(
        long = "grpc-addr",
        env = "SPEARLET_GRPC_ADDR",
        value_name = "HOST:PORT"
    )]
    pub grpc_address: Option<SocketAddr>,

    /// HTTP listen address of the HTTP/JSON gateway, `/metrics` and the probes; port 0 picks a
    /// free port (printed on the second stdout line).
    #[arg(
        long = "http-addr",
        env = "SPEARLET_HTTP_ADDR",
        value_name = "HOST:PORT"
    )]
    pub http_address: Option<SocketAddr>,

    /// Directory for caches and records.
    #[arg(long = "data-dir", env = "SPEARLET_DATA_DIR", value_name = "PATH")]
    pub data_directory: Option<PathBuf>,

    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    #[arg(long = "log-level", env = "SPEARLET_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log line format on stderr: `text` or `json` (one object per line).
    #[arg(
        long = "log-format",
        env = "SPEARLET_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: Option<LogFormat>,

    /// Do not register the bundled example functions as tasks at start.
    #[arg(long = "no-examples", env = "SPEARLET_NO_EXAMPLES")]
    pub no_examples: bool,

    /// Bearer tokens (comma-separated) granted every scope and task, added to `[auth]`.
    #[arg(
        long = "auth-tokens",
        env = "SPEARLET_AUTH_TOKENS",
        value_name = "TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<String>,

    /// PEM certificate chain for TLS on both listeners (with `--tls-key`).
    #[arg(
        long = "tls-cert",
        env = "SPEARLET_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(
        long = "tls-key",
        env = "SPEARLET_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// Listen on a non-loopback address without tokens or TLS anyway.
    #[arg(long = "insecure", env = "SPEARLET_INSECURE")]
    pub insecure: bool,

    /// Export spans over OTLP/gRPC to this collector (e.g. `http://127.0.0.1:4317`).
    #[arg(
        long = "otlp-endpoint",
        env = "SPEARLET_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,

    /// Join a cluster over NATS JetStream at this URL (`[cluster] nats_url`); see
    /// docs/CLUSTER.md.
    #[arg(
        long = "cluster-nats",
        env = "SPEARLET_CLUSTER_NATS_URL",
        value_name = "URL"
    )]
    pub cluster_nats_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the nodes as the node at `--addr` sees them: load, readiness, heartbeat age.
    Ls,
}

#[derive(Debug, Args)]
pub struct InvokeArguments {
    /// The task to run: its id or its name.
    #[arg(value_name = "TASK")]
    pub task: String,

    /// The export to call; the task's default (usually `_start`) when not given.
    #[arg(long = "function", value_name = "NAME")]
    pub function_name: Option<String>,

    /// The input bytes, given literally. Without `--input` or `--input-file`, stdin is read
    /// when it is not a terminal.
    #[arg(long = "input", value_name = "STRING", conflicts_with = "input_file")]
    pub input_text: Option<String>,

    /// Read the input bytes from a file.
    #[arg(long = "input-file", value_name = "PATH")]
    pub input_file: Option<PathBuf>,

    /// Deadline for the call in milliseconds (capped by the task's maximum).
    #[arg(long = "timeout", value_name = "MS")]
    pub timeout_ms: Option<i64>,

    /// Use this execution id instead of a generated one.
    #[arg(long = "execution-id", value_name = "ID")]
    pub execution_id: Option<String>,

    /// A request header passed to the function; repeatable.
    #[arg(long = "header", value_name = "K=V", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,

    /// An environment variable for the function; repeatable.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_key_value)]
    pub environment: Vec<(String, String)>,

    /// Submit the call as an async execution: the node answers at once and runs it durably.
    /// Prints the execution id and the status endpoint (the whole answer with `--json`, only
    /// the id with `--quiet`).
    #[arg(long = "async", conflicts_with = "stream")]
    pub asynchronous: bool,

    /// With `--async`: print only the execution id, one line, for scripts:
    /// `id=$(spearlet invoke sleep --async -q)`. Only for an async acceptance, whose table it
    /// replaces: a call that runs to its end (sync, `--wait`, `--stream`) prints only its output
    /// already, and `--json` prints the whole answer.
    #[arg(
        short = 'q',
        long = "quiet",
        requires = "asynchronous",
        conflicts_with_all = ["wait_for_end", "json_output"]
    )]
    pub quiet: bool,

    /// With `--async`: wait until the execution ends (at most the node's `max_wait_ms`) and
    /// print its output as a synchronous call does.
    #[arg(long = "wait", requires = "asynchronous")]
    pub wait_for_end: bool,

    /// Retries the node may make when an async execution is interrupted by a node restart
    /// (`context.max_retries`, capped by the node's `max_retries`).
    #[arg(long = "max-retries", value_name = "N",
          value_parser = clap::value_parser!(i32).range(0..))]
    pub max_retries: Option<i32>,

    /// Use StreamFunction: write the output to stdout as the function writes it. With
    /// `--json`, print every stream message as one JSON object per line instead.
    #[arg(long = "stream")]
    pub stream: bool,

    #[command(flatten)]
    pub placement: PlacementArguments,
}

/// Where and how soon a call runs: the flags `invoke` and `bench` share.
#[derive(Debug, Args)]
pub struct PlacementArguments {
    /// How soon the call gets an instance when it has to wait for one: `high`, `normal`, `low`
    /// or a digit 0-9 (9 first; the names are 9, 5 and 1). Sent as
    /// `invocation_metadata["priority"]`; the node checks the value.
    #[arg(long = "priority", value_name = "high|normal|low|0-9")]
    pub priority: Option<String>,

    /// Run on a new instance made for this call alone (a cold start) instead of a warm one.
    /// While the task already has `spearlet.pool.max_instances`, a sync or stream call is
    /// refused with RESOURCE_EXHAUSTED and an async one waits for room.
    #[arg(long = "force-new-instance")]
    pub force_new_instance: bool,
}

impl PlacementArguments {
    /// The `invocation_metadata` these flags ask for: the priority, when given.
    pub fn invocation_metadata(&self) -> HashMap<String, String> {
        self.priority
            .iter()
            .map(|priority| (Priority::METADATA_KEY.to_owned(), priority.clone()))
            .collect()
    }
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Register a task (or update it: same rules as a NEW_TASK invocation).
    Create(TaskCreateArguments),
    /// List tasks.
    #[command(alias = "list")]
    Ls(TaskListArguments),
    /// Show one task, optionally with its latest executions.
    Get(TaskGetArguments),
    /// Delete a task.
    #[command(alias = "delete")]
    Rm(TaskDeleteArguments),
}

#[derive(Debug, Args)]
pub struct TaskCreateArguments {
    /// The task name; invocations may use it instead of the task id.
    #[arg(value_name = "NAME")]
    pub task_name: String,

    /// A local file (sent inline, so remote nodes need no access to it) or a URL the node
    /// fetches: `file:///abs/path`, `http(s)://…`, `data:…;base64,…`, `artifact://sha256:…`.
    #[arg(long = "artifact", value_name = "PATH|URL")]
    pub artifact: String,

    /// The artifact type: `wasm`, or `process` for a native program.
    #[arg(long = "type", value_name = "TYPE", default_value = "wasm")]
    pub artifact_type: String,

    /// The handler a lambda-mode process task serves (default: the task name).
    #[arg(long = "function", value_name = "NAME")]
    pub function_name: Option<String>,

    /// Artifact version; a different artifact under an existing name needs a higher version.
    #[arg(long = "version", value_name = "V")]
    pub version: Option<String>,

    /// Expected `sha256:<hex>` of the artifact.
    #[arg(long = "checksum", value_name = "C")]
    pub checksum: Option<String>,

    /// A free-text description.
    #[arg(long = "description", value_name = "TEXT")]
    pub description: Option<String>,

    /// A task setting such as `spearlet.timeout_ms=5000`; repeatable.
    #[arg(long = "set", value_name = "spearlet.KEY=VALUE", value_parser = parse_task_setting)]
    pub settings: Vec<(String, String)>,

    /// A free-form label kept in the artifact metadata; repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct TaskListArguments {
    /// Only tasks whose name starts with this.
    #[arg(long = "prefix", value_name = "P", default_value = "")]
    pub name_prefix: String,

    /// Page size (the node's default when not given).
    #[arg(long = "limit", value_name = "N")]
    pub page_size: Option<i32>,

    /// Follow pagination until every matching task is listed.
    #[arg(long = "all")]
    pub all_pages: bool,
}

#[derive(Debug, Args)]
pub struct TaskGetArguments {
    /// Task id or name.
    #[arg(value_name = "ID")]
    pub task: String,

    /// Also show this many of the task's latest executions.
    #[arg(long = "executions", value_name = "N")]
    pub execution_limit: Option<i32>,
}

#[derive(Debug, Args)]
pub struct TaskDeleteArguments {
    /// Task id or name.
    #[arg(value_name = "ID")]
    pub task: String,

    /// Cancel the task's pending and running executions instead of refusing.
    #[arg(long = "force")]
    pub force: bool,

    /// Also delete the task's execution records.
    #[arg(long = "cleanup")]
    pub cleanup_executions: bool,
}

#[derive(Debug, Subcommand)]
pub enum ExecutionCommand {
    /// Show one execution.
    Get(ExecutionGetArguments),
    /// List executions, oldest first.
    #[command(alias = "list")]
    Ls(ExecutionListArguments),
    /// Cancel a pending or running execution.
    Cancel(ExecutionCancelArguments),
}

#[derive(Debug, Args)]
pub struct ExecutionGetArguments {
    /// The execution id.
    #[arg(value_name = "ID")]
    pub execution_id: String,

    /// Also show the function's log (its stderr).
    #[arg(long = "logs")]
    pub include_logs: bool,

    /// Do not fetch or show the output.
    #[arg(long = "no-output")]
    pub no_output: bool,
}

#[derive(Debug, Args)]
pub struct ExecutionListArguments {
    /// Only executions of this task (id or name).
    #[arg(long = "task", value_name = "T")]
    pub task: Option<String>,

    /// Only executions with this status.
    #[arg(long = "status", value_name = "STATUS")]
    pub status: Option<ExecutionStatusFilter>,

    /// Page size (the node's default when not given).
    #[arg(long = "limit", value_name = "N")]
    pub page_size: Option<i32>,
}

/// The statuses `exec ls --status` accepts, spelled as the table shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecutionStatusFilter {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    Timeout,
}

impl ExecutionStatusFilter {
    pub fn to_wire(self) -> spearlet_proto::ExecutionStatus {
        use spearlet_proto::ExecutionStatus as WireStatus;
        match self {
            ExecutionStatusFilter::Pending => WireStatus::Pending,
            ExecutionStatusFilter::Running => WireStatus::Running,
            ExecutionStatusFilter::Completed => WireStatus::Completed,
            ExecutionStatusFilter::Failed => WireStatus::Failed,
            ExecutionStatusFilter::Cancelled => WireStatus::Cancelled,
            ExecutionStatusFilter::Timeout => WireStatus::Timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecutionCancelArguments {
    /// The execution id.
    #[arg(value_name = "ID")]
    pub execution_id: String,

    /// Why; recorded as the execution's error message.
    #[arg(long = "reason", value_name = "R")]
    pub reason: Option<String>,

    /// Request a forced cancellation.
    #[arg(long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatsArguments {
    /// Restrict execution statistics to the last N hours (all time when not given).
    #[arg(long = "hours", value_name = "N")]
    pub time_range_hours: Option<i32>,
}

#[derive(Debug, Args)]
pub struct BenchArguments {
    /// The task to invoke (id or name).
    #[arg(long = "task", value_name = "TASK", default_value = "echo")]
    pub task: String,

    /// The export to call; the task's default when not given.
    #[arg(long = "function", value_name = "NAME")]
    pub function_name: Option<String>,

    /// Concurrent workers; each keeps one call in flight.
    #[arg(long = "concurrency", value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,

    /// Measure for this many seconds (ignored with `--requests`).
    #[arg(long = "duration", value_name = "SECS", default_value_t = 10.0)]
    pub duration_seconds: f64,

    /// Measure exactly this many calls instead of a duration.
    #[arg(long = "requests", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub request_count: Option<u64>,

    /// Size of the input payload of every call, in bytes.
    #[arg(long = "payload-bytes", value_name = "N", default_value_t = 64)]
    pub payload_bytes: usize,

    /// Load applied before measuring, in seconds, and not reported.
    #[arg(long = "warmup", value_name = "SECS", default_value_t = 1.0)]
    pub warmup_seconds: f64,

    /// First measure a bare tonic echo server with the same load, then compare. `process` (the
    /// default) runs it as a child process with its own runtime, as the node has; `in-process`
    /// serves it from this command's own runtime, sharing the load generator's threads.
    #[arg(long = "baseline", value_name = "WHERE", num_args = 0..=1,
          default_missing_value = "process", require_equals = true)]
    pub baseline: Option<BaselinePlacement>,

    /// HTTP/2 connections; workers are spread over them round-robin.
    #[arg(long = "connections", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// `sync`: a call counts when the function has answered. `async`: every call is an async
    /// execution (no waiting) and counts when the node has durably accepted it, so latency is
    /// time to acceptance; the node keeps running the accepted executions after the bench.
    #[arg(long = "mode", value_name = "MODE", default_value = "sync")]
    pub mode: BenchMode,

    /// The input of every call, given literally (for example `--task sleep --input-text 20`);
    /// replaces the `--payload-bytes` payload of `x` characters.
    #[arg(long = "input-text", value_name = "STRING")]
    pub input_text: Option<String>,

    // `--priority` is sent with every call; `--force-new-instance` makes every call a cold start
    // on an instance of its own, so the run measures cold starts rather than warm calls.
    #[command(flatten)]
    pub placement: PlacementArguments,
}

/// Where `spearlet bench --baseline` runs the bare echo server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BaselinePlacement {
    /// A child process (`spearlet echo-server`) with its own tokio runtime, like the node.
    Process,
    /// A server on this command's runtime: client and server share two worker threads, which
    /// saves the cross-process wake-ups a separate server pays.
    InProcess,
}

impl BaselinePlacement {
    pub fn name(self) -> &'static str {
        match self {
            BaselinePlacement::Process => "process",
            BaselinePlacement::InProcess => "in-process",
        }
    }
}

/// How `spearlet bench` invokes the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// `EXECUTION_MODE_SYNC`: each call waits for the function's answer.
    Sync,
    /// `EXECUTION_MODE_ASYNC` without `wait`: each call waits only for the durable acceptance.
    Async,
}

impl BenchMode {
    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Sync => "sync",
            BenchMode::Async => "async",
        }
    }

    pub fn to_wire(self) -> spearlet_proto::ExecutionMode {
        match self {
            BenchMode::Sync => spearlet_proto::ExecutionMode::Sync,
            BenchMode::Async => spearlet_proto::ExecutionMode::Async,
        }
    }
}

/// `K=V` → `(K, V)`; the key must be non-empty, the value may be.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// A `--set` value: `spearlet.<key>=<value>`.
pub fn parse_task_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = parse_key_value(text)?;
    if !key.starts_with(TASK_SETTING_PREFIX) || key.len() == TASK_SETTING_PREFIX.len() {
        return Err(format!(
            "task setting keys start with {TASK_SETTING_PREFIX:?} (for example \
             spearlet.timeout_ms=5000); use --label for other metadata"
        ));
    }
    Ok((key, value))
}

/// A `--label` value: any `K=V` whose key is not a task setting.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = parse_key_value(text)?;
    if key.starts_with(TASK_SETTING_PREFIX) {
        return Err(format!(
            "label keys must not start with {TASK_SETTING_PREFIX:?}; use --set for task settings"
        ));
    }
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        CommandLine::command().debug_assert();
    }

    #[test]
    fn placement_flags_become_request_fields() {
        let parsed = CommandLine::try_parse_from([
            "spearlet",
            "invoke",
            "echo",
            "--priority",
            "urgent",
            "--force-new-instance",
        ])
        .unwrap();
        let Command::Invoke(arguments) = parsed.command else {
            panic!("not an invoke: {parsed:?}");
        };
        assert!(arguments.placement.force_new_instance);
        // The node, not the CLI, decides which priorities are valid.
        assert_eq!(
            arguments.placement.invocation_metadata(),
            HashMap::from([("priority".to_owned(), "urgent".to_owned())])
        );
        let parsed = CommandLine::try_parse_from(["spearlet", "bench"]).unwrap();
        let Command::Bench(arguments) = parsed.command else {
            panic!("not a bench: {parsed:?}");
        };
        assert!(!arguments.placement.force_new_instance);
        assert!(arguments.placement.invocation_metadata().is_empty());
    }

    #[test]
    fn key_value_pairs_parse() {
        let cases: [(&str, Option<(&str, &str)>); 5] = [
            ("a=b", Some(("a", "b"))),
            ("a=", Some(("a", ""))),
            ("a=b=c", Some(("a", "b=c"))),
            ("=b", None),
            ("ab", None),
        ];
        for (input, expected) in cases {
            let parsed = parse_key_value(input).ok();
            let expected = expected.map(|(key, value)| (key.to_owned(), value.to_owned()));
            assert_eq!(parsed, expected, "{input:?}");
        }
    }

    #[test]
    fn task_settings_need_the_prefix_and_labels_must_not_have_it() {
        assert!(parse_task_setting("spearlet.timeout_ms=10").is_ok());
        assert!(parse_task_setting("timeout_ms=10").is_err());
        assert!(parse_task_setting("spearlet.=10").is_err());
        assert!(parse_label("team=a").is_ok());
        assert!(parse_label("spearlet.timeout_ms=10").is_err());
    }
}
