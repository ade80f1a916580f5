//! Regenerate `src/gen/` from the `.proto`: `cargo run -p talkhead-admin-proto --example regenerate`.

#[path = "../codegen.rs"]
mod codegen;

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    codegen::generate(crate_dir, &crate_dir.join("src/gen"))?;
    println!("regenerated {}", crate_dir.join("src/gen").display());
    Ok(())
}
