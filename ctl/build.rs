//! Generates talkheadctl's man page and shell completions from the CLI definition at build time, into
//! `OUT_DIR` and `<target>/assets/ctl/` (where packaging/build-assets.sh collects them for the .deb).

#[path = "src/cli.rs"]
#[allow(dead_code)]
mod cli;

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| std::io::Error::other("OUT_DIR unset"))?);
    let assets = out.join("assets");
    generate(&assets)?;
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: publish a copy at <target>/assets/ctl.
    if let Some(target) = out.ancestors().nth(4) {
        generate(&target.join("assets").join("ctl"))?;
    }
    Ok(())
}

fn generate(dir: &Path) -> std::io::Result<()> {
    let man_dir = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(man_dir.join("talkheadctl.1"), page)?;
    for sub in cmd.get_subcommands() {
        let name = format!("talkheadctl-{}", sub.get_name());
        let mut page = Vec::new();
        // clap names are &'static without its `string` feature; a build script may leak a few bytes.
        clap_mangen::Man::new(sub.clone().name(name.clone().leak() as &'static str)).render(&mut page)?;
        std::fs::write(man_dir.join(format!("{name}.1")), page)?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "talkheadctl", &completions)?;
    }
    Ok(())
}
