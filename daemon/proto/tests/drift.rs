//! The committed generated code must be exactly what the `.proto` generates.

#[path = "../codegen.rs"]
mod codegen;

use std::path::Path;

#[test]
fn generated_code_matches_the_proto() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    codegen::generate(crate_dir, out.path()).expect("generate");
    let fresh =
        std::fs::read_to_string(out.path().join(talkhead_admin_proto::GENERATED_FILE)).expect("fresh");
    let committed = std::fs::read_to_string(
        crate_dir
            .join("src/gen")
            .join(talkhead_admin_proto::GENERATED_FILE),
    )
    .expect("committed");
    assert!(
        fresh == committed,
        "src/gen/{} is out of date with the .proto: run `cargo run -p talkhead-admin-proto --example regenerate`",
        talkhead_admin_proto::GENERATED_FILE
    );
}
