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
