#!/usr/bin/env bash
# The demo: set up the machine, build talkheadd, then evaluate the bundled demo miners on the bundled
# challenges and print the ranking.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo build --release -p talkheadd
exec cargo run --release -q -p talkhead-demo
