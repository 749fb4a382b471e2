//! The pool crate's integration tests, one test binary: the dispatcher on a paused clock.

mod dispatcher;
