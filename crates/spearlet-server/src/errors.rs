//! The one place where internal errors become wire status codes.
//!
//! Every handler returns `SpearResult`; this file decides what a client sees. Guest failures
//! never come through here: they are `ExecutionResult`s with `success = false`.

use spearlet_core::{ErrorKind, SpearError};
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
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The HTTP status the gateway answers for a gRPC status code.
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode;
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
            (ErrorKind::Unimplemented, Code::Unimplemented),
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
}
