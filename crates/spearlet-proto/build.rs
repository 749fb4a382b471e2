//! Generates the FunctionService client, server and messages with a vendored `protoc`, so a
//! fresh machine needs no system protobuf install.

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
    tonic_prost_build::configure()
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("spearlet_descriptor.bin"),
        )
        .compile_protos(&[proto_file], &[proto_root])?;
    Ok(())
}
