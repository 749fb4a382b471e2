//! Wall-clock helpers: Unix time in the units the records use.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_ms() -> i64 {
    unix_us() / 1000
}

pub fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|duration| duration.as_micros() as i64)
        .unwrap_or(0)
}

/// A protobuf Timestamp from Unix microseconds.
pub fn timestamp_from_us(unix_us: i64) -> spearlet_proto::pbjson_types::Timestamp {
    spearlet_proto::pbjson_types::Timestamp {
        seconds: unix_us.div_euclid(1_000_000),
        nanos: (unix_us.rem_euclid(1_000_000) * 1000) as i32,
    }
}
