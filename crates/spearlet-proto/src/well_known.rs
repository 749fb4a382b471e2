//! Encoding and decoding of `google.protobuf.Any` values holding well-known types.
//!
//! prost maps the wrapper messages (`BytesValue`, `StringValue`, …) to plain Rust values when
//! they appear as fields, so it generates no message types for them. A value packed into an
//! `Any` still needs the message form, so the wrappers are declared here by hand with the field
//! numbers of `google/protobuf/wrappers.proto` (every wrapper is `<type> value = 1;`).

use pbjson_types::Any;
use prost::Message;

/// The `type.googleapis.com/` prefix every `Any.type_url` of a well-known type carries.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

pub const BYTES_VALUE_TYPE: &str = "google.protobuf.BytesValue";
pub const STRING_VALUE_TYPE: &str = "google.protobuf.StringValue";
pub const INT32_VALUE_TYPE: &str = "google.protobuf.Int32Value";
pub const INT64_VALUE_TYPE: &str = "google.protobuf.Int64Value";
pub const UINT32_VALUE_TYPE: &str = "google.protobuf.UInt32Value";
pub const UINT64_VALUE_TYPE: &str = "google.protobuf.UInt64Value";
pub const FLOAT_VALUE_TYPE: &str = "google.protobuf.FloatValue";
pub const DOUBLE_VALUE_TYPE: &str = "google.protobuf.DoubleValue";
pub const BOOL_VALUE_TYPE: &str = "google.protobuf.BoolValue";
pub const STRUCT_TYPE: &str = "google.protobuf.Struct";
pub const VALUE_TYPE: &str = "google.protobuf.Value";
pub const LIST_VALUE_TYPE: &str = "google.protobuf.ListValue";

#[derive(Clone, PartialEq, Message)]
pub struct BytesValue {
    #[prost(bytes = "vec", tag = "1")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringValue {
    #[prost(string, tag = "1")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Int32Value {
    #[prost(int32, tag = "1")]
    pub value: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Int64Value {
    #[prost(int64, tag = "1")]
    pub value: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct UInt32Value {
    #[prost(uint32, tag = "1")]
    pub value: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct UInt64Value {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct FloatValue {
    #[prost(float, tag = "1")]
    pub value: f32,
}

#[derive(Clone, PartialEq, Message)]
pub struct DoubleValue {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct BoolValue {
    #[prost(bool, tag = "1")]
    pub value: bool,
}

/// The full type name of an `Any` (`google.protobuf.BytesValue`), whatever host prefix its
/// `type_url` uses.
pub fn any_type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or("")
}

/// Packs `message` into an `Any` under its well-known `type_name`.
pub fn pack<M: Message>(type_name: &str, message: &M) -> Any {
    Any {
        type_url: format!("{TYPE_URL_PREFIX}{type_name}"),
        value: message.encode_to_vec().into(),
    }
}

/// `Any(BytesValue(bytes))`: how output is returned to clients that sent parameters.
pub fn bytes_any(bytes: Vec<u8>) -> Any {
    pack(BYTES_VALUE_TYPE, &BytesValue { value: bytes })
}

/// `Any(StringValue(text))`.
pub fn string_any(text: &str) -> Any {
    pack(
        STRING_VALUE_TYPE,
        &StringValue {
            value: text.to_owned(),
        },
    )
}

/// The bytes inside an `Any(BytesValue)`, or `None` when the `Any` holds another type or does
/// not decode.
pub fn unpack_bytes(any: &Any) -> Option<Vec<u8>> {
    if any_type_name(any) != BYTES_VALUE_TYPE {
        return None;
    }
    BytesValue::decode(any.value.as_ref())
        .ok()
        .map(|bytes_value| bytes_value.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_value_round_trips_through_any() {
        let any = bytes_any(b"hello".to_vec());
        assert_eq!(
            any.type_url,
            "type.googleapis.com/google.protobuf.BytesValue"
        );
        assert_eq!(unpack_bytes(&any).as_deref(), Some(&b"hello"[..]));
    }

    #[test]
    fn bytes_value_encoding_matches_the_wrappers_proto_layout() {
        // Field 1, wire type 2 (length-delimited), length 3, then the bytes.
        let encoded = BytesValue {
            value: b"abc".to_vec(),
        }
        .encode_to_vec();
        assert_eq!(encoded, vec![0x0a, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn type_name_ignores_the_url_host() {
        let any = Any {
            type_url: "example.com/x/google.protobuf.StringValue".into(),
            value: Default::default(),
        };
        assert_eq!(any_type_name(&any), STRING_VALUE_TYPE);
        assert_eq!(unpack_bytes(&any), None);
    }
}
