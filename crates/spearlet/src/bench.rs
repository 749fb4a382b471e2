//! `spearlet bench`: a bounded, closed-loop load generator for `InvokeFunction`, with an optional
//! baseline that measures what bare tonic costs on the same machine.
//!
//! Load model: `--concurrency` workers (tokio tasks) each keep exactly one call in flight and
//! start the next as soon as the previous answers. Workers share `--connections` HTTP/2
//! channels, assigned round-robin. A run lasts `--duration` seconds or `--requests` calls, after
//! `--warmup` seconds of the same load that are not reported.
//!
//! What is counted: a call that returns a gRPC error is an *error*; a call that returns but
//! whose answer says the function failed (`success = false`) is a *failure*. Neither counts
//! towards throughput nor the latency histogram, which holds successful calls only, in
//! microseconds.
//!
//! Placement: `--priority` rides on every call as `invocation_metadata["priority"]`, and
//! `--force-new-instance` makes every call a cold start on an instance of its own. In sync mode
//! the node refuses such a call (an *error*, RESOURCE_EXHAUSTED) while the task's pool is at
//! `spearlet.pool.max_instances`, so keep `--concurrency` at or below that. The report's first
//! line names both, so a figure taken from it says whether it measured warm calls or cold starts.
//!
//! Modes (`--mode`): in `sync` mode a call is `EXECUTION_MODE_SYNC` and succeeds when the function
//! completed. In `async` mode a call is `EXECUTION_MODE_ASYNC` without `wait` and succeeds when
//! the node has durably accepted the execution (`success = true`), so throughput is acceptances
//! per second and latency is time to acceptance. The node keeps working off the accepted
//! executions after the run; the command says so on stderr.
//!
//! The baseline (`--baseline`) is an in-process tonic server with one unary method,
//! `/bench.Echo/Echo`, that returns its `Payload` unchanged. It is written without code
//! generation: a `tower::Service` routing the path to `tonic::server::Grpc::unary` with
//! `tonic_prost::ProstCodec`, exactly what generated server code does. Both sides are driven by
//! the same worker code through `tonic::client::Grpc` with `ProstCodec`, which is also what the
//! generated `FunctionServiceClient` uses, so the ratio isolates the cost of the node's work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use spearlet_proto as proto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Service, StdError};
use tonic::transport::server::TcpIncoming;
use tonic_prost::ProstCodec;

use crate::cli::{
    BaselinePlacement, BenchArguments, BenchMode, EchoServerArguments, PlacementArguments,
};
use crate::client::{NodeChannel, NodeConnection, rpc_error};
use crate::output::{self, Table};

/// The gRPC path of the baseline echo method.
const ECHO_METHOD_PATH: &str = "/bench.Echo/Echo";

/// The gRPC path of `InvokeFunction`, as the generated client sends it.
const INVOKE_FUNCTION_PATH: &str = "/spearlet.FunctionService/InvokeFunction";

/// Latencies above an hour are recorded as an hour; the histogram keeps three significant
/// digits (0.1 % resolution) over its whole range.
const HISTOGRAM_MAX_MICROSECONDS: u64 = 3_600_000_000;
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// How long the async-mode check call waits for its execution to end. The node answers a little
/// before this deadline with the execution's current state rather than letting it expire.
const ASYNC_CHECK_WAIT: Duration = Duration::from_secs(10);

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub enum StopCondition {
    /// Start no call after this much time.
    Elapsed(Duration),
    /// Start exactly this many calls in total.
    Requests(u64),
}

/// The shape of a load, shared by the baseline and the spearlet run.
#[derive(Clone, Copy, Debug)]
pub struct LoadPlan {
    pub concurrency: usize,
    pub connections: usize,
    pub stop: StopCondition,
    pub warmup: Duration,
}

impl LoadPlan {
    fn from_arguments(arguments: &BenchArguments) -> anyhow::Result<LoadPlan> {
        let seconds = |value: f64, flag: &str| {
            Duration::try_from_secs_f64(value)
                .with_context(|| format!("{flag} {value} is not a number of seconds"))
        };
        let stop = match arguments.request_count {
            Some(count) => StopCondition::Requests(count),
            None => StopCondition::Elapsed(seconds(arguments.duration_seconds, "--duration")?),
        };
        Ok(LoadPlan {
            concurrency: arguments.concurrency as usize,
            connections: arguments.connections as usize,
            stop,
            warmup: seconds(arguments.warmup_seconds, "--warmup")?,
        })
    }
}

/// One unary method to drive: its path, the request every call sends, and how to tell a
/// successful answer.
struct UnaryCall<Request, Response> {
    path: PathAndQuery,
    request: Request,
    is_success: fn(&Response) -> bool,
}

/// How many calls a run may still start.
enum CallBudget {
    Until(Instant),
    Remaining(AtomicU64),
}

impl CallBudget {
    fn new(stop: StopCondition) -> CallBudget {
        match stop {
            StopCondition::Elapsed(duration) => CallBudget::Until(Instant::now() + duration),
            StopCondition::Requests(count) => CallBudget::Remaining(AtomicU64::new(count)),
        }
    }

    /// Claims one call; false when the run is over.
    fn take_one(&self) -> bool {
        match self {
            CallBudget::Until(deadline) => Instant::now() < *deadline,
            CallBudget::Remaining(remaining) => remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                    count.checked_sub(1)
                })
                .is_ok(),
        }
    }
}

/// What a run (or one worker of it) observed.
pub struct LoadReport {
    pub successes: u64,
    pub failures: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of successful calls in microseconds.
    pub latency_microseconds: Histogram<u64>,
    pub first_problem: Option<String>,
}

impl LoadReport {
    fn empty() -> LoadReport {
        LoadReport {
            successes: 0,
            failures: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency_microseconds: Histogram::new_with_bounds(
                1,
                HISTOGRAM_MAX_MICROSECONDS,
                HISTOGRAM_SIGNIFICANT_DIGITS,
            )
            .expect("the histogram bounds are valid"),
            first_problem: None,
        }
    }

    fn merge(&mut self, other: LoadReport) {
        self.successes += other.successes;
        self.failures += other.failures;
        self.errors += other.errors;
        self.latency_microseconds
            .add(&other.latency_microseconds)
            .expect("histograms with the same bounds merge");
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
    }

    /// Successful calls per second.
    pub fn throughput(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.successes as f64 / seconds
        } else {
            0.0
        }
    }

    /// The latency at `quantile` (0–1) in milliseconds; 0 when nothing succeeded.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        if self.latency_microseconds.is_empty() {
            return 0.0;
        }
        self.latency_microseconds.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_latency_ms(&self) -> f64 {
        self.latency_microseconds.max() as f64 / 1000.0
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.successes,
            "failures": self.failures,
            "errors": self.errors,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "throughput_per_second": self.throughput(),
            "latency_ms": {
                "p50": self.latency_ms(0.50),
                "p90": self.latency_ms(0.90),
                "p99": self.latency_ms(0.99),
                "max": self.max_latency_ms(),
            },
            "first_problem": self.first_problem,
        })
    }
}

/// spearlet divided by baseline, for throughput and two latency percentiles.
struct Ratios {
    throughput: f64,
    p50: f64,
    p99: f64,
}

impl Ratios {
    fn between(spearlet: &LoadReport, baseline: &LoadReport) -> Ratios {
        let ratio = |numerator: f64, denominator: f64| {
            if denominator > 0.0 {
                numerator / denominator
            } else {
                f64::NAN
            }
        };
        Ratios {
            throughput: ratio(spearlet.throughput(), baseline.throughput()),
            p50: ratio(spearlet.latency_ms(0.50), baseline.latency_ms(0.50)),
            p99: ratio(spearlet.latency_ms(0.99), baseline.latency_ms(0.99)),
        }
    }

    fn to_json(&self) -> Value {
        let finite = |value: f64| {
            if value.is_finite() {
                json!(value)
            } else {
                Value::Null
            }
        };
        json!({
            "throughput": finite(self.throughput),
            "p50_latency": finite(self.p50),
            "p99_latency": finite(self.p99),
        })
    }
}

// The load generator.

/// One worker: claims calls from the budget until it is spent, one call in flight at a time.
async fn run_worker<Request, Response>(
    channel: NodeChannel,
    call: Arc<UnaryCall<Request, Response>>,
    budget: Arc<CallBudget>,
) -> LoadReport
where
    Request: prost::Message + Clone + Send + Sync + 'static,
    Response: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut report = LoadReport::empty();
    while budget.take_one() {
        let started = Instant::now();
        let answer = match grpc.ready().await {
            Ok(()) => {
                grpc.unary(
                    tonic::Request::new(call.request.clone()),
                    call.path.clone(),
                    ProstCodec::<Request, Response>::default(),
                )
                .await
            }
            Err(error) => Err(tonic::Status::unavailable(format!(
                "the channel is not ready: {error}"
            ))),
        };
        let latency_microseconds = started.elapsed().as_micros() as u64;
        match answer {
            Ok(response) if (call.is_success)(response.get_ref()) => {
                report.successes += 1;
                report
                    .latency_microseconds
                    .saturating_record(latency_microseconds.max(1));
            }
            Ok(_) => {
                report.failures += 1;
                report
                    .first_problem
                    .get_or_insert_with(|| "the answer said success = false".into());
            }
            Err(status) => {
                report.errors += 1;
                report
                    .first_problem
                    .get_or_insert_with(|| rpc_error(status).to_string());
            }
        }
    }
    report
}

/// Runs `plan.concurrency` workers over `channels` until `stop`, and merges what they saw.
async fn run_load<Request, Response>(
    channels: &[NodeChannel],
    call: &Arc<UnaryCall<Request, Response>>,
    concurrency: usize,
    stop: StopCondition,
) -> anyhow::Result<LoadReport>
where
    Request: prost::Message + Clone + Send + Sync + 'static,
    Response: prost::Message + Default + Send + Sync + 'static,
{
    let budget = Arc::new(CallBudget::new(stop));
    let started = Instant::now();
    let workers: Vec<JoinHandle<LoadReport>> = (0..concurrency)
        .map(|worker_index| {
            let channel = channels[worker_index % channels.len()].clone();
            tokio::spawn(run_worker(channel, call.clone(), budget.clone()))
        })
        .collect();
    let mut merged = LoadReport::empty();
    for worker in workers {
        merged.merge(worker.await.context("a bench worker panicked")?);
    }
    merged.elapsed = started.elapsed();
    Ok(merged)
}

/// Warm-up (discarded), then the measured run.
async fn measure<Request, Response>(
    channels: &[NodeChannel],
    call: UnaryCall<Request, Response>,
    plan: &LoadPlan,
) -> anyhow::Result<LoadReport>
where
    Request: prost::Message + Clone + Send + Sync + 'static,
    Response: prost::Message + Default + Send + Sync + 'static,
{
    let call = Arc::new(call);
    if !plan.warmup.is_zero() {
        run_load(
            channels,
            &call,
            plan.concurrency,
            StopCondition::Elapsed(plan.warmup),
        )
        .await?;
    }
    run_load(channels, &call, plan.concurrency, plan.stop).await
}

/// `count` separate HTTP/2 connections to `address`.
async fn connect_channels(
    connection: &NodeConnection,
    count: usize,
) -> anyhow::Result<Vec<NodeChannel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(connection.channel().await?);
    }
    Ok(channels)
}

// The baseline server.

/// The bare echo service: one unary method that returns its `Payload`.
#[derive(Clone, Copy, Debug, Default)]
struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "bench.Echo";
}

impl<Body> Service<http::Request<Body>> for EchoService
where
    Body: tonic::codegen::Body + Send + 'static,
    Body::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != ECHO_METHOD_PATH {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("bench.Echo has only the Echo method").into_http())
            });
        }
        Box::pin(async move {
            let echo = tower::service_fn(|request: tonic::Request<proto::Payload>| async move {
                Ok::<_, tonic::Status>(tonic::Response::new(request.into_inner()))
            });
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<proto::Payload, proto::Payload>::default());
            Ok(grpc.unary(echo, request).await)
        })
    }
}

/// The echo server running in this process on a free loopback port.
struct BaselineServer {
    address: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl BaselineServer {
    async fn start(address: SocketAddr) -> anyhow::Result<BaselineServer> {
        let listener = TcpListener::bind(address)
            .await
            .context("binding the baseline echo server")?;
        let address = listener
            .local_addr()
            .context("reading the baseline address")?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let (shutdown, shutdown_requested) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder().add_service(EchoService);
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_requested.await;
                })
                .await
        });
        Ok(BaselineServer {
            address,
            shutdown,
            task,
        })
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// The echo server as a child process (`spearlet echo-server`): its own tokio runtime and
/// threads, as the node under test has, so the baseline pays the same cross-process wake-ups.
/// Killed when dropped.
struct BaselineProcess {
    address: SocketAddr,
    child: tokio::process::Child,
}

impl BaselineProcess {
    async fn start() -> anyhow::Result<BaselineProcess> {
        let program = std::env::current_exe().context("locating the spearlet binary")?;
        let mut child = tokio::process::Command::new(program)
            .arg("echo-server")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting `spearlet echo-server`")?;
        let stdout = child.stdout.take().context("the echo server's stdout")?;
        let mut first_line = String::new();
        tokio::io::AsyncBufReadExt::read_line(
            &mut tokio::io::BufReader::new(stdout),
            &mut first_line,
        )
        .await
        .context("reading the echo server's address")?;
        let address = first_line
            .trim()
            .strip_prefix("grpc://")
            .and_then(|address| address.parse().ok())
            .with_context(|| {
                format!("the echo server printed {first_line:?}, not grpc://HOST:PORT")
            })?;
        Ok(BaselineProcess { address, child })
    }

    async fn stop(mut self) {
        // Closing stdin is the server's signal to stop.
        drop(self.child.stdin.take());
        let _ = self.child.wait().await;
    }
}

/// `spearlet echo-server`: serves the bare echo until stdin closes or SIGTERM/SIGINT arrives.
pub async fn echo_server(arguments: &EchoServerArguments) -> anyhow::Result<ExitCode> {
    use tokio::io::AsyncReadExt;
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let server = BaselineServer::start(arguments.grpc_address).await?;
    println!("grpc://{}", server.address);
    let mut stdin = tokio::io::stdin();
    let mut sink = [0_u8; 64];
    loop {
        tokio::select! {
            read = stdin.read(&mut sink) => if !matches!(read, Ok(count) if count > 0) { break },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}

// The command.

fn echo_call(payload: &[u8]) -> UnaryCall<proto::Payload, proto::Payload> {
    UnaryCall {
        path: PathAndQuery::from_static(ECHO_METHOD_PATH),
        request: proto::Payload {
            content_type: "application/octet-stream".into(),
            data: payload.to_vec(),
        },
        is_success: |_| true,
    }
}

/// Every call sends the same request; in async mode an accepted execution is a success, so the
/// same `success` test serves both modes.
fn invoke_call(
    arguments: &BenchArguments,
    payload: &[u8],
) -> UnaryCall<proto::InvokeFunctionRequest, proto::InvokeFunctionResponse> {
    UnaryCall {
        path: PathAndQuery::from_static(INVOKE_FUNCTION_PATH),
        request: proto::InvokeFunctionRequest {
            invocation_type: proto::InvocationType::ExistingTask as i32,
            task_id: arguments.task.clone(),
            function_name: arguments.function_name.clone().unwrap_or_default(),
            execution_mode: arguments.mode.to_wire() as i32,
            wait: false,
            input: Some(proto::Payload {
                content_type: "application/octet-stream".into(),
                data: payload.to_vec(),
            }),
            force_new_instance: arguments.placement.force_new_instance,
            invocation_metadata: arguments.placement.invocation_metadata(),
            ..Default::default()
        },
        is_success: |response| response.success,
    }
}

/// Runs the load against the bare echo server at `address`.
async fn measure_baseline(
    address: SocketAddr,
    payload: &[u8],
    plan: &LoadPlan,
) -> anyhow::Result<LoadReport> {
    let channels = connect_channels(
        &NodeConnection::plain(format!("http://{address}")),
        plan.connections,
    )
    .await?;
    measure(&channels, echo_call(payload), plan).await
}

/// One call before the run, so a wrong address or task fails with the node's own message
/// instead of a report full of errors. In async mode the check call waits for its execution
/// to end (up to [`ASYNC_CHECK_WAIT`]), so a function that fails is noticed too, not only one
/// the node refuses.
async fn check_task_answers(
    channels: &[NodeChannel],
    call: &UnaryCall<proto::InvokeFunctionRequest, proto::InvokeFunctionResponse>,
) -> anyhow::Result<()> {
    let mut grpc = tonic::client::Grpc::new(channels[0].clone());
    grpc.ready()
        .await
        .context("the channel to the node is not ready")?;
    let mut request = tonic::Request::new(call.request.clone());
    if call.request.execution_mode == proto::ExecutionMode::Async as i32 {
        request.get_mut().wait = true;
        request.set_timeout(ASYNC_CHECK_WAIT);
    }
    let response: tonic::Response<proto::InvokeFunctionResponse> = grpc
        .unary(request, call.path.clone(), ProstCodec::default())
        .await
        .map_err(rpc_error)?;
    if !response.get_ref().success {
        eprintln!(
            "warning: the first call to task {:?} failed: {}",
            call.request.task_id,
            response.get_ref().message
        );
    }
    Ok(())
}

pub async fn bench(
    arguments: &BenchArguments,
    node_connection: &NodeConnection,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let plan = LoadPlan::from_arguments(arguments)?;
    let payload = match &arguments.input_text {
        Some(text) => text.as_bytes().to_vec(),
        None => vec![b'x'; arguments.payload_bytes],
    };

    let baseline_report = match arguments.baseline {
        Some(BaselinePlacement::InProcess) => {
            let server = BaselineServer::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let report = measure_baseline(server.address, &payload, &plan).await;
            server.stop().await;
            Some(report?)
        }
        Some(BaselinePlacement::Process) => {
            let server = BaselineProcess::start().await?;
            let report = measure_baseline(server.address, &payload, &plan).await;
            server.stop().await;
            Some(report?)
        }
        None => None,
    };

    let channels = connect_channels(node_connection, plan.connections).await?;
    let spearlet_call = invoke_call(arguments, &payload);
    check_task_answers(&channels, &spearlet_call).await?;
    let spearlet_report = measure(&channels, spearlet_call, &plan).await?;

    let ratios = baseline_report
        .as_ref()
        .map(|baseline| Ratios::between(&spearlet_report, baseline));
    if json_output {
        let value = json!({
            "task": arguments.task,
            "function": arguments.function_name.clone().unwrap_or_default(),
            "mode": arguments.mode.name(),
            "priority": arguments.placement.priority,
            "force_new_instance": arguments.placement.force_new_instance,
            "concurrency": plan.concurrency,
            "connections": plan.connections,
            "payload_bytes": payload.len(),
            "input_text": arguments.input_text,
            "warmup_seconds": plan.warmup.as_secs_f64(),
            "baseline": baseline_report.as_ref().map_or(Value::Null, LoadReport::to_json),
            "baseline_placement": arguments.baseline.map(BaselinePlacement::name),
            "spearlet": spearlet_report.to_json(),
            "ratios": ratios.as_ref().map_or(Value::Null, Ratios::to_json),
        });
        print!("{}", output::render_json(&value));
    } else {
        print!(
            "{}",
            render_report(
                arguments,
                &plan,
                payload.len(),
                baseline_report.as_ref(),
                &spearlet_report,
                ratios.as_ref()
            )
        );
    }
    if arguments.mode == BenchMode::Async && spearlet_report.successes > 0 {
        let warmup_note = if plan.warmup.is_zero() {
            ""
        } else {
            " (plus those of the warm-up)"
        };
        eprintln!(
            "note: async mode counts acceptances, not completions. The node accepted {} \
             executions in the measured run{warmup_note} and keeps running them after this \
             bench ends; follow them with `spearlet exec ls --status pending` or \
             `spearlet stats`.",
            spearlet_report.successes
        );
    }
    for (label, report) in [
        ("baseline", baseline_report.as_ref()),
        ("spearlet", Some(&spearlet_report)),
    ] {
        if let Some(problem) = report.and_then(|report| report.first_problem.as_ref()) {
            eprintln!("first problem ({label}): {problem}");
        }
    }
    if spearlet_report.successes == 0 {
        bail!("no call to task {:?} succeeded", arguments.task);
    }
    Ok(ExitCode::SUCCESS)
}

/// `priority high, a new instance per call` or `default priority, pooled instances`: what the
/// report's first line says about `--priority` and `--force-new-instance`, so a figure copied
/// from it says whether it measured warm calls or cold starts.
fn describe_placement(placement: &PlacementArguments) -> String {
    let priority = match &placement.priority {
        Some(priority) => format!("priority {priority}"),
        None => "default priority".to_owned(),
    };
    let instances = if placement.force_new_instance {
        "a new instance per call (--force-new-instance)"
    } else {
        "pooled instances"
    };
    format!("{priority}, {instances}")
}

fn render_report(
    arguments: &BenchArguments,
    plan: &LoadPlan,
    payload_bytes: usize,
    baseline: Option<&LoadReport>,
    spearlet: &LoadReport,
    ratios: Option<&Ratios>,
) -> String {
    let run_length = match plan.stop {
        StopCondition::Elapsed(duration) => format!("{}s", duration.as_secs_f64()),
        StopCondition::Requests(count) => format!("{count} requests"),
    };
    let function = arguments
        .function_name
        .as_deref()
        .map_or(String::new(), |name| format!(" function {name}"));
    let payload = match &arguments.input_text {
        Some(text) => format!("input {text:?}"),
        None => format!("{payload_bytes}-byte payloads"),
    };
    let mut text = format!(
        "bench: task {}{function}, {} mode, {}, {} workers over {} connection(s), {payload}, \
         {run_length} after {}s warm-up\n\n",
        arguments.task,
        arguments.mode.name(),
        describe_placement(&arguments.placement),
        plan.concurrency,
        plan.connections,
        plan.warmup.as_secs_f64(),
    );
    let mut table = Table::new(&[
        "TARGET",
        "REQUESTS",
        "FAILED",
        "ERRORS",
        "ELAPSED",
        "THROUGHPUT",
        "P50",
        "P90",
        "P99",
        "MAX",
    ]);
    let milliseconds = |value: f64| format!("{value:.3}ms");
    let spearlet_label = format!("spearlet ({})", arguments.mode.name());
    let baseline_label = format!(
        "baseline (tonic echo, {})",
        arguments.baseline.map_or("", BaselinePlacement::name)
    );
    let rows = baseline
        .map(|report| (baseline_label.as_str(), report))
        .into_iter()
        .chain([(spearlet_label.as_str(), spearlet)]);
    for (label, report) in rows {
        table.push_row(vec![
            label.to_owned(),
            report.successes.to_string(),
            report.failures.to_string(),
            report.errors.to_string(),
            format!("{:.2}s", report.elapsed.as_secs_f64()),
            format!("{:.0} req/s", report.throughput()),
            milliseconds(report.latency_ms(0.50)),
            milliseconds(report.latency_ms(0.90)),
            milliseconds(report.latency_ms(0.99)),
            milliseconds(report.max_latency_ms()),
        ]);
    }
    text.push_str(&table.render());
    if let Some(ratios) = ratios {
        text.push_str(&format!(
            "\nspearlet/baseline ratios: throughput {:.3}x, p50 latency {:.2}x, p99 latency {:.2}x\n",
            ratios.throughput, ratios.p50, ratios.p99
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_budget_hands_out_exactly_its_count() {
        let budget = CallBudget::new(StopCondition::Requests(3));
        let granted = (0..10).filter(|_| budget.take_one()).count();
        assert_eq!(granted, 3);
    }

    #[test]
    fn reports_merge_counts_and_latencies() {
        let mut first = LoadReport::empty();
        first.successes = 2;
        first.latency_microseconds.record(1_000).unwrap();
        first.latency_microseconds.record(3_000).unwrap();
        let mut second = LoadReport::empty();
        second.errors = 1;
        second.first_problem = Some("Unavailable: x".into());
        first.merge(second);
        first.elapsed = Duration::from_secs(2);
        assert_eq!((first.successes, first.errors), (2, 1));
        assert_eq!(first.throughput(), 1.0);
        assert!((first.max_latency_ms() - 3.0).abs() < 0.01);
        assert_eq!(first.first_problem.as_deref(), Some("Unavailable: x"));
    }

    #[test]
    fn the_report_names_priority_and_instance_placement() {
        let cases = [
            (None, false, "default priority, pooled instances"),
            (
                Some("high"),
                true,
                "priority high, a new instance per call (--force-new-instance)",
            ),
        ];
        for (priority, force_new_instance, expected) in cases {
            let placement = PlacementArguments {
                priority: priority.map(str::to_owned),
                force_new_instance,
            };
            assert_eq!(describe_placement(&placement), expected);
        }
    }

    #[tokio::test]
    async fn the_baseline_echo_server_echoes_payloads() {
        let server = BaselineServer::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let channels = connect_channels(
            &NodeConnection::plain(format!("http://{}", server.address)),
            2,
        )
        .await
        .unwrap();
        let plan = LoadPlan {
            concurrency: 3,
            connections: 2,
            stop: StopCondition::Requests(20),
            warmup: Duration::ZERO,
        };
        let call = UnaryCall {
            is_success: |response: &proto::Payload| response.data == b"abc",
            ..echo_call(b"abc")
        };
        let report = measure(&channels, call, &plan).await.unwrap();
        assert_eq!(
            (report.successes, report.failures, report.errors),
            (20, 0, 0)
        );
        server.stop().await;
    }
}
