//! Generates the gRPC code and the descriptor set (for server reflection) from
//! the .proto files, with a vendored protoc so no system install is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "cascade/common/v1/types.proto",
    "cascade/lifecycle/v1/lifecycle_service.proto",
    "cascade/lifecycle/v1/lifecycle_internal_service.proto",
    "cascade/scoring/v1/scoring_service.proto",
    "cascade/opportunity/v1/opportunity_service.proto",
    "cascade/outbox/v1/outbox_messages.proto",
    "cascade/admin/v1/outbox_admin_service.proto",
    // Vendored from googleapis (Apache-2.0) only so reflection can describe
    // the error details Cascade sends; grpcurl then prints them readably.
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("cascade_descriptor.bin"))
        // Unimplemented RPCs answer UNIMPLEMENTED rather than failing to build.
        .generate_default_stubs(true)
        .compile_with_config(config, PROTOS, &["."])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
