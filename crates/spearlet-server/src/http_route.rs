//! What every HTTP route handler shares, whichever file serves the route (`gateway.rs`,
//! `task_http.rs`, `dashboard.rs`): the router's state ([`Gateway`]), the authenticated
//! [`Caller`], the early answer [`Refusal`], query parameters taken by name, bounded body
//! reading, and JSON answers (success and a failed execution's error).
//!
//! Invariant: this file knows no route. It sits below every file that serves routes, so they
//! share it without importing each other; the error statuses it answers come from `errors.rs`
//! like every other.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use spearlet_core::{SpearError, SpearResult};
use spearlet_proto as proto;

use crate::auth::Principal;
use crate::errors::{
    grpc_code_name, http_error_response, http_status_of_execution, payload_too_large_response,
    to_status,
};
use crate::node::Node;
use crate::service::FunctionServiceHandler;

/// The response header naming an execution (set on invoke answers, read on invoke requests).
pub const EXECUTION_ID_HEADER: &str = "x-spear-execution-id";

#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) node: Arc<Node>,
    pub(crate) handler: FunctionServiceHandler,
}

pub(crate) fn spear_error_response(error: SpearError) -> Response {
    http_error_response(&to_status(error))
}

/// A route's early answer: an error response, reached with `?` from a `SpearError`, a handler's
/// `Status` or a finished response.
pub(crate) struct Refusal(pub(crate) Response);

impl From<SpearError> for Refusal {
    fn from(error: SpearError) -> Refusal {
        Refusal(spear_error_response(error))
    }
}

impl From<tonic::Status> for Refusal {
    fn from(status: tonic::Status) -> Refusal {
        Refusal(http_error_response(&status))
    }
}

impl From<Response> for Refusal {
    fn from(response: Response) -> Refusal {
        Refusal(response)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.0
    }
}

/// A JSON answer from a wire message.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(body),
        )
            .into_response(),
        Err(error) => spear_error_response(SpearError::internal(format!(
            "encoding the answer as JSON: {error}"
        ))),
    }
}

/// Who is calling (put there by the gateway's authentication middleware) and the trace context
/// they sent: what travels from an HTTP request into the RPC, as the gRPC server would hand it
/// to the handler.
pub(crate) struct Caller {
    pub(crate) principal: Arc<Principal>,
    traceparent: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl<State: Send + Sync> FromRequestParts<State> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _: &State) -> Result<Caller, Refusal> {
        Ok(Caller::from_extensions_and_headers(
            &parts.extensions,
            &parts.headers,
        )?)
    }
}

impl Caller {
    /// The caller of a whole request (for middleware, before extraction).
    pub(crate) fn of_request(request: &Request) -> SpearResult<Caller> {
        Caller::from_extensions_and_headers(request.extensions(), request.headers())
    }

    fn from_extensions_and_headers(
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
    ) -> SpearResult<Caller> {
        let principal = extensions.get::<Arc<Principal>>().cloned().ok_or_else(|| {
            SpearError::unauthenticated("the request carries no authenticated principal")
        })?;
        let traceparent = headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok());
        Ok(Caller {
            principal,
            traceparent,
        })
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(self.principal.clone());
        if let Some(traceparent) = &self.traceparent {
            request
                .metadata_mut()
                .insert("traceparent", traceparent.clone());
        }
        request
    }
}

/// Reads a body up to `limit` bytes; beyond → 413 naming the setting.
pub(crate) async fn read_body(body: Body, limit: usize, setting: &str) -> Result<Bytes, Refusal> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let is_too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if is_too_large {
            Refusal(payload_too_large_response(setting, limit))
        } else {
            Refusal::from(SpearError::invalid_argument(format!(
                "reading the request body: {error}"
            )))
        }
    })
}

/// Query parameters, taken one by one by name; any left over is an error naming it.
pub(crate) struct QueryParameters(pub(crate) HashMap<String, String>);

impl QueryParameters {
    pub(crate) fn string(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    pub(crate) fn boolean(&mut self, name: &str, default: bool) -> SpearResult<bool> {
        match self.0.remove(name).as_deref() {
            None => Ok(default),
            Some("" | "true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(SpearError::invalid_argument(format!(
                "query parameter {name}={other:?} must be true or false"
            ))),
        }
    }

    pub(crate) fn integer<T: std::str::FromStr + Default>(&mut self, name: &str) -> SpearResult<T> {
        match self.0.remove(name) {
            None => Ok(T::default()),
            Some(text) => text.parse().map_err(|_| {
                SpearError::invalid_argument(format!(
                    "query parameter {name}={text:?} must be an integer"
                ))
            }),
        }
    }

    /// An RFC 3339 instant (`2026-12-02T15:44:17Z`), as the proto3 JSON mapping writes a
    /// Timestamp.
    pub(crate) fn timestamp(
        &mut self,
        name: &str,
    ) -> SpearResult<Option<spearlet_proto::pbjson_types::Timestamp>> {
        let Some(text) = self.0.remove(name) else {
            return Ok(None);
        };
        serde_json::from_value(serde_json::Value::String(text.clone()))
            .map(Some)
            .map_err(|_| {
                SpearError::invalid_argument(format!(
                    "query parameter {name}={text:?} must be an RFC 3339 instant such as \
                     2026-12-02T15:44:17Z"
                ))
            })
    }

    /// A positive integer when present.
    pub(crate) fn optional_positive<T: std::str::FromStr + Default + PartialOrd>(
        &mut self,
        name: &str,
    ) -> SpearResult<Option<T>> {
        if !self.0.contains_key(name) {
            return Ok(None);
        }
        let value: T = self.integer(name)?;
        if value <= T::default() {
            return Err(SpearError::invalid_argument(format!(
                "query parameter {name} must be a positive integer"
            )));
        }
        Ok(Some(value))
    }

    pub(crate) fn finish(self) -> SpearResult<()> {
        let mut unknown: Vec<&String> = self.0.keys().collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort();
        Err(SpearError::invalid_argument(format!(
            "unknown query parameter {}",
            unknown
                .iter()
                .map(|name| format!("{name:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// `COMPLETED` for `EXECUTION_STATUS_COMPLETED`: the form of `X-Spear-Status` and stream events.
pub(crate) fn short_status_name(status: i32) -> &'static str {
    proto::ExecutionStatus::try_from(status)
        .unwrap_or(proto::ExecutionStatus::Unknown)
        .as_str_name()
        .trim_start_matches("EXECUTION_STATUS_")
}

/// The JSON error of an execution that did not complete, with the HTTP status
/// `errors::http_status_of_execution` gives its end.
pub(crate) fn execution_error_response(
    execution_id: &str,
    status: i32,
    message: &str,
    error_code: &str,
) -> Response {
    #[derive(Serialize)]
    struct ExecutionErrorBody<'a> {
        code: &'a str,
        message: &'a str,
        execution_id: &'a str,
        status: &'a str,
        error_code: &'a str,
    }
    let (http, code) =
        http_status_of_execution(proto::ExecutionStatus::try_from(status).unwrap_or_default());
    let body = ExecutionErrorBody {
        code: grpc_code_name(code),
        message,
        execution_id,
        status: short_status_name(status),
        error_code,
    };
    let mut response = (http, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(execution_id) {
        response.headers_mut().insert(EXECUTION_ID_HEADER, value);
    }
    response
}
