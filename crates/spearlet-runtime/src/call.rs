//! [`FunctionCall`]: one call as every runtime takes it; [`CallReport`]: what every runtime
//! returns.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use spearlet_core::{ErrorCode, Outcome};
use tokio_util::sync::CancellationToken;

use crate::trace::TraceContext;

/// Receives each chunk of stdout as the guest writes it (for streaming executions).
pub type OutputChunkSender = tokio::sync::mpsc::UnboundedSender<Bytes>;

/// The status and headers of an HTTP handler's response, sent as soon as the handler sets them
/// (before its body), for callers that stream the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponseHead {
    pub status: u16,
    /// In the handler's order; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
}

/// The record metric (and stream message metadata key) that carries an HTTP handler's response
/// status; each response header is `http.header.<lower-case name>`.
pub const HTTP_STATUS_METRIC: &str = "http.status";
pub const HTTP_HEADER_METRIC_PREFIX: &str = "http.header.";

impl HttpResponseHead {
    /// The head as record metrics: `http.status` and `http.header.<name>`, a repeated header's
    /// values joined with ", ".
    pub fn as_metrics(&self) -> BTreeMap<String, String> {
        let mut metrics = BTreeMap::new();
        metrics.insert(HTTP_STATUS_METRIC.to_owned(), self.status.to_string());
        for (name, value) in &self.headers {
            metrics
                .entry(format!("{HTTP_HEADER_METRIC_PREFIX}{name}"))
                .and_modify(|joined: &mut String| {
                    joined.push_str(", ");
                    joined.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        metrics
    }
}

/// Receives an HTTP handler's response head.
pub type HttpResponseHeadSender = tokio::sync::oneshot::Sender<HttpResponseHead>;

/// The caps one call runs under, from the task's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// The guest's memory: linear memory for wasm, address space for a process.
    pub memory_limit_bytes: u64,
    /// Stdout (the output) beyond this ends the call `OUTPUT_TOO_LARGE`.
    pub max_output_bytes: u64,
    /// Stderr (the logs) beyond this is cut (wasm: `OUTPUT_TOO_LARGE`; processes: truncated).
    pub max_log_bytes: u64,
}

/// One call of a function, runtime-neutral: who calls what with which input, under which
/// limits, until when.
pub struct FunctionCall {
    /// The execution this call is an attempt of (`SPEAR_EXECUTION_ID`, a Lambda request id).
    pub execution_id: String,
    pub task_id: String,
    /// argv\[0\] of a wasm guest.
    pub task_name: String,
    /// The function the caller named (a wasm export, an exec process's argv\[1\]).
    pub function_name: String,
    pub session_id: String,
    /// The guest's stdin (wasm, exec) or event (Lambda).
    pub input: Bytes,
    /// `context.environment`: variables the caller asked for.
    pub caller_environment: BTreeMap<String, String>,
    /// `context.headers`: the guest sees each as `SPEAR_HEADER_<UPPER_SNAKE_NAME>`.
    pub caller_headers: BTreeMap<String, String>,
    /// The execution's trace context (`SPEAR_TRACEPARENT`, a Lambda `Lambda-Runtime-Trace-Id`).
    pub trace: TraceContext,
    pub limits: CallLimits,
    /// When the call times out (queue wait already spent).
    pub deadline: tokio::time::Instant,
    /// Cancelled when the caller or a CancelExecution ends the execution.
    pub cancellation: CancellationToken,
    /// Where stdout chunks go as the guest writes them, for streaming callers.
    pub output_chunks: Option<OutputChunkSender>,
    /// Where an HTTP handler's response head goes as soon as it is set, for streaming callers
    /// (other runtimes drop it).
    pub http_response_head: Option<HttpResponseHeadSender>,
}

impl FunctionCall {
    /// The guest's environment: the task's variables, then the caller's, then the caller's
    /// headers as `SPEAR_HEADER_*`, then spearlet's own `SPEAR_*` variables (which win). Sorted
    /// by name.
    pub fn guest_environment(
        &self,
        task_environment: &BTreeMap<String, String>,
    ) -> Vec<(String, String)> {
        let mut environment = task_environment.clone();
        environment.extend(
            self.caller_environment
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        for (name, value) in &self.caller_headers {
            environment.insert(format!("SPEAR_HEADER_{}", upper_snake(name)), value.clone());
        }
        environment.insert("SPEAR_EXECUTION_ID".into(), self.execution_id.clone());
        environment.insert("SPEAR_TASK_ID".into(), self.task_id.clone());
        environment.insert("SPEAR_FUNCTION_NAME".into(), self.function_name.clone());
        environment.insert("SPEAR_SESSION_ID".into(), self.session_id.clone());
        environment.insert("SPEAR_TRACEPARENT".into(), self.trace.traceparent());
        environment.into_iter().collect()
    }
}

/// What one call produced, whatever ran it.
#[derive(Debug)]
pub struct CallReport {
    pub outcome: Outcome,
    pub output: Bytes,
    /// The output's media type when the runtime was told one (a Lambda worker's
    /// `Content-Type`); `None` means `application/octet-stream`.
    pub output_content_type: Option<String>,
    pub logs: Bytes,
    /// The guest's peak memory during the call, where the runtime can measure it (a wasm
    /// instance's linear memory); `None` where it cannot.
    pub memory_used_bytes: Option<u64>,
    /// Time spent instantiating (wasm per call) or spawning (exec) for this call.
    pub start_duration: Duration,
    /// Runtime-specific figures for the record's metrics (`error_type`, `process_id`, …).
    pub metrics: BTreeMap<String, String>,
    /// False when the instance must not serve again (the pool replaces it).
    pub instance_still_usable: bool,
}

impl CallReport {
    /// A call that ended before its guest ran, or whose runtime failed around it.
    pub fn failed(code: ErrorCode, message: impl Into<String>, usable: bool) -> CallReport {
        CallReport {
            outcome: Outcome::Failed {
                code,
                message: message.into(),
            },
            output: Bytes::new(),
            output_content_type: None,
            logs: Bytes::new(),
            memory_used_bytes: None,
            start_duration: Duration::ZERO,
            metrics: BTreeMap::new(),
            instance_still_usable: usable,
        }
    }
}

/// `x-request-id` → `X_REQUEST_ID`.
pub fn upper_snake(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> FunctionCall {
        FunctionCall {
            execution_id: "exec-1".into(),
            task_id: "task-1".into(),
            task_name: "echo".into(),
            function_name: "main".into(),
            session_id: "session-1".into(),
            input: Bytes::new(),
            caller_environment: [
                ("FROM_CALLER".to_owned(), "caller".to_owned()),
                ("SHARED".to_owned(), "caller".to_owned()),
                ("SPEAR_TASK_ID".to_owned(), "forged".to_owned()),
            ]
            .into(),
            caller_headers: [("x-request-id".to_owned(), "r-7".to_owned())].into(),
            trace: TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap(),
            limits: CallLimits {
                memory_limit_bytes: 1 << 20,
                max_output_bytes: 1024,
                max_log_bytes: 1024,
            },
            deadline: tokio::time::Instant::now(),
            cancellation: CancellationToken::new(),
            output_chunks: None,
            http_response_head: None,
        }
    }

    #[test]
    fn header_names_become_upper_snake() {
        assert_eq!(upper_snake("x-request-id"), "X_REQUEST_ID");
        assert_eq!(upper_snake("Content.Type"), "CONTENT_TYPE");
    }

    #[test]
    fn the_caller_overrides_the_task_and_spearlet_overrides_both() {
        let task_environment: BTreeMap<String, String> = [
            ("FROM_TASK".to_owned(), "task".to_owned()),
            ("SHARED".to_owned(), "task".to_owned()),
        ]
        .into();
        let environment: BTreeMap<String, String> = call()
            .guest_environment(&task_environment)
            .into_iter()
            .collect();
        assert_eq!(environment["FROM_TASK"], "task");
        assert_eq!(environment["FROM_CALLER"], "caller");
        assert_eq!(environment["SHARED"], "caller");
        assert_eq!(environment["SPEAR_TASK_ID"], "task-1");
        assert_eq!(environment["SPEAR_EXECUTION_ID"], "exec-1");
        assert_eq!(environment["SPEAR_FUNCTION_NAME"], "main");
        assert_eq!(environment["SPEAR_SESSION_ID"], "session-1");
        assert_eq!(environment["SPEAR_HEADER_X_REQUEST_ID"], "r-7");
        assert_eq!(
            environment["SPEAR_TRACEPARENT"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
