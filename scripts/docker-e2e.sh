#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# End-to-end check of the CPU image, as a new user would run it (README "Docker"):
#   1. install Docker (Debian's docker.io) and mmdebstrap if missing, and start a private Docker
#      daemon: its own socket and state dir, no bridge, no iptables (host networking only);
#   2. make a Debian bookworm base image locally (mmdebstrap | docker import; no registry pull);
#   3. build Dockerfile.cpu, torch's CPU wheel staged from the host's pip configuration;
#   4. run the image with the README's `docker run` line (host networking on a loopback port
#      instead of -p), wait for /health, send the README's request and check its usage
#      (16 visual tokens, 4 kept, 41 prompt tokens) and its answer ("blue": the embedded demo
#      model is trained on the README image's task);
#   5. stop and remove everything it started, also on failure, and print its timings.
# Needs root (dockerd, mmdebstrap) and the package registries. Every request goes to 127.0.0.1.
#
# Environment: MIPRUNER_E2E_PORT (default 18000), MIPRUNER_E2E_KEEP_IMAGE=1 (skip removing the
# daemon state, for inspecting the image: prints where it is).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PORT=${MIPRUNER_E2E_PORT:-18000}
IMAGE=mipruner-vllm:cpu
BASE_IMAGE=local/debian:bookworm-minbase
CONTAINER=mipruner-e2e-$$
# /tmp on purpose, not $TMPDIR: dockerd's and containerd's sockets live under this directory, and
# a unix socket path may not exceed 108 bytes (a long TMPDIR breaks the daemon's start).
STATE=$(mktemp -d /tmp/mipruner-docker.XXXXXX)
EXTRA=$ROOT/deploy/build-extra
DOCKERD_PID=
POLICY_RC_ADDED=
T0=$(date +%s)
TIMINGS=()

step() {  # step NAME START: record the seconds since START
  TIMINGS+=("$(printf '%-28s %5d s' "$1" $(( $(date +%s) - $2 )))")
}
log() { echo "[docker-e2e $(date -u +%H:%M:%S)] $*"; }
docker_() { /usr/bin/docker -H "unix://$STATE/docker.sock" "$@"; }

cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && [ -S "$STATE/docker.sock" ]; then
    log "failed (exit $rc); container log tail:"
    docker_ logs --tail 60 "$CONTAINER" 2>&1
  fi
  if [ -S "$STATE/docker.sock" ]; then
    docker_ rm -f "$CONTAINER" >/dev/null 2>&1
  fi
  rm -rf "$EXTRA/wheels" "$EXTRA/ca-certificates.crt"
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
  fi
  if [ "${MIPRUNER_E2E_KEEP_IMAGE:-0}" = 1 ] && [ "$rc" -eq 0 ]; then
    log "kept daemon state in $STATE (dockerd stopped)"
  else
    # dockerd leaves its network namespace and overlay mounts under the state dir.
    grep -o " $STATE[^ ]*" /proc/mounts | sort -r | while read -r mnt; do umount -l "$mnt"; done
    rm -rf "$STATE"
  fi
  [ -n "$POLICY_RC_ADDED" ] && rm -f /usr/sbin/policy-rc.d
  step "total" "$T0"
  printf 'docker-e2e timings:\n'; printf '  %s\n' "${TIMINGS[@]}"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Docker and mmdebstrap from Debian; apt must not start Debian's own dockerd (it would make a
#    bridge), so service starts are refused while installing.
t=$(date +%s)
if [ ! -x /usr/sbin/dockerd ] || [ ! -x /usr/bin/docker ] || ! command -v mmdebstrap >/dev/null; then
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    POLICY_RC_ADDED=1
  fi
  log "installing docker.io and mmdebstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io mmdebstrap >/dev/null
fi
step "install docker, mmdebstrap" "$t"

t=$(date +%s)
/usr/sbin/dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
  --storage-driver=overlay2 --data-root="$STATE/data" --exec-root="$STATE/exec" \
  --pidfile="$STATE/dockerd.pid" -H "unix://$STATE/docker.sock" >"$STATE/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 60); do docker_ info >/dev/null 2>&1 && break; sleep 1; done
docker_ info >/dev/null || { tail -20 "$STATE/dockerd.log"; exit 1; }
step "start dockerd" "$t"

# 2. The base image: Debian bookworm minbase, with the host's apt sources (it reaches the mirror
#    the way the host does).
t=$(date +%s)
SOURCES=/etc/apt/sources.list.d/debian.sources
[ -f "$SOURCES" ] || SOURCES="deb http://deb.debian.org/debian bookworm main"
log "making $BASE_IMAGE with mmdebstrap"
mmdebstrap --quiet --variant=minbase bookworm - "$SOURCES" | docker_ import - "$BASE_IMAGE" >/dev/null
step "base image (mmdebstrap)" "$t"

# 3. Build. torch 2.13.0+cpu comes from wherever the host's pip finds it (a local wheel here, the
#    PyTorch CPU index elsewhere), staged into the build stage only; so does the host's CA bundle.
t=$(date +%s)
mkdir -p "$EXTRA/wheels"
HOST_PY=python3; [ -x .venv/bin/python ] && HOST_PY=.venv/bin/python  # a Python 3.11, as the image's
"$HOST_PY" -m pip download -q --no-deps "torch==2.13.0+cpu" -d "$EXTRA/wheels"
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$EXTRA/"
step "stage torch wheel" "$t"
t=$(date +%s)
log "building $IMAGE"
docker_ build --network host -f Dockerfile.cpu -t "$IMAGE" \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_INDEX_URL= \
  --build-arg PIP_FIND_LINKS=/build-extra/wheels . >"$STATE/build.log" 2>&1 \
  || { tail -40 "$STATE/build.log"; exit 1; }
step "docker build" "$t"
SIZE=$(docker_ image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $(( SIZE / 1000000 )) MB"

# 4. The README's docker run line, with host networking on a loopback port instead of -p.
t=$(date +%s)
# readme-docker-run-cpu (tests/unit/test_deploy.py checks this line against the README's)
docker_ run -d --name "$CONTAINER" --shm-size=1g --network host -v mipruner-cache:/cache \
  "$IMAGE" --host 127.0.0.1 --port "$PORT" >/dev/null
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  [ "$(docker_ inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || { log "container exited"; exit 1; }
  (( $(date +%s) - t < 900 )) || { log "no /health after 900 s"; exit 1; }
  sleep 1
done
step "container start to /health" "$t"

# The README's request: its first bash block under "Ask with a per-request budget", run as is
# but for the port (a .venv python makes the image: .ci/run has set it up).
t=$(date +%s)
REQUEST=$(awk '/^## Ask with a per-request budget/{s=1} s&&/^```bash/{b=1;next} b&&/^```/{exit} b' README.md)
[ -n "$REQUEST" ] || { log "README request block not found"; exit 1; }
[ -x .venv/bin/python ] || REQUEST=${REQUEST//.venv\/bin\/python/python3}
RESPONSE=$(bash -c "${REQUEST//127.0.0.1:8000/127.0.0.1:$PORT}")
step "README request" "$t"
echo "$RESPONSE"
python3 - "$RESPONSE" <<'PY'
import json, sys
response = json.loads(sys.argv[1])
usage = response["usage"]
got = (usage["visual_tokens"], usage["visual_tokens_kept"], usage["prompt_tokens"])
assert got == (16, 4, 41), f"usage (visual_tokens, visual_tokens_kept, prompt_tokens) = {got}, want (16, 4, 41)"
answer = response["choices"][0]["message"]["content"]
assert answer.strip().lower() == "blue", f"answer {answer!r}, want 'blue'"
print(f"ok: answer {answer!r}, usage visual_tokens={got[0]} visual_tokens_kept={got[1]} prompt_tokens={got[2]}")
PY
log "image $IMAGE: $(( SIZE / 1000000 )) MB"
