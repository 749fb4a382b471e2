//! The AWS Lambda Runtime API (version 2018-06-01), served to one warm worker process.
//!
//! Each lambda-mode worker gets its own [`RuntimeApiServer`] on `127.0.0.1:<ephemeral port>`;
//! the worker finds it through `AWS_LAMBDA_RUNTIME_API` and speaks plain HTTP/1.1 to it, exactly
//! as it would inside AWS Lambda, so the official client libraries (Rust `lambda_runtime`,
//! Python `awslambdaric`, ...) run unmodified:
//!
//! - `GET  /2018-06-01/runtime/invocation/next`: long poll; answered with the next invocation's
//!   payload and its `Lambda-Runtime-*` headers.
//! - `POST /2018-06-01/runtime/invocation/{request_id}/response`: the result. With header
//!   `Lambda-Runtime-Function-Response-Mode: streaming` the body is chunked, every chunk is
//!   forwarded to the caller as it arrives, and a mid-stream failure comes as the trailers
//!   `Lambda-Runtime-Function-Error-Type` / `Lambda-Runtime-Function-Error-Body` (base64).
//! - `POST /2018-06-01/runtime/invocation/{request_id}/error`: a reported function error.
//! - `POST /2018-06-01/runtime/init/error`: the worker could not initialise.
//!
//! The node side is three calls: [`RuntimeApiServer::start`], [`RuntimeApiServer::wait_until_ready`]
//! and [`RuntimeApiServer::invoke`].
//!
//! Invariants:
//! - Capacity is one: at most one invocation is *in flight* (handed to the worker and not yet
//!   answered). Invocations submitted meanwhile wait in a FIFO queue and are handed out one per
//!   `/next` poll, in submission order.
//! - Every submitted invocation ends in exactly one [`LambdaOutcome`], delivered through a oneshot
//!   channel that the book-keeping owns until the end; no path drops an invocation silently (the
//!   only exception is an invocation whose caller went away, which nobody waits for). The server
//!   sets no deadline of its own: a worker that neither answers nor polls again holds its
//!   invocation until the caller drops the `invoke` future (the node's timeout).
//! - An invocation counts as in flight from the moment a `/next` poll takes it from the queue,
//!   even if writing it to the worker then fails; the worker's next poll ends it.
//! - A new `/next` poll means the worker is done with the previous invocation: one left
//!   unanswered ends as a `Runtime.NoResponse` function error.
//! - Only the newest `/next` poll may receive an invocation. An older poll still parked (the
//!   worker gave up on it, or a confused client polls twice) is answered 409 when woken, so an
//!   invocation is never written into a connection nobody reads.
//! - An init error is terminal: every queued and in-flight invocation, and every later one,
//!   ends in [`LambdaOutcome::InitError`], and `/next` is answered 403 from then on.
//! - Response and error bodies are capped at `max_response_bytes`; past it the invocation ends
//!   as [`LambdaOutcome::ResponseTooLarge`] at once, the rest of the body is read and discarded
//!   (so the worker's client sees the 413 rather than a reset connection), and the worker gets 413.
//! - Header names go out in canonical Title-Case (`Lambda-Runtime-Aws-Request-Id`), byte for
//!   byte what real Lambda sends, for runtimes that match them case-sensitively.
//! - The book-keeping lock is a short-held `parking_lot` mutex, never held across an `.await`.
//! - Dropping the [`RuntimeApiServer`] aborts the accept loop and, with it, every connection task.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The path every Runtime API route starts with.
const INVOCATION_PATH_PREFIX: &str = "/2018-06-01/runtime/invocation/";
const NEXT_INVOCATION_PATH: &str = "/2018-06-01/runtime/invocation/next";
const INIT_ERROR_PATH: &str = "/2018-06-01/runtime/init/error";

const REQUEST_ID_HEADER: &str = "lambda-runtime-aws-request-id";
const DEADLINE_MS_HEADER: &str = "lambda-runtime-deadline-ms";
const INVOKED_FUNCTION_ARN_HEADER: &str = "lambda-runtime-invoked-function-arn";
const TRACE_ID_HEADER: &str = "lambda-runtime-trace-id";
const FUNCTION_ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";
const FUNCTION_ERROR_BODY_TRAILER: &str = "lambda-runtime-function-error-body";
const RESPONSE_MODE_HEADER: &str = "lambda-runtime-function-response-mode";

/// `lambda_runtime` (the Rust client, 1.x) reports a mid-stream error not as real HTTP
/// trailers but as one last *data* chunk spelling out the trailer lines; a final chunk starting
/// with this prefix is read as trailers.
const IN_BODY_ERROR_TRAILER_PREFIX: &[u8] = b"Lambda-Runtime-Function-Error-Type:";

/// How many answered request ids are remembered, to tell "answered twice" from "never existed".
const REMEMBERED_FINISHED_REQUEST_IDS: usize = 32;

/// The error type used when the worker did not name one.
const UNNAMED_ERROR_TYPE: &str = "Unhandled";

/// The Runtime API of one warm worker. Owns the listener task: dropping it stops serving.
pub struct RuntimeApiServer {
    listening_address: SocketAddr,
    shared_state: Arc<SharedServerState>,
    accept_loop_task: JoinHandle<()>,
}

/// What the worker reported through `POST /2018-06-01/runtime/init/error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInitError {
    pub error_type: String,
    pub error_message: String,
}

/// One invocation to hand to the worker.
pub struct LambdaInvocation {
    /// Sent as `Lambda-Runtime-Aws-Request-Id` and used in the worker's answer path, so it must be
    /// non-empty visible ASCII without `/`, `?`, `#`, `%` (a UUID is ideal).
    pub request_id: String,
    /// The event, sent as the `/next` body (`Content-Type: application/json`).
    pub payload: Bytes,
    /// The deadline in milliseconds since the Unix epoch (`Lambda-Runtime-Deadline-Ms`). Informative
    /// for the worker; enforcing it is the caller's job (drop the [`RuntimeApiServer::invoke`] future).
    pub deadline_unix_ms: u64,
    /// Sent as `Lambda-Runtime-Invoked-Function-Arn`; must be a valid header value.
    pub invoked_function_arn: String,
    /// Sent as `Lambda-Runtime-Trace-Id` (left out when empty); must be a valid header value.
    pub trace_id: String,
    /// For streaming callers: the response body's chunks as they arrive. They are also collected
    /// into the final [`LambdaOutcome::Response`] body. A response sent in the ordinary buffered
    /// mode arrives here as one chunk, once it is complete and within the size cap. In streaming
    /// mode, chunks already forwarded stay forwarded even when the invocation then ends in an
    /// error or [`LambdaOutcome::ResponseTooLarge`]: the outcome is the final word.
    pub output_chunks: Option<mpsc::UnboundedSender<Bytes>>,
}

/// How an invocation ended, as far as the Runtime API can tell.
#[derive(Debug, PartialEq, Eq)]
pub enum LambdaOutcome {
    /// The worker posted a result (for a streamed response: every chunk, concatenated), with
    /// the `Content-Type` it declared, if any.
    Response {
        body: Bytes,
        content_type: Option<String>,
    },
    /// The worker reported an error (`/error`, or the error trailers of a streamed response), or
    /// the server ended the invocation on the worker's behalf. `body` is the worker's JSON error
    /// document when there is one. Error types the server itself produces:
    /// - `Runtime.NoResponse`: the worker polled `/next` again without answering.
    /// - `Runtime.ResponseInterrupted`: the connection closed in the middle of the answer body.
    /// - `Runtime.InvalidInvocation`: the invocation was never handed out because its request id,
    ///   ARN or trace id cannot be sent as a header, or its request id is already in use.
    FunctionError {
        error_type: String,
        error_message: String,
        body: Bytes,
    },
    /// The answer body exceeded the server's `max_response_bytes`.
    ResponseTooLarge { limit: u64 },
    /// The worker called `/init/error` while this invocation was pending (or before it came).
    InitError(WorkerInitError),
}

impl RuntimeApiServer {
    /// Binds 127.0.0.1:0 and starts serving. Answer bodies (responses and error reports) larger
    /// than `max_response_bytes` are refused with 413.
    pub async fn start(max_response_bytes: u64) -> std::io::Result<RuntimeApiServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let listening_address = listener.local_addr()?;
        let (readiness_sender, _) = watch::channel(WorkerReadiness::Initialising);
        let shared_state = Arc::new(SharedServerState {
            max_response_bytes,
            readiness: readiness_sender,
            invocation_available: Notify::new(),
            book: Mutex::new(InvocationBook::default()),
        });
        let accept_loop_task = tokio::spawn(accept_connections(listener, shared_state.clone()));
        tracing::debug!(%listening_address, max_response_bytes, "Lambda Runtime API server started");
        Ok(RuntimeApiServer {
            listening_address,
            shared_state,
            accept_loop_task,
        })
    }

    /// The address to give the worker as `AWS_LAMBDA_RUNTIME_API` (`127.0.0.1:<port>`).
    pub fn address(&self) -> SocketAddr {
        self.listening_address
    }

    /// How many `/next` polls have reached the server so far, counted as each one arrives (before
    /// it parks). Lets a test know a poll has arrived before it makes the next move.
    pub fn next_polls_received(&self) -> u64 {
        self.shared_state.book.lock().newest_poll_number
    }

    /// Resolves when the worker first polls `/next` (it is initialised) or reports `/init/error`.
    /// An init error is terminal: once reported, every later call returns it too.
    pub async fn wait_until_ready(&self) -> Result<(), WorkerInitError> {
        let mut readiness_receiver = self.shared_state.readiness.subscribe();
        let settled_readiness = readiness_receiver
            .wait_for(|readiness| !matches!(readiness, WorkerReadiness::Initialising))
            .await;
        let Ok(settled_readiness) = settled_readiness else {
            // The sender lives in `shared_state`, which `self` keeps alive; this cannot happen.
            return Err(WorkerInitError {
                error_type: "Runtime.ServerStopped".to_owned(),
                error_message: "the Runtime API server stopped before the worker was ready"
                    .to_owned(),
            });
        };
        match &*settled_readiness {
            WorkerReadiness::InitFailed(init_error) => Err(init_error.clone()),
            WorkerReadiness::Initialising | WorkerReadiness::Ready => Ok(()),
        }
    }

    /// Hands one invocation to the worker (queued until the worker's next poll) and waits for its
    /// end. Dropping this future abandons the invocation: if it was still queued it is never
    /// handed out; if the worker has it, its late response or error is answered 400 and ignored.
    pub async fn invoke(&self, invocation: LambdaInvocation) -> LambdaOutcome {
        let request_id = invocation.request_id.clone();
        let next_response_headers = match headers_for_next_response(&invocation) {
            Ok(headers) => headers,
            Err(error_message) => {
                tracing::warn!(%request_id, %error_message, "invocation not handed out");
                return invalid_invocation_outcome(error_message);
            }
        };
        let (outcome_sender, outcome_receiver) = oneshot::channel();
        {
            let mut book = self.shared_state.book.lock();
            if let Some(init_error) = &book.init_error {
                return LambdaOutcome::InitError(init_error.clone());
            }
            if book.is_request_id_in_use(&request_id) {
                let error_message =
                    format!("request id {request_id:?} is already queued or in flight");
                tracing::warn!(%request_id, "invocation not handed out: duplicate request id");
                return invalid_invocation_outcome(error_message);
            }
            // Invocations abandoned while queued would otherwise pile up behind a stuck worker.
            book.queued
                .retain(|queued| !queued.outcome_sender.is_closed());
            book.queued.push_back(QueuedInvocation {
                request_id: request_id.clone(),
                payload: invocation.payload,
                next_response_headers,
                output_chunks: invocation.output_chunks,
                outcome_sender,
            });
        }
        tracing::debug!(%request_id, "invocation queued for the worker");
        self.shared_state.invocation_available.notify_waiters();
        match outcome_receiver.await {
            Ok(outcome) => outcome,
            // Every path that removes an invocation from the book sends its outcome first.
            Err(_) => LambdaOutcome::FunctionError {
                error_type: "Runtime.NoResponse".to_owned(),
                error_message: format!("invocation {request_id} was dropped without an outcome"),
                body: Bytes::new(),
            },
        }
    }
}

impl Drop for RuntimeApiServer {
    fn drop(&mut self) {
        self.accept_loop_task.abort();
    }
}

/// Whether the worker is initialised; watched by [`RuntimeApiServer::wait_until_ready`].
#[derive(Clone, Debug)]
enum WorkerReadiness {
    Initialising,
    Ready,
    InitFailed(WorkerInitError),
}

/// What the server and its connection tasks share.
struct SharedServerState {
    max_response_bytes: u64,
    readiness: watch::Sender<WorkerReadiness>,
    /// Woken (`notify_waiters`) whenever a parked `/next` poll should look at the book again:
    /// an invocation was queued, or the worker failed to initialise.
    invocation_available: Notify,
    book: Mutex<InvocationBook>,
}

/// The invocations of this worker: queued, in flight, recently finished.
#[derive(Default)]
struct InvocationBook {
    queued: VecDeque<QueuedInvocation>,
    in_flight: Option<InFlightInvocation>,
    recently_finished_request_ids: VecDeque<String>,
    /// Incremented by every `/next` poll; only the poll holding the newest number may take work.
    newest_poll_number: u64,
    /// Incremented per hand-out, so a connection task can tell whether "its" in-flight
    /// invocation is still the one in the book.
    hand_out_count: u64,
    init_error: Option<WorkerInitError>,
}

struct QueuedInvocation {
    request_id: String,
    payload: Bytes,
    next_response_headers: HeaderMap,
    output_chunks: Option<mpsc::UnboundedSender<Bytes>>,
    outcome_sender: oneshot::Sender<LambdaOutcome>,
}

struct InFlightInvocation {
    request_id: String,
    hand_out_number: u64,
    output_chunks: Option<mpsc::UnboundedSender<Bytes>>,
    outcome_sender: oneshot::Sender<LambdaOutcome>,
    /// Set while a connection is reading this invocation's answer body, so a second, concurrent
    /// answer is refused instead of racing the first.
    answer_in_progress: bool,
}

impl InvocationBook {
    fn is_request_id_in_use(&self, request_id: &str) -> bool {
        let in_flight_has_it = self
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.request_id == request_id);
        in_flight_has_it
            || self
                .queued
                .iter()
                .any(|queued| queued.request_id == request_id)
    }

    fn remember_finished_request_id(&mut self, request_id: String) {
        if self.recently_finished_request_ids.len() == REMEMBERED_FINISHED_REQUEST_IDS {
            self.recently_finished_request_ids.pop_front();
        }
        self.recently_finished_request_ids.push_back(request_id);
    }

    /// Removes the in-flight invocation if it is still hand-out `hand_out_number`.
    fn take_in_flight_if_still(&mut self, hand_out_number: u64) -> Option<InFlightInvocation> {
        let is_still_in_flight = self
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.hand_out_number == hand_out_number);
        if !is_still_in_flight {
            return None;
        }
        let in_flight = self.in_flight.take()?;
        self.remember_finished_request_id(in_flight.request_id.clone());
        Some(in_flight)
    }
}

fn invalid_invocation_outcome(error_message: String) -> LambdaOutcome {
    LambdaOutcome::FunctionError {
        error_type: "Runtime.InvalidInvocation".to_owned(),
        error_message,
        body: Bytes::new(),
    }
}

/// Builds the headers of the `/next` answer up front, so a value that cannot be a header is
/// refused by `invoke` rather than discovered while answering the worker.
fn headers_for_next_response(invocation: &LambdaInvocation) -> Result<HeaderMap, String> {
    let request_id_is_usable = !invocation.request_id.is_empty()
        && invocation
            .request_id
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b'/' | b'?' | b'#' | b'%'));
    if !request_id_is_usable {
        return Err(format!(
            "request id {:?} must be non-empty visible ASCII without '/', '?', '#' or '%'",
            invocation.request_id
        ));
    }
    let header_value = |field_name: &str, text: &str| {
        HeaderValue::from_str(text)
            .map_err(|_| format!("{field_name} {text:?} is not a valid header value"))
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        REQUEST_ID_HEADER,
        header_value("request id", &invocation.request_id)?,
    );
    headers.insert(
        DEADLINE_MS_HEADER,
        HeaderValue::from(invocation.deadline_unix_ms),
    );
    headers.insert(
        INVOKED_FUNCTION_ARN_HEADER,
        header_value("invoked function ARN", &invocation.invoked_function_arn)?,
    );
    if !invocation.trace_id.is_empty() {
        headers.insert(
            TRACE_ID_HEADER,
            header_value("trace id", &invocation.trace_id)?,
        );
    }
    Ok(headers)
}

/// Accepts connections until aborted; each connection is served by its own task in a `JoinSet`,
/// so aborting this task (dropping the set) aborts them all.
async fn accept_connections(listener: TcpListener, shared_state: Arc<SharedServerState>) {
    let mut connection_tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer_address) = match accepted {
                    Ok(accepted) => accepted,
                    Err(accept_error) => {
                        // Typically EMFILE; back off briefly rather than spinning.
                        tracing::warn!(%accept_error, "Runtime API accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection_state = shared_state.clone();
                connection_tasks.spawn(serve_connection(stream, peer_address, connection_state));
            }
            Some(_finished_connection) = connection_tasks.join_next(), if !connection_tasks.is_empty() => {}
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer_address: SocketAddr,
    shared_state: Arc<SharedServerState>,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared_state = shared_state.clone();
        async move { Ok::<_, Infallible>(route_request(&shared_state, request).await) }
    });
    let mut connection_builder = hyper::server::conn::http1::Builder::new();
    // `/next` is a long poll and a warm worker idles between invocations: no server-side
    // timeouts here; the node bounds an invocation by dropping `invoke`, and a worker by killing it.
    connection_builder.header_read_timeout(None::<std::time::Duration>);
    // Real Lambda (Go's net/http) writes canonical `Lambda-Runtime-Aws-Request-Id`; some
    // hand-written runtimes (shell scripts grepping the headers) match that spelling exactly.
    connection_builder.title_case_headers(true);
    let serve_result = connection_builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(connection_error) = serve_result {
        tracing::debug!(%peer_address, %connection_error, "Runtime API connection ended with an error");
    }
}

type ApiResponse = Response<Full<Bytes>>;

async fn route_request(
    shared_state: &SharedServerState,
    request: Request<Incoming>,
) -> ApiResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    tracing::trace!(%method, %path, "Runtime API request");
    if path == NEXT_INVOCATION_PATH && method == Method::GET {
        return hand_out_next_invocation(shared_state).await;
    }
    if path == INIT_ERROR_PATH && method == Method::POST {
        return record_init_error(shared_state, request).await;
    }
    if method == Method::POST
        && let Some((request_id, answer_kind)) = parse_answer_path(&path)
    {
        return receive_invocation_answer(shared_state, request_id, answer_kind, request).await;
    }
    drain_request_body(request.into_body(), shared_state.max_response_bytes).await;
    error_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("no Runtime API route for {method} {path}"),
    )
}

/// Which of the two per-invocation answers the worker posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AnswerKind {
    Response,
    Error,
}

/// Splits `/2018-06-01/runtime/invocation/{request_id}/{response|error}`.
fn parse_answer_path(path: &str) -> Option<(&str, AnswerKind)> {
    let rest = path.strip_prefix(INVOCATION_PATH_PREFIX)?;
    let (request_id, action) = rest.split_once('/')?;
    if request_id.is_empty() {
        return None;
    }
    match action {
        "response" => Some((request_id, AnswerKind::Response)),
        "error" => Some((request_id, AnswerKind::Error)),
        _ => None,
    }
}

/// `GET /next`: ends an unanswered previous invocation, marks the worker ready, then parks until
/// an invocation is queued.
async fn hand_out_next_invocation(shared_state: &SharedServerState) -> ApiResponse {
    let this_poll_number = {
        let mut book = shared_state.book.lock();
        if let Some(init_error) = &book.init_error {
            return init_failed_response(init_error);
        }
        book.newest_poll_number += 1;
        if let Some(unanswered) = book.in_flight.take() {
            tracing::warn!(
                request_id = %unanswered.request_id,
                "worker polled /next without answering its invocation"
            );
            book.remember_finished_request_id(unanswered.request_id.clone());
            let _ = unanswered
                .outcome_sender
                .send(LambdaOutcome::FunctionError {
                    error_type: "Runtime.NoResponse".to_owned(),
                    error_message: format!(
                        "the worker asked for its next invocation without answering {}",
                        unanswered.request_id
                    ),
                    body: Bytes::new(),
                });
        }
        book.newest_poll_number
    };
    shared_state.readiness.send_if_modified(|readiness| {
        if !matches!(readiness, WorkerReadiness::Initialising) {
            return false;
        }
        tracing::debug!("worker is ready (first /next poll)");
        *readiness = WorkerReadiness::Ready;
        true
    });

    loop {
        // Registered before the book is checked, so a notification sent in between is not lost.
        let invocation_available = shared_state.invocation_available.notified();
        let mut invocation_available = std::pin::pin!(invocation_available);
        invocation_available.as_mut().enable();
        {
            let mut book = shared_state.book.lock();
            if let Some(init_error) = &book.init_error {
                return init_failed_response(init_error);
            }
            if book.newest_poll_number != this_poll_number {
                return error_response(
                    StatusCode::CONFLICT,
                    "PollSuperseded",
                    "a newer /next poll from this worker is waiting for the invocation",
                );
            }
            while let Some(queued) = book.queued.pop_front() {
                if queued.outcome_sender.is_closed() {
                    tracing::debug!(request_id = %queued.request_id, "skipping invocation abandoned while queued");
                    continue;
                }
                book.hand_out_count += 1;
                let hand_out_number = book.hand_out_count;
                tracing::debug!(request_id = %queued.request_id, "invocation handed to the worker");
                let mut response = Response::new(Full::new(queued.payload));
                *response.headers_mut() = queued.next_response_headers;
                book.in_flight = Some(InFlightInvocation {
                    request_id: queued.request_id,
                    hand_out_number,
                    output_chunks: queued.output_chunks,
                    outcome_sender: queued.outcome_sender,
                    answer_in_progress: false,
                });
                return response;
            }
        }
        invocation_available.await;
    }
}

/// `POST /init/error`: records the (first) init error and ends every pending invocation with it.
async fn record_init_error(
    shared_state: &SharedServerState,
    request: Request<Incoming>,
) -> ApiResponse {
    let header_error_type = header_text(request.headers(), FUNCTION_ERROR_TYPE_HEADER);
    let limit = shared_state.max_response_bytes;
    let init_error = match read_capped_body(request.into_body(), limit).await {
        CappedBody::Complete(body) => {
            let error_report = ErrorReport::parse(&body, header_error_type);
            WorkerInitError {
                error_type: error_report.error_type,
                error_message: error_report.error_message,
            }
        }
        CappedBody::TooLarge => WorkerInitError {
            error_type: header_error_type.unwrap_or_else(|| UNNAMED_ERROR_TYPE.to_owned()),
            error_message: format!("the init error report exceeded {limit} bytes"),
        },
        CappedBody::Interrupted => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "body interrupted",
            );
        }
    };
    tracing::warn!(error_type = %init_error.error_type, error_message = %init_error.error_message, "worker reported an init error");

    let mut ended_invocations = Vec::new();
    let recorded_init_error = {
        let mut book = shared_state.book.lock();
        let recorded_init_error = book.init_error.get_or_insert(init_error).clone();
        if let Some(in_flight) = book.in_flight.take() {
            book.remember_finished_request_id(in_flight.request_id.clone());
            ended_invocations.push(in_flight.outcome_sender);
        }
        ended_invocations.extend(book.queued.drain(..).map(|queued| queued.outcome_sender));
        recorded_init_error
    };
    for outcome_sender in ended_invocations {
        let _ = outcome_sender.send(LambdaOutcome::InitError(recorded_init_error.clone()));
    }
    shared_state
        .readiness
        .send_replace(WorkerReadiness::InitFailed(recorded_init_error));
    shared_state.invocation_available.notify_waiters();
    accepted_response()
}

/// Ends the in-flight invocation as interrupted if its answer's connection task goes away (the
/// connection closed, or the server stopped) before the answer was complete.
struct AnswerInProgressGuard<'state> {
    shared_state: &'state SharedServerState,
    hand_out_number: u64,
    is_finished: bool,
}

impl Drop for AnswerInProgressGuard<'_> {
    fn drop(&mut self) {
        if self.is_finished {
            return;
        }
        let interrupted = self
            .shared_state
            .book
            .lock()
            .take_in_flight_if_still(self.hand_out_number);
        if let Some(interrupted) = interrupted {
            tracing::warn!(request_id = %interrupted.request_id, "worker's answer was interrupted");
            let _ = interrupted
                .outcome_sender
                .send(LambdaOutcome::FunctionError {
                    error_type: "Runtime.ResponseInterrupted".to_owned(),
                    error_message: format!(
                        "the worker's connection closed before its answer to {} was complete",
                        interrupted.request_id
                    ),
                    body: Bytes::new(),
                });
        }
    }
}

impl AnswerInProgressGuard<'_> {
    /// Delivers the outcome if this answer's invocation is still in flight and still awaited.
    fn finish(&mut self, outcome: LambdaOutcome) -> FinishResult {
        self.is_finished = true;
        let finished = self
            .shared_state
            .book
            .lock()
            .take_in_flight_if_still(self.hand_out_number);
        let Some(finished) = finished else {
            return FinishResult::NoLongerInFlight;
        };
        match finished.outcome_sender.send(outcome) {
            Ok(()) => FinishResult::Delivered,
            Err(_) => FinishResult::CallerGone,
        }
    }
}

enum FinishResult {
    Delivered,
    /// Another `/next` poll or an init error ended the invocation while its answer was read.
    NoLongerInFlight,
    /// The caller dropped its `invoke` future.
    CallerGone,
}

/// `POST /invocation/{id}/response` and `/error`.
async fn receive_invocation_answer(
    shared_state: &SharedServerState,
    request_id: &str,
    answer_kind: AnswerKind,
    request: Request<Incoming>,
) -> ApiResponse {
    let limit = shared_state.max_response_bytes;
    // Claim the in-flight invocation for this answer, or explain why not.
    let claim = {
        let mut book = shared_state.book.lock();
        let is_recently_finished = book
            .recently_finished_request_ids
            .iter()
            .any(|finished| finished == request_id);
        match book.in_flight.as_mut() {
            Some(in_flight)
                if in_flight.request_id == request_id && !in_flight.answer_in_progress =>
            {
                if in_flight.outcome_sender.is_closed() {
                    let hand_out_number = in_flight.hand_out_number;
                    book.take_in_flight_if_still(hand_out_number);
                    Err(AnswerRefusal::Abandoned)
                } else {
                    in_flight.answer_in_progress = true;
                    Ok((in_flight.hand_out_number, in_flight.output_chunks.clone()))
                }
            }
            Some(in_flight) if in_flight.request_id == request_id => {
                Err(AnswerRefusal::AlreadyAnswered)
            }
            _ if is_recently_finished => Err(AnswerRefusal::AlreadyAnswered),
            _ => Err(AnswerRefusal::UnknownRequestId),
        }
    };
    let (hand_out_number, output_chunks) = match claim {
        Ok(claimed) => claimed,
        Err(refusal) => {
            tracing::warn!(%request_id, ?answer_kind, ?refusal, "worker's answer refused");
            drain_request_body(request.into_body(), limit).await;
            return refusal.response(request_id);
        }
    };
    let mut guard = AnswerInProgressGuard {
        shared_state,
        hand_out_number,
        is_finished: false,
    };

    let headers = request.headers();
    let is_streaming = answer_kind == AnswerKind::Response
        && headers
            .get(RESPONSE_MODE_HEADER)
            .is_some_and(|mode| mode.as_bytes().eq_ignore_ascii_case(b"streaming"));
    let header_error_type = header_text(headers, FUNCTION_ERROR_TYPE_HEADER);
    let content_type = header_text(headers, CONTENT_TYPE.as_str());
    let chunk_forwarding = if is_streaming {
        output_chunks.as_ref()
    } else {
        None
    };

    let received = match receive_answer_body(request.into_body(), limit, chunk_forwarding).await {
        Ok(received) => received,
        Err(AnswerBodyProblem::TooLarge { rest_of_body }) => {
            tracing::warn!(%request_id, limit, "worker's answer exceeded the size cap");
            guard.finish(LambdaOutcome::ResponseTooLarge { limit });
            if let Some(rest_of_body) = rest_of_body {
                drain_request_body(rest_of_body, u64::MAX).await;
            }
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("Exceeded maximum allowed payload size ({limit} bytes)."),
            );
        }
        // The guard ends the invocation as interrupted when it drops here.
        Err(AnswerBodyProblem::Interrupted) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "the request body was interrupted",
            );
        }
    };

    let outcome = match answer_kind {
        AnswerKind::Error => {
            let error_report = ErrorReport::parse(&received.body, header_error_type);
            LambdaOutcome::FunctionError {
                error_type: error_report.error_type,
                error_message: error_report.error_message,
                body: received.body,
            }
        }
        AnswerKind::Response => match error_from_trailers(received.trailers.as_ref()) {
            Some(trailer_error) => trailer_error,
            None => {
                if !is_streaming
                    && !received.body.is_empty()
                    && let Some(output_chunks) = &output_chunks
                {
                    let _ = output_chunks.send(received.body.clone());
                }
                LambdaOutcome::Response {
                    body: received.body,
                    content_type,
                }
            }
        },
    };
    let is_error = !matches!(outcome, LambdaOutcome::Response { .. });
    match guard.finish(outcome) {
        FinishResult::Delivered => {
            tracing::debug!(%request_id, ?answer_kind, is_streaming, is_error, "invocation answered");
            accepted_response()
        }
        FinishResult::NoLongerInFlight => {
            tracing::warn!(%request_id, "answer arrived after the invocation was ended");
            AnswerRefusal::AlreadyAnswered.response(request_id)
        }
        FinishResult::CallerGone => {
            tracing::debug!(%request_id, "answer to an abandoned invocation ignored");
            AnswerRefusal::Abandoned.response(request_id)
        }
    }
}

#[derive(Debug)]
enum AnswerRefusal {
    UnknownRequestId,
    AlreadyAnswered,
    Abandoned,
}

impl AnswerRefusal {
    fn response(&self, request_id: &str) -> ApiResponse {
        match self {
            AnswerRefusal::UnknownRequestId => error_response(
                StatusCode::BAD_REQUEST,
                "InvalidRequestID",
                &format!("invalid request id {request_id}: no such invocation is in flight"),
            ),
            AnswerRefusal::AlreadyAnswered => error_response(
                StatusCode::BAD_REQUEST,
                "InvalidStateTransition",
                &format!("invocation {request_id} has already ended"),
            ),
            AnswerRefusal::Abandoned => error_response(
                StatusCode::BAD_REQUEST,
                "InvalidRequestID",
                &format!("invocation {request_id} was abandoned by its caller"),
            ),
        }
    }
}

struct ReceivedAnswer {
    body: Bytes,
    trailers: Option<HeaderMap>,
}

enum AnswerBodyProblem {
    /// Over the limit; what is left of the body still has to be drained (or is `None` when it
    /// was already read to its end).
    TooLarge {
        rest_of_body: Option<Incoming>,
    },
    Interrupted,
}

/// Reads an answer body up to `limit` bytes, forwarding each data chunk to `chunk_forwarding`
/// as it arrives. Over the limit, hands back the unread rest of the body, for the caller to
/// discard once it has ended the invocation, so that the worker's client gets to read the 413
/// instead of a reset connection.
async fn receive_answer_body(
    mut body: Incoming,
    limit: u64,
    chunk_forwarding: Option<&mpsc::UnboundedSender<Bytes>>,
) -> Result<ReceivedAnswer, AnswerBodyProblem> {
    let mut collected = BytesMut::new();
    let mut trailers = None;
    // A data chunk that may be `lambda_runtime`'s in-body error trailer; held back until it is
    // known not to be the last chunk.
    let mut possible_in_body_trailer: Option<Bytes> = None;
    let accept_chunk = |chunk: Bytes, collected: &mut BytesMut| -> Result<(), ()> {
        if collected.len() as u64 + chunk.len() as u64 > limit {
            return Err(());
        }
        collected.extend_from_slice(&chunk);
        if let Some(chunk_forwarding) = chunk_forwarding {
            let _ = chunk_forwarding.send(chunk);
        }
        Ok(())
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|body_error| {
            tracing::debug!(%body_error, "answer body ended with an error");
            AnswerBodyProblem::Interrupted
        })?;
        let frame = match frame.into_data() {
            Ok(chunk) => {
                if let Some(held_chunk) = possible_in_body_trailer.take()
                    && accept_chunk(held_chunk, &mut collected).is_err()
                {
                    return Err(AnswerBodyProblem::TooLarge {
                        rest_of_body: Some(body),
                    });
                }
                if chunk.starts_with(IN_BODY_ERROR_TRAILER_PREFIX) {
                    possible_in_body_trailer = Some(chunk);
                } else if accept_chunk(chunk, &mut collected).is_err() {
                    return Err(AnswerBodyProblem::TooLarge {
                        rest_of_body: Some(body),
                    });
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(frame_trailers) = frame.into_trailers() {
            trailers
                .get_or_insert_with(HeaderMap::new)
                .extend(frame_trailers);
        }
    }
    if let Some(held_chunk) = possible_in_body_trailer {
        match parse_in_body_trailer(&held_chunk) {
            Some(in_body_trailers) => trailers
                .get_or_insert_with(HeaderMap::new)
                .extend(in_body_trailers),
            None => accept_chunk(held_chunk, &mut collected)
                .map_err(|()| AnswerBodyProblem::TooLarge { rest_of_body: None })?,
        }
    }
    Ok(ReceivedAnswer {
        body: collected.freeze(),
        trailers,
    })
}

/// Parses `lambda_runtime`'s in-body error trailer: `Name: value\r\n` lines, nothing else.
fn parse_in_body_trailer(chunk: &[u8]) -> Option<HeaderMap> {
    let text = std::str::from_utf8(chunk).ok()?;
    let mut trailers = HeaderMap::new();
    for line in text.split("\r\n").filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
        let value = HeaderValue::from_str(value.trim()).ok()?;
        trailers.append(name, value);
    }
    trailers
        .contains_key(FUNCTION_ERROR_TYPE_HEADER)
        .then_some(trailers)
}

/// A streamed response that failed midway: `Lambda-Runtime-Function-Error-Type` and a base64
/// `Lambda-Runtime-Function-Error-Body` (normally a JSON error document) in the trailers.
fn error_from_trailers(trailers: Option<&HeaderMap>) -> Option<LambdaOutcome> {
    let trailers = trailers?;
    let trailer_error_type = header_text(trailers, FUNCTION_ERROR_TYPE_HEADER)?;
    let error_body = trailers
        .get(FUNCTION_ERROR_BODY_TRAILER)
        .map(|encoded| {
            let encoded = encoded.as_bytes().trim_ascii();
            match base64::engine::general_purpose::STANDARD.decode(encoded) {
                Ok(decoded) => Bytes::from(decoded),
                Err(_) => Bytes::copy_from_slice(encoded),
            }
        })
        .unwrap_or_default();
    let error_report = ErrorReport::parse(&error_body, Some(trailer_error_type.clone()));
    Some(LambdaOutcome::FunctionError {
        // The trailer names the error for a streamed response; the body only describes it.
        error_type: trailer_error_type,
        error_message: error_report.error_message,
        body: error_body,
    })
}

/// The fields of a Lambda error document (`{"errorMessage", "errorType", "stackTrace"}`),
/// read leniently: a body that is not such a document becomes the message.
struct ErrorReport {
    error_type: String,
    error_message: String,
}

impl ErrorReport {
    /// The body's `errorType` wins over the `Lambda-Runtime-Function-Error-Type` header, because
    /// `lambda_runtime` always sends the header as `unhandled` and names the type in the body.
    fn parse(body: &[u8], header_error_type: Option<String>) -> ErrorReport {
        let document = serde_json::from_slice::<serde_json::Value>(body).ok();
        let field = |name: &str| {
            document
                .as_ref()
                .and_then(|document| document.get(name))
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        };
        let error_type = field("errorType")
            .filter(|error_type| !error_type.is_empty())
            .or(header_error_type)
            .unwrap_or_else(|| UNNAMED_ERROR_TYPE.to_owned());
        let error_message = match (&document, field("errorMessage")) {
            (_, Some(error_message)) => error_message,
            (Some(serde_json::Value::Object(_)), None) => String::new(),
            (_, None) => String::from_utf8_lossy(body).into_owned(),
        };
        ErrorReport {
            error_type,
            error_message,
        }
    }
}

enum CappedBody {
    Complete(Bytes),
    TooLarge,
    Interrupted,
}

async fn read_capped_body(body: Incoming, limit: u64) -> CappedBody {
    match receive_answer_body(body, limit, None).await {
        Ok(received) => CappedBody::Complete(received.body),
        Err(AnswerBodyProblem::TooLarge { rest_of_body }) => {
            if let Some(rest_of_body) = rest_of_body {
                drain_request_body(rest_of_body, u64::MAX).await;
            }
            CappedBody::TooLarge
        }
        Err(AnswerBodyProblem::Interrupted) => CappedBody::Interrupted,
    }
}

/// Reads and discards up to `limit` bytes of a body we answer without using, so a keep-alive
/// connection stays usable; a larger body is left unread and hyper closes the connection.
async fn drain_request_body(mut body: Incoming, limit: u64) {
    let mut drained_bytes: u64 = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(chunk) = frame.data_ref() {
            drained_bytes = drained_bytes.saturating_add(chunk.len() as u64);
            if drained_bytes > limit {
                return;
            }
        }
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned())
        .filter(|text| !text.is_empty())
}

fn json_response(status: StatusCode, document: &serde_json::Value) -> ApiResponse {
    let mut response = Response::new(Full::new(Bytes::from(document.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn accepted_response() -> ApiResponse {
    json_response(StatusCode::ACCEPTED, &serde_json::json!({ "status": "OK" }))
}

fn error_response(status: StatusCode, error_type: &str, error_message: &str) -> ApiResponse {
    json_response(
        status,
        &serde_json::json!({ "errorMessage": error_message, "errorType": error_type }),
    )
}

fn init_failed_response(init_error: &WorkerInitError) -> ApiResponse {
    error_response(
        StatusCode::FORBIDDEN,
        "InvalidStateTransition",
        &format!(
            "the worker reported an init error ({}); no invocation will be handed out",
            init_error.error_type
        ),
    )
}
