#!/usr/bin/env bash
# Installs what talkheadd's build, tests and demo need on a fresh Debian machine (run as root), and starts
# the services they use. Idempotent: safe to run again; it skips what is already there.
#
#   - build tools (cmake for the optional whisper feature) and ffmpeg (media analysis), from Debian;
#   - Docker's engine from Debian's docker.io (dockerd is started if none is running) and a local registry
#     from Debian's docker-registry on 127.0.0.1:5000, for the container tests;
#   - a Python virtual environment in .venv with bittensor-wallet (the signing library validators use) for
#     the signature interoperability tests;
#   - for the onnx face backend test (tests/onnx_face.rs): a virtual environment in
#     /opt/talkhead-test/onnx-venv with `onnx` (writes the test models) and `onnxruntime` (its wheel
#     carries libonnxruntime.so), and in $TALKHEAD_ONNX_TEST_DIR (default /opt/talkhead-test/onnx) the
#     two generated models and a link to the library; in the same environment `insightface` 0.7.3 (with
#     opencv-python-headless) for the InsightFace parity test (tests/insightface_parity.rs);
#   - for the whisper speech backend test (tests/whisper_asr.rs, cargo feature `whisper`): a tiny ggml
#     model with whisper.cpp's real layout and random weights, written by tests/whisper/make_model.py
#     (Python standard library only) to $TALKHEAD_WHISPER_TEST_MODEL (default
#     /opt/talkhead-test/whisper/ggml-tiny-random.bin);
#   - for the Ray Jobs client test (tests/ray_jobs.rs): Ray 2.60.0 (`ray[default]`: the head's dashboard
#     serves the Jobs API) in /opt/talkhead-test/ray-venv. One pinned version, as every host of a
#     cluster must run the same one (docs/cluster.md).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

need_pkgs=()
# systemd: systemd-socket-activate and systemd-analyze (socket activation test, unit checks); util-linux: setpriv;
# cmake: builds whisper.cpp for the optional `whisper` feature (cargo check -p talkheadd --features whisper);
# libseccomp2: tests/unit_sandbox.py applies the service's syscall filter with it (docker.io needs it too);
# iproute2, iptables: tests/ray_hosts.rs puts Ray's GPU hosts in network namespaces behind a bridge.
for pkg in build-essential pkg-config ffmpeg opencv-data docker.io docker-registry python3-venv curl ca-certificates systemd util-linux cmake libseccomp2 iproute2 iptables; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${need_pkgs[*]} (run as root, or install them first)"; exit 1
  fi
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Docker engine: start one if none answers.
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
    log "starting dockerd"
    mkdir -p /var/log
    nohup dockerd >/var/log/talkheadd-test-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  docker info >/dev/null 2>&1 && log "dockerd is up" || log "warning: no Docker engine answers (see /var/log/talkheadd-test-dockerd.log)"
fi

# Local registry on 127.0.0.1:5000 (Debian's docker-registry), storage under /var/lib/docker-registry.
if ! curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then
  if command -v docker-registry >/dev/null; then
    log "starting docker-registry on 127.0.0.1:5000"
    # Our own config: Debian's default one demands htpasswd authentication.
    nohup docker-registry serve tests/registry.yml >/var/log/talkheadd-test-registry.log 2>&1 &
    for _ in $(seq 1 30); do curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break; sleep 1; done
  fi
  curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && log "registry is up" || log "warning: local registry not reachable"
fi

# bittensor-wallet for the signature interoperability tests.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bittensor_wallet' 2>/dev/null; then
  log "installing bittensor-wallet into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'bittensor-wallet>=4,<5'
fi
# The onnx face backend test: models with det_10g/w600k_r50 signatures and the ONNX Runtime library.
# onnxruntime 1.28 is the release `ort` 2.0.0-rc.13 (Cargo.toml) is written against.
onnx_venv=/opt/talkhead-test/onnx-venv
onnx_dir=${TALKHEAD_ONNX_TEST_DIR:-/opt/talkhead-test/onnx}
if ! "$onnx_venv/bin/python" -c 'import onnx, onnxruntime; assert onnxruntime.__version__ == "1.28.0"' 2>/dev/null; then
  log "installing onnx and onnxruntime into $onnx_venv"
  mkdir -p "$(dirname "$onnx_venv")"
  python3 -m venv "$onnx_venv"
  "$onnx_venv/bin/pip" install --quiet --disable-pip-version-check 'onnx==1.20.1' 'onnxruntime==1.28.0'
fi
# The InsightFace parity test (tests/insightface_parity.rs): the `insightface` package itself, as the
# reference validator runs it, beside the same onnxruntime (pinned again here so that the resolver
# cannot move it) and the OpenCV whose resize and warp arithmetic the test compares with. About 35 s
# from the package index (insightface builds a small Cython extension with build-essential's compiler).
if ! "$onnx_venv/bin/python" -c 'import insightface, cv2, onnxruntime; assert insightface.__version__ == "0.7.3" and onnxruntime.__version__ == "1.28.0" and cv2.__version__ == "5.1.0"' 2>/dev/null; then
  log "installing insightface into $onnx_venv"
  "$onnx_venv/bin/pip" install --quiet --disable-pip-version-check 'insightface==0.7.3' 'onnxruntime==1.28.0' 'onnx==1.20.1' 'opencv-python-headless==5.1.0.95'
fi
# Always regenerated (a second): the models follow tests/onnx/make_models.py as it is now.
"$onnx_venv/bin/python" tests/onnx/make_models.py "$onnx_dir"
ort_lib=$("$onnx_venv/bin/python" -c 'import glob, os, onnxruntime; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*"))[0])')
ln -sfn "$ort_lib" "$onnx_dir/libonnxruntime.so"
# The whisper backend test's model: deterministic, so rewritten only when missing or older than its script.
whisper_model=${TALKHEAD_WHISPER_TEST_MODEL:-/opt/talkhead-test/whisper/ggml-tiny-random.bin}
if [ ! -s "$whisper_model" ] || [ tests/whisper/make_model.py -nt "$whisper_model" ]; then
  log "writing the whisper test model $whisper_model"
  python3 tests/whisper/make_model.py "$whisper_model"
fi
# Ray for the Jobs client test: about 40 s from the package index.
ray_venv=/opt/talkhead-test/ray-venv
if ! "$ray_venv/bin/python" -c 'import ray, ray.dashboard; assert ray.__version__ == "2.60.0"' 2>/dev/null; then
  log "installing ray[default] 2.60.0 into $ray_venv"
  mkdir -p "$(dirname "$ray_venv")"
  python3 -m venv "$ray_venv"
  "$ray_venv/bin/pip" install --quiet --disable-pip-version-check 'ray[default]==2.60.0'
fi
log "ready"
