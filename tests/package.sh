#!/bin/sh
# End-to-end test of the Debian package, as root on a Debian host (bookworm or later; systemd need not be
# PID 1, Docker need not run):
#
#   build     cargo-deb (installed if missing), packaging/build-assets.sh, `cargo deb -p talkheadd`
#   inspect   dpkg-deb -c (expected files), dpkg-deb -e (conffiles, control), lintian (no errors)
#   install   apt-get install ./talkheadd_*.deb; user/groups, directories, enabled units, check-config
#   units     tests/systemd_checks.sh --installed (verify + exposure <= 1.5 on the installed files)
#   run       the installed daemon exactly as the unit's ExecStartPre/ExecStart, as user talkhead
#             (setpriv), with a test config (gpu.virtual = 1, temporary state directory), under
#             tests/notify_harness.py: READY=1, STATUS=, WATCHDOG=1, SIGTERM -> STOPPING=1, exit 0
#   remove    apt-get remove: binaries gone, state and conffile kept
#   purge     apt-get purge: state, cache and /etc/talkheadd gone (the talkhead user stays, by design)
#
# It cleans up after itself (purges the package, removes the user and groups it created) and can run
# again. Environment:
#   DEB_PROFILE=release|deb   Cargo profile for the package (default release; `deb` builds faster)
#   WATCHDOG=warn|require     whether a missing WATCHDOG=1 fails the run (default require)
#   SKIP_BUILD=1              package the binaries already built (cargo deb --no-build)
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
DEB_PROFILE=${DEB_PROFILE:-release}
# The daemon feeds the watchdog from its scheduler tick (or the main loop without a challenge source).
WATCHDOG=${WATCHDOG:-require}
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n=== %s\n' "$*"; }
fail() { echo "package.sh: FAIL: $*" >&2; exit 1; }
check() { # check DESCRIPTION COMMAND...
    desc=$1; shift
    if "$@"; then echo "ok: $desc"; else fail "$desc"; fi
}

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs and purges a package)"

# What existed before, so that cleanup removes only what this run created.
had_user=no; getent passwd talkhead >/dev/null && had_user=yes
had_admin_group=no; getent group talkhead-admin >/dev/null && had_admin_group=yes
work=$(mktemp -d /tmp/talkheadd-package-test.XXXXXX)
cleanup() {
    status=$?
    set +e
    if dpkg-query -W -f='${Status}' talkheadd 2>/dev/null | grep -q 'ok installed\|config-files'; then
        apt-get purge -y -qq talkheadd >/dev/null 2>&1
    fi
    [ "$had_user" = no ] && getent passwd talkhead >/dev/null && userdel talkhead
    [ "$had_user" = no ] && getent group talkhead >/dev/null && groupdel talkhead
    [ "$had_admin_group" = no ] && getent group talkhead-admin >/dev/null && groupdel talkhead-admin
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT INT TERM

# A previous, interrupted run may have left the package installed.
if dpkg-query -W -f='${Status}' talkheadd 2>/dev/null | grep -q 'ok installed\|config-files'; then
    step "purging a talkheadd left installed by an earlier run"
    apt-get purge -y -qq talkheadd
fi

step "tools"
apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then apt-get update -qq; apt_updated=yes; fi
    apt-get install -y -qq --no-install-recommends "$@"
}
command -v lintian >/dev/null || apt_install lintian
command -v systemd-analyze >/dev/null || apt_install systemd
command -v python3 >/dev/null || apt_install python3
command -v setpriv >/dev/null || apt_install util-linux
if ! cargo deb --version >/dev/null 2>&1; then
    start=$(date +%s)
    cargo install cargo-deb --locked
    echo "cargo install cargo-deb: $(( $(date +%s) - start )) s"
fi
cargo deb --version

step "build ($DEB_PROFILE profile)"
start=$(date +%s)
build_opts=
[ "${SKIP_BUILD:-0}" = 1 ] && build_opts=--no-build
packaging/build-assets.sh >/dev/null
rm -f "$CARGO_TARGET_DIR"/debian/talkheadd_*.deb
# One build: cargo-deb also builds talkheadctl, because an asset names target/release/talkheadctl.
cargo deb --locked -p talkheadd --profile "$DEB_PROFILE" $build_opts
echo "package build: $(( $(date +%s) - start )) s"
deb=$(ls "$CARGO_TARGET_DIR"/debian/talkheadd_*.deb)
ls -l "$deb"

step "contents"
dpkg-deb -c "$deb" | tee "$work/contents"
for path in ./usr/bin/talkheadd ./usr/bin/talkheadctl ./etc/talkheadd/talkheadd.toml \
    ./lib/systemd/system/talkheadd.service ./lib/systemd/system/talkheadd.socket \
    ./usr/lib/sysusers.d/talkheadd.conf ./usr/lib/tmpfiles.d/talkheadd.conf \
    ./usr/share/man/man8/talkheadd.8.gz ./usr/share/man/man1/talkheadctl.1.gz \
    ./usr/share/man/man1/talkheadctl-watch.1.gz ./usr/share/bash-completion/completions/talkheadctl \
    ./usr/share/zsh/vendor-completions/_talkheadctl ./usr/share/fish/vendor_completions.d/talkheadctl.fish \
    ./usr/share/doc/talkheadd/copyright \
    ./usr/share/doc/talkheadd/changelog.Debian.gz ./usr/share/doc/talkheadd/README.md \
    ./usr/share/doc/talkheadd/README.systemd.md ./usr/share/lintian/overrides/talkheadd \
    ./usr/share/talkheadd/models.toml; do
    check "package contains $path" grep -q " $path\$" "$work/contents"
done
for optional in ./usr/share/man/man1/talkheadctl.1.gz ./usr/share/bash-completion/completions/talkheadctl; do
    grep -q " $optional\$" "$work/contents" || echo "note: $optional not in the package (talkheadctl's generated assets missing)"
done
dpkg-deb -e "$deb" "$work/control"
cat "$work/control/control"
check "conffiles lists /etc/talkheadd/talkheadd.toml" grep -qx /etc/talkheadd/talkheadd.toml "$work/control/conffiles"
check "no other conffiles" test "$(wc -l < "$work/control/conffiles")" -eq 1
for s in postinst prerm postrm; do
    check "maintainer script $s present and executable" test -x "$work/control/$s"
done

step "lintian"
lintian --info --display-info --fail-on error "$deb" | tee "$work/lintian" || fail "lintian reports errors"
echo "lintian: $(grep -c '^E:' "$work/lintian" || true) errors, $(grep -c '^W:' "$work/lintian" || true) warnings"

step "install"
apt_installed() { apt-get install -y "$deb"; }
apt_installed || { apt-get update -qq; apt_updated=yes; apt_installed; }
check "user talkhead exists" getent passwd talkhead
check "group talkhead exists" getent group talkhead
check "group talkhead-admin exists" getent group talkhead-admin
check "talkhead's shell is nologin" sh -c 'getent passwd talkhead | grep -q ":/usr/sbin/nologin$"'
for d in /var/lib/talkheadd /var/cache/talkheadd; do
    check "$d is talkhead:talkhead 0750" test "$(stat -c '%U:%G %a' "$d")" = "talkhead:talkhead 750"
done
check "talkheadd.service enabled" test -L /etc/systemd/system/multi-user.target.wants/talkheadd.service
check "talkheadd.socket enabled" test -L /etc/systemd/system/sockets.target.wants/talkheadd.socket
check "talkheadd --version" /usr/bin/talkheadd --version
check "talkheadctl --help" sh -c '/usr/bin/talkheadctl --help >/dev/null'
check "installed config passes check-config as talkhead" runuser -u talkhead -- /usr/bin/talkheadd check-config
check "man talkheadd" sh -c 'MANPAGER=cat man 8 talkheadd >/dev/null 2>&1 || ! command -v man >/dev/null'

step "units"
tests/systemd_checks.sh --installed

step "run as the unit does, under the notify harness"
unit=/lib/systemd/system/talkheadd.service
pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[ -n "$exec_start" ] || fail "no ExecStart= in $unit"
user=$(sed -n 's/^User=//p' "$unit"); group=$(sed -n 's/^Group=//p' "$unit")
echo "unit: User=$user Group=$group"
echo "unit: ExecStartPre=$pre"
echo "unit: ExecStart=$exec_start"
# The unit's own config path, replaced by a test config with a private state directory and one virtual
# GPU slot (no NVML in this build), on a free loopback port.
install -d -o "$user" -g "$group" -m 0750 "$work/state"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/test.toml" <<EOF
[http]
listen = "127.0.0.1:$port"
[store]
path = "$work/state/state.db"
[evaluation]
work_dir = "$work/state/jobs"
[gpu]
virtual = 1
[admin]
socket = "$work/state/admin.sock"
[log]
format = "plain"
EOF
chmod 0755 "$work"; chmod 0644 "$work/test.toml"
swap() { echo "$1" | sed "s|/etc/talkheadd/talkheadd.toml|$work/test.toml|"; }
as_unit="setpriv --reuid=$user --regid=$group --init-groups --no-new-privs --"
# shellcheck disable=SC2086 # word splitting of the unit's command line is intended
check "ExecStartPre as $user" $as_unit $(swap "$pre")
# shellcheck disable=SC2086
python3 tests/notify_harness.py --watchdog="$WATCHDOG" --ready-timeout 60 --stop-timeout 45 -- \
    $as_unit $(swap "$exec_start") || fail "notify harness"
check "the daemon created its store as $user" test "$(stat -c %U "$work/state/state.db")" = "$user"

step "the installed binary scores with the whisper speech backend"
# whisper.cpp is in the package (cargo feature `whisper`, on by default): `talkheadd analyze` as the
# service user, with [analysis.asr] backend = "whisper" and the test model from tests/setup.sh, reports a
# WER from whisper (a number; a build without the feature refuses the backend).
challenge="$repo/../shared/fixtures/challenges/challenge-0"
whisper_model=${TALKHEAD_WHISPER_TEST_MODEL:-/opt/talkhead-test/whisper/ggml-tiny-random.bin}
asr="$work/asr"
install -d -m 0755 "$asr"
cp "$challenge/face.png" "$challenge/audio.wav" "$challenge/text.txt" "$asr/"
cp "$whisper_model" "$asr/model.bin"
seconds=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$asr/audio.wav")
ffmpeg -nostdin -loglevel error -loop 1 -framerate 25 -i "$asr/face.png" -i "$asr/audio.wav" \
    -t "$seconds" -vf scale=512:512 -c:v libx264 -pix_fmt yuv420p -c:a aac "$asr/still.mp4"
printf '[store]\npath = "%s"\n[gpu]\nvirtual = 1\n[analysis.asr]\nbackend = "whisper"\nmodel = "%s"\n' \
    "$work/state/state.db" "$asr/model.bin" > "$asr/talkheadd.toml"
chmod -R a+rX "$asr"
runuser -u talkhead -- /usr/bin/talkheadd --config "$asr/talkheadd.toml" analyze --json \
    --video "$asr/still.mp4" --face "$asr/face.png" --audio "$asr/audio.wav" --text "$asr/text.txt" \
    > "$asr/report.json" || fail "talkheadd analyze with [analysis.asr] backend = \"whisper\""
check "the WER came from whisper" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["debug"]["asr_backend"] == "whisper", r["debug"]
assert isinstance(r["wer"], float), r["wer"]
' "$asr/report.json"

step "remove"
runuser -u talkhead -- sh -c 'echo keep > /var/lib/talkheadd/marker'
apt-get remove -y -qq talkheadd
check "binary removed" test ! -e /usr/bin/talkheadd
check "unit removed" test ! -e /lib/systemd/system/talkheadd.service
check "state kept on remove" test -f /var/lib/talkheadd/marker
check "conffile kept on remove" test -f /etc/talkheadd/talkheadd.toml
check "package in config-files state" sh -c "dpkg-query -W -f='\${Status}' talkheadd | grep -q config-files"

step "purge"
apt-get purge -y -qq talkheadd
check "state removed on purge" test ! -e /var/lib/talkheadd
check "cache removed on purge" test ! -e /var/cache/talkheadd
check "configuration removed on purge" test ! -e /etc/talkheadd
check "enablement symlinks removed on purge" test ! -e /etc/systemd/system/multi-user.target.wants/talkheadd.service
check "package gone" sh -c '! dpkg-query -W talkheadd >/dev/null 2>&1 || dpkg-query -W -f="\${Status}" talkheadd | grep -q not-installed'
echo "left behind by design: user $(getent passwd talkhead | cut -d: -f1,3), groups $(getent group talkhead talkhead-admin | cut -d: -f1,3 | tr '\n' ' ')"

echo
echo "package.sh: OK ($deb)"
