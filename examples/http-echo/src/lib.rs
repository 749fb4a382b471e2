//! `http-echo`: a `wasi:http/proxy` component, to exercise a host's WASI HTTP support. It exports
//! `wasi:http/incoming-handler@0.2.4` and handles each request as follows:
//!
//! - `GET /hello`: 200, `content-type: text/plain; charset=utf-8`,
//!   `x-spearlet-example: http-echo`, body `Hello from a wasi:http component!\n`.
//! - `/echo` with any method but `GET` and `HEAD` (e.g. `POST`): 200; the request's
//!   `content-type` (`application/octet-stream` without one), `x-echo-method: <METHOD>` and
//!   `x-echo-path: <path with query>`; the body is the request body, streamed back a chunk at a
//!   time as it is read (up to 64 KiB per read), so a large body is never held in memory.
//! - `GET /headers`: 200, text: one line `name: value\n` per request header, sorted by name
//!   (repeated names keep their order).
//! - `GET /status/<code>`: that status (200 to 599) with body `status <code>\n` (no body for
//!   204 and 304); 400 `invalid status code: <code>\n` otherwise.
//! - `GET /fetch?url=<percent-encoded http:// or https:// URL>`: a `GET` of that URL through
//!   `wasi:http/outgoing-handler`. If it succeeds: 200, `x-upstream-status: <status>`, the
//!   upstream `content-type` if any, and the upstream body, streamed. If it fails in any way
//!   (including the host refusing it, `ErrorCode::HttpRequestDenied`): 502 with body
//!   `outbound request failed: {error:?}\n`. A missing or malformed `url` is a 400. Only `%XX`
//!   escapes are decoded (`+` stays `+`).
//! - `GET /no-response`: returns without setting the response outparam, which the host must
//!   treat as a failure of the call.
//! - `GET /trap`: panics, i.e. traps (`panic = "abort"`), after the message on stderr.
//! - Anything else: 404 with body `not found: <path>\n` (the path without its query).
//!
//! If the body cannot be streamed to the end (the client went away, or the upstream body of
//! `/fetch` failed), the response body is dropped without `outgoing-body.finish`, which tells the
//! host the body is incomplete.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, InputStream, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, OutputStream, ResponseOutparam, Scheme,
};
use wasi::io::streams::StreamError;

wasi::http::proxy::export!(HttpEcho);

struct HttpEcho;

/// The most a single `blocking-read` asks for.
const READ_CHUNK: u64 = 64 * 1024;
/// The most `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;

const TEXT: &[u8] = b"text/plain; charset=utf-8";

impl wasi::exports::http::incoming_handler::Guest for HttpEcho {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_with_query.as_str(), None),
        };
        let method = request.method();
        let get = matches!(method, Method::Get);
        match path {
            "/hello" if get => send(
                out,
                200,
                &[("content-type", TEXT), ("x-spearlet-example", b"http-echo")],
                b"Hello from a wasi:http component!\n",
            ),
            "/echo" if !get && !matches!(method, Method::Head) => {
                echo(&request, out, &method, &path_with_query)
            }
            "/headers" if get => {
                let mut entries = request.headers().entries();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                let mut body = Vec::new();
                for (name, value) in entries {
                    body.extend_from_slice(name.as_bytes());
                    body.extend_from_slice(b": ");
                    body.extend_from_slice(&value);
                    body.push(b'\n');
                }
                send(out, 200, &[("content-type", TEXT)], &body)
            }
            "/fetch" if get => fetch(out, query),
            "/no-response" if get => {}
            "/trap" if get => panic!("http-echo: /trap was requested"),
            _ => match path.strip_prefix("/status/") {
                Some(code) if get => match code.parse::<u16>() {
                    Ok(status @ 200..=599) => {
                        let body = format!("status {status}\n");
                        let body = if matches!(status, 204 | 304) {
                            ""
                        } else {
                            &body
                        };
                        send(out, status, &[("content-type", TEXT)], body.as_bytes())
                    }
                    _ => {
                        let body = format!("invalid status code: {code}\n");
                        send(out, 400, &[("content-type", TEXT)], body.as_bytes())
                    }
                },
                _ => {
                    let body = format!("not found: {path}\n");
                    send(out, 404, &[("content-type", TEXT)], body.as_bytes())
                }
            },
        }
    }
}

/// Starts a response: sets `out` to a response with `status` and `headers` and returns its body
/// with the body's stream. Drop the stream before finishing the body.
fn start(
    out: ResponseOutparam,
    status: u16,
    headers: &[(&str, &[u8])],
) -> (OutgoingBody, OutputStream) {
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_vec()))
        .collect();
    let fields = Fields::from_list(&headers).expect("valid response headers");
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("valid status code");
    let body = response.body().expect("first call to body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("first call to write");
    (body, stream)
}

/// Writes `bytes` to `stream`, at most [`WRITE_CHUNK`] bytes per call.
fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), StreamError> {
    bytes
        .chunks(WRITE_CHUNK)
        .try_for_each(|chunk| stream.blocking_write_and_flush(chunk))
}

/// Ends a response body: finishes it if everything was written, otherwise drops it unfinished,
/// which the host reports as an incomplete body.
fn end(body: OutgoingBody, stream: OutputStream, complete: bool) {
    drop(stream);
    if complete {
        // The only failure is a content-length mismatch, and none is ever set.
        let _ = OutgoingBody::finish(body, None);
    }
}

/// A complete response in one go.
fn send(out: ResponseOutparam, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
    let (outgoing, stream) = start(out, status, headers);
    let complete = write_all(&stream, body).is_ok();
    end(outgoing, stream, complete);
}

/// Copies `input` to `output` as it arrives; `true` if it reached the end of `input`.
fn copy(input: &InputStream, output: &OutputStream) -> bool {
    loop {
        match input.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                if write_all(output, &chunk).is_err() {
                    return false;
                }
            }
            Err(StreamError::Closed) => return true,
            Err(StreamError::LastOperationFailed(_)) => return false,
        }
    }
}

fn echo(request: &IncomingRequest, out: ResponseOutparam, method: &Method, path: &str) {
    let content_type = request
        .headers()
        .get("content-type")
        .into_iter()
        .next()
        .unwrap_or_else(|| b"application/octet-stream".to_vec());
    let method = match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other.as_str(),
    };
    // The request body and its stream are children of the request: drop them (in reverse order
    // of creation) before it.
    let incoming = request.consume().expect("first call to consume");
    let input = incoming.stream().expect("first call to stream");
    let headers = [
        ("content-type", content_type.as_slice()),
        ("x-echo-method", method.as_bytes()),
        ("x-echo-path", path.as_bytes()),
    ];
    let (outgoing, output) = start(out, 200, &headers);
    let complete = copy(&input, &output);
    end(outgoing, output, complete);
}

fn fetch(out: ResponseOutparam, query: Option<&str>) {
    let url = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("url="))
        .and_then(percent_decode);
    let Some(request) = url.as_deref().and_then(outgoing_request) else {
        let body = b"missing or invalid url parameter (want url=<percent-encoded http URL>)\n";
        return send(out, 400, &[("content-type", TEXT)], body);
    };
    let response = outgoing_handler::handle(request, None).and_then(|future| {
        future.subscribe().block();
        match future.get() {
            Some(Ok(result)) => result,
            // Ready after `block`, and asked only once.
            Some(Err(())) | None => Err(ErrorCode::InternalError(None)),
        }
    });
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            let body = format!("outbound request failed: {error:?}\n");
            return send(out, 502, &[("content-type", TEXT)], body.as_bytes());
        }
    };
    let status = response.status().to_string();
    let content_type = response.headers().get("content-type").into_iter().next();
    let mut headers = vec![("x-upstream-status", status.as_bytes())];
    if let Some(content_type) = &content_type {
        headers.push(("content-type", content_type.as_slice()));
    }
    let incoming = response.consume().expect("first call to consume");
    let input = incoming.stream().expect("first call to stream");
    let (outgoing, output) = start(out, 200, &headers);
    let complete = copy(&input, &output);
    end(outgoing, output, complete);
}

/// A `GET` of an absolute `http://` or `https://` URL, if it is one.
fn outgoing_request(url: &str) -> Option<OutgoingRequest> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return None;
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let path = match path {
        "" => "/".to_string(),
        query if query.starts_with('?') => format!("/{query}"),
        path => path.to_string(),
    };
    if authority.is_empty() {
        return None;
    }
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).ok()?;
    request.set_scheme(Some(&scheme)).ok()?;
    request.set_authority(Some(authority)).ok()?;
    request.set_path_with_query(Some(&path)).ok()?;
    Some(request)
}

/// Decodes `%XX` escapes; `None` if one is malformed or the result is not UTF-8.
fn percent_decode(encoded: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let [high, low] =
                [*tail.first()?, *tail.get(1)?].map(|digit| (digit as char).to_digit(16));
            bytes.push((high? * 16 + low?) as u8);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}
