//! The HTTP gateway's event stream (`/v1/tasks/{name}/invoke?mode=stream`), read event by event
//! as a client sees it: events arrive as the guest writes, closing the stream cancels the
//! execution, a chunk that is not UTF-8 arrives base64-encoded with its bytes intact, and a
//! failing guest ends the stream with a `final` event carrying its status and error.

use crate::support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use spearlet_proto as proto;
use support::{TestNode, start_node, wait_for_status};

/// One server-sent event and when the client had all of it.
pub(crate) struct ReceivedEvent {
    pub(crate) name: String,
    pub(crate) data: Value,
    pub(crate) arrived_at: Instant,
}

/// Reads a `text/event-stream` response event by event, noting when each one arrived.
pub(crate) struct EventReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffered: String,
}

impl EventReader {
    pub(crate) fn new(response: reqwest::Response) -> EventReader {
        EventReader {
            body: response.bytes_stream().boxed(),
            buffered: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended. Panics after 30 s without one.
    pub(crate) async fn next_event(&mut self) -> Option<ReceivedEvent> {
        loop {
            if let Some(end) = self.buffered.find("\n\n") {
                let block: String = self.buffered.drain(..end + 2).collect();
                if let Some(event) = parse_event(&block) {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("an event within 30 s")?
                .expect("the event stream reads without error");
            self.buffered
                .push_str(std::str::from_utf8(&chunk).expect("server-sent events are UTF-8"));
        }
    }

    /// Every remaining event, until the server ends the stream.
    pub(crate) async fn remaining_events(&mut self) -> Vec<ReceivedEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await {
            events.push(event);
        }
        events
    }
}

/// One `event:`/`data:` block; `None` for a block without data (a keep-alive comment).
fn parse_event(block: &str) -> Option<ReceivedEvent> {
    let mut name = String::from("message");
    let mut data = String::new();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = value.trim_start().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = serde_json::from_str(&data).unwrap_or_else(|error| panic!("{error}: {data}"));
    Some(ReceivedEvent {
        name,
        data,
        arrived_at: Instant::now(),
    })
}

/// The bytes an `output` event carries: `data` as text, or `data_base64` decoded.
fn output_bytes(event: &ReceivedEvent) -> Vec<u8> {
    if let Some(text) = event.data["data"].as_str() {
        return text.as_bytes().to_vec();
    }
    let encoded = event.data["data_base64"]
        .as_str()
        .unwrap_or_else(|| panic!("an output event without data: {}", event.data));
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap()
}

/// Starts a stream call of `task` with `input` and checks the answer's head.
async fn start_stream(node: &TestNode, task: &str, input: &'static [u8]) -> (String, EventReader) {
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/tasks/{task}/invoke?mode=stream",
            node.server.http_addr
        ))
        .body(input)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let execution_id = response.headers()["x-spear-execution-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (execution_id, EventReader::new(response))
}

#[tokio::test]
async fn events_arrive_while_the_guest_writes_not_all_at_the_end() {
    let node = start_node().await;
    // Ten lines, 100 ms apart: the guest takes about 900 ms from its first line to its last.
    let (execution_id, mut reader) = start_stream(&node, "ticker", b"10").await;
    let events = reader.remaining_events().await;

    assert_eq!(events[0].name, "status");
    assert_eq!(events[0].data["status"], "RUNNING");
    assert_eq!(events[0].data["execution_id"], execution_id.as_str());
    let outputs: Vec<&ReceivedEvent> = events
        .iter()
        .filter(|event| event.name == "output")
        .collect();
    let output: Vec<u8> = outputs
        .iter()
        .flat_map(|event| output_bytes(event))
        .collect();
    let expected: String = (1..=10).map(|tick| format!("tick {tick}\n")).collect();
    assert_eq!(String::from_utf8(output).unwrap(), expected);
    let last = events.last().unwrap();
    assert_eq!(last.name, "final");
    assert_eq!(last.data["status"], "COMPLETED");

    // Had the gateway buffered the output until the end, every output event would arrive with
    // the final one. The guest spends about 900 ms between its first and last line; half of that
    // is a generous margin for a loaded machine.
    let first_output_lead = last.arrived_at - outputs[0].arrived_at;
    assert!(
        first_output_lead >= Duration::from_millis(450),
        "the first output arrived only {first_output_lead:?} before the final event"
    );
    assert!(
        outputs.len() >= 3,
        "ten lines written 100 ms apart arrived in only {} events",
        outputs.len()
    );
}

#[tokio::test]
async fn closing_the_stream_cancels_the_execution() {
    let mut node = start_node().await;
    // A thousand lines, 100 ms apart: far longer than the test waits.
    let (execution_id, mut reader) = start_stream(&node, "ticker", b"1000").await;
    loop {
        let event = reader.next_event().await.expect("the stream is open");
        if event.name == "output" {
            break;
        }
    }
    drop(reader);

    let record = wait_for_status(&mut node, &execution_id, proto::ExecutionStatus::Cancelled).await;
    assert_eq!(record.error_code, "CANCELLED");
}

#[tokio::test]
async fn a_chunk_that_is_not_utf8_arrives_base64_encoded_with_its_bytes_intact() {
    let mut node = start_node().await;
    let script = b"#!/bin/sh\nprintf 'ok \\377\\376 end\\n'\n";
    node.client
        .create_task(proto::CreateTaskRequest {
            task_name: "not-utf8".into(),
            artifact_spec: Some(proto::ArtifactSpec {
                artifact_type: "process".into(),
                ..support::wasm_artifact(script, &[])
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    let (_, mut reader) = start_stream(&node, "not-utf8", b"").await;
    let events = reader.remaining_events().await;
    let outputs: Vec<&ReceivedEvent> = events
        .iter()
        .filter(|event| event.name == "output")
        .collect();
    let output: Vec<u8> = outputs
        .iter()
        .flat_map(|event| output_bytes(event))
        .collect();
    assert_eq!(output, b"ok \xff\xfe end\n");
    let encoded = outputs
        .iter()
        .find(|event| event.data.get("data_base64").is_some())
        .expect("the chunk with the invalid bytes is base64-encoded");
    assert!(
        encoded.data.get("data").is_none(),
        "an encoded chunk carries no text field: {}",
        encoded.data
    );
    let last = events.last().unwrap();
    assert_eq!(last.name, "final");
    assert_eq!(last.data["status"], "COMPLETED");
}

/// A guest that fails is an outcome, not a transport error: the stream ends with the documented
/// `final` event `{"status", "error_message", "error_code"}`. (The `error` event is for the node
/// failing the stream itself, e.g. shutting down before the execution ended.)
#[tokio::test]
async fn a_failing_guest_ends_the_stream_with_its_status_and_error() {
    let node = start_node().await;
    let (execution_id, mut reader) = start_stream(&node, "fail", b"").await;
    let events = reader.remaining_events().await;
    assert_eq!(events[0].name, "status");
    assert!(
        events.iter().all(|event| event.name != "error"),
        "a guest failure is not a stream error"
    );
    let last = events.last().unwrap();
    assert_eq!(last.name, "final");
    assert_eq!(last.data["execution_id"], execution_id.as_str());
    assert_eq!(last.data["status"], "FAILED");
    assert_eq!(last.data["error_code"], "EXIT_CODE");
    let error_message = last.data["error_message"].as_str().unwrap();
    assert!(error_message.contains('3'), "{error_message}");
}
