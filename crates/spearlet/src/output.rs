//! How client commands present answers: aligned tables and key/value views for people, and a
//! hand-made JSON mapping of the wire messages for scripts.
//!
//! The JSON mapping is deliberately plain rather than canonical proto3 JSON: enums are their
//! short names (`COMPLETED`, not `EXECUTION_STATUS_COMPLETED`), timestamps are RFC 3339 UTC
//! strings, and payload bytes are a UTF-8 string when they are valid UTF-8 and base64 otherwise,
//! with an `encoding` field saying which.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde_json::{Value, json};
use spearlet_proto as proto;

/// Columns of a table are separated by this many spaces, as kubectl does.
const COLUMN_GAP: usize = 3;

/// Shown in a table cell that has no value.
pub const EMPTY_CELL: &str = "-";

/// A table with a header row and left-aligned columns.
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|header| (*header).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push_row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as text, one line per row, each ending in a newline, without trailing spaces.
    pub fn render(&self) -> String {
        let mut column_widths: Vec<usize> =
            self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (column_index, cell) in row.iter().enumerate() {
                let width = cell.chars().count();
                match column_widths.get_mut(column_index) {
                    Some(column_width) => *column_width = (*column_width).max(width),
                    None => column_widths.push(width),
                }
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (column_index, cell) in row.iter().enumerate() {
                if column_index > 0 {
                    let previous_width = column_widths[column_index - 1];
                    let previous_cell_width = row[column_index - 1].chars().count();
                    line.push_str(&" ".repeat(previous_width - previous_cell_width + COLUMN_GAP));
                }
                line.push_str(cell);
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `KEY:  value` lines with the values aligned, for showing one object.
pub fn render_key_values(pairs: &[(&str, String)]) -> String {
    let key_width = pairs
        .iter()
        .map(|(key, _)| key.len() + 1)
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        let line = format!("{label:<key_width$}  {value}");
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `value`, or [`EMPTY_CELL`] when it is empty.
pub fn or_dash(value: &str) -> String {
    if value.is_empty() {
        EMPTY_CELL.to_owned()
    } else {
        value.to_owned()
    }
}

/// Sorted `k=v,k=v`, or [`EMPTY_CELL`].
pub fn render_map(map: &HashMap<String, String>) -> String {
    if map.is_empty() {
        return EMPTY_CELL.to_owned();
    }
    let sorted: BTreeMap<&String, &String> = map.iter().collect();
    sorted
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An artifact location fit for a table: inline `data:` URLs are summarised, not dumped.
pub fn abbreviate_location(location: &str) -> String {
    match location
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
    {
        Some((media_type, payload)) => {
            format!("data:{media_type},… ({} base64 characters)", payload.len())
        }
        None => location.to_owned(),
    }
}

// Names of wire enums.

pub fn execution_status_name(status: i32) -> &'static str {
    let name = proto::ExecutionStatus::try_from(status)
        .unwrap_or(proto::ExecutionStatus::Unknown)
        .as_str_name();
    name.strip_prefix("EXECUTION_STATUS_").unwrap_or(name)
}

pub fn execution_mode_name(mode: i32) -> &'static str {
    let name = proto::ExecutionMode::try_from(mode)
        .unwrap_or(proto::ExecutionMode::Unknown)
        .as_str_name();
    name.strip_prefix("EXECUTION_MODE_").unwrap_or(name)
}

/// The status for a table cell: `-` instead of `UNKNOWN` (a task that never ran).
pub fn status_cell(status: i32) -> String {
    match execution_status_name(status) {
        "UNKNOWN" => EMPTY_CELL.to_owned(),
        name => name.to_owned(),
    }
}

// Time.

/// `seconds` and `nanos` since the Unix epoch as RFC 3339 UTC (`2025-01-31T12:00:00.123Z`),
/// with milliseconds only when `with_milliseconds`.
pub fn format_rfc3339(seconds: i64, nanos: i32, with_milliseconds: bool) -> String {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_date_from_days(days);
    let (hour, minute, second) = (
        second_of_day / 3600,
        (second_of_day % 3600) / 60,
        second_of_day % 60,
    );
    let date_time = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if with_milliseconds {
        format!(
            "{date_time}.{:03}Z",
            nanos.clamp(0, 999_999_999) / 1_000_000
        )
    } else {
        format!("{date_time}Z")
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, or `-` for 0 (unset).
pub fn format_unix_ms(milliseconds: i64, with_milliseconds: bool) -> String {
    if milliseconds == 0 {
        return EMPTY_CELL.to_owned();
    }
    let nanos = (milliseconds.rem_euclid(1000) * 1_000_000) as i32;
    format_rfc3339(milliseconds.div_euclid(1000), nanos, with_milliseconds)
}

pub fn format_timestamp(
    timestamp: Option<&spearlet_proto::pbjson_types::Timestamp>,
    with_milliseconds: bool,
) -> String {
    match timestamp {
        Some(timestamp) => format_rfc3339(timestamp.seconds, timestamp.nanos, with_milliseconds),
        None => EMPTY_CELL.to_owned(),
    }
}

/// Year, month (1–12) and day (1–31) of a day count since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_date_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    let shifted_days = days_since_epoch + 719_468;
    let era = shifted_days.div_euclid(146_097);
    let day_of_era = shifted_days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `1.5s`, `250ms`, `3h 2m`: a duration for people.
pub fn format_seconds(total_seconds: i64) -> String {
    let (days, hours, minutes, seconds) = (
        total_seconds / 86_400,
        (total_seconds % 86_400) / 3600,
        (total_seconds % 3600) / 60,
        total_seconds % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// An execution's run time: microsecond precision from the `execution_time_us` metric when the
/// node reports it, else the whole milliseconds of `execution_time_ms`.
pub fn format_execution_time(execution_time_ms: i64, metrics: &HashMap<String, String>) -> String {
    match metrics
        .get("execution_time_us")
        .and_then(|micros| micros.parse::<u64>().ok())
    {
        Some(micros) => format!("{:.3}ms", micros as f64 / 1000.0),
        None => format!("{execution_time_ms}ms"),
    }
}

/// `1.2 MiB`: a byte count for people.
/// A size the node reports only where it measures it: the wire field is 0 where it does not
/// (a process function's memory), which the table shows as `unknown`.
pub fn format_measured_bytes(bytes: i64) -> String {
    if bytes == 0 {
        "unknown".to_owned()
    } else {
        format_bytes(bytes)
    }
}

/// The JSON form of a size the node reports only where it measures it: `null` for 0.
fn measured(bytes: i64) -> serde_json::Value {
    if bytes == 0 {
        serde_json::Value::Null
    } else {
        bytes.into()
    }
}

pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit_index = 0;
    while value.abs() >= 1024.0 && unit_index + 1 < UNITS.len() {
        value /= 1024.0;
        unit_index += 1;
    }
    if unit_index == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit_index])
    }
}

// JSON.

/// Bytes as `{"encoding": "utf8"|"base64", "data": …}`.
pub fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "encoding": "utf8", "data": text }),
        Err(_) => json!({
            "encoding": "base64",
            "data": base64::engine::general_purpose::STANDARD.encode(bytes),
        }),
    }
}

pub fn payload_json(payload: Option<&proto::Payload>) -> Value {
    let Some(payload) = payload else {
        return Value::Null;
    };
    let mut object = bytes_json(&payload.data);
    object["content_type"] = json!(payload.content_type);
    object
}

fn any_json(any: Option<&spearlet_proto::pbjson_types::Any>) -> Value {
    match any {
        None => Value::Null,
        Some(any) => json!({
            "type_url": any.type_url,
            "value_base64": base64::engine::general_purpose::STANDARD.encode(&any.value),
        }),
    }
}

fn map_json(map: &HashMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect(),
    )
}

fn timestamp_json(timestamp: Option<&spearlet_proto::pbjson_types::Timestamp>) -> Value {
    timestamp.map_or(Value::Null, |timestamp| {
        json!(format_rfc3339(timestamp.seconds, timestamp.nanos, true))
    })
}

fn unix_ms_json(milliseconds: i64) -> Value {
    if milliseconds == 0 {
        Value::Null
    } else {
        json!(format_unix_ms(milliseconds, true))
    }
}

pub fn execution_result_json(result: &proto::ExecutionResult) -> Value {
    json!({
        "status": execution_status_name(result.status),
        "output": payload_json(result.output.as_ref()),
        "result": any_json(result.result.as_ref()),
        "error_code": result.error_code,
        "error_message": result.error_message,
        "execution_time_ms": result.execution_time_ms,
        "memory_used_bytes": measured(result.memory_used_bytes),
        "metrics": map_json(&result.metrics),
        "started_at": timestamp_json(result.started_at.as_ref()),
        "completed_at": timestamp_json(result.completed_at.as_ref()),
    })
}

pub fn invoke_response_json(response: &proto::InvokeFunctionResponse) -> Value {
    json!({
        "success": response.success,
        "message": response.message,
        "execution_id": response.execution_id,
        "task_id": response.task_id,
        "instance_id": response.instance_id,
        "result": response.result.as_ref().map_or(Value::Null, execution_result_json),
        "status_endpoint": response.status_endpoint,
        "estimated_completion_ms": response.estimated_completion_ms,
    })
}

/// A stream message's output bytes: the raw `data` field, or `chunk_data` unpacked when a node
/// sends only that. Empty for messages without output (RUNNING, the final status).
pub fn stream_chunk_bytes(message: &proto::StreamExecutionResult) -> Vec<u8> {
    if !message.data.is_empty() {
        return message.data.clone();
    }
    message
        .chunk_data
        .as_ref()
        .and_then(proto::well_known::unpack_bytes)
        .unwrap_or_default()
}

/// One `StreamFunction` message; `data` is the chunk, or null for messages without output.
pub fn stream_message_json(message: &proto::StreamExecutionResult) -> Value {
    let chunk = stream_chunk_bytes(message);
    json!({
        "execution_id": message.execution_id,
        "status": execution_status_name(message.status),
        "data": if chunk.is_empty() { Value::Null } else { bytes_json(&chunk) },
        "is_final": message.is_final,
        "error_message": message.error_message,
        "metadata": map_json(&message.metadata),
    })
}

pub fn artifact_spec_json(spec: &proto::ArtifactSpec) -> Value {
    json!({
        "artifact_id": spec.artifact_id,
        "artifact_type": spec.artifact_type,
        "location": spec.location,
        "version": spec.version,
        "checksum": spec.checksum,
        "metadata": map_json(&spec.metadata),
    })
}

pub fn task_info_json(task: &proto::TaskInfo) -> Value {
    json!({
        "task_id": task.task_id,
        "task_name": task.task_name,
        "artifact_spec": task.artifact_spec.as_ref().map_or(Value::Null, artifact_spec_json),
        "created_at": unix_ms_json(task.created_at),
        "updated_at": unix_ms_json(task.updated_at),
        "execution_count": task.execution_count,
        "last_status": execution_status_name(task.last_status),
        "metadata": map_json(&task.metadata),
    })
}

pub fn execution_info_json(execution: &proto::ExecutionInfo) -> Value {
    json!({
        "execution_id": execution.execution_id,
        "task_id": execution.task_id,
        "function_name": execution.function_name,
        "execution_mode": execution_mode_name(execution.execution_mode),
        "status": execution_status_name(execution.status),
        "started_at": timestamp_json(execution.started_at.as_ref()),
        "completed_at": timestamp_json(execution.completed_at.as_ref()),
        "execution_time_ms": execution.execution_time_ms,
        "memory_used_bytes": measured(execution.memory_used_bytes),
        "error_message": execution.error_message,
        "metadata": map_json(&execution.metadata),
    })
}

/// `ListTasks` pages merged into one answer.
pub fn task_list_json(tasks: &[proto::TaskInfo], has_more: bool, next_start_after: &str) -> Value {
    json!({
        "tasks": tasks.iter().map(task_info_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_start_after": next_start_after,
    })
}

pub fn get_task_json(response: &proto::GetTaskResponse) -> Value {
    json!({
        "found": response.found,
        "task": response.task.as_ref().map_or(Value::Null, task_info_json),
        "executions": response.executions.iter().map(execution_info_json).collect::<Vec<_>>(),
        "message": response.message,
    })
}

pub fn delete_task_json(response: &proto::DeleteTaskResponse) -> Value {
    json!({
        "success": response.success,
        "message": response.message,
        "deleted": response.deleted,
        "cleaned_executions": response.cleaned_executions,
    })
}

pub fn execution_status_json(response: &proto::GetExecutionStatusResponse) -> Value {
    json!({
        "found": response.found,
        "result": response.result.as_ref().map_or(Value::Null, execution_result_json),
        "logs": response.logs,
        "message": response.message,
    })
}

pub fn execution_list_json(response: &proto::ListExecutionsResponse) -> Value {
    json!({
        "executions": response.executions.iter().map(execution_info_json).collect::<Vec<_>>(),
        "has_more": response.has_more,
        "next_start_after": response.next_start_after,
    })
}

pub fn cancel_json(response: &proto::CancelExecutionResponse) -> Value {
    json!({
        "success": response.success,
        "message": response.message,
        "final_status": execution_status_name(response.final_status),
    })
}

pub fn health_json(response: &proto::GetHealthResponse) -> Value {
    json!({
        "status": response.status,
        "message": response.message,
        "uptime_seconds": response.uptime_seconds,
        "details": response.details.as_ref().map_or(Value::Null, |details| json!({
            "active_tasks": details.active_tasks,
            "running_executions": details.running_executions,
            "pending_executions": details.pending_executions,
            "total_memory_used": details.total_memory_used,
            "total_executions": details.total_executions,
            "system_info": map_json(&details.system_info),
        })),
        "cluster": response.cluster.as_ref().map_or(Value::Null, cluster_json),
    })
}

/// The cluster section of GetHealth / GetStats.
pub fn cluster_json(cluster: &proto::ClusterStatus) -> Value {
    json!({
        "node_id": cluster.node_id,
        "cluster_name": cluster.cluster_name,
        "nats_connected": cluster.nats_connected,
        "message": cluster.message,
        "nodes": cluster.nodes.iter().map(|node| json!({
            "node_id": node.node_id,
            "advertise_addr": node.advertise_addr,
            "draining": node.draining,
            "free_slots": node.free_slots,
            "running": node.running,
            "queue_length": node.queue_length,
            "heartbeat_age_ms": node.heartbeat_age_ms,
            "routable": node.routable,
            "is_self": node.is_self,
            "tasks": node.tasks.iter().map(|task| json!({
                "task_id": task.task_id,
                "task_name": task.task_name,
                "instances": task.instances,
                "idle_instances": task.idle_instances,
                "can_start_instance": task.can_start_instance,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn stats_json(response: &proto::GetStatsResponse) -> Value {
    let counts_json = |map: &HashMap<String, i32>| {
        Value::Object(
            map.iter()
                .map(|(key, count)| (key.clone(), json!(count)))
                .collect(),
        )
    };
    json!({
        "service_stats": response.service_stats.as_ref().map_or(Value::Null, |service| json!({
            "uptime_seconds": service.uptime_seconds,
            "total_tasks": service.total_tasks,
            "total_executions": service.total_executions,
            "total_memory_used": service.total_memory_used,
            "cpu_usage_percent": service.cpu_usage_percent,
            "memory_usage_percent": service.memory_usage_percent,
            "artifact_count": service.artifact_count,
            "instance_count": service.instance_count,
            "successful_executions": service.successful_executions,
            "failed_executions": service.failed_executions,
            "average_response_time_ms": service.average_response_time_ms,
            "queue_length": service.queue_length,
            "max_queue_length": service.max_queue_length,
            "async_waiting": service.async_waiting,
            "queue_wait": service.queue_wait.as_ref().map_or(Value::Null, |wait| json!({
                "p50_ms": wait.p50_ms,
                "p90_ms": wait.p90_ms,
                "p99_ms": wait.p99_ms,
                "max_ms": wait.max_ms,
            })),
            "instances_by_state": counts_json(&service.instances_by_state),
            "instances_terminated": service.instances_terminated,
            "instances_failed": service.instances_failed,
            "cold_starts": service.cold_starts,
            "warm_starts": service.warm_starts,
        })),
        "task_stats": response.task_stats.as_ref().map_or(Value::Null, |tasks| json!({
            "active_tasks": tasks.active_tasks,
            "idle_tasks": tasks.idle_tasks,
            "tasks_by_type": counts_json(&tasks.tasks_by_type),
            "most_active_tasks": tasks.most_active_tasks.iter().map(task_info_json).collect::<Vec<_>>(),
        })),
        "execution_stats": response.execution_stats.as_ref().map_or(Value::Null, |executions| json!({
            "running_executions": executions.running_executions,
            "pending_executions": executions.pending_executions,
            "completed_executions": executions.completed_executions,
            "failed_executions": executions.failed_executions,
            "average_execution_time_ms": executions.average_execution_time_ms,
            "success_rate_percent": executions.success_rate_percent,
            "executions_by_function": counts_json(&executions.executions_by_function),
        })),
        "pools": response.pools.iter().map(pool_stats_json).collect::<Vec<_>>(),
        "cluster": response.cluster.as_ref().map_or(Value::Null, cluster_json),
    })
}

pub fn pool_stats_json(pool: &proto::PoolStats) -> Value {
    json!({
        "task_id": pool.task_id,
        "task_name": pool.task_name,
        "isolation": pool.isolation,
        "scheduler_policy": pool.scheduler_policy,
        "min_instances": pool.min_instances,
        "max_instances": pool.max_instances,
        "current_instances": pool.current_instances,
        "desired_instances": pool.desired_instances,
        "reactive_instances": pool.reactive_instances,
        "predicted_instances": pool.predicted_instances,
        "panicking": pool.panicking,
        "forecast_arrivals_per_second": pool.forecast_arrivals_per_second,
        "active_executions": pool.active_executions,
        "waiting": pool.waiting,
        "cold_starts": pool.cold_starts,
        "warm_starts": pool.warm_starts,
        "mean_cold_start_ms": pool.mean_cold_start_ms,
        "instances": pool.instances.iter().map(instance_stats_json).collect::<Vec<_>>(),
    })
}

pub fn instance_stats_json(instance: &proto::InstanceStats) -> Value {
    json!({
        "instance_id": instance.instance_id,
        "state": instance.state,
        "active": instance.active,
        "capacity": instance.capacity,
        "served": instance.served,
        "failures": instance.failures,
        "healthy": instance.healthy,
        "mean_response_ms": instance.mean_response_ms,
    })
}

/// Compact JSON on one line followed by a newline, for streams of objects (JSON Lines).
pub fn render_json_line(value: &Value) -> String {
    let mut text = serde_json::to_string(value).expect("JSON values serialise");
    text.push('\n');
    text
}

/// Pretty JSON followed by a newline.
pub fn render_json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        let cases: [(i64, i32, bool, &str); 6] = [
            (0, 0, false, "1970-01-01T00:00:00Z"),
            (951_782_400, 0, false, "2000-02-29T00:00:00Z"),
            (1_700_000_000, 123_456_789, true, "2023-11-14T22:13:20.123Z"),
            (4_102_444_799, 0, false, "2099-12-31T23:59:59Z"),
            (-1, 0, false, "1969-12-31T23:59:59Z"),
            (1_709_251_199, 0, false, "2024-02-29T23:59:59Z"),
        ];
        for (seconds, nanos, with_milliseconds, expected) in cases {
            assert_eq!(format_rfc3339(seconds, nanos, with_milliseconds), expected);
        }
        assert_eq!(
            format_unix_ms(1_700_000_000_123, true),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_unix_ms(0, true), "-");
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["NAME", "ID", "LAST STATUS"]);
        table.push_row(vec!["echo".into(), "task-1".into(), "COMPLETED".into()]);
        table.push_row(vec!["wordcount".into(), "t2".into(), "".into()]);
        assert_eq!(
            table.render(),
            "NAME        ID       LAST STATUS\n\
             echo        task-1   COMPLETED\n\
             wordcount   t2\n"
        );
    }

    #[test]
    fn key_values_align() {
        let text = render_key_values(&[("NAME", "echo".into()), ("LAST STATUS", "-".into())]);
        assert_eq!(text, "NAME:         echo\nLAST STATUS:  -\n");
    }

    #[test]
    fn bytes_are_text_when_they_are_utf8() {
        assert_eq!(bytes_json(b"hi"), json!({"encoding": "utf8", "data": "hi"}));
        assert_eq!(
            bytes_json(&[0xff, 0]),
            json!({"encoding": "base64", "data": "/wA="})
        );
    }

    #[test]
    fn durations_and_sizes_read_naturally() {
        let durations = [
            (5, "5s"),
            (65, "1m 5s"),
            (3_700, "1h 1m"),
            (90_000, "1d 1h"),
        ];
        for (seconds, expected) in durations {
            assert_eq!(format_seconds(seconds), expected);
        }
        let sizes = [
            (10, "10 B"),
            (2048, "2.0 KiB"),
            (3 * 1024 * 1024, "3.0 MiB"),
        ];
        for (bytes, expected) in sizes {
            assert_eq!(format_bytes(bytes), expected);
        }
    }

    #[test]
    fn data_locations_are_abbreviated() {
        assert_eq!(
            abbreviate_location("data:application/wasm;base64,AGFzbQ=="),
            "data:application/wasm;base64,… (8 base64 characters)"
        );
        assert_eq!(abbreviate_location("file:///a.wasm"), "file:///a.wasm");
    }
}
