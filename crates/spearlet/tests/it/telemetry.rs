//! Logs, trace context and span export, checked on the real binary: `spearlet serve --log-format
//! json` on 127.0.0.1:0 with its stderr in a file, called over gRPC with a `traceparent`.
//!
//! - JSON logs parse line by line, and the lines of an execution carry its ids and trace id;
//!   with `--log-format json` every line on stdout and stderr is a JSON object, the listening
//!   line and errors included.
//! - A guest (a shell-script process task) sees `SPEAR_TRACEPARENT`: a child of the caller's
//!   context, or a new root when the caller sent none or sent garbage.
//! - With `--otlp-endpoint`, the execution span reaches an in-test OTLP/gRPC receiver with the
//!   caller's trace id and parent, the ids as attributes, and `service.name`; queued spans are
//!   flushed when the node stops on SIGTERM.

use crate::support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use serde_json::Value;
use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use support::NodeProcess;
use tonic::transport::Channel;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A process task that sleeps as many seconds as its input says (none: 0), then prints what
/// it was given as `SPEAR_TRACEPARENT`.
const PRINT_TRACEPARENT: &[u8] =
    b"#!/bin/sh\nread -r delay\nsleep \"${delay:-0}\"\nprintf '%s' \"$SPEAR_TRACEPARENT\"\n";

/// A `spearlet serve --log-format json --log-level debug` child process over a data directory
/// of its own (`data/` inside it; the log is `node.log`).
struct RunningNode {
    process: NodeProcess,
    data_directory: tempfile::TempDir,
}

impl RunningNode {
    fn start(extra_arguments: &[&str], environment: &[(&str, &str)]) -> RunningNode {
        RunningNode::start_in(tempfile::tempdir().unwrap(), extra_arguments, environment)
    }

    /// Starts a node on `data_directory` (the log, `node.log`, is replaced).
    fn start_in(
        data_directory: tempfile::TempDir,
        extra_arguments: &[&str],
        environment: &[(&str, &str)],
    ) -> RunningNode {
        let mut arguments = vec!["--log-format", "json", "--log-level", "debug"];
        arguments.extend_from_slice(extra_arguments);
        let process = NodeProcess::start(
            &data_directory.path().join("data"),
            &data_directory.path().join("node.log"),
            &arguments,
            environment,
        );
        RunningNode {
            process,
            data_directory,
        }
    }

    async fn client(&self) -> FunctionServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.process.grpc_address))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        FunctionServiceClient::new(channel)
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn stop_gracefully(&mut self) {
        self.process.stop_gracefully();
    }
}

fn invoke_request(task: &str, input: &[u8]) -> proto::InvokeFunctionRequest {
    proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::ExistingTask as i32,
        task_id: task.into(),
        execution_mode: proto::ExecutionMode::Sync as i32,
        input: Some(proto::Payload {
            content_type: "application/octet-stream".into(),
            data: input.to_vec(),
        }),
        ..Default::default()
    }
}

/// Invokes `task` (sync) with `traceparent` as gRPC metadata when given; the call must complete.
async fn invoke(
    client: &mut FunctionServiceClient<Channel>,
    task: &str,
    input: &[u8],
    traceparent: Option<&str>,
) -> proto::InvokeFunctionResponse {
    let mut request = tonic::Request::new(invoke_request(task, input));
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
    }
    let response = client.invoke_function(request).await.unwrap().into_inner();
    assert!(response.success, "{response:?}");
    response
}

fn output(response: &proto::InvokeFunctionResponse) -> String {
    let payload = response
        .result
        .as_ref()
        .and_then(|result| result.output.as_ref());
    String::from_utf8(
        payload
            .map(|payload| payload.data.clone())
            .unwrap_or_default(),
    )
    .unwrap()
}

/// Registers `print-traceparent` (see [`PRINT_TRACEPARENT`]) with the given `spearlet.*` keys.
async fn create_traceparent_printer(
    client: &mut FunctionServiceClient<Channel>,
    metadata: &[(&str, &str)],
) {
    client
        .create_task(proto::CreateTaskRequest {
            task_name: "print-traceparent".into(),
            artifact_spec: Some(proto::ArtifactSpec {
                artifact_type: "process".into(),
                location: format!(
                    "data:application/octet-stream;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(PRINT_TRACEPARENT)
                ),
                metadata: metadata
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// `00-<32 hex>-<16 hex>-<2 hex>` split into its trace id, parent id and flags.
fn traceparent_fields(text: &str) -> (String, String, String) {
    let fields: Vec<&str> = text.split('-').collect();
    assert_eq!(fields.len(), 4, "{text:?}");
    assert_eq!(fields[0], "00", "{text:?}");
    assert_eq!(fields[1].len(), 32, "{text:?}");
    assert_eq!(fields[2].len(), 16, "{text:?}");
    assert!(
        text.bytes()
            .all(|byte| byte == b'-' || byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)),
        "{text:?}"
    );
    assert_ne!(fields[1], "0".repeat(32));
    assert_ne!(fields[2], "0".repeat(16));
    (fields[1].into(), fields[2].into(), fields[3].into())
}

/// The log's lines, each parsed as a JSON object (the test fails on any other line).
fn json_lines(log: &str) -> Vec<serde_json::Map<String, Value>> {
    log.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => object,
            other => panic!("a log line is not a JSON object ({other:?}): {line:?}"),
        })
        .collect()
}

/// The value of `field` on a log line: the event's own, or its current span's.
fn field<'a>(line: &'a serde_json::Map<String, Value>, field: &str) -> Option<&'a str> {
    line.get("fields")
        .and_then(|fields| fields.get(field))
        .or_else(|| line.get("span").and_then(|span| span.get(field)))
        .and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_and_carry_execution_ids() {
    let node = RunningNode::start(&[], &[]);
    let mut client = node.client().await;
    let response = invoke(&mut client, "echo", b"hello", Some(TRACEPARENT)).await;
    assert_eq!(output(&response), "hello");

    let log = node.log();
    let lines = json_lines(&log);
    assert!(!lines.is_empty(), "no log at debug level");
    let execution_lines: Vec<_> = lines
        .iter()
        .filter(|line| field(line, "execution_id") == Some(response.execution_id.as_str()))
        .collect();
    assert!(
        !execution_lines.is_empty(),
        "no line carries execution_id {}; log:\n{log}",
        response.execution_id
    );
    for expected in ["execution started", "execution finished"] {
        assert!(
            execution_lines
                .iter()
                .any(|line| field(line, "message") == Some(expected)),
            "no {expected:?} line for the execution; log:\n{log}"
        );
    }
    // Inside the execution's span: its task, instance and the caller's trace.
    let started = execution_lines
        .iter()
        .find(|line| field(line, "message") == Some("execution started"))
        .unwrap();
    let span = &started["span"];
    assert_eq!(span["name"], "execution", "{started:?}");
    assert_eq!(span["task_id"], response.task_id.as_str(), "{started:?}");
    assert_eq!(
        span["instance_id"],
        response.instance_id.as_str(),
        "{started:?}"
    );
    assert_eq!(span["trace_id"], TRACE_ID, "{started:?}");
    for line in &execution_lines {
        if line.contains_key("span") {
            assert_eq!(
                line["span"]["task_id"],
                response.task_id.as_str(),
                "{line:?}"
            );
        }
    }
}

/// With `--log-format json` every line the process writes is one JSON object: the listening line
/// on stdout (in the log's own shape, the URLs as `grpc` and `http` fields), and on stderr the
/// whole log of a life with a completed call, a failed one, a refused one and a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_logs_every_line_on_stdout_and_stderr_is_a_json_object() {
    let mut node = RunningNode::start(&[], &[]);
    let listening_line = node.process.listening_line.clone();
    let listening = json_lines(&listening_line).remove(0);
    assert_eq!(
        field(&listening, "message"),
        Some("spearlet listening"),
        "{listening_line}"
    );
    assert_eq!(
        field(&listening, "grpc"),
        Some(format!("grpc://{}", node.process.grpc_address).as_str()),
        "{listening_line}"
    );
    let http = field(&listening, "http").unwrap_or_default();
    assert!(http.starts_with("http://127.0.0.1:"), "{listening_line}");
    assert_eq!(listening["level"], "INFO", "{listening_line}");
    for log_field in ["timestamp", "target"] {
        assert!(listening.contains_key(log_field), "{listening_line}");
    }

    let mut client = node.client().await;
    invoke(&mut client, "echo", b"hello", None).await;
    let failed = client
        .invoke_function(invoke_request("fail", b""))
        .await
        .unwrap()
        .into_inner();
    assert!(!failed.success, "{failed:?}");
    let refused = client
        .invoke_function(invoke_request("no-such-task", b""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    drop(client);
    node.stop_gracefully();

    let stdout = node.process.stdout_after_listening_line();
    json_lines(&stdout);
    let log = node.log();
    let lines = json_lines(&log);
    assert!(
        lines
            .iter()
            .any(|line| field(line, "message") == Some("stopped")),
        "the log does not reach the shutdown:\n{log}"
    );
}

/// A configuration error with `--log-format json` is one JSON log line at level ERROR on stderr
/// (exit code 2), not a plain `error: …` line.
#[test]
fn a_configuration_error_with_json_logs_is_a_json_line() {
    let data_directory = tempfile::tempdir().unwrap();
    let missing_config = data_directory.path().join("missing.toml");
    let output = std::process::Command::new(support::SPEARLET)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&missing_config)
        .arg("--data-dir")
        .arg(data_directory.path())
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let lines = json_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(lines[0]["level"], "ERROR", "{stderr}");
    assert!(
        field(&lines[0], "message").is_some_and(|message| message.contains("missing.toml")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_see_the_callers_trace_as_spear_traceparent() {
    let node = RunningNode::start(&[], &[]);
    let mut client = node.client().await;
    create_traceparent_printer(&mut client, &[]).await;

    // A child of the caller's context: same trace and flags, a span id of its own.
    let continued = invoke(&mut client, "print-traceparent", b"", Some(TRACEPARENT)).await;
    let (trace_id, parent_id, flags) = traceparent_fields(&output(&continued));
    assert_eq!(trace_id, TRACE_ID);
    assert_ne!(parent_id, PARENT_ID);
    assert_eq!(flags, "01");
    let unsampled = TRACEPARENT.replace("-01", "-00");
    let (_, _, flags) = traceparent_fields(&output(
        &invoke(&mut client, "print-traceparent", b"", Some(&unsampled)).await,
    ));
    assert_eq!(flags, "00");

    // No traceparent, or one that does not parse: a new root each time, never an error.
    let mut roots = Vec::new();
    for traceparent in [
        None,
        Some("garbage"),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    ] {
        let response = invoke(&mut client, "print-traceparent", b"", traceparent).await;
        let (trace_id, _, flags) = traceparent_fields(&output(&response));
        assert_ne!(trace_id, TRACE_ID);
        assert_eq!(flags, "01");
        assert!(!roots.contains(&trace_id), "{trace_id} reused");
        roots.push(trace_id);
    }
}

/// What the receiver kept of one exported span.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
    service_name: Option<String>,
}

impl ReceivedSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// A minimal OTLP/gRPC trace collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn text_value(attribute: &KeyValue) -> String {
    match attribute
        .value
        .as_ref()
        .and_then(|value| value.value.as_ref())
    {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans.resource.as_ref().and_then(|resource| {
                resource
                    .attributes
                    .iter()
                    .find(|attribute| attribute.key == "service.name")
                    .map(text_value)
            });
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(ReceivedSpan {
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|attribute| (attribute.key.clone(), text_value(attribute)))
                            .collect(),
                        service_name: service_name.clone(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn start_receiver() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (address, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_spans_are_exported_over_otlp_with_the_callers_trace() {
    let (receiver_address, receiver) = start_receiver().await;
    let endpoint = format!("http://{receiver_address}");
    // A schedule delay far beyond the test: only the flush at shutdown can deliver the spans.
    let mut node = RunningNode::start(
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    let mut client = node.client().await;
    let echoed = invoke(&mut client, "echo", b"traced", Some(TRACEPARENT)).await;
    create_traceparent_printer(&mut client, &[]).await;
    let printed = invoke(&mut client, "print-traceparent", b"", Some(TRACEPARENT)).await;
    let guest_context = output(&printed);
    let untraced = invoke(&mut client, "echo", b"untraced", None).await;
    drop(client);
    node.stop_gracefully();

    let spans = receiver.spans.lock().unwrap().clone();
    let execution_span = |execution_id: &str| {
        spans
            .iter()
            .find(|span| {
                span.name == "execution" && span.attribute("execution_id") == Some(execution_id)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no execution span for {execution_id} in {spans:#?}"))
    };

    let echoed_span = execution_span(&echoed.execution_id);
    assert_eq!(echoed_span.trace_id, TRACE_ID);
    assert_eq!(echoed_span.parent_span_id, PARENT_ID);
    assert_eq!(
        echoed_span.attribute("task_id"),
        Some(echoed.task_id.as_str())
    );
    assert_eq!(
        echoed_span.attribute("instance_id"),
        Some(echoed.instance_id.as_str())
    );
    assert_eq!(echoed_span.attribute("trace_id"), Some(TRACE_ID));
    assert_eq!(echoed_span.service_name.as_deref(), Some("spearlet"));

    // The guest's parent is the exported span: its own spans hang under the node's.
    let printed_span = execution_span(&printed.execution_id);
    let (trace_id, parent_id, _) = traceparent_fields(&guest_context);
    assert_eq!(trace_id, TRACE_ID);
    assert_eq!(parent_id, printed_span.span_id);

    // Without a traceparent the execution span is a root of a trace of its own.
    let untraced_span = execution_span(&untraced.execution_id);
    assert_ne!(untraced_span.trace_id, TRACE_ID);
    assert!(untraced_span.parent_span_id.is_empty(), "{untraced_span:?}");

    // The log stays JSON with the exporter installed.
    json_lines(&node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_execution_resumed_after_a_restart_continues_the_callers_trace() {
    let mut node = RunningNode::start(&[], &[]);
    let mut client = node.client().await;
    // One instance: the traced call waits behind a slow one and is still queued at shutdown.
    create_traceparent_printer(
        &mut client,
        &[
            ("spearlet.pool.max_instances", "1"),
            ("spearlet.pool.instance_capacity", "1"),
        ],
    )
    .await;
    let asynchronous = |input: &[u8]| proto::InvokeFunctionRequest {
        execution_mode: proto::ExecutionMode::Async as i32,
        ..invoke_request("print-traceparent", input)
    };
    client.invoke_function(asynchronous(b"2\n")).await.unwrap();
    let mut traced = tonic::Request::new(asynchronous(b"0\n"));
    traced
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let queued = client.invoke_function(traced).await.unwrap().into_inner();
    drop(client);
    node.stop_gracefully();
    // The next node starts on the same data directory.
    let data_directory = std::mem::replace(&mut node.data_directory, tempfile::tempdir().unwrap());
    drop(node);

    let node = RunningNode::start_in(data_directory, &[], &[]);
    let mut client = node.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let result = loop {
        let status = client
            .get_execution_status(proto::GetExecutionStatusRequest {
                execution_id: queued.execution_id.clone(),
                include_result: true,
                include_logs: false,
            })
            .await
            .unwrap()
            .into_inner();
        let result = status.result.unwrap();
        if result.status == proto::ExecutionStatus::Completed as i32 {
            break result;
        }
        assert!(
            Instant::now() < deadline,
            "not completed after the restart: {result:?}; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // It ran on the restarted node, not before the shutdown.
    let log = node.log();
    assert!(
        json_lines(&log).iter().any(|line| {
            field(line, "execution_id") == Some(queued.execution_id.as_str())
                && field(line, "message") == Some("execution started")
        }),
        "the restarted node did not run {}; log:\n{log}",
        queued.execution_id
    );
    let printed = String::from_utf8(result.output.unwrap().data).unwrap();
    let (trace_id, parent_id, _) = traceparent_fields(&printed);
    assert_eq!(trace_id, TRACE_ID);
    assert_ne!(parent_id, PARENT_ID);
}
