//! HTTP requests served by `wasi:http` handler components: `/v1/tasks/{task}/http/{path...}`
//! (any method), and the root of a host name mapped to one task (`[http_task_hosts]`), so an
//! app written for `wasmtime serve` sees the paths it expects.
//!
//! A request becomes a StreamFunction call of the same handler the gRPC server uses: method and
//! path (below the prefix, with the query) in `invocation_metadata["http.method"]` /
//! `["http.path"]`, the request headers as `context.headers`, the body as the input. The
//! execution is recorded, limited and cancellable like any other; closing the connection
//! cancels it.
//!
//! The answer: once the handler sets its response, its status and headers (the stream's
//! head message) and then its body, chunk by chunk as the guest writes it. A call that ends
//! before any response (a trap, `HTTP_NO_RESPONSE`, a timeout) is answered with the JSON error
//! body of a failed invoke (502, 504, 409). A guest that fails after its head went out cuts the
//! body short (the connection sees an incomplete body), as `wasmtime serve` does.
//!
//! The request body is read whole (up to `max_request_bytes`) before the call starts: an
//! execution's input is recorded with it, and a retry must be able to send it again.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use spearlet_core::{SpearError, SpearResult};
use spearlet_proto as proto;
use spearlet_proto::function_service_server::FunctionService;
use spearlet_runtime::{HTTP_HEADER_METRIC_PREFIX, HTTP_STATUS_METRIC};
use spearlet_wasm::{HTTP_METHOD_METADATA_KEY, HTTP_PATH_METADATA_KEY};

use crate::auth::Principal;
use crate::http_route::{
    Caller, EXECUTION_ID_HEADER, Gateway, Refusal, execution_error_response, read_body,
};

/// Headers that describe one connection, not the request or response: never passed through.
const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `ANY /v1/tasks/{task}/http` and `/v1/tasks/{task}/http/{*path}`.
pub(crate) async fn task_http_route(
    State(gateway): State<Gateway>,
    caller: Caller,
    Path(parameters): Path<HashMap<String, String>>,
    request: Request,
) -> Result<Response, Refusal> {
    let task = parameters.get("task").cloned().unwrap_or_default();
    let path = parameters.get("path").map(String::as_str).unwrap_or("");
    let mut path_with_query = format!("/{path}");
    if let Some(query) = request.uri().query() {
        path_with_query.push('?');
        path_with_query.push_str(query);
    }
    serve_task_request(&gateway, &caller, task, path_with_query, request).await
}

/// In front of every route: a request whose `Host` (without its port) is mapped to a task in
/// `[http_task_hosts]` goes to that task's handler with its whole path.
pub(crate) async fn route_task_hosts(
    State(gateway): State<Gateway>,
    request: Request,
    next: Next,
) -> Response {
    let hosts = &gateway.node.config.http_task_hosts;
    if hosts.is_empty() {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri().host())
        .map(host_without_port);
    let Some(task) = host.and_then(|host| hosts.get(&host)).cloned() else {
        return next.run(request).await;
    };
    let caller = match Caller::of_request(&request) {
        Ok(caller) => caller,
        Err(error) => return Refusal::from(error).into_response(),
    };
    let path_with_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned());
    serve_task_request(&gateway, &caller, task, path_with_query, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`, lower-case.
fn host_without_port(host: &str) -> String {
    let host = host.trim();
    let without_port = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    without_port.to_ascii_lowercase()
}

async fn serve_task_request(
    gateway: &Gateway,
    caller: &Caller,
    task: String,
    path_with_query: String,
    request: Request,
) -> Result<Response, Refusal> {
    refuse_tasks_that_are_not_http_handlers(gateway, &caller.principal, &task)?;
    let (parts, body) = request.into_parts();
    let input = read_body(
        body,
        gateway.node.config.max_request_bytes,
        "max_request_bytes",
    )
    .await?;
    let strip_authorization = gateway.node.access.is_enabled();
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in &parts.headers {
        let is_node_credential = strip_authorization && *name == header::AUTHORIZATION;
        if is_node_credential || HOP_BY_HOP_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let Ok(value) = value.to_str() else {
            return Err(Refusal::from(SpearError::invalid_argument(format!(
                "request header {name} is not visible ASCII; the handler receives headers as text"
            ))));
        };
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE.as_str())
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let execution_id = headers
        .get(EXECUTION_ID_HEADER)
        .cloned()
        .unwrap_or_default();
    let invocation_metadata = HashMap::from([
        (
            HTTP_METHOD_METADATA_KEY.to_owned(),
            parts.method.as_str().to_owned(),
        ),
        (HTTP_PATH_METADATA_KEY.to_owned(), path_with_query),
    ]);
    let request = proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::ExistingTask as i32,
        task_id: task,
        execution_mode: proto::ExecutionMode::Stream as i32,
        input: Some(proto::Payload {
            content_type,
            data: input.to_vec(),
        }),
        context: Some(proto::ExecutionContext {
            execution_id,
            headers,
            ..Default::default()
        }),
        invocation_metadata,
        ..Default::default()
    };
    let mut messages = gateway
        .handler
        .stream_function(caller.request(request))
        .await?
        .into_inner();
    // RUNNING first, then the head (or the final message of a call that never answered).
    loop {
        let message = match messages.next().await {
            Some(Ok(message)) => message,
            Some(Err(status)) => return Err(Refusal::from(status)),
            None => {
                return Err(Refusal::from(SpearError::internal(
                    "the execution stream ended before the handler answered",
                )));
            }
        };
        if message.is_final {
            let error_code = message.metadata.get("error_code").cloned();
            return Ok(execution_error_response(
                &message.execution_id,
                message.status,
                &message.error_message,
                error_code.as_deref().unwrap_or_default(),
            ));
        }
        if let Some(status) = message.metadata.get(HTTP_STATUS_METRIC) {
            return Ok(streamed_response(&message, status, messages));
        }
    }
}

/// FAILED_PRECONDITION for a task that exists, is visible to the caller and is not a wasi:http
/// handler. Unknown or hidden tasks go on to the handler, which answers NOT_FOUND or
/// PERMISSION_DENIED as for any call.
fn refuse_tasks_that_are_not_http_handlers(
    gateway: &Gateway,
    principal: &Principal,
    task: &str,
) -> SpearResult<()> {
    let Some(loaded) = gateway.node.registry.resolve(task) else {
        return Ok(());
    };
    if !principal.allows_task(&loaded.record.task_name) || loaded.is_http_handler() {
        return Ok(());
    }
    Err(SpearError::failed_precondition(format!(
        "task {:?} is not a wasi:http handler component; call it at /v1/tasks/{}/invoke",
        loaded.record.task_name, loaded.record.task_name
    )))
}

/// The handler's response: its status and headers from the head message, then its body.
fn streamed_response(
    head: &proto::StreamExecutionResult,
    status: &str,
    messages: impl futures::Stream<Item = Result<proto::StreamExecutionResult, tonic::Status>>
    + Send
    + 'static,
) -> Response {
    let status = status
        .parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let body = messages.filter_map(|message| async move {
        match message {
            Ok(message) if message.is_final => {
                let completed = message.status == proto::ExecutionStatus::Completed as i32;
                // A failure after the head: cut the body so the client sees it incomplete.
                (!completed).then(|| {
                    Err(std::io::Error::other(format!(
                        "the handler failed after answering: {}",
                        message.error_message
                    )))
                })
            }
            Ok(message) if !message.data.is_empty() => Some(Ok(Bytes::from(message.data))),
            Ok(_) => None,
            Err(status) => Some(Err(std::io::Error::other(status.message().to_owned()))),
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    for (key, value) in &head.metadata {
        let Some(name) = key.strip_prefix(HTTP_HEADER_METRIC_PREFIX) else {
            continue;
        };
        if HOP_BY_HOP_HEADERS.contains(&name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name),
            HeaderValue::try_from(value.as_str()),
        ) {
            response_headers.append(name, value);
        }
    }
    if let Ok(execution_id) = HeaderValue::from_str(&head.execution_id) {
        response_headers.insert(EXECUTION_ID_HEADER, execution_id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(host_without_port("Echo.Localhost:8080"), "echo.localhost");
        assert_eq!(host_without_port("echo.localhost"), "echo.localhost");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
