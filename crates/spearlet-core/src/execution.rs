//! Executions: their status, their mode and the outcome a runtime reports for one attempt.

use serde::{Deserialize, Serialize};

/// The lifecycle of an execution. Mirrors `spearlet.ExecutionStatus` without the UNKNOWN value,
/// which is never a real state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExecutionStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    Timeout,
}

impl ExecutionStatus {
    /// Terminal statuses never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Completed
                | ExecutionStatus::Failed
                | ExecutionStatus::Cancelled
                | ExecutionStatus::Timeout
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Pending => "PENDING",
            ExecutionStatus::Running => "RUNNING",
            ExecutionStatus::Completed => "COMPLETED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::Cancelled => "CANCELLED",
            ExecutionStatus::Timeout => "TIMEOUT",
        }
    }
}

/// How the caller waits for the execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutionMode {
    Sync,
    Async,
    Stream,
}

/// Why an execution did not complete. The string forms are the wire `error_code` values and are
/// part of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The guest exited with a non-zero code.
    ExitCode,
    /// A named export returned a non-zero value.
    ReturnCode,
    /// The guest trapped.
    Trap,
    /// The guest trapped because it tried to grow memory beyond its limit.
    MemoryLimit,
    /// The call's deadline passed.
    Timeout,
    /// A client cancelled the execution.
    Cancelled,
    /// The guest wrote more stdout or stderr than its cap allows.
    OutputTooLarge,
    /// The node stopped while the execution was running and no attempt was left.
    NodeRestarted,
    /// The instance that was to serve the call could not start (its `_initialize` trapped or
    /// exited, or its worker failed to start).
    InitFailed,
    /// A warm worker process exited or crashed during the call.
    WorkerCrashed,
    /// The function reported an error through its runtime (the Lambda Runtime API's `/error`).
    FunctionError,
    /// Cluster mode: the node running the execution was lost (it stopped heartbeating and its
    /// work was redelivered) and no attempt was left.
    NodeLost,
    /// A `wasi:http` handler returned (or set an error) without setting a response.
    HttpNoResponse,
}

impl ErrorCode {
    /// Every code, in [`ErrorCode::index`] order.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::ExitCode,
        ErrorCode::ReturnCode,
        ErrorCode::Trap,
        ErrorCode::MemoryLimit,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::OutputTooLarge,
        ErrorCode::NodeRestarted,
        ErrorCode::InitFailed,
        ErrorCode::WorkerCrashed,
        ErrorCode::FunctionError,
        ErrorCode::NodeLost,
        ErrorCode::HttpNoResponse,
    ];

    /// The code's position in [`ErrorCode::ALL`], for per-code counters. Exhaustive, so a new
    /// code does not compile until it has a place.
    pub fn index(self) -> usize {
        match self {
            ErrorCode::ExitCode => 0,
            ErrorCode::ReturnCode => 1,
            ErrorCode::Trap => 2,
            ErrorCode::MemoryLimit => 3,
            ErrorCode::Timeout => 4,
            ErrorCode::Cancelled => 5,
            ErrorCode::OutputTooLarge => 6,
            ErrorCode::NodeRestarted => 7,
            ErrorCode::InitFailed => 8,
            ErrorCode::WorkerCrashed => 9,
            ErrorCode::FunctionError => 10,
            ErrorCode::NodeLost => 11,
            ErrorCode::HttpNoResponse => 12,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ExitCode => "EXIT_CODE",
            ErrorCode::ReturnCode => "RETURN_CODE",
            ErrorCode::Trap => "TRAP",
            ErrorCode::MemoryLimit => "MEMORY_LIMIT",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::OutputTooLarge => "OUTPUT_TOO_LARGE",
            ErrorCode::NodeRestarted => "NODE_RESTARTED",
            ErrorCode::InitFailed => "INIT_FAILED",
            ErrorCode::WorkerCrashed => "WORKER_CRASHED",
            ErrorCode::FunctionError => "FUNCTION_ERROR",
            ErrorCode::NodeLost => "NODE_LOST",
            ErrorCode::HttpNoResponse => "HTTP_NO_RESPONSE",
        }
    }
}

/// What one attempt of an execution ended with, as reported by a runtime. A guest failure is an
/// outcome, not an error: the node did its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed { code: ErrorCode, message: String },
    TimedOut { message: String },
    Cancelled { reason: String },
}

impl Outcome {
    pub fn status(&self) -> ExecutionStatus {
        match self {
            Outcome::Completed => ExecutionStatus::Completed,
            Outcome::Failed { .. } => ExecutionStatus::Failed,
            Outcome::TimedOut { .. } => ExecutionStatus::Timeout,
            Outcome::Cancelled { .. } => ExecutionStatus::Cancelled,
        }
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Outcome::Completed => None,
            Outcome::Failed { code, .. } => Some(*code),
            Outcome::TimedOut { .. } => Some(ErrorCode::Timeout),
            Outcome::Cancelled { .. } => Some(ErrorCode::Cancelled),
        }
    }

    pub fn error_message(&self) -> &str {
        match self {
            Outcome::Completed => "",
            Outcome::Failed { message, .. } => message,
            Outcome::TimedOut { message } => message,
            Outcome::Cancelled { reason } => reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_sits_at_its_index() {
        for (index, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), index, "{code:?}");
        }
    }

    #[test]
    fn outcomes_map_to_statuses_and_codes() {
        let table = [
            (Outcome::Completed, ExecutionStatus::Completed, None),
            (
                Outcome::Failed {
                    code: ErrorCode::ExitCode,
                    message: "exit code 3".into(),
                },
                ExecutionStatus::Failed,
                Some("EXIT_CODE"),
            ),
            (
                Outcome::TimedOut {
                    message: "deadline".into(),
                },
                ExecutionStatus::Timeout,
                Some("TIMEOUT"),
            ),
            (
                Outcome::Cancelled {
                    reason: "user".into(),
                },
                ExecutionStatus::Cancelled,
                Some("CANCELLED"),
            ),
        ];
        for (outcome, status, code) in table {
            assert_eq!(outcome.status(), status);
            assert_eq!(outcome.error_code().map(ErrorCode::as_str), code);
            assert!(status.is_terminal());
        }
        assert!(!ExecutionStatus::Pending.is_terminal());
        assert!(!ExecutionStatus::Running.is_terminal());
    }
}
