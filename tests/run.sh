#!/usr/bin/env bash
# The test command (README, CI): set up a fresh Debian machine, then check formatting, lints and run
# every test. GPU tests (named gpu_*) need a GPU and are excluded here (`--skip gpu_` matches any test
# whose name contains "gpu_", so only GPU tests may use that string).
set -euo pipefail
cd "$(dirname "$0")/.."
# Seconds per phase, for keeping CI well inside its limit.
phase() { echo "== [$(( SECONDS / 60 ))m$(( SECONDS % 60 ))s] $*" >&2; }
tests/setup.sh
phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "cargo test"
cargo test --workspace --locked -- --skip gpu_
phase "the onnx backend and talkheadd analyze under the service's syscall filter and W^X"
# ONNX Runtime (loaded at run time), ffmpeg under prlimit and the analysis, confined as
# systemd/talkheadd.service confines the daemon (tests/unit_sandbox.py: NoNewPrivileges=,
# MemoryDenyWriteExecute=, SystemCallArchitectures=, SystemCallFilter=). The test binaries are the ones
# just built (the same cargo arguments build nothing; narrower ones would unify features differently
# and rebuild), run from the package directory as cargo runs them.
mapfile -t confined < <(cargo test --workspace --locked --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("onnx_face", "analyze_cli"):
        print(m["executable"])')
[ "${#confined[@]}" = 2 ] || { echo "expected the onnx_face and analyze_cli test binaries, found: ${confined[*]}" >&2; exit 1; }
for test_binary in "${confined[@]}"; do
  (cd daemon && ../tests/unit_sandbox.py -- "$test_binary")
done
phase "Debian package: build from the binaries the tests just built, lintian, install, run, purge"
# package.sh also runs tests/systemd_checks.sh --installed: systemd-analyze verify and the exposure
# threshold on the units as installed.
# The release package is `cargo deb -p talkheadd` (packaging/README.md); CI packages the debug build it
# already has, so the packaging and installation are checked without a second 15-minute compile.
DEB_PROFILE=dev SKIP_BUILD=1 tests/package.sh
phase "all checks passed"
