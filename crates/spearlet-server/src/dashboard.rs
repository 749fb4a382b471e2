//! What the web dashboard needs from the HTTP listener beyond the RPC routes: its pages and
//! assets (`spearlet-dashboard`, compiled in) and the live event stream `/v1/events`.
//!
//! Invariants:
//! - The pages and assets are public (no token): they hold no data. Everything the dashboard
//!   shows it reads from the API with the user's token, like any client; the gateway's
//!   authentication middleware asks [`is_public`].
//! - `/ui`, `/ui/` and every `/ui/...` path outside `/ui/assets/` answer the same page, so a
//!   dashboard URL can be shared and reloaded; the app routes on the client.
//! - `/v1/events` sends what the history sampler publishes (`history.rs`), one `tick` per
//!   sample, and never holds the node up: it follows a `watch` channel (a slow reader skips
//!   points), keeps only a weak reference to the node, and ends when the node stops being
//!   ready or after the `seconds` the caller asked for (so scripts and contract testers do not
//!   hang on it).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use spearlet_core::SpearError;

use crate::auth::Scope;
use crate::history::{NodePoint, node_point_to_wire};
use crate::http_route::{Caller, Gateway, QueryParameters, Refusal};
use crate::node::Node;

/// The paths that serve the app's page.
pub(crate) const PAGE_PATHS: [&str; 3] = ["/ui", "/ui/", "/ui/{*path}"];
/// The path of the compiled-in assets.
pub(crate) const ASSET_PATH: &str = "/ui/assets/{name}";
/// The longest `seconds` a client may ask `/v1/events` for (a day); without `seconds` the
/// stream lasts until the client or the node goes.
const MAX_EVENT_STREAM_SECONDS: u64 = 86_400;

/// Whether `path` is served without a token: the dashboard's page, its assets and the favicon.
pub(crate) fn is_public(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/") || path == "/favicon.ico"
}

/// `GET /ui/...`: the app's page.
pub(crate) async fn page(headers: HeaderMap) -> Response {
    asset_response(spearlet_dashboard::INDEX, &headers)
}

/// `GET /ui/assets/{name}`.
pub(crate) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    asset_response(&name, &headers)
}

/// `GET /favicon.ico`: the dashboard's icon, for browsers that ask the root for it.
pub(crate) async fn favicon(headers: HeaderMap) -> Response {
    asset_response("favicon.svg", &headers)
}

fn asset_response(name: &str, request_headers: &HeaderMap) -> Response {
    let Some(asset) = spearlet_dashboard::asset(name) else {
        return crate::errors::http_error_response(&crate::errors::to_status(
            SpearError::not_found(format!(
                "no dashboard asset {name:?}; the assets are {}",
                spearlet_dashboard::ASSET_NAMES.join(", ")
            )),
        ));
    };
    let not_modified = request_headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tag| tag.as_bytes() == asset.etag.as_bytes());
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, asset.content_type)],
            asset.bytes.into_owned(),
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    // Revalidated on every load (cheap: a 304), so a node upgrade shows its new dashboard.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(spearlet_dashboard::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /v1/events?seconds=N`: server-sent events for live views. Each sample of the history
/// sampler is a `tick` event, `{"point": StatsPoint, "executions_version": N}` (the number
/// grows whenever an execution is added or updated); the last event is `end`, with the reason.
pub(crate) async fn events(
    State(gateway): State<Gateway>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut query = QueryParameters(query);
    let seconds: Option<u64> = query.optional_positive("seconds")?;
    query.finish()?;
    caller.principal.require(Scope::Read)?;
    if let Some(seconds) = seconds
        && seconds > MAX_EVENT_STREAM_SECONDS
    {
        return Err(Refusal::from(SpearError::invalid_argument(format!(
            "query parameter seconds={seconds} must be at most {MAX_EVENT_STREAM_SECONDS}"
        ))));
    }
    let deadline =
        seconds.map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    let follower = EventFollower {
        node: Arc::downgrade(&gateway.node),
        points: gateway.node.history.subscribe(),
        deadline,
    };
    let events = futures::stream::unfold(Some(follower), |follower| async move {
        let mut follower = follower?;
        let event = follower.next_event().await;
        Some(match event {
            FollowedEvent::Tick(event) => {
                (Ok::<Event, std::convert::Infallible>(event), Some(follower))
            }
            FollowedEvent::End(reason) => (Ok(end_event(reason)), None),
        })
    });
    Ok(Sse::new(events).into_response())
}

struct EventFollower {
    node: Weak<Node>,
    points: tokio::sync::watch::Receiver<Option<NodePoint>>,
    deadline: Option<tokio::time::Instant>,
}

enum FollowedEvent {
    Tick(Event),
    End(&'static str),
}

impl EventFollower {
    async fn next_event(&mut self) -> FollowedEvent {
        let changed = match self.deadline {
            Some(deadline) => tokio::select! {
                changed = self.points.changed() => changed,
                () = tokio::time::sleep_until(deadline) => {
                    return FollowedEvent::End("the requested seconds elapsed");
                }
            },
            None => self.points.changed().await,
        };
        let Some(node) = self.node.upgrade() else {
            return FollowedEvent::End("the node stopped");
        };
        if changed.is_err() || !crate::stats::is_ready(&node) {
            return FollowedEvent::End("the node is stopping");
        }
        let Some(point) = *self.points.borrow_and_update() else {
            return FollowedEvent::End("the node published no point");
        };
        let body = serde_json::json!({
            "point": node_point_to_wire(&point),
            "executions_version": node.manager.store().last_put_version(),
        });
        match Event::default().event("tick").json_data(body) {
            Ok(event) => FollowedEvent::Tick(event),
            Err(_) => FollowedEvent::End("a point could not be encoded"),
        }
    }
}

fn end_event(reason: &str) -> Event {
    Event::default()
        .event("end")
        .json_data(serde_json::json!({ "reason": reason }))
        .unwrap_or_else(|_| Event::default().event("end"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_dashboard_and_its_icon_are_public() {
        for public in [
            "/ui",
            "/ui/",
            "/ui/tasks/hello",
            "/ui/assets/app.js",
            "/favicon.ico",
        ] {
            assert!(is_public(public), "{public}");
        }
        for private in [
            "/uix",
            "/v1/tasks",
            "/v1/events",
            "/metrics",
            "/",
            "/favicon.icon",
        ] {
            assert!(!is_public(private), "{private}");
        }
    }
}
