//! The HTTP/JSON gateway: the FunctionService RPCs as HTTP routes, plus `/metrics`, the probes
//! and the OpenAPI document, on the HTTP listener.
//!
//! Invariants:
//! - A route translates HTTP into the RPC's request message, calls the same
//!   `FunctionServiceHandler` the gRPC server uses (in-process, no network hop) and translates
//!   the answer back. Business rules and authorization live only in the handler, so gRPC and
//!   HTTP cannot disagree.
//! - One error model: a refused request is the handler's gRPC status, answered by
//!   `errors::http_error_response` (the body `{"code": "<gRPC status name>", "message": "…"}`).
//!   Every error status this file answers comes from a function of `errors.rs`; only the
//!   success codes (200, 201, 202) are chosen here.
//! - JSON bodies are the proto3 JSON mapping of the wire messages (pbjson, proto field names).
//! - Bodies are read with an explicit limit: `max_request_bytes`, or `max_artifact_bytes` for
//!   `POST /v1/artifacts`; more → 413 RESOURCE_EXHAUSTED.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, delete, get, post};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use spearlet_core::{Priority, SpearError, SpearResult};
use spearlet_proto as proto;
use spearlet_proto::function_service_server::FunctionService;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::auth::Scope;
use crate::errors::{
    grpc_code_name, http_error_response, http_status_of_execution, method_not_allowed_response,
    to_status,
};
use crate::http_route::{
    Caller, Gateway, QueryParameters, Refusal, execution_error_response, json_response, read_body,
    short_status_name, spear_error_response,
};
use crate::node::Node;
use crate::service::FunctionServiceHandler;

/// Paths anyone may fetch, token or not: probes (kubelet sends no token) and the API document.
const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz", "/openapi.json"];

/// The OpenAPI 3 document of these routes (kept beside this file; a test checks they match).
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

/// The request headers the invoke route reads.
pub use crate::http_route::EXECUTION_ID_HEADER;
pub const PRIORITY_HEADER: &str = "x-spear-priority";
pub const STATUS_HEADER: &str = "x-spear-status";

/// Bounded wait for a TLS handshake, so a silent client cannot hold a task forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every route: path, method, handler. The router is built from this table, and a test checks
/// it against the OpenAPI document.
fn route_table() -> Vec<(&'static str, Method, MethodRouter<Gateway>)> {
    vec![
        ("/v1/tasks", Method::GET, get(list_tasks)),
        ("/v1/tasks", Method::POST, post(create_task)),
        ("/v1/tasks/{task}", Method::GET, get(get_task)),
        ("/v1/tasks/{task}", Method::DELETE, delete(delete_task)),
        ("/v1/tasks/{task}/invoke", Method::POST, post(invoke)),
        ("/v1/executions", Method::GET, get(list_executions)),
        (
            "/v1/executions/{execution_id}",
            Method::GET,
            get(get_execution),
        ),
        (
            "/v1/executions/{execution_id}/cancel",
            Method::POST,
            post(cancel_execution),
        ),
        ("/v1/artifacts", Method::POST, post(upload_artifact)),
        ("/v1/stats", Method::GET, get(stats)),
        ("/v1/stats/history", Method::GET, get(stats_history)),
        ("/v1/events", Method::GET, get(crate::dashboard::events)),
        ("/v1/auth/whoami", Method::GET, get(who_am_i)),
        ("/healthz", Method::GET, get(healthz)),
        ("/readyz", Method::GET, get(readyz)),
        ("/metrics", Method::GET, get(metrics)),
        ("/openapi.json", Method::GET, get(openapi)),
    ]
}

/// The routes of `wasi:http` handler tasks (`task_http.rs`): every method, any path below.
const TASK_HTTP_PATHS: [(&str, &str); 2] = [
    ("/v1/tasks/{task}/http", "/v1/tasks/{task}/http"),
    (
        "/v1/tasks/{task}/http/{*path}",
        "/v1/tasks/{task}/http/{path}",
    ),
];

/// The methods the OpenAPI document lists for the task HTTP routes (the router takes any).
const TASK_HTTP_DOCUMENTED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];

/// The (path, method) pairs the gateway serves, as the OpenAPI document writes them.
pub fn routes() -> Vec<(&'static str, Method)> {
    let task_http = TASK_HTTP_PATHS.iter().flat_map(|(_, documented_path)| {
        TASK_HTTP_DOCUMENTED_METHODS
            .iter()
            .map(|method| (*documented_path, method.clone()))
    });
    route_table()
        .into_iter()
        .map(|(path, method, _)| (path, method))
        .chain(task_http)
        .collect()
}

/// Every route of the gateway, with authentication in front.
pub fn router(node: Arc<Node>) -> Router {
    let gateway = Gateway {
        handler: FunctionServiceHandler::new(node.clone()),
        node,
    };
    // Routes on the same path merge their methods.
    let router = route_table()
        .into_iter()
        .fold(Router::new(), |router, (path, _, handler)| {
            router.route(path, handler)
        });
    let router = TASK_HTTP_PATHS.iter().fold(router, |router, (path, _)| {
        router.route(path, any(crate::task_http::task_http_route))
    });
    let router = crate::dashboard::PAGE_PATHS
        .iter()
        .fold(router, |router, path| {
            router.route(path, get(crate::dashboard::page))
        })
        .route(crate::dashboard::ASSET_PATH, get(crate::dashboard::asset))
        .route("/favicon.ico", get(crate::dashboard::favicon));
    // Layers run outside in: authentication first, then host routing (which needs the caller).
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            crate::task_http::route_task_hosts,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            authenticate,
        ))
        .with_state(gateway)
}

/// Accepts HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS) connections until `stop_accepting`,
/// then lets open connections finish their requests for up to the shutdown grace.
pub async fn serve_http(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop_accepting: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    let router = router(node.clone());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let max_requests_per_connection = node.config.max_requests_per_connection;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(u32::try_from(max_requests_per_connection).unwrap_or(u32::MAX));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accepting an HTTP connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop_accepting.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // One limit per connection: HTTP/1.1 is sequential anyway, HTTP/2 streams beyond it
        // wait for a slot on this connection only.
        let service = hyper_util::service::TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .concurrency_limit(max_requests_per_connection)
                .service(router.clone()),
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let result = match acceptor {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, "TLS handshake failed: {error}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, "HTTP connection ended with an error: {error}");
            }
        });
    }
    let grace = Duration::from_millis(node.config.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// Puts the caller's [`Principal`] into the request, or answers 401. A public path (probes, the
/// API document, the dashboard's page and assets) is served without one, but still carries the
/// caller's principal when the request authenticates: a host mapped to a handler task
/// (`[http_task_hosts]`) hands every path to the task, public-looking ones included, and the
/// task's call needs the caller.
async fn authenticate(
    State(gateway): State<Gateway>,
    mut request: Request,
    next: Next,
) -> Response {
    let is_public = PUBLIC_PATHS.contains(&request.uri().path())
        || crate::dashboard::is_public(request.uri().path());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match gateway.node.access.authenticate(authorization) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(_) if is_public => next.run(request).await,
        Err(error) => http_error_response(&to_status(error)),
    }
}

fn execution_status_from_query(text: &str) -> SpearResult<proto::ExecutionStatus> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("EXECUTION_STATUS_") {
        upper
    } else {
        format!("EXECUTION_STATUS_{upper}")
    };
    proto::ExecutionStatus::from_str_name(&name).ok_or_else(|| {
        SpearError::invalid_argument(format!(
            "query parameter status={text:?} is not one of pending, running, completed, failed, \
             cancelled, timeout"
        ))
    })
}

/// `POST /v1/tasks/{task}/invoke`.
async fn invoke(
    State(gateway): State<Gateway>,
    caller: Caller,
    Path(task): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let function_name = query.string("function").unwrap_or_default();
    let timeout_ms: i64 = query.integer("timeout_ms")?;
    let mode = query.string("mode");
    query.finish()?;
    let execution_mode = match mode.as_deref() {
        None | Some("sync") => proto::ExecutionMode::Sync,
        Some("async") => proto::ExecutionMode::Async,
        Some("stream") => proto::ExecutionMode::Stream,
        Some(other) => {
            return Err(Refusal::from(SpearError::invalid_argument(format!(
                "query parameter mode={other:?} must be sync, async or stream"
            ))));
        }
    };
    let input = read_body(
        body,
        gateway.node.config.max_request_bytes,
        "max_request_bytes",
    )
    .await?;
    let header_text = |name: &str| -> SpearResult<Option<String>> {
        headers
            .get(name)
            .map(|value| {
                value.to_str().map(str::to_owned).map_err(|_| {
                    SpearError::invalid_argument(format!("header {name} must be visible ASCII"))
                })
            })
            .transpose()
    };
    let content_type = header_text(header::CONTENT_TYPE.as_str())?
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let mut invocation_metadata = HashMap::new();
    if let Some(priority) = header_text(PRIORITY_HEADER)? {
        invocation_metadata.insert(Priority::METADATA_KEY.to_owned(), priority);
    }
    let request = proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::ExistingTask as i32,
        task_id: task,
        function_name,
        execution_mode: execution_mode as i32,
        input: Some(proto::Payload {
            content_type,
            data: input.to_vec(),
        }),
        context: Some(proto::ExecutionContext {
            execution_id: header_text(EXECUTION_ID_HEADER)?.unwrap_or_default(),
            timeout_ms,
            ..Default::default()
        }),
        invocation_metadata,
        ..Default::default()
    };
    let request = caller.request(request);
    if execution_mode == proto::ExecutionMode::Stream {
        return stream_invoke(&gateway, request).await;
    }
    let answer = gateway.handler.invoke_function(request).await?.into_inner();
    let result = answer.result.clone().unwrap_or_default();
    let status_name = short_status_name(result.status);
    let mut response = if execution_mode == proto::ExecutionMode::Async {
        let mut response = json_response(StatusCode::ACCEPTED, &answer);
        if !answer.status_endpoint.is_empty()
            && let Ok(location) = HeaderValue::from_str(&answer.status_endpoint)
        {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    } else {
        sync_answer(&answer, &result)
    };
    let headers = response.headers_mut();
    if let Ok(execution_id) = HeaderValue::from_str(&answer.execution_id) {
        headers.insert(EXECUTION_ID_HEADER, execution_id);
    }
    headers.insert(STATUS_HEADER, HeaderValue::from_static(status_name));
    Ok(response)
}

/// The body of a synchronous call that ran: its raw output, or the JSON error of a guest
/// failure with the HTTP status `errors::http_status_of_execution` gives its end.
fn sync_answer(
    answer: &proto::InvokeFunctionResponse,
    result: &proto::ExecutionResult,
) -> Response {
    let status = proto::ExecutionStatus::try_from(result.status).unwrap_or_default();
    let (http, code) = http_status_of_execution(status);
    if code == Code::Ok {
        let output = result.output.clone().unwrap_or_default();
        let content_type = if output.content_type.is_empty() {
            "application/octet-stream".to_owned()
        } else {
            output.content_type
        };
        return (
            http,
            [(header::CONTENT_TYPE, content_type)],
            Bytes::from(output.data),
        )
            .into_response();
    }
    let message = if result.error_message.is_empty() {
        answer.message.as_str()
    } else {
        result.error_message.as_str()
    };
    execution_error_response(
        &answer.execution_id,
        result.status,
        message,
        &result.error_code,
    )
}

/// `?mode=stream`: `text/event-stream` with a `status` event (RUNNING), one `output` event per
/// chunk (`{"data": text}` or `{"data_base64": …}` when the chunk is not UTF-8) and a `final`
/// event with the status. Closing the connection cancels the execution.
async fn stream_invoke(
    gateway: &Gateway,
    request: tonic::Request<proto::InvokeFunctionRequest>,
) -> Result<Response, Refusal> {
    let mut messages = gateway.handler.stream_function(request).await?.into_inner();
    // The first message names the execution, so the headers can carry its id.
    let first = match messages.next().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => return Err(Refusal::from(status)),
        None => {
            return Err(Refusal::from(SpearError::internal(
                "the execution stream ended before its first message",
            )));
        }
    };
    let execution_id = first.execution_id.clone();
    let status_name = short_status_name(first.status);
    let events = futures::stream::once(async move { Ok(first) })
        .chain(messages)
        .map(|message| Ok::<Event, std::convert::Infallible>(stream_event(message)));
    let mut response = Sse::new(events).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&execution_id) {
        headers.insert(EXECUTION_ID_HEADER, value);
    }
    headers.insert(STATUS_HEADER, HeaderValue::from_static(status_name));
    Ok(response)
}

fn stream_event(message: Result<proto::StreamExecutionResult, tonic::Status>) -> Event {
    let (name, body) = match message {
        Err(status) => (
            "error",
            serde_json::json!({
                "code": grpc_code_name(status.code()),
                "message": status.message(),
            }),
        ),
        Ok(message) if message.is_final => (
            "final",
            serde_json::json!({
                "execution_id": message.execution_id,
                "status": short_status_name(message.status),
                "error_message": message.error_message,
                "error_code": message.metadata.get("error_code").cloned().unwrap_or_default(),
            }),
        ),
        Ok(message) if !message.data.is_empty() => {
            let body = match std::str::from_utf8(&message.data) {
                Ok(text) => serde_json::json!({"execution_id": message.execution_id, "data": text}),
                Err(_) => serde_json::json!({
                    "execution_id": message.execution_id,
                    "data_base64": base64::engine::general_purpose::STANDARD.encode(&message.data),
                }),
            };
            ("output", body)
        }
        Ok(message) => (
            "status",
            serde_json::json!({
                "execution_id": message.execution_id,
                "status": short_status_name(message.status),
            }),
        ),
    };
    Event::default().event(name).data(body.to_string())
}

/// `GET /v1/executions/{id}?include_result=&include_logs=`.
async fn get_execution(
    State(gateway): State<Gateway>,
    caller: Caller,
    Path(execution_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let request = proto::GetExecutionStatusRequest {
        execution_id,
        include_result: query.boolean("include_result", true)?,
        include_logs: query.boolean("include_logs", false)?,
    };
    query.finish()?;
    let answer = gateway
        .handler
        .get_execution_status(caller.request(request))
        .await?
        .into_inner();
    if !answer.found {
        return Err(SpearError::not_found(answer.message).into());
    }
    Ok(json_response(StatusCode::OK, &answer))
}

/// `POST /v1/executions/{id}/cancel`, with an optional `{"reason": "…"}` body.
async fn cancel_execution(
    State(gateway): State<Gateway>,
    caller: Caller,
    Path(execution_id): Path<String>,
    body: Body,
) -> Result<Response, Refusal> {
    let body = read_body(
        body,
        gateway.node.config.max_request_bytes,
        "max_request_bytes",
    )
    .await?;
    let mut request: proto::CancelExecutionRequest = if body.is_empty() {
        proto::CancelExecutionRequest::default()
    } else {
        parse_json(&body)?
    };
    request.execution_id = execution_id;
    let answer = gateway
        .handler
        .cancel_execution(caller.request(request))
        .await?
        .into_inner();
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/executions?task=&status=&limit=&start_after=`.
async fn list_executions(
    State(gateway): State<Gateway>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let status_filter = match query.string("status") {
        Some(text) => execution_status_from_query(&text)? as i32,
        None => 0,
    };
    let request = proto::ListExecutionsRequest {
        task_id: query.string("task").unwrap_or_default(),
        limit: query.integer("limit")?,
        start_after: query.string("start_after").unwrap_or_default(),
        status_filter,
        submitted_after: query.timestamp("submitted_after")?,
        submitted_before: query.timestamp("submitted_before")?,
        newest_first: query.boolean("newest_first", false)?,
    };
    query.finish()?;
    let answer = gateway
        .handler
        .list_executions(caller.request(request))
        .await?
        .into_inner();
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/tasks?prefix=&limit=&start_after=&include_details=`.
async fn list_tasks(
    State(gateway): State<Gateway>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let request = proto::ListTasksRequest {
        prefix: query.string("prefix").unwrap_or_default(),
        limit: query.integer("limit")?,
        start_after: query.string("start_after").unwrap_or_default(),
        include_details: query.boolean("include_details", false)?,
    };
    query.finish()?;
    let answer = gateway
        .handler
        .list_tasks(caller.request(request))
        .await?
        .into_inner();
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/tasks/{task}?include_executions=&execution_limit=`.
async fn get_task(
    State(gateway): State<Gateway>,
    caller: Caller,
    Path(task): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let request = proto::GetTaskRequest {
        task_id: task,
        include_executions: query.boolean("include_executions", false)?,
        execution_limit: query.integer("execution_limit")?,
    };
    query.finish()?;
    let answer = gateway
        .handler
        .get_task(caller.request(request))
        .await?
        .into_inner();
    if !answer.found {
        return Err(SpearError::not_found(answer.message).into());
    }
    Ok(json_response(StatusCode::OK, &answer))
}

/// `DELETE /v1/tasks/{task}?force=&cleanup_executions=`. An unknown task is 404.
async fn delete_task(
    State(gateway): State<Gateway>,
    caller: Caller,
    Path(task): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let request = proto::DeleteTaskRequest {
        task_id: task,
        force: query.boolean("force", false)?,
        cleanup_executions: query.boolean("cleanup_executions", false)?,
    };
    query.finish()?;
    let answer = gateway
        .handler
        .delete_task(caller.request(request))
        .await?
        .into_inner();
    if !answer.deleted {
        return Err(SpearError::not_found(answer.message).into());
    }
    Ok(json_response(StatusCode::OK, &answer))
}

/// `POST /v1/tasks` with a JSON `CreateTaskRequest`: 201 with the task and its `Location`.
async fn create_task(
    State(gateway): State<Gateway>,
    caller: Caller,
    body: Body,
) -> Result<Response, Refusal> {
    let body = read_body(
        body,
        gateway.node.config.max_request_bytes,
        "max_request_bytes",
    )
    .await?;
    let request: proto::CreateTaskRequest = parse_json(&body)?;
    let task = gateway
        .handler
        .create_task(caller.request(request))
        .await?
        .into_inner();
    let mut response = json_response(StatusCode::CREATED, &task);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tasks/{}", task.task_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `POST /v1/artifacts`: the body is a module, executable or archive; the handler stores it in
/// the node's artifact cache under its sha256 (see `FunctionServiceHandler::upload_artifact`).
/// The handler is asked first how much the caller may send, so a caller without the admin scope
/// is refused before the body is read.
async fn upload_artifact(
    State(gateway): State<Gateway>,
    caller: Caller,
    body: Body,
) -> Result<Response, Refusal> {
    let limit = gateway.handler.artifact_upload_limit(&caller.principal)?;
    let artifact = read_body(body, limit, "artifacts.max_artifact_bytes").await?;
    let uploaded = gateway
        .handler
        .upload_artifact(&caller.principal, artifact)
        .await?;
    let mut response = json_response(StatusCode::CREATED, &uploaded);
    if let Ok(location) = HeaderValue::from_str(&uploaded.location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/stats?include_task_stats=&include_execution_stats=` (both default true).
async fn stats(
    State(gateway): State<Gateway>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let request = proto::GetStatsRequest {
        include_task_stats: query.boolean("include_task_stats", true)?,
        include_execution_stats: query.boolean("include_execution_stats", true)?,
        time_range_hours: query.integer("time_range_hours")?,
    };
    query.finish()?;
    let answer = gateway
        .handler
        .get_stats(caller.request(request))
        .await?
        .into_inner();
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/stats/history?task=&seconds=`.
async fn stats_history(
    State(gateway): State<Gateway>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let request = proto::GetStatsHistoryRequest {
        task_name: query.string("task").unwrap_or_default(),
        seconds: query.integer("seconds")?,
    };
    query.finish()?;
    let answer = gateway
        .handler
        .get_stats_history(caller.request(request))
        .await?
        .into_inner();
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/auth/whoami`.
async fn who_am_i(State(gateway): State<Gateway>, caller: Caller) -> Result<Response, Refusal> {
    let answer = gateway
        .handler
        .who_am_i(caller.request(proto::WhoAmIRequest {}))
        .await?
        .into_inner();
    Ok(json_response(StatusCode::OK, &answer))
}

/// Liveness: the process answers HTTP.
async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// Readiness: 200 while the node takes work, 503 once it shuts down.
async fn readyz(State(gateway): State<Gateway>) -> Response {
    if crate::stats::is_ready(&gateway.node) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Prometheus text exposition (`exposition::render_prometheus`). Needs the read scope when
/// tokens are configured.
async fn metrics(State(gateway): State<Gateway>, caller: Caller) -> Result<Response, Refusal> {
    caller.principal.require(Scope::Read)?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::exposition::render_prometheus(&gateway.node),
    )
        .into_response())
}

async fn openapi() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    spear_error_response(SpearError::not_found(format!(
        "no route for {} {}; see /openapi.json",
        request.method(),
        request.uri().path()
    )))
}

async fn method_not_allowed(request: Request) -> Response {
    method_not_allowed_response(request.method(), request.uri().path())
}

/// Parses a JSON body; the error names the offending field (`artifact_spec.location: …`).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> SpearResult<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        SpearError::invalid_argument(format!(
            "the request body is not valid JSON for this route{field}: {}",
            error.inner()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI_DOCUMENT).unwrap();
        let mut documented: Vec<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, operations)| {
                operations
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|method| (path.clone(), method.to_ascii_uppercase()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut served: Vec<(String, String)> = routes()
            .into_iter()
            .map(|(path, method)| (path.to_owned(), method.as_str().to_owned()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn status_names_drop_the_enum_prefix() {
        assert_eq!(
            short_status_name(proto::ExecutionStatus::Completed as i32),
            "COMPLETED"
        );
        assert_eq!(short_status_name(99), "UNKNOWN");
        assert_eq!(
            execution_status_from_query("timeout").unwrap(),
            proto::ExecutionStatus::Timeout
        );
        assert!(execution_status_from_query("done").is_err());
    }
}
