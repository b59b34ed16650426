//! Compiles `proto/` into Rust with a vendored `protoc`, so a fresh machine needs none,
//! and writes the descriptor set that server reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; build scripts are single-threaded.
    env::set_var("PROTOC", protoc);
    let well_known = protoc_bin_vendored::include_path()?.display().to_string();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::Codec")
        .file_descriptor_set_path(out.join("keygate_descriptor.bin"))
        .compile_protos(
            &["proto/keygate/v1/keygate.proto"],
            &["proto", well_known.as_str()],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
