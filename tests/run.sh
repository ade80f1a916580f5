#!/usr/bin/env bash
# The test command (README, CI): set up a fresh Debian machine, then check formatting, lints and run
# every test. GPU tests (named gpu_*) need a GPU and are excluded here (`--skip gpu_` matches any test
# whose name contains "gpu_", so only GPU tests may use that string).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --locked -- --skip gpu_
echo "== systemd units: systemd-analyze verify and the exposure threshold" >&2
tests/systemd_checks.sh
echo "== Debian package: build from the binaries the tests just built, lintian, install, run, purge" >&2
# The release package is `cargo deb -p talkheadd` (packaging/README.md); CI packages the debug build it
# already has, so the packaging and installation are checked without a second 15-minute compile.
DEB_PROFILE=dev SKIP_BUILD=1 tests/package.sh
