//! Shared by the `regenerate` example and the drift test: compile the `.proto` with protox and write
//! tonic's generated code into `out_dir`.

use std::path::Path;

/// Generate `talkhead.admin.v1.rs` into `out_dir`.
pub fn generate(crate_dir: &Path, out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = crate_dir.join(talkhead_admin_proto::PROTO_ROOT);
    let fds = protox::compile([root.join(talkhead_admin_proto::PROTO_FILE)], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // talkheadctl --json prints the messages as they are.
        .type_attribute(".talkhead.admin.v1", "#[derive(serde::Serialize)]")
        .out_dir(out_dir)
        .compile_fds(fds)?;
    Ok(())
}
