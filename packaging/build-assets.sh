#!/bin/sh
# Collect generated documentation assets for the .deb into <repo>/target/assets/ (always the repository's
# own target/, whatever CARGO_TARGET_DIR says, because daemon/Cargo.toml's [package.metadata.deb] names
# these paths relative to the repository):
#
#   target/assets/man/talkheadd.8             from packaging/man/talkheadd.8 (hand-written roff)
#   target/assets/man/talkheadctl.1           from talkheadctl's build (clap_mangen), when present
#   target/assets/completions/talkheadctl.bash, _talkheadctl, talkheadctl.fish   (clap_complete), when present
#
# talkheadctl's files are looked for in $CTL_ASSETS_DIR (default: <target dir>/assets/ctl), where its
# build script writes them.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/target/assets"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
ctl=${CTL_ASSETS_DIR:-$target_dir/assets/ctl}

rm -rf "$out/man" "$out/completions"
mkdir -p "$out/man" "$out/completions"
cp "$repo/packaging/man/talkheadd.8" "$out/man/talkheadd.8"

# talkheadctl's build (ctl/build.rs) writes its man pages (one per subcommand too) and completions.
if [ ! -f "$ctl/man/talkheadctl.1" ]; then
    echo "build-assets: $ctl/man/talkheadctl.1 not found: build talkheadctl first (cargo build -p talkheadctl)" >&2
    exit 1
fi
cp "$ctl"/man/*.1 "$out/man/"
for f in completions/talkheadctl.bash completions/_talkheadctl completions/talkheadctl.fish; do
    cp "$ctl/$f" "$out/$f"
done
ls -R "$out"
