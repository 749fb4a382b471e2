//! Wire types for `spearlet.FunctionService`, generated from `proto/spearlet/function.proto`.
//!
//! Architecture invariant: this crate holds only the contract and helpers for the protobuf
//! well-known wrapper types; it knows nothing about tasks, runtimes or storage.

#![allow(clippy::all, clippy::pedantic)]

/// Generated messages, enums, client and server for package `spearlet`.
pub mod spearlet {
    tonic::include_proto!("spearlet");
    // serde for every message and enum, in the proto3 JSON mapping with the proto field names.
    include!(concat!(env!("OUT_DIR"), "/spearlet.serde.rs"));
}

/// The well-known types the messages use (`Any`, `Timestamp`), with their JSON mapping.
pub use pbjson_types;

pub use spearlet::*;

/// The encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("spearlet_descriptor");

pub mod well_known;
