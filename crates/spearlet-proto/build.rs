//! Generates the FunctionService client, server and messages with a vendored `protoc`, so a
//! fresh machine needs no system protobuf install, and their proto3 JSON mapping (pbjson) for
//! the HTTP/JSON gateway.
//!
//! The well-known types `Any` and `Timestamp` come from `pbjson-types`, which carries their
//! JSON form, instead of `prost-types`; the binary encoding is the same.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded, so setting the variable cannot race.
    // `set_var` is unsafe in edition 2024 only because of multi-threaded readers.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let proto_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/spearlet/function.proto"
    );
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptor_path =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("spearlet_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .extern_path(".google.protobuf.Any", "::pbjson_types::Any")
        .extern_path(".google.protobuf.Timestamp", "::pbjson_types::Timestamp")
        .compile_protos(&[proto_file], &[proto_root])?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .build(&[".spearlet"])?;
    Ok(())
}
