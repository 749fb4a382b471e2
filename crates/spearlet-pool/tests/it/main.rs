//! The pool crate's integration tests, one test binary: the dispatcher on a paused clock.

// Integration tests time real nodes, processes and guests: std's clock is the right one here,
// and nothing in them runs on a paused tokio clock.
#![allow(clippy::disallowed_types)]

mod dispatcher;
