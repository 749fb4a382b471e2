//! The one error type of the node: a kind that decides the wire status, and a message that names
//! the offending field or id.
//!
//! Guest failures (traps, non-zero exits, timeouts) are never `SpearError`s: they are
//! [`crate::Outcome`]s of an execution. A `SpearError` means the node refused or failed a request.
//! The mapping from [`ErrorKind`] to gRPC and HTTP status lives in one file of the server crate.

use std::fmt;

/// What went wrong, in the vocabulary of gRPC status codes, because that is what clients see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something that cannot work (bad key, missing export).
    InvalidArgument,
    /// An unknown task or execution id. Used for nothing else.
    NotFound,
    /// The id or name exists with different content.
    AlreadyExists,
    /// No valid credentials (a missing or unknown bearer token).
    Unauthenticated,
    /// The request is well-formed but not allowed (a path outside the allowed roots, a token
    /// without the scope or task).
    PermissionDenied,
    /// The system is not in a state where the request can work (checksum mismatch, task busy).
    FailedPrecondition,
    /// A configured limit was hit (request size, queue length).
    ResourceExhausted,
    /// A dependency is temporarily unavailable (an artifact server that does not answer).
    Unavailable,
    /// The operation is not built yet.

    /// The node failed: a bug or an IO error on its own data.
    Internal,
}

/// An error the node returns to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpearError {
    pub kind: ErrorKind,
    pub message: String,
    /// For refusals caused by load (RESOURCE_EXHAUSTED): when a retry is likely to succeed, in
    /// milliseconds. Sent as `retry-after-ms` response metadata.
    pub retry_after_ms: Option<u64>,
}

pub type SpearResult<T> = Result<T, SpearError>;

impl SpearError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> SpearError {
        SpearError {
            kind,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::NotFound, message)
    }

    pub fn already_exists(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::AlreadyExists, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::Unauthenticated, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::PermissionDenied, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::FailedPrecondition, message)
    }

    pub fn resource_exhausted(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::ResourceExhausted, message)
    }

    pub fn unavailable(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> SpearError {
        SpearError::new(ErrorKind::Internal, message)
    }

    /// Prefixes the message with context, keeping the kind.
    /// Adds a retry hint (see [`SpearError::retry_after_ms`]).
    pub fn with_retry_after_ms(mut self, retry_after_ms: u64) -> SpearError {
        self.retry_after_ms = Some(retry_after_ms);
        self
    }

    pub fn context(self, context: impl fmt::Display) -> SpearError {
        SpearError {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

impl fmt::Display for SpearError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for SpearError {}
