//! The durable facts of the node: task registrations and execution records.
//!
//! These types are what the store keeps and what every read RPC answers from. They are plain
//! data with no behaviour beyond small derived views.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::execution::{ErrorCode, ExecutionMode, ExecutionStatus, Outcome};

/// An artifact as the client described it, plus what the node learned (its digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// The client's id; `sha256:<hex>` of the content when the client gave none.
    pub artifact_id: String,
    pub artifact_type: String,
    pub location: String,
    pub version: String,
    pub checksum: String,
    pub metadata: BTreeMap<String, String>,
    /// Lowercase hex sha256 of the content.
    pub digest: String,
}

/// A registered task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub task_name: String,
    pub description: String,
    pub artifact: ArtifactRecord,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds.
    pub updated_at_ms: i64,
}

/// How the client submitted input, which decides how output is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultEncoding {
    /// Old clients: parameters in, `ExecutionResult.result` = Any(BytesValue) out.
    AnyBytesValue,
    /// New clients: `input` in, `ExecutionResult.output` out.
    Payload,
}

/// Everything known about one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub execution_id: String,
    /// Monotonic submission order; the pagination key.
    pub sequence: u64,
    pub task_id: String,
    pub task_name: String,
    pub function_name: String,
    pub mode: ExecutionMode,
    pub status: ExecutionStatus,
    /// Unix milliseconds.
    pub submitted_at_ms: i64,
    /// Unix microseconds; set when the guest starts running.
    pub started_at_us: Option<i64>,
    /// Unix microseconds; set when the execution reaches a terminal status.
    pub completed_at_us: Option<i64>,
    /// Run time of the guest (not counting queue wait), in milliseconds.
    pub execution_time_ms: i64,
    /// Peak memory of the guest in bytes where the runtime measures it (a wasm instance's
    /// linear memory); 0 where it does not (process tasks) — then `metrics` has no
    /// `memory_used_bytes` entry.
    pub memory_used_bytes: i64,
    pub output: Bytes,
    /// `application/octet-stream` unless the runtime reported the output's type (a Lambda
    /// worker's `Content-Type`).
    pub output_content_type: String,
    pub result_encoding: ResultEncoding,
    /// Guest stderr, up to the log cap.
    pub logs: Bytes,
    pub error_code: Option<ErrorCode>,
    pub error_message: String,
    pub metrics: BTreeMap<String, String>,
    pub attempt: u32,
    pub instance_id: String,
    /// sha256 over task id, function name and input: the idempotency fingerprint.
    pub request_fingerprint: String,
    pub metadata: BTreeMap<String, String>,
    /// What the execution needs to run again after a restart: its input and call context.
    pub request: StoredRequest,
    /// Status changes and attempt ends, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// The parts of an invocation request kept with its record, so a queued or interrupted
/// execution can run after the node restarts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub input: Bytes,
    pub session_id: String,
    pub environment: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    /// `context.timeout_ms` as sent (≤ 0 = the task default).
    pub requested_timeout_ms: i64,
    /// Retries allowed after the first attempt (already capped by the node).
    pub max_retries: u32,
}

/// One event in an execution's life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Unix microseconds.
    pub at_us: i64,
    pub status: ExecutionStatus,
    pub attempt: u32,
    /// Why the status changed (an attempt's error, a cancellation reason, a restart).
    pub note: String,
}

/// The record's transitions: the only way an execution's status, attempt and timeline change,
/// so every change leaves its timeline entry.
impl ExecutionRecord {
    /// PENDING → RUNNING: the guest starts now (unix microseconds).
    pub fn start(&mut self, now_us: i64) {
        self.status = ExecutionStatus::Running;
        self.started_at_us = Some(now_us);
        self.timeline.push(TimelineEntry {
            at_us: now_us,
            status: ExecutionStatus::Running,
            attempt: self.attempt,
            note: String::new(),
        });
    }

    /// The current attempt failed with `failure` and another one follows: the failed attempt's
    /// end, then PENDING for the next.
    pub fn retry(&mut self, now_us: i64, failure: &str, reason: String) {
        self.timeline.push(TimelineEntry {
            at_us: now_us,
            status: ExecutionStatus::Failed,
            attempt: self.attempt,
            note: failure.to_owned(),
        });
        self.begin_next_attempt(now_us, reason);
    }

    /// Back to PENDING as the next attempt (after a failed attempt, or one a restart
    /// interrupted), saying why.
    pub fn begin_next_attempt(&mut self, now_us: i64, reason: String) {
        self.attempt += 1;
        self.status = ExecutionStatus::Pending;
        self.started_at_us = None;
        self.timeline.push(TimelineEntry {
            at_us: now_us,
            status: ExecutionStatus::Pending,
            attempt: self.attempt,
            note: reason,
        });
    }

    /// The terminal transition: status, error and end time from `outcome`.
    pub fn finish(&mut self, now_us: i64, outcome: &Outcome) {
        self.status = outcome.status();
        self.error_code = outcome.error_code();
        self.error_message = outcome.error_message().to_owned();
        self.completed_at_us = Some(now_us);
        self.timeline.push(TimelineEntry {
            at_us: now_us,
            status: self.status,
            attempt: self.attempt,
            note: self.error_message.clone(),
        });
    }

    /// Submit-to-end time in milliseconds, when the execution has ended.
    pub fn response_time_ms(&self) -> Option<f64> {
        self.completed_at_us
            .map(|completed| (completed - self.submitted_at_ms * 1000) as f64 / 1000.0)
    }

    /// Stderr split into lines, for `include_logs`.
    pub fn log_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.logs)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
