//! Conversions between the wire contract and the domain: input decoding (including the old
//! parameter encoding) and record → message encoding, tasks (`TaskInfo`) included, so every
//! RPC that shows a task (GetTask, ListTasks, GetStats) shows it the same way.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use prost::Message;
use spearlet_core::{
    ArtifactRecord, ExecutionMode, ExecutionRecord, ExecutionStatus, ResultEncoding, SpearError,
    SpearResult,
};
use spearlet_proto::pbjson_types::Any;
use spearlet_proto::well_known::{self, any_type_name};
use spearlet_proto::{self as proto};

use crate::clock::timestamp_from_us;
use crate::registry::LoadedTask;

/// The function input of a request: `input` when set, else derived from `parameters`.
pub fn decode_input(
    request: &proto::InvokeFunctionRequest,
) -> SpearResult<(Bytes, ResultEncoding)> {
    if let Some(payload) = &request.input {
        return Ok((Bytes::from(payload.data.clone()), ResultEncoding::Payload));
    }
    Ok((
        input_from_parameters(&request.parameters)?,
        ResultEncoding::AnyBytesValue,
    ))
}

/// Old clients: one BytesValue/StringValue parameter → its raw bytes; otherwise a JSON object
/// `{name: value}` of the decoded well-known values.
pub fn input_from_parameters(parameters: &[proto::FunctionParameter]) -> SpearResult<Bytes> {
    for (index, parameter) in parameters.iter().enumerate() {
        if parameter.required && parameter.value.is_none() {
            return Err(SpearError::invalid_argument(format!(
                "parameters[{index}] ({:?}) is required but has no value",
                parameter.name
            )));
        }
    }
    if let [single] = parameters
        && let Some(value) = &single.value
    {
        match any_type_name(value) {
            well_known::BYTES_VALUE_TYPE => {
                let decoded = decode_wrapper::<well_known::BytesValue>(value, 0, &single.name)?;
                return Ok(Bytes::from(decoded.value));
            }
            well_known::STRING_VALUE_TYPE => {
                let decoded = decode_wrapper::<well_known::StringValue>(value, 0, &single.name)?;
                return Ok(Bytes::from(decoded.value));
            }
            _ => {}
        }
    }
    if parameters.is_empty() {
        return Ok(Bytes::new());
    }
    let mut object = serde_json::Map::new();
    for (index, parameter) in parameters.iter().enumerate() {
        let value = match &parameter.value {
            None => serde_json::Value::Null,
            Some(any) => any_to_json(any, index, &parameter.name)?,
        };
        object.insert(parameter.name.clone(), value);
    }
    Ok(Bytes::from(
        serde_json::to_vec(&serde_json::Value::Object(object)).expect("JSON values serialise"),
    ))
}

fn decode_wrapper<M: Message + Default>(any: &Any, index: usize, name: &str) -> SpearResult<M> {
    M::decode(any.value.as_ref()).map_err(|error| {
        SpearError::invalid_argument(format!(
            "parameters[{index}] ({name:?}): value does not decode as {}: {error}",
            any_type_name(any)
        ))
    })
}

fn any_to_json(any: &Any, index: usize, name: &str) -> SpearResult<serde_json::Value> {
    use serde_json::Value;
    let number = |value: f64| {
        serde_json::Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| {
                SpearError::invalid_argument(format!(
                    "parameters[{index}] ({name:?}): {value} is not representable in JSON"
                ))
            })
    };
    Ok(match any_type_name(any) {
        well_known::STRING_VALUE_TYPE => {
            Value::String(decode_wrapper::<well_known::StringValue>(any, index, name)?.value)
        }
        well_known::BYTES_VALUE_TYPE => Value::String(
            base64::engine::general_purpose::STANDARD
                .encode(decode_wrapper::<well_known::BytesValue>(any, index, name)?.value),
        ),
        well_known::INT32_VALUE_TYPE => {
            Value::from(decode_wrapper::<well_known::Int32Value>(any, index, name)?.value)
        }
        well_known::INT64_VALUE_TYPE => {
            Value::from(decode_wrapper::<well_known::Int64Value>(any, index, name)?.value)
        }
        well_known::UINT32_VALUE_TYPE => {
            Value::from(decode_wrapper::<well_known::UInt32Value>(any, index, name)?.value)
        }
        well_known::UINT64_VALUE_TYPE => {
            Value::from(decode_wrapper::<well_known::UInt64Value>(any, index, name)?.value)
        }
        well_known::FLOAT_VALUE_TYPE => number(f64::from(
            decode_wrapper::<well_known::FloatValue>(any, index, name)?.value,
        ))?,
        well_known::DOUBLE_VALUE_TYPE => {
            number(decode_wrapper::<well_known::DoubleValue>(any, index, name)?.value)?
        }
        well_known::BOOL_VALUE_TYPE => {
            Value::Bool(decode_wrapper::<well_known::BoolValue>(any, index, name)?.value)
        }
        well_known::STRUCT_TYPE => {
            struct_to_json(&decode_wrapper::<prost_types::Struct>(any, index, name)?)
        }
        well_known::VALUE_TYPE => {
            value_to_json(&decode_wrapper::<prost_types::Value>(any, index, name)?)
        }
        well_known::LIST_VALUE_TYPE => {
            list_to_json(&decode_wrapper::<prost_types::ListValue>(any, index, name)?)
        }
        other => {
            return Err(SpearError::invalid_argument(format!(
                "parameters[{index}] ({name:?}): unsupported value type {other:?}; use a \
                 google.protobuf wrapper (StringValue, BytesValue, Int32Value, …), Struct, Value \
                 or ListValue, or send raw bytes in `input`"
            )));
        }
    })
}

fn struct_to_json(value: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(key, field)| (key.clone(), value_to_json(field)))
            .collect(),
    )
}

fn list_to_json(list: &prost_types::ListValue) -> serde_json::Value {
    serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
}

fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(number)) => serde_json::Number::from_f64(*number)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text.clone()),
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(*flag),
        Some(Kind::StructValue(object)) => struct_to_json(object),
        Some(Kind::ListValue(list)) => list_to_json(list),
    }
}

pub fn status_to_wire(status: ExecutionStatus) -> proto::ExecutionStatus {
    match status {
        ExecutionStatus::Pending => proto::ExecutionStatus::Pending,
        ExecutionStatus::Running => proto::ExecutionStatus::Running,
        ExecutionStatus::Completed => proto::ExecutionStatus::Completed,
        ExecutionStatus::Failed => proto::ExecutionStatus::Failed,
        ExecutionStatus::Cancelled => proto::ExecutionStatus::Cancelled,
        ExecutionStatus::Timeout => proto::ExecutionStatus::Timeout,
    }
}

pub fn status_from_wire(status: proto::ExecutionStatus) -> Option<ExecutionStatus> {
    match status {
        proto::ExecutionStatus::Unknown => None,
        proto::ExecutionStatus::Pending => Some(ExecutionStatus::Pending),
        proto::ExecutionStatus::Running => Some(ExecutionStatus::Running),
        proto::ExecutionStatus::Completed => Some(ExecutionStatus::Completed),
        proto::ExecutionStatus::Failed => Some(ExecutionStatus::Failed),
        proto::ExecutionStatus::Cancelled => Some(ExecutionStatus::Cancelled),
        proto::ExecutionStatus::Timeout => Some(ExecutionStatus::Timeout),
    }
}

pub fn mode_to_wire(mode: ExecutionMode) -> proto::ExecutionMode {
    match mode {
        ExecutionMode::Sync => proto::ExecutionMode::Sync,
        ExecutionMode::Async => proto::ExecutionMode::Async,
        ExecutionMode::Stream => proto::ExecutionMode::Stream,
    }
}

/// The `ExecutionResult` of a record; output only when `include_output`.
pub fn execution_result(record: &ExecutionRecord, include_output: bool) -> proto::ExecutionResult {
    let (result, output) = if include_output && record.status.is_terminal() {
        match record.result_encoding {
            ResultEncoding::AnyBytesValue => {
                (Some(well_known::bytes_any(record.output.to_vec())), None)
            }
            ResultEncoding::Payload => (
                None,
                Some(proto::Payload {
                    content_type: record.output_content_type.clone(),
                    data: record.output.to_vec(),
                }),
            ),
        }
    } else {
        (None, None)
    };
    proto::ExecutionResult {
        status: status_to_wire(record.status) as i32,
        result,
        error_message: record.error_message.clone(),
        error_code: record
            .error_code
            .map(|code| code.as_str().to_owned())
            .unwrap_or_default(),
        execution_time_ms: record.execution_time_ms,
        memory_used_bytes: record.memory_used_bytes,
        metrics: record
            .metrics
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        started_at: record.started_at_us.map(timestamp_from_us),
        completed_at: record.completed_at_us.map(timestamp_from_us),
        output,
    }
}

/// A request's Timestamp as Unix milliseconds; INVALID_ARGUMENT naming `field` when its nanos
/// are out of range.
pub fn timestamp_to_unix_ms(
    field: &str,
    instant: &spearlet_proto::pbjson_types::Timestamp,
) -> spearlet_core::SpearResult<i64> {
    if !(0..1_000_000_000).contains(&instant.nanos) {
        return Err(spearlet_core::SpearError::invalid_argument(format!(
            "{field}.nanos {} must be between 0 and 999999999",
            instant.nanos
        )));
    }
    Ok(instant
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(instant.nanos / 1_000_000)))
}

pub fn execution_info(record: &ExecutionRecord) -> proto::ExecutionInfo {
    proto::ExecutionInfo {
        execution_id: record.execution_id.clone(),
        task_id: record.task_id.clone(),
        function_name: record.function_name.clone(),
        execution_mode: mode_to_wire(record.mode) as i32,
        status: status_to_wire(record.status) as i32,
        started_at: record.started_at_us.map(timestamp_from_us),
        completed_at: record.completed_at_us.map(timestamp_from_us),
        execution_time_ms: record.execution_time_ms,
        memory_used_bytes: record.memory_used_bytes,
        error_message: record.error_message.clone(),
        metadata: record
            .metadata
            .iter()
            .chain(record.metrics.iter())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        submitted_at: Some(timestamp_from_us(
            record.submitted_at_ms.saturating_mul(1000),
        )),
        instance_id: record.instance_id.clone(),
    }
}

/// The record's status changes, oldest first.
pub fn execution_timeline(record: &ExecutionRecord) -> Vec<proto::ExecutionTimelineEntry> {
    record
        .timeline
        .iter()
        .map(|entry| proto::ExecutionTimelineEntry {
            at: Some(timestamp_from_us(entry.at_us)),
            status: status_to_wire(entry.status) as i32,
            attempt: entry.attempt,
            note: entry.note.clone(),
        })
        .collect()
}

pub fn artifact_spec(artifact: &ArtifactRecord) -> proto::ArtifactSpec {
    proto::ArtifactSpec {
        artifact_id: artifact.artifact_id.clone(),
        artifact_type: artifact.artifact_type.clone(),
        location: artifact.location.clone(),
        version: artifact.version.clone(),
        checksum: if artifact.checksum.is_empty() {
            format!("sha256:{}", artifact.digest)
        } else {
            artifact.checksum.clone()
        },
        metadata: artifact
            .metadata
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    }
}

/// A task as `TaskInfo`: ids, artifact, timestamps, execution counters and the artifact's own
/// metadata (the `spearlet.*` configuration keys left out). GetStats shows tasks this way.
pub fn task_summary(task: &LoadedTask) -> proto::TaskInfo {
    let metadata: std::collections::HashMap<String, String> = task
        .record
        .artifact
        .metadata
        .iter()
        .filter(|(key, _)| !key.starts_with(spearlet_core::task_config::CONFIG_KEY_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    proto::TaskInfo {
        task_id: task.record.task_id.clone(),
        task_name: task.record.task_name.clone(),
        artifact_spec: Some(artifact_spec(&task.record.artifact)),
        created_at: task.record.created_at_ms,
        updated_at: task.record.updated_at_ms,
        execution_count: i32::try_from(
            task.counters
                .execution_count
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .unwrap_or(i32::MAX),
        last_status: task
            .counters
            .last_status()
            .map_or(proto::ExecutionStatus::Unknown, status_to_wire) as i32,
        metadata,
        error_count: i32::try_from(task.counters.metrics.totals().failed_or_timed_out)
            .unwrap_or(i32::MAX),
    }
}

/// [`task_summary`] plus the details GetTask (and ListTasks with `include_details`) add to its
/// metadata: description, isolation, the instances of the task's pool (`pool`, absent when the
/// dispatcher has none for it) and the autoscaler's desired count, the artifact digest, the
/// callable functions and the running executions.
pub fn task_details(
    task: &LoadedTask,
    pool: Option<&spearlet_pool::PoolSnapshot>,
) -> proto::TaskInfo {
    let mut info = task_summary(task);
    let metadata = &mut info.metadata;
    metadata.insert("description".into(), task.record.description.clone());
    metadata.insert(
        "isolation".into(),
        task.config.pool.isolation.as_str().to_owned(),
    );
    if let Some(pool) = pool {
        let instance_ids: Vec<&str> = pool
            .instances
            .iter()
            .map(|instance| instance.instance_id.as_str())
            .collect();
        metadata.insert("instances".into(), instance_ids.len().to_string());
        metadata.insert("instance_ids".into(), instance_ids.join(","));
        if let Some(decision) = pool.last_decision {
            metadata.insert(
                "desired_instances".into(),
                decision.desired_instances.to_string(),
            );
        }
    }
    metadata.insert(
        "artifact_digest".into(),
        format!("sha256:{}", task.record.artifact.digest),
    );
    metadata.insert(
        "exported_functions".into(),
        task.callable_functions().join(","),
    );
    metadata.insert(
        "running_executions".into(),
        task.counters
            .running
            .load(std::sync::atomic::Ordering::Relaxed)
            .to_string(),
    );
    info
}

/// An HTTP handler's response head as stream message metadata: the same `http.status` and
/// `http.header.<name>` keys the execution's metrics carry.
pub fn http_response_head_metadata(
    head: &spearlet_runtime::HttpResponseHead,
) -> std::collections::HashMap<String, String> {
    head.as_metrics().into_iter().collect()
}

pub fn to_btree(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spearlet_core::ErrorKind;
    use spearlet_proto::well_known::{pack, string_any};

    fn parameter(name: &str, value: Option<Any>, required: bool) -> proto::FunctionParameter {
        proto::FunctionParameter {
            name: name.into(),
            r#type: String::new(),
            value,
            required,
            description: String::new(),
        }
    }

    #[test]
    fn a_single_bytes_or_string_parameter_is_raw_input() {
        let bytes = [parameter(
            "in",
            Some(well_known::bytes_any(b"\x00\x01".to_vec())),
            true,
        )];
        assert_eq!(&input_from_parameters(&bytes).unwrap()[..], b"\x00\x01");
        let text = [parameter("in", Some(string_any("hi")), false)];
        assert_eq!(&input_from_parameters(&text).unwrap()[..], b"hi");
    }

    #[test]
    fn several_parameters_become_a_json_object() {
        let parameters = [
            parameter("name", Some(string_any("Ada")), false),
            parameter(
                "age",
                Some(pack(
                    well_known::INT32_VALUE_TYPE,
                    &well_known::Int32Value { value: 36 },
                )),
                false,
            ),
            parameter("blob", Some(well_known::bytes_any(b"hi".to_vec())), false),
            parameter(
                "ok",
                Some(pack(
                    well_known::BOOL_VALUE_TYPE,
                    &well_known::BoolValue { value: true },
                )),
                false,
            ),
        ];
        let json: serde_json::Value =
            serde_json::from_slice(&input_from_parameters(&parameters).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "Ada", "age": 36, "blob": "aGk=", "ok": true})
        );
    }

    #[test]
    fn structs_decode_to_json() {
        let object = prost_types::Struct {
            fields: [(
                "k".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(1.5)),
                },
            )]
            .into(),
        };
        let parameters = [parameter(
            "s",
            Some(pack(well_known::STRUCT_TYPE, &object)),
            false,
        )];
        let json: serde_json::Value =
            serde_json::from_slice(&input_from_parameters(&parameters).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"s": {"k": 1.5}}));
    }

    #[test]
    fn bad_parameters_are_named() {
        let unknown = [parameter(
            "weird",
            Some(Any {
                type_url: "type.googleapis.com/acme.Thing".into(),
                value: Default::default(),
            }),
            false,
        )];
        let error = input_from_parameters(&unknown).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert!(error.message.contains("weird") && error.message.contains("acme.Thing"));
        let missing = [parameter("needed", None, true)];
        let error = input_from_parameters(&missing).unwrap_err();
        assert!(error.message.contains("needed"));
    }
}
