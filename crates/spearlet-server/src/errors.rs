//! The one place where internal errors become wire status codes, on both transports.
//!
//! Every handler returns `SpearResult`; this file decides what a client sees: the gRPC status of
//! a `SpearError`, the HTTP status and JSON error body the gateway answers for a gRPC status, the
//! gateway's own refusals (413 for an oversized body, 405 for a wrong method), and how a
//! synchronous HTTP call answers an execution that did not complete (502/504/409). Guest failures
//! never become statuses over gRPC: they are `ExecutionResult`s with `success = false`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use spearlet_core::{ErrorKind, SpearError};
use spearlet_proto as proto;
use tonic::{Code, Status};

pub fn grpc_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The HTTP status the gateway answers for a gRPC status code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::Cancelled => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical name of a gRPC status code (`NOT_FOUND`), as the gateway's JSON errors carry
/// it in `code`.
pub fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Converts a node error to a gRPC status carrying the message unchanged.
pub fn to_status(error: SpearError) -> Status {
    if error.kind == ErrorKind::Internal {
        tracing::error!("internal error: {}", error.message);
    }
    let mut status = Status::new(grpc_code(error.kind), error.message);
    if let Some(retry_after_ms) = error.retry_after_ms {
        status
            .metadata_mut()
            .insert("retry-after-ms", retry_after_ms.into());
    }
    status
}

/// A peer's refusal as this node's error (a call forwarded in cluster mode): the same kind
/// where one exists, the peer's message and retry hint kept. Codes with no kind of their own
/// (a deadline, a broken connection) are UNAVAILABLE.
pub fn from_status(status: &Status) -> SpearError {
    let kind = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::Internal | Code::DataLoss | Code::Unimplemented => ErrorKind::Internal,
        _ => ErrorKind::Unavailable,
    };
    let mut error = SpearError::new(kind, status.message().to_owned());
    if let Some(retry_after_ms) = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
    {
        error = error.with_retry_after_ms(retry_after_ms);
    }
    error
}

/// The JSON body of every refused gateway request: `{"code": "<gRPC status name>", "message":
/// "…"}`.
#[derive(Serialize)]
struct HttpErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// The gateway's answer for a refused request: the HTTP status of the gRPC code, the JSON error
/// body, `WWW-Authenticate: Bearer` on 401, and, when the status carries a `retry-after-ms`
/// hint, `Retry-After` (whole seconds, rounded up, at least 1) and `retry-after-ms` itself.
pub fn http_error_response(status: &Status) -> Response {
    let body = HttpErrorBody {
        code: grpc_code_name(status.code()),
        message: status.message(),
    };
    let mut response = (http_status(status.code()), axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if status.code() == Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(retry_after_ms) = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok())
    {
        headers.insert(
            header::RETRY_AFTER,
            retry_after_ms.div_ceil(1000).max(1).into(),
        );
        headers.insert("retry-after-ms", retry_after_ms.into());
    }
    response
}

/// 413 for a request body larger than its limit, with the code RESOURCE_EXHAUSTED and a message
/// naming the setting (`max_request_bytes`, `artifacts.max_artifact_bytes`) and its value. HTTP
/// has a status of its own for this, unlike gRPC, whose RESOURCE_EXHAUSTED would read as 429.
pub fn payload_too_large_response(setting: &str, limit: usize) -> Response {
    let message = format!("request body is larger than {setting} ({limit} bytes)");
    let body = HttpErrorBody {
        code: grpc_code_name(Code::ResourceExhausted),
        message: &message,
    };
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
}

/// 405 for a path the gateway serves, asked with a method it does not serve there, with the code
/// UNIMPLEMENTED (a gRPC client would have called a method that does not exist).
pub fn method_not_allowed_response(method: &http::Method, path: &str) -> Response {
    let message = format!("{method} is not allowed on {path}; see /openapi.json");
    let body = HttpErrorBody {
        code: grpc_code_name(Code::Unimplemented),
        message: &message,
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// The HTTP status, and the gRPC code its JSON error names, of a synchronous HTTP call whose
/// execution ended with `status`: COMPLETED is 200 with the output; FAILED is 502, because a
/// guest failure is an upstream failure from the caller's point of view; TIMEOUT is 504 and
/// CANCELLED 409, as their gRPC codes would be. A sync call only answers once its execution has
/// ended, so any other status is answered as a failure.
pub fn http_status_of_execution(status: proto::ExecutionStatus) -> (StatusCode, Code) {
    match status {
        proto::ExecutionStatus::Completed => (StatusCode::OK, Code::Ok),
        proto::ExecutionStatus::Timeout => (StatusCode::GATEWAY_TIMEOUT, Code::DeadlineExceeded),
        proto::ExecutionStatus::Cancelled => (StatusCode::CONFLICT, Code::Cancelled),
        proto::ExecutionStatus::Failed
        | proto::ExecutionStatus::Unknown
        | proto::ExecutionStatus::Pending
        | proto::ExecutionStatus::Running => (StatusCode::BAD_GATEWAY, Code::Unknown),
    }
}

/// tonic reports an oversized request as OUT_OF_RANGE with its own wording; the contract says
/// RESOURCE_EXHAUSTED naming our limit. This layer rewrites exactly that status, which tonic
/// sends as a trailers-only response (status in the headers).
#[derive(Clone)]
pub struct OversizedRequestStatusLayer {
    pub max_request_bytes: usize,
}

impl<S> tower::Layer<S> for OversizedRequestStatusLayer {
    type Service = OversizedRequestStatus<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OversizedRequestStatus {
            inner,
            max_request_bytes: self.max_request_bytes,
        }
    }
}

#[derive(Clone)]
pub struct OversizedRequestStatus<S> {
    inner: S,
    max_request_bytes: usize,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>>
    for OversizedRequestStatus<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let future = self.inner.call(request);
        let max_request_bytes = self.max_request_bytes;
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers_mut();
            let is_oversized = headers
                .get("grpc-status")
                .is_some_and(|status| status == "11")
                && headers.get("grpc-message").is_some_and(|message| {
                    // grpc-message is percent-encoded on the wire.
                    message.to_str().is_ok_and(|text| {
                        text.replace("%20", " ")
                            .contains("decoded message length too large")
                    })
                });
            if is_oversized {
                let message = format!(
                    "request message is larger than max_request_bytes ({max_request_bytes} bytes)"
                );
                headers.insert("grpc-status", http::HeaderValue::from_static("8"));
                if let Ok(value) = http::HeaderValue::from_str(&message.replace(' ', "%20")) {
                    headers.insert("grpc-message", value);
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code() {
        let table = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::Unauthenticated, Code::Unauthenticated),
            (ErrorKind::PermissionDenied, Code::PermissionDenied),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::Internal, Code::Internal),
        ];
        for (kind, code) in table {
            assert_eq!(grpc_code(kind), code);
        }
        let error_statuses = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 412),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
        ];
        for (code, expected) in error_statuses {
            assert_eq!(http_status(code).as_u16(), expected, "{code:?}");
        }
        assert_eq!(grpc_code_name(Code::NotFound), "NOT_FOUND");
        let status = to_status(SpearError::not_found("task_id \"x\" is unknown"));
        assert_eq!(status.message(), "task_id \"x\" is unknown");
    }

    #[test]
    fn a_sync_http_call_answers_its_executions_end() {
        let table = [
            (proto::ExecutionStatus::Completed, 200, "OK"),
            (proto::ExecutionStatus::Failed, 502, "UNKNOWN"),
            (proto::ExecutionStatus::Timeout, 504, "DEADLINE_EXCEEDED"),
            (proto::ExecutionStatus::Cancelled, 409, "CANCELLED"),
            (proto::ExecutionStatus::Running, 502, "UNKNOWN"),
        ];
        for (status, expected_http, expected_code_name) in table {
            let (http, code) = http_status_of_execution(status);
            assert_eq!(http.as_u16(), expected_http, "{status:?}");
            assert_eq!(grpc_code_name(code), expected_code_name, "{status:?}");
        }
    }

    #[test]
    fn the_gateways_own_refusals_have_their_http_statuses() {
        let too_large = payload_too_large_response("max_request_bytes", 10);
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let wrong_method = method_not_allowed_response(&http::Method::PUT, "/v1/tasks");
        assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
        let mut busy = Status::resource_exhausted("the queue is full");
        busy.metadata_mut().insert("retry-after-ms", 1500.into());
        let refused = http_error_response(&busy);
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "2");
        assert_eq!(refused.headers()["retry-after-ms"], "1500");
        let anonymous = http_error_response(&Status::unauthenticated("no token"));
        assert_eq!(anonymous.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
