//! The Lambda Runtime API server, driven over real HTTP/1.1 by a test playing the worker.
//!
//! The worker side is a raw hyper client doing what the official client libraries do (long-poll
//! `/next`, post `/response` or `/error`, chunked streaming bodies with trailers); the node side
//! is the server's public API. Nothing is mocked.
//!
//! Invariants of these tests:
//! - Every wait is bounded by [`within_deadline`], so a broken server fails a test instead of
//!   hanging it.
//! - "Has not happened yet" is asserted only after a real pause (100 ms), never inferred.

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

const GENEROUS_MAX_RESPONSE_BYTES: u64 = 6 * 1024 * 1024;
const NEXT_PATH: &str = "/2018-06-01/runtime/invocation/next";
const INIT_ERROR_PATH: &str = "/2018-06-01/runtime/init/error";
const TEST_DEADLINE: Duration = Duration::from_secs(20);
const PAUSE_LONG_ENOUGH_TO_NOTICE: Duration = Duration::from_millis(100);

type WorkerRequestBody = BoxBody<Bytes, Infallible>;

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

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: WorkerRequestBody,
    ) -> ServerReply {
        let mut request_builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.address.to_string());
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

    async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> ServerReply {
        self.send(Method::POST, path, headers, Full::new(body.into()).boxed())
            .await
    }
}

/// A new connection per request, for tests where connection reuse does not matter.
async fn poll_next(address: SocketAddr) -> ServerReply {
    WorkerConnection::open(address).await.poll_next().await
}

async fn post(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> ServerReply {
    WorkerConnection::open(address)
        .await
        .post(path, headers, body)
        .await
}

/// Posts a chunked body whose frames (data, then optionally trailers) the test feeds one by one.
async fn post_frames(
    address: SocketAddr,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    frame_receiver: mpsc::UnboundedReceiver<Frame<Bytes>>,
) -> ServerReply {
    let frames = futures::stream::unfold(frame_receiver, |mut frame_receiver| async move {
        let frame = frame_receiver.recv().await?;
        Some((Ok::<_, Infallible>(frame), frame_receiver))
    });
    let body = StreamBody::new(frames).boxed();
    WorkerConnection::open(address)
        .await
        .send(Method::POST, &path, &headers, body)
        .await
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

async fn within_deadline<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, future)
        .await
        .expect("the Runtime API did not answer in time")
}

async fn start_server(max_response_bytes: u64) -> Arc<RuntimeApiServer> {
    Arc::new(RuntimeApiServer::start(max_response_bytes).await.unwrap())
}

/// Runs `invoke` in its own task, so the test can play the worker meanwhile.
fn spawn_invoke(
    server: &Arc<RuntimeApiServer>,
    invocation: LambdaInvocation,
) -> tokio::task::JoinHandle<LambdaOutcome> {
    let server = server.clone();
    tokio::spawn(async move { server.invoke(invocation).await })
}

/// The tests sit in a module named after the server, so `cargo test runtime_api` selects them.
mod runtime_api {
    use super::*;

    #[tokio::test]
    async fn worker_is_ready_at_its_first_poll() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        assert!(server.address().ip().is_loopback());
        assert_ne!(server.address().port(), 0);

        let not_ready_yet =
            tokio::time::timeout(PAUSE_LONG_ENOUGH_TO_NOTICE, server.wait_until_ready()).await;
        assert!(not_ready_yet.is_err(), "ready before the worker polled");

        let address = server.address();
        let parked_poll = tokio::spawn(async move { poll_next(address).await });
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
        let pending_invocation = spawn_invoke(&server, invocation("before-init-error", "{}"));
        tokio::time::sleep(PAUSE_LONG_ENOUGH_TO_NOTICE).await;

        let reply = post(
            server.address(),
            INIT_ERROR_PATH,
            &[("lambda-runtime-function-error-type", "Runtime.InitError")],
            r#"{"errorMessage":"Unable to import module 'handler'","errorType":"Runtime.ImportModuleError","stackTrace":[]}"#,
        )
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);

        assert_eq!(
            within_deadline(pending_readiness_wait).await.unwrap(),
            Err(expected_init_error.clone())
        );
        assert_eq!(
            within_deadline(server.wait_until_ready()).await,
            Err(expected_init_error.clone())
        );
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::InitError(expected_init_error.clone())
        );
        assert_eq!(
            within_deadline(server.invoke(invocation("after-init-error", "{}"))).await,
            LambdaOutcome::InitError(expected_init_error)
        );
        let late_poll = within_deadline(poll_next(server.address())).await;
        assert_eq!(late_poll.status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn init_error_without_a_json_body_takes_its_type_from_the_header() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let reply = post(
            server.address(),
            INIT_ERROR_PATH,
            &[("lambda-runtime-function-error-type", "Runtime.ExitError")],
            "exit status 3",
        )
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
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
                assert_eq!(next.status, StatusCode::OK);
                assert_eq!(next.header("content-type"), "application/json");
                assert!(next.headers.get("lambda-runtime-client-context").is_none());
                assert!(
                    next.headers
                        .get("lambda-runtime-cognito-identity")
                        .is_none()
                );
                let request_id = next.header("lambda-runtime-aws-request-id").to_owned();
                let echoed = serde_json::json!({
                    "event": serde_json::from_slice::<serde_json::Value>(&next.body).unwrap(),
                    "deadline": next.header("lambda-runtime-deadline-ms"),
                    "arn": next.header("lambda-runtime-invoked-function-arn"),
                    "trace": next.header("lambda-runtime-trace-id"),
                });
                let reply = connection
                    .post(&response_path(&request_id), &[], echoed.to_string())
                    .await;
                assert_eq!(reply.status, StatusCode::ACCEPTED);
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
            let LambdaOutcome::Response { body } = outcome else {
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
        within_deadline(worker).await.unwrap();
    }

    #[tokio::test]
    async fn queued_invocations_are_handed_out_in_order_one_per_poll() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let request_ids = ["first", "second", "third"];
        let mut invocations = Vec::new();
        for request_id in request_ids {
            invocations.push(spawn_invoke(&server, invocation(request_id, "{}")));
            // Submission order is the order the tasks reach the queue.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut connection = WorkerConnection::open(server.address()).await;
        for expected_request_id in request_ids {
            let next = within_deadline(connection.poll_next()).await;
            assert_eq!(
                next.header("lambda-runtime-aws-request-id"),
                expected_request_id
            );
            let reply = connection
                .post(
                    &response_path(expected_request_id),
                    &[],
                    expected_request_id,
                )
                .await;
            assert_eq!(reply.status, StatusCode::ACCEPTED);
        }
        for (request_id, invocation) in request_ids.into_iter().zip(invocations) {
            assert_eq!(
                within_deadline(invocation).await.unwrap(),
                LambdaOutcome::Response {
                    body: Bytes::from(request_id)
                }
            );
        }
    }

    #[tokio::test]
    async fn long_poll_waits_until_an_invocation_arrives() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let address = server.address();
        let parked_poll = tokio::spawn(async move { poll_next(address).await });
        tokio::time::sleep(PAUSE_LONG_ENOUGH_TO_NOTICE).await;
        assert!(
            !parked_poll.is_finished(),
            "/next answered with no invocation queued"
        );

        let pending_invocation =
            spawn_invoke(&server, invocation("late-arrival", r#"{"hello":"world"}"#));
        let next = within_deadline(parked_poll).await.unwrap();
        assert_eq!(next.status, StatusCode::OK);
        assert_eq!(next.header("lambda-runtime-aws-request-id"), "late-arrival");
        assert_eq!(next.body, Bytes::from_static(br#"{"hello":"world"}"#));

        post(address, &response_path("late-arrival"), &[], "done").await;
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"done")
            }
        );
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

        post(server.address(), &response_path("spelled-out"), &[], "ok").await;
        within_deadline(pending_invocation).await.unwrap();
    }

    /// One case of "the worker answers with X, the invocation ends as Y".
    struct AnswerCase {
        name: &'static str,
        answer_path: fn(&str) -> String,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
        expected_status: StatusCode,
        expected_outcome: LambdaOutcome,
    }

    #[tokio::test]
    async fn worker_answers_end_invocations_as_expected() {
        let cases = [
            AnswerCase {
                name: "buffered response",
                answer_path: response_path,
                headers: &[("content-type", "application/json")],
                body: r#"{"ok":true}"#,
                expected_status: StatusCode::ACCEPTED,
                expected_outcome: LambdaOutcome::Response {
                    body: Bytes::from_static(br#"{"ok":true}"#),
                },
            },
            AnswerCase {
                name: "empty response",
                answer_path: response_path,
                headers: &[],
                body: "",
                expected_status: StatusCode::ACCEPTED,
                expected_outcome: LambdaOutcome::Response { body: Bytes::new() },
            },
            AnswerCase {
                name: "error document as awslambdaric sends it",
                answer_path: error_path,
                headers: &[("lambda-runtime-function-error-type", "ValueError")],
                body: r#"{"errorMessage":"bad input","errorType":"ValueError","stackTrace":["  File \"handler.py\", line 3"]}"#,
                expected_status: StatusCode::ACCEPTED,
                expected_outcome: LambdaOutcome::FunctionError {
                    error_type: "ValueError".to_owned(),
                    error_message: "bad input".to_owned(),
                    body: Bytes::from_static(
                        br#"{"errorMessage":"bad input","errorType":"ValueError","stackTrace":["  File \"handler.py\", line 3"]}"#,
                    ),
                },
            },
            AnswerCase {
                name: "error document as lambda_runtime sends it (the header only says unhandled)",
                answer_path: error_path,
                headers: &[("lambda-runtime-function-error-type", "unhandled")],
                body: r#"{"errorType":"&str","errorMessage":"no name given"}"#,
                expected_status: StatusCode::ACCEPTED,
                expected_outcome: LambdaOutcome::FunctionError {
                    error_type: "&str".to_owned(),
                    error_message: "no name given".to_owned(),
                    body: Bytes::from_static(br#"{"errorType":"&str","errorMessage":"no name given"}"#),
                },
            },
            AnswerCase {
                name: "error that is not a JSON document",
                answer_path: error_path,
                headers: &[("lambda-runtime-function-error-type", "Custom.Error")],
                body: "plain text failure",
                expected_status: StatusCode::ACCEPTED,
                expected_outcome: LambdaOutcome::FunctionError {
                    error_type: "Custom.Error".to_owned(),
                    error_message: "plain text failure".to_owned(),
                    body: Bytes::from_static(b"plain text failure"),
                },
            },
            AnswerCase {
                name: "error with neither type header nor JSON",
                answer_path: error_path,
                headers: &[],
                body: "",
                expected_status: StatusCode::ACCEPTED,
                expected_outcome: LambdaOutcome::FunctionError {
                    error_type: "Unhandled".to_owned(),
                    error_message: String::new(),
                    body: Bytes::new(),
                },
            },
        ];
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let mut connection = WorkerConnection::open(server.address()).await;
        for (case_number, case) in cases.into_iter().enumerate() {
            let request_id = format!("answer-case-{case_number}");
            let pending_invocation = spawn_invoke(&server, invocation(&request_id, "{}"));
            let next = within_deadline(connection.poll_next()).await;
            assert_eq!(
                next.header("lambda-runtime-aws-request-id"),
                request_id,
                "{}",
                case.name
            );
            let reply = connection
                .post(&(case.answer_path)(&request_id), case.headers, case.body)
                .await;
            assert_eq!(
                reply.status, case.expected_status,
                "{}: {reply:?}",
                case.name
            );
            let outcome = within_deadline(pending_invocation).await.unwrap();
            assert_eq!(outcome, case.expected_outcome, "{}", case.name);
        }
    }

    #[tokio::test]
    async fn streamed_response_chunks_reach_the_caller_before_the_end() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let (output_chunk_sender, mut output_chunk_receiver) = mpsc::unbounded_channel();
        let mut streaming_invocation = invocation("streamed", "{}");
        streaming_invocation.output_chunks = Some(output_chunk_sender);
        let pending_invocation = spawn_invoke(&server, streaming_invocation);

        let next = within_deadline(poll_next(server.address())).await;
        assert_eq!(next.header("lambda-runtime-aws-request-id"), "streamed");
        let (frame_sender, frame_receiver) = mpsc::unbounded_channel();
        let streaming_post = tokio::spawn(post_frames(
            server.address(),
            response_path("streamed"),
            vec![
                ("lambda-runtime-function-response-mode", "streaming"),
                ("transfer-encoding", "chunked"),
            ],
            frame_receiver,
        ));
        for chunk in ["first,", "second,", "third"] {
            tokio::time::sleep(Duration::from_millis(50)).await;
            frame_sender.send(Frame::data(Bytes::from(chunk))).unwrap();
            let forwarded_chunk = within_deadline(output_chunk_receiver.recv()).await.unwrap();
            assert_eq!(forwarded_chunk, Bytes::from(chunk));
            assert!(
                !pending_invocation.is_finished(),
                "invocation ended before its stream did"
            );
        }
        drop(frame_sender);

        assert_eq!(
            within_deadline(streaming_post).await.unwrap().status,
            StatusCode::ACCEPTED
        );
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"first,second,third")
            }
        );
        assert_eq!(
            output_chunk_receiver.recv().await,
            None,
            "no chunk beyond the three"
        );
    }

    #[tokio::test]
    async fn buffered_response_reaches_a_streaming_caller_as_one_chunk() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let (output_chunk_sender, mut output_chunk_receiver) = mpsc::unbounded_channel();
        let mut streaming_invocation = invocation("buffered-for-streamer", "{}");
        streaming_invocation.output_chunks = Some(output_chunk_sender);
        let pending_invocation = spawn_invoke(&server, streaming_invocation);
        within_deadline(poll_next(server.address())).await;
        post(
            server.address(),
            &response_path("buffered-for-streamer"),
            &[],
            "whole body",
        )
        .await;
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"whole body")
            }
        );
        assert_eq!(
            output_chunk_receiver.recv().await,
            Some(Bytes::from_static(b"whole body"))
        );
        assert_eq!(output_chunk_receiver.recv().await, None);
    }

    #[tokio::test]
    async fn streamed_response_error_trailers_end_the_invocation_as_a_function_error() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let (output_chunk_sender, mut output_chunk_receiver) = mpsc::unbounded_channel();
        let mut streaming_invocation = invocation("stream-fails", "{}");
        streaming_invocation.output_chunks = Some(output_chunk_sender);
        let pending_invocation = spawn_invoke(&server, streaming_invocation);
        within_deadline(poll_next(server.address())).await;

        let error_document =
            r#"{"errorMessage":"upstream went away","errorType":"Runtime.StreamError"}"#;
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "lambda-runtime-function-error-type",
            "Runtime.StreamError".parse().unwrap(),
        );
        trailers.insert(
            "lambda-runtime-function-error-body",
            base64::engine::general_purpose::STANDARD
                .encode(error_document)
                .parse()
                .unwrap(),
        );
        let (frame_sender, frame_receiver) = mpsc::unbounded_channel();
        frame_sender
            .send(Frame::data(Bytes::from_static(b"partial output")))
            .unwrap();
        frame_sender.send(Frame::trailers(trailers)).unwrap();
        drop(frame_sender);
        let reply = within_deadline(post_frames(
            server.address(),
            response_path("stream-fails"),
            vec![
                ("lambda-runtime-function-response-mode", "streaming"),
                ("transfer-encoding", "chunked"),
                ("trailer", "Lambda-Runtime-Function-Error-Type"),
                ("trailer", "Lambda-Runtime-Function-Error-Body"),
            ],
            frame_receiver,
        ))
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
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
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let pending_invocation = spawn_invoke(&server, invocation("in-body-trailer", "{}"));
        within_deadline(poll_next(server.address())).await;

        let in_body_trailer = format!(
            "Lambda-Runtime-Function-Error-Type: Runtime.StreamError\r\nLambda-Runtime-Function-Error-Body: {}\r\n",
            base64::engine::general_purpose::STANDARD.encode("stream broke")
        );
        let (frame_sender, frame_receiver) = mpsc::unbounded_channel();
        let streaming_post = tokio::spawn(post_frames(
            server.address(),
            response_path("in-body-trailer"),
            vec![("lambda-runtime-function-response-mode", "streaming")],
            frame_receiver,
        ));
        frame_sender
            .send(Frame::data(Bytes::from_static(b"some output")))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        frame_sender
            .send(Frame::data(Bytes::from(in_body_trailer)))
            .unwrap();
        drop(frame_sender);
        assert_eq!(
            within_deadline(streaming_post).await.unwrap().status,
            StatusCode::ACCEPTED
        );
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::FunctionError {
                error_type: "Runtime.StreamError".to_owned(),
                error_message: "stream broke".to_owned(),
                body: Bytes::from_static(b"stream broke"),
            }
        );
    }

    #[tokio::test]
    async fn unknown_request_id_and_unknown_path_are_refused() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let pending_invocation = spawn_invoke(&server, invocation("the-real-one", "{}"));
        within_deadline(poll_next(server.address())).await;

        for path in [response_path("no-such-id"), error_path("no-such-id")] {
            let reply = post(server.address(), &path, &[], "{}").await;
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

        post(
            server.address(),
            &response_path("the-real-one"),
            &[],
            "real",
        )
        .await;
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"real")
            }
        );
    }

    #[tokio::test]
    async fn answering_twice_is_refused() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let pending_invocation = spawn_invoke(&server, invocation("answered-twice", "{}"));
        let mut connection = WorkerConnection::open(server.address()).await;
        within_deadline(connection.poll_next()).await;

        let first = connection
            .post(&response_path("answered-twice"), &[], "first")
            .await;
        assert_eq!(first.status, StatusCode::ACCEPTED);
        for second_path in [
            response_path("answered-twice"),
            error_path("answered-twice"),
        ] {
            let second = connection.post(&second_path, &[], "second").await;
            assert_eq!(second.status, StatusCode::BAD_REQUEST, "{second_path}");
        }
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"first")
            }
        );
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
        let pending_invocation = spawn_invoke(&server, invocation("at-limit", "{}"));
        within_deadline(connection.poll_next()).await;
        let reply = connection
            .post(
                &response_path("at-limit"),
                &[],
                exactly_at_the_limit.clone(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from(exactly_at_the_limit)
            }
        );

        for (request_id, path_for, body) in [
            (
                "one-over",
                response_path as fn(&str) -> String,
                one_over_the_limit,
            ),
            ("far-over", response_path, far_over_the_limit.clone()),
            ("error-far-over", error_path, far_over_the_limit.clone()),
        ] {
            let pending_invocation = spawn_invoke(&server, invocation(request_id, "{}"));
            within_deadline(connection.poll_next()).await;
            let reply = connection.post(&path_for(request_id), &[], body).await;
            assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{request_id}");
            assert_eq!(reply.json_field("errorType"), "RequestEntityTooLarge");
            assert_eq!(
                within_deadline(pending_invocation).await.unwrap(),
                LambdaOutcome::ResponseTooLarge { limit: LIMIT },
                "{request_id}"
            );
        }

        // A streamed response over the limit ends as soon as it crosses it.
        let pending_invocation = spawn_invoke(&server, invocation("stream-over", "{}"));
        within_deadline(poll_next(server.address())).await;
        let (frame_sender, frame_receiver) = mpsc::unbounded_channel();
        let streaming_post = tokio::spawn(post_frames(
            server.address(),
            response_path("stream-over"),
            vec![("lambda-runtime-function-response-mode", "streaming")],
            frame_receiver,
        ));
        frame_sender
            .send(Frame::data(Bytes::from(far_over_the_limit)))
            .unwrap();
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::ResponseTooLarge { limit: LIMIT }
        );
        drop(frame_sender);
        assert_eq!(
            within_deadline(streaming_post).await.unwrap().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );

        // The worker is still usable afterwards.
        let pending_invocation = spawn_invoke(&server, invocation("after-oversized", "{}"));
        within_deadline(connection.poll_next()).await;
        connection
            .post(&response_path("after-oversized"), &[], "small")
            .await;
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"small")
            }
        );
    }

    #[tokio::test]
    async fn abandoned_invocation_is_refused_late_and_the_next_one_works() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let mut connection = WorkerConnection::open(server.address()).await;

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
            polled = within_deadline(worker_poll) => polled.unwrap(),
        };
        drop(abandoned_invoke);
        assert_eq!(
            next.header("lambda-runtime-aws-request-id"),
            "abandoned-in-flight"
        );
        let late_reply = slow_connection
            .post(&response_path("abandoned-in-flight"), &[], "too late")
            .await;
        assert_eq!(late_reply.status, StatusCode::BAD_REQUEST);

        // Abandoned while queued: never handed out at all.
        let gave_up = tokio::time::timeout(
            PAUSE_LONG_ENOUGH_TO_NOTICE,
            server.invoke(invocation("abandoned-in-queue", "{}")),
        )
        .await;
        assert!(gave_up.is_err());

        let pending_invocation = spawn_invoke(&server, invocation("after-abandon", "{}"));
        let next = within_deadline(connection.poll_next()).await;
        assert_eq!(
            next.header("lambda-runtime-aws-request-id"),
            "after-abandon"
        );
        let reply = connection
            .post(&response_path("after-abandon"), &[], "fine")
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"fine")
            }
        );
    }

    #[tokio::test]
    async fn polling_again_without_answering_ends_the_previous_invocation_as_no_response() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let mut connection = WorkerConnection::open(server.address()).await;
        let forgotten_invocation = spawn_invoke(&server, invocation("forgotten", "{}"));
        within_deadline(connection.poll_next()).await;

        let next_invocation = spawn_invoke(&server, invocation("next-one", "{}"));
        let next = within_deadline(connection.poll_next()).await;
        assert_eq!(next.header("lambda-runtime-aws-request-id"), "next-one");
        let LambdaOutcome::FunctionError { error_type, .. } =
            within_deadline(forgotten_invocation).await.unwrap()
        else {
            panic!("the forgotten invocation did not end as a function error");
        };
        assert_eq!(error_type, "Runtime.NoResponse");

        let late_reply = connection
            .post(&response_path("forgotten"), &[], "late")
            .await;
        assert_eq!(late_reply.status, StatusCode::BAD_REQUEST);
        connection.post(&response_path("next-one"), &[], "ok").await;
        assert_eq!(
            within_deadline(next_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"ok")
            }
        );
    }

    #[tokio::test]
    async fn only_the_newest_parked_poll_receives_the_invocation() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let address = server.address();
        let older_poll = tokio::spawn(async move { poll_next(address).await });
        tokio::time::sleep(PAUSE_LONG_ENOUGH_TO_NOTICE).await;
        let newer_poll = tokio::spawn(async move { poll_next(address).await });
        tokio::time::sleep(PAUSE_LONG_ENOUGH_TO_NOTICE).await;

        let pending_invocation = spawn_invoke(&server, invocation("for-the-newest", "{}"));
        let newer_reply = within_deadline(newer_poll).await.unwrap();
        assert_eq!(
            newer_reply.header("lambda-runtime-aws-request-id"),
            "for-the-newest"
        );
        assert_eq!(
            within_deadline(older_poll).await.unwrap().status,
            StatusCode::CONFLICT
        );

        post(address, &response_path("for-the-newest"), &[], "answer").await;
        assert_eq!(
            within_deadline(pending_invocation).await.unwrap(),
            LambdaOutcome::Response {
                body: Bytes::from_static(b"answer")
            }
        );
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
            let LambdaOutcome::FunctionError { error_type, .. } =
                within_deadline(server.invoke(bad_invocation)).await
            else {
                panic!("{case_name}: not refused");
            };
            assert_eq!(error_type, "Runtime.InvalidInvocation", "{case_name}");
        }
    }

    #[tokio::test]
    async fn connection_closed_mid_answer_ends_the_invocation_as_interrupted() {
        let server = start_server(GENEROUS_MAX_RESPONSE_BYTES).await;
        let pending_invocation = spawn_invoke(&server, invocation("cut-off", "{}"));
        within_deadline(poll_next(server.address())).await;

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
        tokio::time::sleep(PAUSE_LONG_ENOUGH_TO_NOTICE).await;
        assert!(!pending_invocation.is_finished());
        drop(stream);

        let LambdaOutcome::FunctionError { error_type, .. } =
            within_deadline(pending_invocation).await.unwrap()
        else {
            panic!("the cut-off invocation did not end as a function error");
        };
        assert_eq!(error_type, "Runtime.ResponseInterrupted");
    }

    #[tokio::test]
    async fn dropping_the_server_stops_serving() {
        let server = RuntimeApiServer::start(GENEROUS_MAX_RESPONSE_BYTES)
            .await
            .unwrap();
        let address = server.address();
        let parked_poll = tokio::spawn(async move {
            let mut connection = WorkerConnection::open(address).await;
            let request = Request::builder()
                .uri(NEXT_PATH)
                .header("host", address.to_string())
                .body(empty_body())
                .unwrap();
            connection
                .request_sender
                .send_request(request)
                .await
                .map(|_| ())
        });
        tokio::time::sleep(PAUSE_LONG_ENOUGH_TO_NOTICE).await;
        drop(server);

        let parked_poll_result = within_deadline(parked_poll).await.unwrap();
        assert!(
            parked_poll_result.is_err(),
            "a parked poll outlived the server"
        );
        // Nothing listens any more (the port may in principle be reused, but not this soon).
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }
}
