//! W3C trace context as plain data: the `traceparent` a caller sends, the context an execution
//! runs in, and the forms guests receive it in (`SPEAR_TRACEPARENT`, and for Lambda workers the
//! AWS X-Ray form of `Lambda-Runtime-Trace-Id`).
//!
//! A malformed `traceparent` parses to `None`: callers treat it as absent, as the W3C
//! recommendation says. Bridging to OpenTelemetry spans lives in the server
//! (`spearlet_server::trace_context`).

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// One position in a trace: the trace id, the id of the span a child would name as its parent,
/// and the trace flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// Never zero.
    pub trace_id: u128,
    /// Never zero.
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`). Returns `None` for anything
    /// malformed: wrong lengths, uppercase or non-hex digits, version `ff`, an all-zero trace or
    /// parent id, or (for version 00) trailing data. A later version is read as version 00 and
    /// whatever follows its flags (after a `-`) is ignored, as the recommendation requires.
    pub fn parse(traceparent: &str) -> Option<TraceContext> {
        let text = traceparent.trim_matches([' ', '\t']);
        let mut fields = text.splitn(5, '-');
        let version = fields.next()?;
        let trace_id = fields.next()?;
        let span_id = fields.next()?;
        let flags = fields.next()?;
        let rest = fields.next();
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
            return None;
        }
        if version == "00" && rest.is_some() {
            return None;
        }
        if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !(is_lower_hex(trace_id) && is_lower_hex(span_id) && is_lower_hex(flags)) {
            return None;
        }
        let context = TraceContext {
            trace_id: u128::from_str_radix(trace_id, 16).ok()?,
            span_id: u64::from_str_radix(span_id, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// A new trace, sampled, with random ids.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: non_zero_random_u128(),
            span_id: non_zero_random_u64(),
            flags: SAMPLED,
        }
    }

    /// A child of this context: the same trace and flags, a new random span id.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: non_zero_random_u64(),
            ..*self
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The W3C `traceparent` form (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The AWS X-Ray form Lambda runtimes expect in `Lambda-Runtime-Trace-Id` (and put in
    /// `_X_AMZN_TRACE_ID`): `Root=1-<first 8 hex>-<last 24 hex>;Parent=<16 hex>;Sampled=<0|1>`.
    /// The same 128 bits, so a guest's X-Ray-style id maps back to the W3C trace.
    pub fn xray_trace_id(&self) -> String {
        let trace_id = self.trace_id_hex();
        format!(
            "Root=1-{}-{};Parent={:016x};Sampled={}",
            &trace_id[..8],
            &trace_id[8..],
            self.span_id,
            u8::from(self.sampled())
        )
    }
}

impl std::fmt::Display for TraceContext {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.traceparent())
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

fn non_zero_random_u128() -> u128 {
    loop {
        let value: u128 = rand::random();
        if value != 0 {
            return value;
        }
    }
}

fn non_zero_random_u64() -> u64 {
    loop {
        let value: u64 = rand::random();
        if value != 0 {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparents_parse() {
        let cases: &[(&str, u128, u64, u8)] = &[
            (
                EXAMPLE,
                0x4bf92f3577b34da6a3ce929d0e0e4736,
                0x00f067aa0ba902b7,
                1,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                0x4bf92f3577b34da6a3ce929d0e0e4736,
                0x00f067aa0ba902b7,
                0,
            ),
            // Optional whitespace around a header value.
            (
                " 00-00000000000000000000000000000001-0000000000000001-03\t",
                1,
                1,
                3,
            ),
            // A later version: read as 00, what follows the flags ignored.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
                0x4bf92f3577b34da6a3ce929d0e0e4736,
                0x00f067aa0ba902b7,
                1,
            ),
        ];
        for &(text, trace_id, span_id, flags) in cases {
            assert_eq!(
                TraceContext::parse(text),
                Some(TraceContext {
                    trace_id,
                    span_id,
                    flags
                }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_traceparents_are_absent() {
        for text in [
            "",
            "garbage",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            // Version 00 allows nothing after the flags.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Uppercase hex is not allowed.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47360-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(TraceContext::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(context.traceparent(), EXAMPLE);
        assert_eq!(context.to_string(), EXAMPLE);
        let small = TraceContext {
            trace_id: 1,
            span_id: 2,
            flags: 0,
        };
        assert_eq!(
            small.traceparent(),
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
        assert_eq!(TraceContext::parse(&small.traceparent()), Some(small));
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let parent = TraceContext::parse(EXAMPLE).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.span_id, parent.span_id);
        assert_ne!(child.span_id, 0);
        assert_eq!(TraceContext::parse(&child.traceparent()), Some(child));
    }

    #[test]
    fn a_new_root_is_valid_and_sampled() {
        let root = TraceContext::new_root();
        assert!(root.sampled());
        assert_eq!(TraceContext::parse(&root.traceparent()), Some(root));
        assert_ne!(root.trace_id, TraceContext::new_root().trace_id);
    }

    #[test]
    fn xray_form_splits_the_trace_id() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(
            context.xray_trace_id(),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        let unsampled = TraceContext {
            flags: 0,
            ..context
        };
        assert!(unsampled.xray_trace_id().ends_with(";Sampled=0"));
    }
}
