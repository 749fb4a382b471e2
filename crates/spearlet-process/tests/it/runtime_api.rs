//! The Lambda Runtime API server, driven over real HTTP/1.1 by a test playing the worker.
//!
//! The worker side is a raw hyper client doing what the official client libraries do (long-poll
//! `/next`, post `/response` or `/error`, chunked streaming bodies with trailers); the node side
//! is the server's public API. Nothing is mocked.
//!
//! Invariants of these tests:
//! - Every wait is bounded by [`within_deadline`], so a broken server fails a test instead of
//!   hanging it.
//! - "Has not happened yet" is asserted only after a real pause (100 ms), never inferred. Such a
//!   pause is the behaviour under test ("nothing happens meanwhile"), never synchronisation:
//!   ordering waits for something observable ([`wait_for_polls`], [`queue_invocation`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use spearlet_process::runtime_api::{
    LambdaInvocation, LambdaOutcome, RuntimeApiServer, WorkerInitError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const GENEROUS_MAX_RESPONSE_BYTES: u64 = 6 * 1024 * 1024;
const NEXT_PATH: &str = "/2018-06-01/runtime/invocation/next";
const INIT_ERROR_PATH: &str = "/2018-06-01/runtime/init/error";
const REQUEST_ID_HEADER: &str = "lambda-runtime-aws-request-id";
const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";
const STREAMING_RESPONSE_MODE: (&str, &str) =
    ("lambda-runtime-function-response-mode", "streaming");
const CHUNKED_TRANSFER: (&str, &str) = ("transfer-encoding", "chunked");
const TEST_DEADLINE: Duration = Duration::from_secs(20);
const PAUSE_LONG_ENOUGH_TO_NOTICE: Duration = Duration::from_millis(100);

type WorkerRequestBody = BoxBody<Bytes, Infallible>;
type FrameSender = mpsc::UnboundedSender<Frame<Bytes>>;

/// What the server answered one worker request with.
#[derive(Debug)]
struct ServerReply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl ServerReply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("reply has no {name} header: {self:?}"))
            .to_str()
            .unwrap()
    }

    fn json_field(&self, name: &str) -> String {
        let document: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        document[name].as_str().unwrap_or_default().to_owned()
    }
}

#[track_caller]
fn assert_status(reply: &ServerReply, expected_status: StatusCode) {
    assert_eq!(reply.status, expected_status, "{reply:?}");
}

/// Checks which invocation a `/next` reply handed out.
#[track_caller]
fn assert_request_id(next: &ServerReply, expected_request_id: &str) {
    assert_eq!(next.header(REQUEST_ID_HEADER), expected_request_id);
}

/// One keep-alive HTTP/1.1 connection from the worker to its Runtime API, as a client library
/// keeps it.
struct WorkerConnection {
    request_sender: hyper::client::conn::http1::SendRequest<WorkerRequestBody>,
    address: SocketAddr,
}

impl WorkerConnection {
    async fn open(address: SocketAddr) -> WorkerConnection {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (request_sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        WorkerConnection {
            request_sender,
            address,
        }
    }

    /// A request to `path` on this connection, without sending it yet.
    fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.address.to_string())
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: WorkerRequestBody,
    ) -> ServerReply {
        let mut request_builder = self.request(method, path);
        for (name, value) in headers {
            request_builder = request_builder.header(*name, *value);
        }
        let request = request_builder.body(body).unwrap();
        let response = self.request_sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        ServerReply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn poll_next(&mut self) -> ServerReply {
        self.send(Method::GET, NEXT_PATH, &[], empty_body()).await
    }

    /// Long-polls `/next` (within the deadline) and checks it handed out `expected_request_id`.
    async fn next_invocation(&mut self, expected_request_id: &str) -> ServerReply {
        let next = within_deadline(self.poll_next()).await;
        assert_request_id(&next, expected_request_id);
        next
    }

    async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> ServerReply {
        self.send(Method::POST, path, headers, Full::new(body.into()).boxed())
            .await
    }

    /// Submits an invocation of `request_id` (with an empty JSON event) to `server` and takes it
    /// from `/next` on this connection.
    async fn take_invocation(
        &mut self,
        server: &Arc<RuntimeApiServer>,
        request_id: &str,
    ) -> JoinHandle<LambdaOutcome> {
        self.take_prepared_invocation(server, invocation(request_id, "{}"))
            .await
    }

    /// Submits `invocation` to `server` and takes it from `/next` on this connection.
    async fn take_prepared_invocation(
        &mut self,
        server: &Arc<RuntimeApiServer>,
        invocation: LambdaInvocation,
    ) -> JoinHandle<LambdaOutcome> {
        let request_id = invocation.request_id.clone();
        let pending_invocation = spawn_invoke(server, invocation);
        self.next_invocation(&request_id).await;
        pending_invocation
    }

    /// Answers `request_id` with `body`; the server must accept the answer and the pending
    /// invocation must end with exactly that body.
    async fn answer_and_expect(
        &mut self,
        pending_invocation: JoinHandle<LambdaOutcome>,
        request_id: &str,
        body: impl Into<Bytes>,
    ) {
        let body = body.into();
        let reply = self.post_response(request_id, body.clone()).await;
        assert_status(&reply, StatusCode::ACCEPTED);
        expect_response(pending_invocation, body).await;
    }

    /// One whole invocation of `request_id` on this connection: submitted, taken, answered with
    /// `body`, accepted, and ended with exactly that body.
    async fn round_trip(
        &mut self,
        server: &Arc<RuntimeApiServer>,
        request_id: &str,
        body: impl Into<Bytes>,
    ) {
        let pending_invocation = self.take_invocation(server, request_id).await;
        self.answer_and_expect(pending_invocation, request_id, body)
            .await;
    }

    /// Answers `request_id` with a buffered `/response` and no extra headers.
    async fn post_response(&mut self, request_id: &str, body: impl Into<Bytes>) -> ServerReply {
        self.post(&response_path(request_id), &[], body).await
    }
}

/// A new connection per request, for tests where connection reuse does not matter.
async fn poll_next(address: SocketAddr) -> ServerReply {
    WorkerConnection::open(address).await.poll_next().await
}

/// Parks a `/next` long-poll on a new connection in its own task.
fn spawn_poll_next(address: SocketAddr) -> JoinHandle<ServerReply> {
    tokio::spawn(poll_next(address))
}

async fn next_invocation(address: SocketAddr, expected_request_id: &str) -> ServerReply {
    WorkerConnection::open(address)
        .await
        .next_invocation(expected_request_id)
        .await
}

/// [`WorkerConnection::answer_and_expect`] on a new connection.
async fn answer_and_expect(
    address: SocketAddr,
    pending_invocation: JoinHandle<LambdaOutcome>,
    request_id: &str,
    body: impl Into<Bytes>,
) {
    WorkerConnection::open(address)
        .await
        .answer_and_expect(pending_invocation, request_id, body)
        .await;
}

async fn post_init_error(address: SocketAddr, error_type: &str, body: &str) -> ServerReply {
    WorkerConnection::open(address)
        .await
        .post(
            INIT_ERROR_PATH,
            &[(ERROR_TYPE_HEADER, error_type)],
            body.to_owned(),
        )
        .await
}

/// Starts a streamed `/response` for `request_id` (response mode `streaming`, plus
/// `extra_headers`) on a new connection. The test feeds the chunked body frame by frame (data,
/// then optionally trailers) through the returned sender; dropping the sender ends the body.
fn spawn_streamed_response(
    address: SocketAddr,
    request_id: &str,
    extra_headers: &'static [(&'static str, &'static str)],
) -> (FrameSender, JoinHandle<ServerReply>) {
    let (frame_sender, frame_receiver) = mpsc::unbounded_channel();
    let path = response_path(request_id);
    let streaming_post = tokio::spawn(async move {
        let frames = futures::stream::unfold(frame_receiver, |mut frame_receiver| async move {
            let frame = frame_receiver.recv().await?;
            Some((Ok::<_, Infallible>(frame), frame_receiver))
        });
        let body = StreamBody::new(frames).boxed();
        let mut headers = vec![STREAMING_RESPONSE_MODE];
        headers.extend_from_slice(extra_headers);
        WorkerConnection::open(address)
            .await
            .send(Method::POST, &path, &headers, body)
            .await
    });
    (frame_sender, streaming_post)
}

fn send_data(frame_sender: &FrameSender, data: impl Into<Bytes>) {
    frame_sender.send(Frame::data(data.into())).unwrap();
}

fn empty_body() -> WorkerRequestBody {
    Full::new(Bytes::new()).boxed()
}

fn response_path(request_id: &str) -> String {
    format!("/2018-06-01/runtime/invocation/{request_id}/response")
}

fn error_path(request_id: &str) -> String {
    format!("/2018-06-01/runtime/invocation/{request_id}/error")
}

fn invocation(request_id: &str, payload: &str) -> LambdaInvocation {
    LambdaInvocation {
        request_id: request_id.to_owned(),
        payload: Bytes::from(payload.to_owned()),
        deadline_unix_ms: 1_900_000_000_000,
        invoked_function_arn: "arn:aws:lambda:local:000000000000:function:echo".to_owned(),
        trace_id: format!("Root=1-00000000-{request_id};Sampled=0"),
        output_chunks: None,
    }
}

/// An invocation whose caller takes the output as it streams, with the receiving end.
fn streaming_invocation(request_id: &str) -> (LambdaInvocation, mpsc::UnboundedReceiver<Bytes>) {
    let (output_chunk_sender, output_chunk_receiver) = mpsc::unbounded_channel();
    let mut streaming_invocation = invocation(request_id, "{}");
    streaming_invocation.output_chunks = Some(output_chunk_sender);
    (streaming_invocation, output_chunk_receiver)
}

async fn within_deadline<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, future)
        .await
        .expect("the Runtime API did not answer in time")
}

/// Waits (within the deadline) for a spawned task to end, and takes what it returned.
async fn joined<T>(task: JoinHandle<T>) -> T {
    within_deadline(task).await.unwrap()
}

async fn expect_response(pending_invocation: JoinHandle<LambdaOutcome>, body: impl Into<Bytes>) {
    assert_eq!(
        joined(pending_invocation).await,
        LambdaOutcome::Response {
            body: body.into(),
            content_type: None,
        }
    );
}

/// The error type of `what`'s outcome, which must be a function error.
#[track_caller]
fn function_error_type(what: &str, outcome: LambdaOutcome) -> String {
    let LambdaOutcome::FunctionError { error_type, .. } = outcome else {
        panic!("{what} did not end as a function error but as {outcome:?}");
    };
    error_type
}

async fn start_server(max_response_bytes: u64) -> Arc<RuntimeApiServer> {
    Arc::new(RuntimeApiServer::start(max_response_bytes).await.unwrap())
}

/// A server with a generous response limit and one worker connection to it.
async fn start_server_and_worker() -> (Arc<RuntimeApiServer>, WorkerConnection) {
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let connection = WorkerConnection::open(server.address()).await;
    (server, connection)
}

/// Runs `invoke` in its own task, so the test can play the worker meanwhile.
fn spawn_invoke(
    server: &Arc<RuntimeApiServer>,
    invocation: LambdaInvocation,
) -> JoinHandle<LambdaOutcome> {
    let server = server.clone();
    tokio::spawn(async move { server.invoke(invocation).await })
}

/// Queues `invocation` on the server before returning, then lets it wait for its outcome in a
/// task of its own. `invoke` queues on its first poll (it only awaits after queueing), so calls
/// made one after another reach the queue in that order.
async fn queue_invocation(
    server: &Arc<RuntimeApiServer>,
    invocation: LambdaInvocation,
) -> JoinHandle<LambdaOutcome> {
    let server = server.clone();
    let mut pending_invocation = Box::pin(async move { server.invoke(invocation).await });
    assert!(
        futures::poll!(&mut pending_invocation).is_pending(),
        "the invocation ended before any worker could take it"
    );
    tokio::spawn(pending_invocation)
}

/// Waits (within the deadline) until `count` `/next` polls in all have reached the server.
async fn wait_for_polls(server: &RuntimeApiServer, count: u64) {
    within_deadline(async {
        while server.next_polls_received() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A server with one invocation already handed out to the worker (on a connection of its own),
/// so the test can go straight to answering it.
async fn start_server_with_invocation_handed_out(
    invocation: LambdaInvocation,
) -> (Arc<RuntimeApiServer>, JoinHandle<LambdaOutcome>) {
    let (server, mut connection) = start_server_and_worker().await;
    let pending_invocation = connection
        .take_prepared_invocation(&server, invocation)
        .await;
    (server, pending_invocation)
}

#[tokio::test]
async fn worker_is_ready_at_its_first_poll() {
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    assert!(server.address().ip().is_loopback());
    assert_ne!(server.address().port(), 0);

    let not_ready_yet =
        tokio::time::timeout(PAUSE_LONG_ENOUGH_TO_NOTICE, server.wait_until_ready()).await;
    assert!(not_ready_yet.is_err(), "ready before the worker polled");

    let parked_poll = spawn_poll_next(server.address());
    assert_eq!(within_deadline(server.wait_until_ready()).await, Ok(()));
    assert_eq!(
        within_deadline(server.wait_until_ready()).await,
        Ok(()),
        "readiness is sticky"
    );
    parked_poll.abort();
}

#[tokio::test]
async fn init_error_ends_the_readiness_wait_and_every_invocation() {
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let expected_init_error = WorkerInitError {
        error_type: "Runtime.ImportModuleError".to_owned(),
        error_message: "Unable to import module 'handler'".to_owned(),
    };
    let pending_readiness_wait = {
        let server = server.clone();
        tokio::spawn(async move { server.wait_until_ready().await })
    };
    let pending_invocation = queue_invocation(&server, invocation("before-init-error", "{}")).await;

    let reply = post_init_error(
        server.address(),
        "Runtime.InitError",
        r#"{"errorMessage":"Unable to import module 'handler'","errorType":"Runtime.ImportModuleError","stackTrace":[]}"#,
    )
    .await;
    assert_status(&reply, StatusCode::ACCEPTED);

    assert_eq!(
        joined(pending_readiness_wait).await,
        Err(expected_init_error.clone())
    );
    assert_eq!(
        within_deadline(server.wait_until_ready()).await,
        Err(expected_init_error.clone())
    );
    assert_eq!(
        joined(pending_invocation).await,
        LambdaOutcome::InitError(expected_init_error.clone())
    );
    assert_eq!(
        within_deadline(server.invoke(invocation("after-init-error", "{}"))).await,
        LambdaOutcome::InitError(expected_init_error)
    );
    let late_poll = within_deadline(poll_next(server.address())).await;
    assert_status(&late_poll, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn init_error_without_a_json_body_takes_its_type_from_the_header() {
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let reply = post_init_error(server.address(), "Runtime.ExitError", "exit status 3").await;
    assert_status(&reply, StatusCode::ACCEPTED);
    let expected_init_error = WorkerInitError {
        error_type: "Runtime.ExitError".to_owned(),
        error_message: "exit status 3".to_owned(),
    };
    assert_eq!(
        within_deadline(server.wait_until_ready()).await,
        Err(expected_init_error)
    );
}

#[tokio::test]
async fn a_hundred_sequential_invocations_carry_their_headers_and_bodies() {
    const INVOCATION_COUNT: usize = 100;
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let address = server.address();
    // The worker: one keep-alive connection, like lambda_runtime's client; echoes every event
    // with the context it was given.
    let worker = tokio::spawn(async move {
        let mut connection = WorkerConnection::open(address).await;
        for _ in 0..INVOCATION_COUNT {
            let next = connection.poll_next().await;
            assert_status(&next, StatusCode::OK);
            assert_eq!(next.header("content-type"), "application/json");
            assert!(next.headers.get("lambda-runtime-client-context").is_none());
            assert!(
                next.headers
                    .get("lambda-runtime-cognito-identity")
                    .is_none()
            );
            let request_id = next.header(REQUEST_ID_HEADER).to_owned();
            let echoed = serde_json::json!({
                "event": serde_json::from_slice::<serde_json::Value>(&next.body).unwrap(),
                "deadline": next.header("lambda-runtime-deadline-ms"),
                "arn": next.header("lambda-runtime-invoked-function-arn"),
                "trace": next.header("lambda-runtime-trace-id"),
            });
            let reply = connection
                .post_response(&request_id, echoed.to_string())
                .await;
            assert_status(&reply, StatusCode::ACCEPTED);
            assert_eq!(reply.json_field("status"), "OK");
        }
    });

    assert_eq!(within_deadline(server.wait_until_ready()).await, Ok(()));
    for invocation_number in 0..INVOCATION_COUNT {
        let request_id = format!("request-{invocation_number}");
        let mut this_invocation =
            invocation(&request_id, &format!(r#"{{"n":{invocation_number}}}"#));
        this_invocation.deadline_unix_ms += invocation_number as u64;
        let outcome = within_deadline(server.invoke(this_invocation)).await;
        let LambdaOutcome::Response { body, .. } = outcome else {
            panic!("invocation {invocation_number} ended with {outcome:?}");
        };
        let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            echoed,
            serde_json::json!({
                "event": { "n": invocation_number },
                "deadline": (1_900_000_000_000 + invocation_number as u64).to_string(),
                "arn": "arn:aws:lambda:local:000000000000:function:echo",
                "trace": format!("Root=1-00000000-{request_id};Sampled=0"),
            })
        );
    }
    joined(worker).await;
}

#[tokio::test]
async fn queued_invocations_are_handed_out_in_order_one_per_poll() {
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let request_ids = ["first", "second", "third"];
    let mut invocations = Vec::new();
    for request_id in request_ids {
        invocations.push(queue_invocation(&server, invocation(request_id, "{}")).await);
    }
    let mut connection = WorkerConnection::open(server.address()).await;
    for expected_request_id in request_ids {
        connection.next_invocation(expected_request_id).await;
        let reply = connection
            .post_response(expected_request_id, expected_request_id)
            .await;
        assert_status(&reply, StatusCode::ACCEPTED);
    }
    for (request_id, invocation) in request_ids.into_iter().zip(invocations) {
        expect_response(invocation, request_id).await;
    }
}

#[tokio::test]
async fn long_poll_waits_until_an_invocation_arrives() {
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let address = server.address();
    let parked_poll = spawn_poll_next(address);
    wait_for_polls(&server, 1).await;
    // The pause is what is tested: the poll, which has arrived, stays unanswered meanwhile.
    tokio::time::sleep(PAUSE_LONG_ENOUGH_TO_NOTICE).await;
    assert!(
        !parked_poll.is_finished(),
        "/next answered with no invocation queued"
    );

    let pending_invocation =
        spawn_invoke(&server, invocation("late-arrival", r#"{"hello":"world"}"#));
    let next = joined(parked_poll).await;
    assert_status(&next, StatusCode::OK);
    assert_request_id(&next, "late-arrival");
    assert_eq!(next.body, Bytes::from_static(br#"{"hello":"world"}"#));

    answer_and_expect(address, pending_invocation, "late-arrival", "done").await;
}

/// Naive runtimes match header names exactly as real Lambda spells them, so check the bytes.
#[tokio::test]
async fn next_invocation_headers_are_spelled_as_real_lambda_spells_them() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let mut untraced_invocation = invocation("spelled-out", r#"{"k":1}"#);
    untraced_invocation.trace_id = String::new();
    let pending_invocation = spawn_invoke(&server, untraced_invocation);

    let mut stream = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    let request = format!(
        "GET {NEXT_PATH} HTTP/1.1\r\nhost: {}\r\n\r\n",
        server.address()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    while !received.ends_with(br#"{"k":1}"#) {
        let mut buffer = [0_u8; 4096];
        let read_count = within_deadline(stream.read(&mut buffer)).await.unwrap();
        assert_ne!(read_count, 0, "connection closed early: {received:?}");
        received.extend_from_slice(&buffer[..read_count]);
    }
    let received = String::from_utf8(received).unwrap();
    for expected_line in [
        "HTTP/1.1 200 OK\r\n",
        "\r\nLambda-Runtime-Aws-Request-Id: spelled-out\r\n",
        "\r\nLambda-Runtime-Deadline-Ms: 1900000000000\r\n",
        "\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:local:000000000000:function:echo\r\n",
        "\r\nContent-Type: application/json\r\n",
        "\r\nContent-Length: 7\r\n",
    ] {
        assert!(
            received.contains(expected_line),
            "{expected_line:?} missing from {received:?}"
        );
    }
    assert!(
        !received
            .to_ascii_lowercase()
            .contains("lambda-runtime-trace-id"),
        "empty trace id sent"
    );

    answer_and_expect(server.address(), pending_invocation, "spelled-out", "ok").await;
}

/// One case of "the worker answers with X, the server accepts it, the invocation ends as Y".
struct AnswerCase {
    name: &'static str,
    answer_path: fn(&str) -> String,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    expected_outcome: LambdaOutcome,
}

impl AnswerCase {
    /// A `/response` whose body the invocation ends with.
    fn response(
        name: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> AnswerCase {
        AnswerCase {
            name,
            answer_path: response_path,
            headers,
            body,
            expected_outcome: LambdaOutcome::Response {
                body: Bytes::from_static(body.as_bytes()),
                // The worker's declared media type travels with the answer.
                content_type: headers
                    .iter()
                    .find(|(header, _)| header.eq_ignore_ascii_case("content-type"))
                    .map(|(_, value)| (*value).to_owned()),
            },
        }
    }

    /// An `/error` that ends the invocation as a function error carrying the posted body.
    fn error(
        name: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
        (error_type, error_message): (&str, &str),
    ) -> AnswerCase {
        AnswerCase {
            name,
            answer_path: error_path,
            headers,
            body,
            expected_outcome: LambdaOutcome::FunctionError {
                error_type: error_type.to_owned(),
                error_message: error_message.to_owned(),
                body: Bytes::from_static(body.as_bytes()),
            },
        }
    }
}

#[tokio::test]
async fn worker_answers_end_invocations_as_expected() {
    let cases = [
        AnswerCase::response(
            "buffered response",
            &[("content-type", "application/json")],
            r#"{"ok":true}"#,
        ),
        AnswerCase::response("empty response", &[], ""),
        AnswerCase::error(
            "error document as awslambdaric sends it",
            &[(ERROR_TYPE_HEADER, "ValueError")],
            r#"{"errorMessage":"bad input","errorType":"ValueError","stackTrace":["  File \"handler.py\", line 3"]}"#,
            ("ValueError", "bad input"),
        ),
        AnswerCase::error(
            "error document as lambda_runtime sends it (the header only says unhandled)",
            &[(ERROR_TYPE_HEADER, "unhandled")],
            r#"{"errorType":"&str","errorMessage":"no name given"}"#,
            ("&str", "no name given"),
        ),
        AnswerCase::error(
            "error that is not a JSON document",
            &[(ERROR_TYPE_HEADER, "Custom.Error")],
            "plain text failure",
            ("Custom.Error", "plain text failure"),
        ),
        AnswerCase::error(
            "error with neither type header nor JSON",
            &[],
            "",
            ("Unhandled", ""),
        ),
    ];
    let (server, mut connection) = start_server_and_worker().await;
    for (case_number, case) in cases.into_iter().enumerate() {
        let request_id = format!("answer-case-{case_number}");
        let pending_invocation = spawn_invoke(&server, invocation(&request_id, "{}"));
        let next = within_deadline(connection.poll_next()).await;
        assert_eq!(next.header(REQUEST_ID_HEADER), request_id, "{}", case.name);
        let reply = connection
            .post(&(case.answer_path)(&request_id), case.headers, case.body)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "{}: {reply:?}",
            case.name
        );
        let outcome = joined(pending_invocation).await;
        assert_eq!(outcome, case.expected_outcome, "{}", case.name);
    }
}

#[tokio::test]
async fn streamed_response_chunks_reach_the_caller_before_the_end() {
    let (streaming, mut output_chunk_receiver) = streaming_invocation("streamed");
    let (server, pending_invocation) = start_server_with_invocation_handed_out(streaming).await;
    let (frame_sender, streaming_post) =
        spawn_streamed_response(server.address(), "streamed", &[CHUNKED_TRANSFER]);
    // Each chunk is sent only after the previous one reached the caller.
    for chunk in ["first,", "second,", "third"] {
        send_data(&frame_sender, chunk);
        let forwarded_chunk = within_deadline(output_chunk_receiver.recv()).await.unwrap();
        assert_eq!(forwarded_chunk, Bytes::from(chunk));
        assert!(
            !pending_invocation.is_finished(),
            "invocation ended before its stream did"
        );
    }
    drop(frame_sender);

    assert_status(&joined(streaming_post).await, StatusCode::ACCEPTED);
    expect_response(pending_invocation, "first,second,third").await;
    assert_eq!(
        output_chunk_receiver.recv().await,
        None,
        "no chunk beyond the three"
    );
}

#[tokio::test]
async fn buffered_response_reaches_a_streaming_caller_as_one_chunk() {
    let (streaming, mut output_chunk_receiver) = streaming_invocation("buffered-for-streamer");
    let (server, pending_invocation) = start_server_with_invocation_handed_out(streaming).await;
    answer_and_expect(
        server.address(),
        pending_invocation,
        "buffered-for-streamer",
        "whole body",
    )
    .await;
    assert_eq!(
        output_chunk_receiver.recv().await,
        Some(Bytes::from_static(b"whole body"))
    );
    assert_eq!(output_chunk_receiver.recv().await, None);
}

#[tokio::test]
async fn streamed_response_error_trailers_end_the_invocation_as_a_function_error() {
    let (streaming, mut output_chunk_receiver) = streaming_invocation("stream-fails");
    let (server, pending_invocation) = start_server_with_invocation_handed_out(streaming).await;

    let error_document =
        r#"{"errorMessage":"upstream went away","errorType":"Runtime.StreamError"}"#;
    let mut trailers = HeaderMap::new();
    trailers.insert(ERROR_TYPE_HEADER, "Runtime.StreamError".parse().unwrap());
    trailers.insert(
        "lambda-runtime-function-error-body",
        base64::engine::general_purpose::STANDARD
            .encode(error_document)
            .parse()
            .unwrap(),
    );
    let (frame_sender, streaming_post) = spawn_streamed_response(
        server.address(),
        "stream-fails",
        &[
            CHUNKED_TRANSFER,
            ("trailer", "Lambda-Runtime-Function-Error-Type"),
            ("trailer", "Lambda-Runtime-Function-Error-Body"),
        ],
    );
    send_data(&frame_sender, "partial output");
    frame_sender.send(Frame::trailers(trailers)).unwrap();
    drop(frame_sender);
    assert_status(&joined(streaming_post).await, StatusCode::ACCEPTED);
    assert_eq!(
        joined(pending_invocation).await,
        LambdaOutcome::FunctionError {
            error_type: "Runtime.StreamError".to_owned(),
            error_message: "upstream went away".to_owned(),
            body: Bytes::from_static(error_document.as_bytes()),
        }
    );
    assert_eq!(
        output_chunk_receiver.recv().await,
        Some(Bytes::from_static(b"partial output"))
    );
}

/// `lambda_runtime` 1.x writes its mid-stream error as a last data chunk spelling out the
/// trailer lines, with a base64 plain-text message.
#[tokio::test]
async fn lambda_runtime_in_body_error_trailer_is_recognised() {
    let (streaming, mut output_chunk_receiver) = streaming_invocation("in-body-trailer");
    let (server, pending_invocation) = start_server_with_invocation_handed_out(streaming).await;

    let in_body_trailer = format!(
        "Lambda-Runtime-Function-Error-Type: Runtime.StreamError\r\nLambda-Runtime-Function-Error-Body: {}\r\n",
        base64::engine::general_purpose::STANDARD.encode("stream broke")
    );
    let (frame_sender, streaming_post) =
        spawn_streamed_response(server.address(), "in-body-trailer", &[]);
    send_data(&frame_sender, "some output");
    // The trailer goes out as a chunk of its own: only after the output reached the caller.
    assert_eq!(
        within_deadline(output_chunk_receiver.recv()).await,
        Some(Bytes::from_static(b"some output"))
    );
    send_data(&frame_sender, in_body_trailer);
    drop(frame_sender);
    assert_status(&joined(streaming_post).await, StatusCode::ACCEPTED);
    assert_eq!(
        joined(pending_invocation).await,
        LambdaOutcome::FunctionError {
            error_type: "Runtime.StreamError".to_owned(),
            error_message: "stream broke".to_owned(),
            body: Bytes::from_static(b"stream broke"),
        }
    );
}

#[tokio::test]
async fn unknown_request_id_and_unknown_path_are_refused() {
    let (server, pending_invocation) =
        start_server_with_invocation_handed_out(invocation("the-real-one", "{}")).await;
    let mut connection = WorkerConnection::open(server.address()).await;

    for path in [response_path("no-such-id"), error_path("no-such-id")] {
        let reply = connection.post(&path, &[], "{}").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.json_field("errorType"), "InvalidRequestID", "{path}");
        assert!(!reply.json_field("errorMessage").is_empty());
    }
    for (method, path) in [
        (
            Method::GET,
            "/2018-06-01/runtime/invocation/the-real-one/response",
        ),
        (
            Method::POST,
            "/2018-06-01/runtime/invocation/the-real-one/finish",
        ),
        (Method::POST, NEXT_PATH),
        (Method::GET, "/2020-01-01/runtime/invocation/next"),
        (Method::GET, "/"),
    ] {
        let mut connection = WorkerConnection::open(server.address()).await;
        let reply = connection
            .send(method.clone(), path, &[], empty_body())
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    assert!(
        !pending_invocation.is_finished(),
        "a refused answer ended the invocation"
    );

    connection
        .answer_and_expect(pending_invocation, "the-real-one", "real")
        .await;
}

#[tokio::test]
async fn answering_twice_is_refused() {
    let (server, mut connection) = start_server_and_worker().await;
    let pending_invocation = connection.take_invocation(&server, "answered-twice").await;

    let first = connection.post_response("answered-twice", "first").await;
    assert_status(&first, StatusCode::ACCEPTED);
    for second_path in [
        response_path("answered-twice"),
        error_path("answered-twice"),
    ] {
        let second = connection.post(&second_path, &[], "second").await;
        assert_eq!(second.status, StatusCode::BAD_REQUEST, "{second_path}");
    }
    expect_response(pending_invocation, "first").await;
}

#[tokio::test]
async fn oversized_answers_get_413_and_end_as_response_too_large() {
    const LIMIT: u64 = 1024;
    let server = start_server(LIMIT).await;
    let exactly_at_the_limit = "x".repeat(LIMIT as usize);
    let one_over_the_limit = "x".repeat(LIMIT as usize + 1);
    let far_over_the_limit = "y".repeat(64 * 1024);
    let mut connection = WorkerConnection::open(server.address()).await;

    // At the limit is fine.
    connection
        .round_trip(&server, "at-limit", exactly_at_the_limit)
        .await;

    for (request_id, path_for, body) in [
        (
            "one-over",
            response_path as fn(&str) -> String,
            one_over_the_limit,
        ),
        ("far-over", response_path, far_over_the_limit.clone()),
        ("error-far-over", error_path, far_over_the_limit.clone()),
    ] {
        let pending_invocation = connection.take_invocation(&server, request_id).await;
        let reply = connection.post(&path_for(request_id), &[], body).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{request_id}");
        assert_eq!(reply.json_field("errorType"), "RequestEntityTooLarge");
        assert_eq!(
            joined(pending_invocation).await,
            LambdaOutcome::ResponseTooLarge { limit: LIMIT },
            "{request_id}"
        );
    }

    // A streamed response over the limit ends as soon as it crosses it.
    let pending_invocation = spawn_invoke(&server, invocation("stream-over", "{}"));
    next_invocation(server.address(), "stream-over").await;
    let (frame_sender, streaming_post) =
        spawn_streamed_response(server.address(), "stream-over", &[]);
    send_data(&frame_sender, far_over_the_limit);
    assert_eq!(
        joined(pending_invocation).await,
        LambdaOutcome::ResponseTooLarge { limit: LIMIT }
    );
    drop(frame_sender);
    assert_status(&joined(streaming_post).await, StatusCode::PAYLOAD_TOO_LARGE);

    // The worker is still usable afterwards.
    connection
        .round_trip(&server, "after-oversized", "small")
        .await;
}

#[tokio::test]
async fn abandoned_invocation_is_refused_late_and_the_next_one_works() {
    let (server, mut connection) = start_server_and_worker().await;

    // Abandoned while in flight: the caller gives up before the worker answers.
    let address = server.address();
    let worker_poll = tokio::spawn(async move {
        let mut connection = WorkerConnection::open(address).await;
        let next = connection.poll_next().await;
        (connection, next)
    });
    // The caller gives up (drops `invoke`) only once the worker surely holds the invocation.
    // Boxed, so that dropping it really drops the future (`pin!` would only drop a reference).
    let mut abandoned_invoke = Box::pin(server.invoke(invocation("abandoned-in-flight", "{}")));
    let (mut slow_connection, next) = tokio::select! {
        outcome = &mut abandoned_invoke => panic!("ended without an answer: {outcome:?}"),
        polled = joined(worker_poll) => polled,
    };
    drop(abandoned_invoke);
    assert_request_id(&next, "abandoned-in-flight");
    let late_reply = slow_connection
        .post_response("abandoned-in-flight", "too late")
        .await;
    assert_status(&late_reply, StatusCode::BAD_REQUEST);

    // Abandoned while queued: never handed out at all.
    let gave_up = tokio::time::timeout(
        PAUSE_LONG_ENOUGH_TO_NOTICE,
        server.invoke(invocation("abandoned-in-queue", "{}")),
    )
    .await;
    assert!(gave_up.is_err());

    connection
        .round_trip(&server, "after-abandon", "fine")
        .await;
}

#[tokio::test]
async fn polling_again_without_answering_ends_the_previous_invocation_as_no_response() {
    let (server, mut connection) = start_server_and_worker().await;
    let forgotten_invocation = connection.take_invocation(&server, "forgotten").await;

    let next_invocation = connection.take_invocation(&server, "next-one").await;
    assert_eq!(
        function_error_type(
            "the forgotten invocation",
            joined(forgotten_invocation).await
        ),
        "Runtime.NoResponse"
    );

    let late_reply = connection.post_response("forgotten", "late").await;
    assert_status(&late_reply, StatusCode::BAD_REQUEST);
    connection
        .answer_and_expect(next_invocation, "next-one", "ok")
        .await;
}

#[tokio::test]
async fn only_the_newest_parked_poll_receives_the_invocation() {
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let address = server.address();
    let older_poll = spawn_poll_next(address);
    wait_for_polls(&server, 1).await;
    let newer_poll = spawn_poll_next(address);
    wait_for_polls(&server, 2).await;

    let pending_invocation = spawn_invoke(&server, invocation("for-the-newest", "{}"));
    assert_request_id(&joined(newer_poll).await, "for-the-newest");
    assert_status(&joined(older_poll).await, StatusCode::CONFLICT);

    answer_and_expect(address, pending_invocation, "for-the-newest", "answer").await;
}

#[tokio::test]
async fn invocations_that_cannot_be_sent_as_headers_are_refused_up_front() {
    let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
    let mut bad_trace_id = invocation("fine-id", "{}");
    bad_trace_id.trace_id = "line\nbreak".to_owned();
    for (case_name, bad_invocation) in [
        ("slash in request id", invocation("a/b", "{}")),
        ("empty request id", invocation("", "{}")),
        ("newline in trace id", bad_trace_id),
    ] {
        let outcome = within_deadline(server.invoke(bad_invocation)).await;
        assert_eq!(
            function_error_type(case_name, outcome),
            "Runtime.InvalidInvocation",
            "{case_name}"
        );
    }
}

#[tokio::test]
async fn connection_closed_mid_answer_ends_the_invocation_as_interrupted() {
    let (server, pending_invocation) =
        start_server_with_invocation_handed_out(invocation("cut-off", "{}")).await;

    // Announce 100 bytes, send 5, hang up: what a worker that crashes mid-write looks like.
    let mut stream = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    let request_head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-length: 100\r\n\r\nhello",
        response_path("cut-off"),
        server.address()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request_head.as_bytes())
        .await
        .unwrap();
    // The pause is what is tested: a half-sent answer does not end the invocation. It is not
    // needed for ordering: the bytes written reach the server before the hang-up does.
    tokio::time::sleep(PAUSE_LONG_ENOUGH_TO_NOTICE).await;
    assert!(!pending_invocation.is_finished());
    drop(stream);

    assert_eq!(
        function_error_type("the cut-off invocation", joined(pending_invocation).await),
        "Runtime.ResponseInterrupted"
    );
}

#[tokio::test]
async fn dropping_the_server_stops_serving() {
    let server = RuntimeApiServer::start(GENEROUS_MAX_RESPONSE_BYTES)
        .await
        .unwrap();
    let address = server.address();
    let parked_poll = tokio::spawn(async move {
        let mut connection = WorkerConnection::open(address).await;
        let request = connection
            .request(Method::GET, NEXT_PATH)
            .body(empty_body())
            .unwrap();
        connection
            .request_sender
            .send_request(request)
            .await
            .map(|_| ())
    });
    wait_for_polls(&server, 1).await;
    drop(server);

    let parked_poll_result = joined(parked_poll).await;
    assert!(
        parked_poll_result.is_err(),
        "a parked poll outlived the server"
    );
    // Nothing listens any more (the port may in principle be reused, but not this soon).
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
}
