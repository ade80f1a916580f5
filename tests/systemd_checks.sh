#!/bin/sh
# Static checks of the systemd units (docs/reference.md#systemd-targets):
#   1. systemd-analyze verify: both units parse, every referenced command and unit exists;
#   2. systemd-analyze security --offline=true: exposure of talkheadd.service at most $MAX_EXPOSURE
#      (default 1.5, "OK"); the script fails above it.
#
# Usage: tests/systemd_checks.sh              check systemd/ in this checkout (the binary it names is
#                                             replaced by the release or debug talkheadd under ${CARGO_TARGET_DIR:-target},
#                                             built if missing; man pages are not checked)
#        tests/systemd_checks.sh --installed  check /lib/systemd/system/talkheadd.{service,socket} as
#                                             installed by the package, man pages included
# Needs systemd-analyze (the `systemd` package, installed with apt-get if missing; systemd need not be
# PID 1: `verify` and `security --offline=true` work in containers and CI).
set -eu

MAX_EXPOSURE=${MAX_EXPOSURE:-1.5}
repo=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-checkout}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd_checks: installing systemd (for systemd-analyze)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

case "$mode" in
    --installed)
        service=/lib/systemd/system/talkheadd.service
        socket=/lib/systemd/system/talkheadd.socket
        man_opt=--man=yes
        if ! command -v man >/dev/null 2>&1; then
            echo "systemd_checks: man not installed, not checking Documentation= man pages"
            man_opt=--man=no
        fi
        ;;
    checkout)
        # Any built binary will do for verify (it only checks that ExecStart names an executable).
        bin=${CARGO_TARGET_DIR:-$repo/target}/release/talkheadd
        [ -x "$bin" ] || bin=${CARGO_TARGET_DIR:-$repo/target}/debug/talkheadd
        if [ ! -x "$bin" ]; then
            (cd "$repo" && cargo build -p talkheadd)
        fi
        # Same units, pointing at the freshly built binary instead of /usr/bin/talkheadd.
        for u in talkheadd.service talkheadd.socket; do
            sed "s|/usr/bin/talkheadd|$bin|g" "$repo/systemd/$u" > "$work/$u"
        done
        service=$work/talkheadd.service
        socket=$work/talkheadd.socket
        man_opt=--man=no
        ;;
    *)
        echo "usage: $0 [--installed]" >&2
        exit 2
        ;;
esac

echo "== systemd-analyze verify $service $socket"
# verify exits non-zero on errors but only warns (exit 0) about unknown keys and the like, so any line
# about our units fails the check ("talkheadd.service: ..." or "/path/talkheadd.service:12: ...").
# Lines about other units (e.g. a host's own docker.service) are printed but do not count.
rc=0
out=$(systemd-analyze verify $man_opt "$service" "$socket" 2>&1) || rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne 0 ] || printf '%s\n' "$out" | grep -E 'talkheadd\.(service|socket)' >/dev/null; then
    echo "FAIL: systemd-analyze verify reported problems in talkheadd's units" >&2
    exit 1
fi
echo "verify: clean"

echo "== systemd-analyze security --offline=true $service"
report=$(systemd-analyze security --offline=true "$service" 2>&1) || true
printf '%s\n' "$report" | grep -E '✗|Overall' || true
level=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9]*\.[0-9]\).*/\1/p')
if [ -z "$level" ]; then
    echo "FAIL: no 'Overall exposure level' in systemd-analyze security output" >&2
    printf '%s\n' "$report" >&2
    exit 1
fi
# Compare exactly with systemd's own integer score (exposure x 10) as well as the printed number.
threshold=$(echo "$MAX_EXPOSURE" | awk '{printf "%d", $1 * 10 + 0.5}')
if ! systemd-analyze security --offline=true --threshold="$threshold" "$service" >/dev/null 2>&1; then
    echo "FAIL: exposure $level is above $MAX_EXPOSURE" >&2
    exit 1
fi
if ! awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }'; then
    echo "FAIL: exposure $level is above $MAX_EXPOSURE" >&2
    exit 1
fi
echo "security: exposure $level <= $MAX_EXPOSURE"
echo "systemd_checks: OK"
