//! WebAssembly components (WASI 0.2): a compiled, linked component (the warm part of a task) and
//! one per-call run of it.
//!
//! A component is one of two worlds, told apart by what it exports:
//! - a **command** (`wasi:cli/run`, the world `wasmtime run` runs): a call runs `run` with the
//!   same ABI as a preview 1 command — input on stdin, output on stdout, logs on stderr,
//!   `exit(err)` is exit code 1, `exit-with-code(n)` is n;
//! - an **HTTP handler** (`wasi:http/incoming-handler`, the `wasi:http/proxy` world that
//!   `wasmtime serve` and Spin run): a call hands the handler one request (method and path from
//!   the call's target, headers from the caller's headers, the input as the body) and the
//!   response's body becomes the output, its status and headers the call's metrics
//!   (`http.status`, `http.header.<name>`).
//!
//! Every component links against the same interfaces: all of WASI 0.2 as wasmtime 48 implements
//! it (cli, clocks, random, io, filesystem seeing only the task's preopens, sockets with every
//! address denied) plus `wasi:http` (what `wasmtime serve -S cli` gives). A component importing
//! anything else is refused at load time, naming the import. Outbound HTTP is denied unless the
//! task's `spearlet.http.allowed_hosts` allows the host ([`OutboundHttpPolicy`]).
//!
//! Invariants, as for modules: every call gets a fresh `Store` (per-call isolation; components
//! are never reused), guest failures are outcomes, and a call future is always promptly
//! droppable (async host calls, epoch yields), which is how timeouts and cancellation stop it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use spearlet_core::{AllowedOutboundHosts, ErrorCode, Outcome, SpearError, SpearResult};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode as HttpErrorCode, Scheme};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use spearlet_runtime::{HttpResponseHead, HttpResponseHeadSender};

use crate::guest_io::{CapturedOutput, OutputChunkSender};
use crate::module::{
    CallEnd, CompileSource, GuestLimiter, GuestWasiSettings, RunReport, arm_epoch_yield,
    call_wasi_builder, clamp_to_usize, not_run_report, race_deadline_and_cancellation,
};

/// Function names that mean "run the command" (`wasi:cli/run`), as `_start` does for modules.
const RUN_ALIASES: &[&str] = &["", "_start", "main", "run", "__spear_default_entry__"];

/// The export that makes a component a command.
const RUN_EXPORT_PREFIX: &str = "wasi:cli/run@0.2";
/// The export that makes a component an HTTP handler.
const INCOMING_HANDLER_EXPORT_PREFIX: &str = "wasi:http/incoming-handler@0.2";

/// Which world a component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentWorld {
    /// Exports `wasi:cli/run`.
    Command,
    /// Exports `wasi:http/incoming-handler`.
    HttpHandler,
}

impl ComponentWorld {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentWorld::Command => "command",
            ComponentWorld::HttpHandler => "http-handler",
        }
    }
}

/// What one call of a component runs, resolved before the execution exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentEntry {
    /// `wasi:cli/run` of a command.
    Run,
    /// One request to an HTTP handler.
    HttpRequest {
        /// Upper-case method, e.g. `GET`.
        method: http::Method,
        /// The path the handler sees, with its query: `/`, `/hello?name=Ada`.
        path_with_query: String,
    },
}

/// The request metadata keys an HTTP handler call takes its method and path from.
pub const HTTP_METHOD_METADATA_KEY: &str = "http.method";
pub const HTTP_PATH_METADATA_KEY: &str = "http.path";

/// Per-store state of a component call: WASI 0.2, wasi:http, the outbound policy and the memory
/// limiter.
pub(crate) struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    outbound: OutboundHttpPolicy,
    limiter: GuestLimiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Decides every outbound request of one call against the task's `spearlet.http.allowed_hosts`.
/// An allowed request goes out through wasi-http's own client; a denied one fails inside the
/// guest with `HTTP-request-denied`, and the denial is logged in the call's logs and the node's.
pub(crate) struct OutboundHttpPolicy {
    allowed_hosts: Arc<AllowedOutboundHosts>,
    call_logs: CapturedOutput,
}

type OutgoingResponseFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundHttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        request_body_sent: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> OutgoingResponseFuture {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        if !self.allowed_hosts.allows(&scheme, &host, port) {
            let line = format!(
                "spearlet: outbound HTTP request to {scheme}://{host}:{port} denied: not in \
                 spearlet.http.allowed_hosts\n"
            );
            tracing::warn!(%scheme, %host, port, "outbound HTTP request denied");
            // Past the log cap the note is dropped; the guest still sees the denial.
            self.call_logs.append_note(line.as_bytes());
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        drop(request_body_sent);
        Box::new(async move {
            let (response, connection) =
                wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(connection) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The linker every component is linked with: WASI 0.2 and wasi:http.
pub(crate) fn component_linker(engine: &Engine) -> SpearResult<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    // Includes `exit-with-code(n)` (WASI 0.2.12), which ends the call with code n.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|error| SpearError::internal(format!("linking WASI 0.2: {error:#}")))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|error| SpearError::internal(format!("linking wasi:http: {error:#}")))?;
    Ok(linker)
}

/// Whether `bytes` is a component rather than a core module: the binary header's version field
/// (`0d 00 01 00` for components, `01 00 00 00` for modules), or for the text format a leading
/// `(component`.
pub(crate) fn is_component(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"\0asm") {
        return bytes.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00]);
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    strip_wat_trivia(&text).starts_with("(component")
}

/// Skips whitespace and `;;` / `(; ;)` comments at the start of a text-format artifact.
fn strip_wat_trivia(mut text: &str) -> &str {
    loop {
        let trimmed = text.trim_start();
        if let Some(rest) = trimmed.strip_prefix(";;") {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = trimmed.strip_prefix("(;") {
            text = rest.split_once(";)").map_or("", |(_, after)| after);
        } else {
            return trimmed;
        }
    }
}

/// A compiled component linked against WASI 0.2 and wasi:http, ready to instantiate. Cheap to
/// clone.
#[derive(Clone)]
pub struct WasmComponent {
    engine: Engine,
    world: ComponentWorld,
    /// Set for commands: the typed pre-instance of the command world.
    command_pre: Option<CommandPre<ComponentState>>,
    /// Set for HTTP handlers: the typed pre-instance of the proxy world.
    proxy_pre: Option<ProxyPre<ComponentState>>,
    /// Where the compiled code came from (compiler or disk cache).
    pub compile_source: CompileSource,
}

impl std::fmt::Debug for WasmComponent {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WasmComponent")
            .field("world", &self.world)
            .field("compile_source", &self.compile_source)
            .finish_non_exhaustive()
    }
}

impl WasmComponent {
    /// Classifies and links a compiled component. A component that exports neither world, or
    /// imports anything the linker lacks, is `InvalidArgument` naming what is wrong.
    pub(crate) fn link(
        engine: &Engine,
        linker: &Linker<ComponentState>,
        component: Component,
        compile_source: CompileSource,
    ) -> SpearResult<WasmComponent> {
        let component_type = component.component_type();
        // Imports first: a component is refused for what it needs before what it offers.
        let instance_pre = linker.instantiate_pre(&component).map_err(|error| {
            let imports: Vec<String> = component_type
                .imports(engine)
                .map(|(name, _)| name.to_owned())
                .collect();
            SpearError::invalid_argument(format!(
                "the component cannot be linked: {error:#}. spearlet gives components WASI 0.2 \
                 (wasi:cli, clocks, random, io, filesystem, sockets up to @0.2.12) and wasi:http \
                 (@0.2.x), nothing else; the component imports [{}]",
                imports.join(", ")
            ))
        })?;
        let exports: Vec<String> = component_type
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let world = if exports
            .iter()
            .any(|name| name.starts_with(INCOMING_HANDLER_EXPORT_PREFIX))
        {
            ComponentWorld::HttpHandler
        } else if exports
            .iter()
            .any(|name| name.starts_with(RUN_EXPORT_PREFIX))
        {
            ComponentWorld::Command
        } else {
            return Err(SpearError::invalid_argument(format!(
                "the component exports neither wasi:cli/run@0.2 (a command) nor \
                 wasi:http/incoming-handler@0.2 (an HTTP handler); its exports are [{}]",
                exports.join(", ")
            )));
        };
        let world_shape_error = |error: wasmtime::Error| {
            SpearError::invalid_argument(format!(
                "the component's exports do not have the shape of the {} world: {error:#}",
                world.as_str()
            ))
        };
        let (command_pre, proxy_pre) = match world {
            ComponentWorld::HttpHandler => (
                None,
                Some(ProxyPre::new(instance_pre).map_err(world_shape_error)?),
            ),
            ComponentWorld::Command => (
                Some(CommandPre::new(instance_pre).map_err(world_shape_error)?),
                None,
            ),
        };
        Ok(WasmComponent {
            engine: engine.clone(),
            world,
            command_pre,
            proxy_pre,
            compile_source,
        })
    }

    pub fn world(&self) -> ComponentWorld {
        self.world
    }

    /// What the component can be asked to run, for listings.
    pub fn callable_functions(&self) -> Vec<String> {
        match self.world {
            ComponentWorld::Command => vec!["run".to_owned()],
            ComponentWorld::HttpHandler => vec!["handle".to_owned()],
        }
    }

    /// Resolves a call's `function_name` and request metadata to what it runs: a command runs
    /// `run` (any of [`RUN_ALIASES`]); an HTTP handler takes `http.method` (default `POST`) and
    /// `http.path` (default `/`) from `metadata`. Errors name the field.
    pub fn resolve_entry(
        &self,
        function_name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> SpearResult<ComponentEntry> {
        match self.world {
            ComponentWorld::Command => {
                if RUN_ALIASES.contains(&function_name) {
                    return Ok(ComponentEntry::Run);
                }
                Err(SpearError::invalid_argument(format!(
                    "function_name {function_name:?}: the task is a WASI 0.2 command component, \
                     whose one entry point is wasi:cli/run; leave function_name empty (or \"run\")"
                )))
            }
            ComponentWorld::HttpHandler => {
                if !["", "handle"].contains(&function_name) {
                    return Err(SpearError::invalid_argument(format!(
                        "function_name {function_name:?}: the task is a wasi:http handler \
                         component, whose one entry point is incoming-handler.handle; leave \
                         function_name empty and set invocation_metadata[\"http.method\"] and \
                         [\"http.path\"]"
                    )));
                }
                let method_text = metadata
                    .get(HTTP_METHOD_METADATA_KEY)
                    .map(|method| method.trim())
                    .filter(|method| !method.is_empty())
                    .unwrap_or("POST");
                let method = http::Method::from_bytes(method_text.as_bytes()).map_err(|_| {
                    SpearError::invalid_argument(format!(
                        "invocation_metadata[\"{HTTP_METHOD_METADATA_KEY}\"] = {method_text:?} is \
                         not an HTTP method"
                    ))
                })?;
                let path_with_query = metadata
                    .get(HTTP_PATH_METADATA_KEY)
                    .map(String::as_str)
                    .filter(|path| !path.is_empty())
                    .unwrap_or("/");
                let valid_path = path_with_query.starts_with('/')
                    && http::uri::PathAndQuery::try_from(path_with_query).is_ok();
                if !valid_path {
                    return Err(SpearError::invalid_argument(format!(
                        "invocation_metadata[\"{HTTP_PATH_METADATA_KEY}\"] = {path_with_query:?} \
                         is not a path starting with / (with an optional ?query)"
                    )));
                }
                Ok(ComponentEntry::HttpRequest {
                    method,
                    path_with_query: path_with_query.to_owned(),
                })
            }
        }
    }

    /// Runs one call on a fresh instance, to its end, its deadline or its cancellation.
    pub async fn run(&self, invocation: ComponentInvocation) -> RunReport {
        match invocation.entry.clone() {
            ComponentEntry::Run if self.world == ComponentWorld::Command => {
                self.run_command(invocation).await
            }
            ComponentEntry::HttpRequest {
                method,
                path_with_query,
            } if self.world == ComponentWorld::HttpHandler => {
                self.run_http_request(invocation, method, path_with_query)
                    .await
            }
            entry => not_run_report(format!(
                "the call's entry {entry:?} does not fit a {} component",
                self.world.as_str()
            )),
        }
    }

    fn new_store(
        &self,
        wasi: WasiCtx,
        call_logs: CapturedOutput,
        invocation: &ComponentInvocation,
    ) -> Store<ComponentState> {
        let state = ComponentState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound: OutboundHttpPolicy {
                allowed_hosts: invocation.allowed_outbound_hosts.clone(),
                call_logs,
            },
            limiter: GuestLimiter::new(invocation.memory_limit_bytes),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        arm_epoch_yield(&mut store);
        store
    }

    async fn run_command(&self, mut invocation: ComponentInvocation) -> RunReport {
        let Some(command_pre) = &self.command_pre else {
            return not_run_report("the component is not a command".into());
        };
        let (mut builder, captures) = match call_wasi_builder(invocation.wasi_settings()) {
            Ok(built) => built,
            Err(message) => return not_run_report(message),
        };
        let mut store = self.new_store(builder.build(), captures.stderr.clone(), &invocation);
        let mut instantiate_duration = Duration::ZERO;
        let call_end = {
            let call = async {
                let instantiate_started = Instant::now();
                let command = command_pre.instantiate_async(&mut store).await?;
                instantiate_duration = instantiate_started.elapsed();
                let status = command.wasi_cli_run().call_run(&mut store).await?;
                Ok(if status.is_ok() { 0 } else { 1 })
            };
            race_deadline_and_cancellation(call, invocation.deadline, &invocation.cancellation)
                .await
        };
        let limiter = &store.data().limiter;
        let outcome = command_outcome(&captures, &call_end, limiter.memory_limit_hit);
        captures.into_report(
            outcome,
            limiter.peak_memory_bytes as u64,
            instantiate_duration,
        )
    }

    /// One request to an HTTP handler. The guest runs in one future; the response it sets is
    /// read in another, concurrently (the guest blocks writing its body until the body is read).
    /// The store lives inside the guest future, so when the guest ends — returned, trapped,
    /// timed out or cancelled — its resources drop and the body ends with it.
    async fn run_http_request(
        &self,
        mut invocation: ComponentInvocation,
        method: http::Method,
        path_with_query: String,
    ) -> RunReport {
        let Some(proxy_pre) = self.proxy_pre.clone() else {
            return not_run_report("the component is not an HTTP handler".into());
        };
        let request = match build_incoming_request(
            method,
            &path_with_query,
            &invocation.request_headers,
            std::mem::take(&mut invocation.input),
        ) {
            Ok(request) => request,
            Err(message) => return not_run_report(message),
        };
        let body_chunks = invocation.output_chunks.take();
        let head_sender = invocation.http_response_head.take();
        let (mut builder, captures) = match call_wasi_builder(invocation.wasi_settings()) {
            Ok(built) => built,
            Err(message) => return not_run_report(message),
        };
        // A handler's stdout is not its output (the response body is): both of its streams
        // are its logs.
        let logs = captures.stderr.clone();
        builder.stdout(logs.clone());
        let mut store = self.new_store(builder.build(), logs.clone(), &invocation);
        let (response_sender, response_receiver) = tokio::sync::oneshot::channel();
        let deadline = invocation.deadline;
        let cancellation = invocation.cancellation.clone();
        let guest = async move {
            let mut instantiate_duration = Duration::ZERO;
            let call_end = {
                let call = async {
                    let instantiate_started = Instant::now();
                    let proxy = proxy_pre.instantiate_async(&mut store).await?;
                    instantiate_duration = instantiate_started.elapsed();
                    let request = store
                        .data_mut()
                        .http()
                        .new_incoming_request(Scheme::Http, request)?;
                    let response_outparam = store
                        .data_mut()
                        .http()
                        .new_response_outparam(response_sender)?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, request, response_outparam)
                        .await?;
                    Ok(0)
                };
                race_deadline_and_cancellation(call, deadline, &cancellation).await
            };
            let limiter = &store.data().limiter;
            let memory = (limiter.memory_limit_hit, limiter.peak_memory_bytes as u64);
            drop(store);
            (call_end, memory, instantiate_duration)
        };
        let body_cap = clamp_to_usize(invocation.max_output_bytes);
        let response = read_response(response_receiver, head_sender, body_chunks, body_cap);
        let ((call_end, (memory_limit_hit, peak_memory_bytes), instantiate_duration), response) =
            tokio::join!(guest, response);
        let outcome = http_outcome(&captures, &call_end, memory_limit_hit, &response);
        let mut report = captures.into_report(outcome, peak_memory_bytes, instantiate_duration);
        report.output = response.body;
        report.metrics = response.metrics;
        report
    }
}

/// The request the handler sees: `http://localhost<path>` with the caller's headers (a header
/// the HTTP grammar refuses is an error naming it) and `input` as the whole body.
fn build_incoming_request(
    method: http::Method,
    path_with_query: &str,
    headers: &BTreeMap<String, String>,
    body: Bytes,
) -> Result<hyper::Request<IncomingBody>, String> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path_with_query}"));
    let mut has_host = false;
    for (name, value) in headers {
        let name = http::HeaderName::try_from(name.as_str())
            .map_err(|_| format!("request header name {name:?} is not a valid HTTP header"))?;
        let value = http::HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("request header {name} has a value HTTP cannot carry"))?;
        has_host |= name == http::header::HOST;
        builder = builder.header(name, value);
    }
    if !has_host {
        builder = builder.header(http::header::HOST, "localhost");
    }
    let never_fails: fn(std::convert::Infallible) -> wasmtime_wasi_http::Error =
        |never| match never {};
    builder
        .body(http_body_util::Full::new(body).map_err(never_fails))
        .map_err(|error| format!("building the request: {error}"))
}

type IncomingBody = http_body_util::combinators::MapErr<
    http_body_util::Full<Bytes>,
    fn(std::convert::Infallible) -> wasmtime_wasi_http::Error,
>;

/// What the handler answered.
struct HttpResponseRead {
    /// `None` when the handler never set a response; `Some(Err)` when it set an error code.
    head: Option<Result<HttpResponseHead, HttpErrorCode>>,
    body: Bytes,
    /// The head as metrics: `http.status` and `http.header.*`.
    metrics: BTreeMap<String, String>,
    /// The body went past the output cap (reading stopped there).
    body_over_cap: bool,
    /// Reading the body failed midway (the guest trapped or dropped it unfinished).
    body_error: Option<String>,
}

/// Waits for the handler's response, sends its head to a streaming caller, then reads its body
/// up to `body_cap` bytes, forwarding each chunk.
async fn read_response(
    response: tokio::sync::oneshot::Receiver<
        Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>, HttpErrorCode>,
    >,
    head_sender: Option<HttpResponseHeadSender>,
    body_chunks: Option<OutputChunkSender>,
    body_cap: usize,
) -> HttpResponseRead {
    let mut read = HttpResponseRead {
        head: None,
        body: Bytes::new(),
        metrics: BTreeMap::new(),
        body_over_cap: false,
        body_error: None,
    };
    let response = match response.await {
        // The handler ended without ever setting the response.
        Err(_) => return read,
        Ok(Err(error_code)) => {
            read.head = Some(Err(error_code));
            return read;
        }
        Ok(Ok(response)) => response,
    };
    let (parts, mut body) = response.into_parts();
    let head = HttpResponseHead {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    read.metrics = head.as_metrics();
    if let Some(sender) = head_sender {
        // A caller that went away no longer wants the head; the call goes on.
        let _ = sender.send(head.clone());
    }
    read.head = Some(Ok(head));
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                if collected.len() + data.len() > body_cap {
                    read.body_over_cap = true;
                    break;
                }
                collected.extend_from_slice(&data);
                if let Some(sender) = &body_chunks {
                    let _ = sender.send(data);
                }
            }
            Err(error) => {
                read.body_error = Some(format!("{error:?}"));
                break;
            }
        }
    }
    read.body = collected.freeze();
    read
}

/// How an HTTP request ended. Any response the handler set is COMPLETED, 5xx included; a trap
/// is TRAP (even after the head went out: the body is cut); no response is HTTP_NO_RESPONSE.
fn http_outcome(
    captures: &crate::module::CallCaptures,
    call_end: &CallEnd<i32>,
    memory_limit_hit: bool,
    response: &HttpResponseRead,
) -> Outcome {
    match call_end {
        CallEnd::DeadlinePassed | CallEnd::Cancelled => call_end.stopped_outcome(),
        _ if response.body_over_cap => Outcome::Failed {
            code: ErrorCode::OutputTooLarge,
            message: format!(
                "the response body is larger than the output cap of {} bytes",
                captures.stdout.capacity()
            ),
        },
        CallEnd::Returned(Err(error)) => captures.error_outcome(error, memory_limit_hit),
        CallEnd::Returned(Ok(_)) => match &response.head {
            None => Outcome::Failed {
                code: ErrorCode::HttpNoResponse,
                message: "the handler returned without setting a response".into(),
            },
            Some(Err(error_code)) => Outcome::Failed {
                code: ErrorCode::HttpNoResponse,
                message: format!("the handler set the error {error_code:?} instead of a response"),
            },
            Some(Ok(_)) => match &response.body_error {
                Some(error) => Outcome::Failed {
                    code: ErrorCode::Trap,
                    message: format!("the response body ended abnormally: {error}"),
                },
                None => Outcome::Completed,
            },
        },
    }
}

/// How a command's `run` ended: `Ok(Ok(()))` is success, `Ok(Err(()))` is exit code 1, an
/// `I32Exit` carries `exit`'s code, anything else is a trap (or the memory limit, or an output
/// cap).
fn command_outcome(
    captures: &crate::module::CallCaptures,
    call_end: &CallEnd<i32>,
    memory_limit_hit: bool,
) -> Outcome {
    match call_end {
        CallEnd::DeadlinePassed | CallEnd::Cancelled => call_end.stopped_outcome(),
        CallEnd::Returned(Ok(0)) => Outcome::Completed,
        CallEnd::Returned(Ok(code)) => Outcome::Failed {
            code: ErrorCode::ExitCode,
            message: format!("exited with code {code}"),
        },
        CallEnd::Returned(Err(error)) => captures.error_outcome(error, memory_limit_hit),
    }
}

/// Everything one component call needs.
pub struct ComponentInvocation {
    pub entry: ComponentEntry,
    /// A command's stdin; an HTTP handler's request body.
    pub input: Bytes,
    /// argv: `[task name, function name]`.
    pub arguments: Vec<String>,
    pub environment: Vec<(String, String)>,
    /// An HTTP handler's request headers (the caller's headers).
    pub request_headers: BTreeMap<String, String>,
    pub preopened_directories: Vec<(std::path::PathBuf, String)>,
    pub allowed_outbound_hosts: Arc<AllowedOutboundHosts>,
    pub memory_limit_bytes: u64,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    pub deadline: tokio::time::Instant,
    pub cancellation: CancellationToken,
    /// A command's stdout chunks, or an HTTP handler's response body chunks, as written.
    pub output_chunks: Option<OutputChunkSender>,
    /// An HTTP handler's response status and headers, as soon as it sets them.
    pub http_response_head: Option<HttpResponseHeadSender>,
}

impl ComponentInvocation {
    fn wasi_settings(&mut self) -> GuestWasiSettings<'_> {
        GuestWasiSettings {
            stdin: std::mem::take(&mut self.input),
            arguments: &self.arguments,
            environment: &self.environment,
            preopened_directories: &self.preopened_directories,
            max_output_bytes: self.max_output_bytes,
            max_log_bytes: self.max_log_bytes,
            output_chunks: self.output_chunks.take(),
        }
    }
}
