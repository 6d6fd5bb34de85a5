#!/usr/bin/env bash
# Container test of the compose profiles beyond the default one (run.sh runs that): `locust`
# (a headless master and two workers), `gateway` (conformance through nginx) and the secure
# overlay (mutual TLS + token), each as docs/containers.md says to run it, with no registry:
#
#   bash tests/container/profiles.sh
#
#  1. a private dockerd (--bridge=none; own data root, exec root and socket in a temp dir);
#  2. the image with tools/build-image.sh (callstate with the locust extra, for every service;
#     the debootstrapped base is cached in /var/cache/callstate, shared with run.sh), and an
#     nginx image from Debian's package on that base (tests/container/nginx; apt needs the
#     network, the build gets the host's);
#  3. `--profile locust up --exit-code-from locust-master locust-master worker` (2 workers,
#     8 users, 8 s): exit 0, one client log per worker, Locust's statistics with the cancel
#     propagation entry, and `callstate check` of the workers' logs with the emulator's;
#  4. `--profile gateway up --exit-code-from conformance conformance`: exit 0 and every
#     property holding, `held` included;
#  5. docker-compose.secure.yml over the default stack (a throwaway PKI from tools/make_certs.py,
#     a random token): the load's 300 calls over mutual TLS, check OK;
#  6. tears everything down, on failure too (after the containers' last log lines).
#
# Prints "SKIPPED: <reason>" and exits 0 where it cannot run (not root, not Linux, no engine,
# CALLSTATE_CONTAINER_TEST=0). Host networking (tests/container/compose.host.yml): the
# services reach each other by name through /etc/hosts entries; ports are picked free.
# Knobs: CALLSTATE_CONTAINER_KEEP=1 keeps the temp dir; CALLSTATE_CONTAINER_BUDGET (s, 600).

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T0=$(date +%s)
BUDGET=${CALLSTATE_CONTAINER_BUDGET:-600}
exec 3>&1
log() { printf '[profiles %4ds] %s\n' "$(($(date +%s) - T0))" "$*" >&3; }
skip() { echo "SKIPPED: $*"; exit 0; }
die() { log "FAIL: $*"; exit 1; }
left() { echo $((T0 + BUDGET - $(date +%s))); }
tmo() { local s=$1; shift; [ "$(left)" -gt 0 ] || { log "over the ${BUDGET} s budget"; return 124; }
        [ "$s" -le "$(left)" ] || s=$(left); timeout -k 10 "$s" "$@"; }

[ "${CALLSTATE_CONTAINER_TEST:-1}" != 0 ] || skip "CALLSTATE_CONTAINER_TEST=0"
[ "$(uname -s)" = Linux ] || skip "containers need Linux"
[ "$(id -u)" = 0 ] || skip "needs root to start a private dockerd"
for tool in dockerd docker docker-compose debootstrap timeout python3; do
    command -v "$tool" >/dev/null 2>&1 || skip "no $tool (tests/container/run.sh installs the engine with apt)"
done

WORK=$(mktemp -d /tmp/callstate-profiles.XXXXXX)
chmod 755 "$WORK"
DOCKERD_PID=
PROJECTS=()
export DOCKER_HOST=unix://$WORK/docker.sock DOCKER_CONFIG=$WORK/docker-config DOCKER_BUILDKIT=0 \
    COMPOSE_DOCKER_CLI_BUILD=0
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH COMPOSE_FILE COMPOSE_PROJECT_NAME || true
mkdir -p "$DOCKER_CONFIG" "$WORK/data" "$WORK/exec" "$WORK/reports"
FILES=(-f "$REPO/docker-compose.yml" -f "$HERE/compose.host.yml")

dc() { local project=$1 secs=$2; shift 2
       tmo "$secs" docker-compose --ansi never -p "$project" "${FILES[@]}" "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$DOCKERD_PID" ]; then
        for p in "${PROJECTS[@]}"; do
            [ "$rc" = 0 ] || { log "---- $p: last container log lines ----"; \
                timeout 30 docker-compose --ansi never -p "$p" "${FILES[@]}" --profile locust --profile gateway \
                    logs --no-color --tail=40 2>&1 | tail -n 80 || true; }
            timeout 60 docker-compose --ansi never -p "$p" "${FILES[@]}" --profile locust --profile gateway \
                down --volumes --remove-orphans >/dev/null 2>&1 || true
        done
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
        [ -f "$WORK/exec/containerd/containerd.pid" ] && kill -TERM "$(cat "$WORK/exec/containerd/containerd.pid")" 2>/dev/null || true
    fi
    awk -v p="$WORK/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
    if [ "${CALLSTATE_CONTAINER_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK" 2>/dev/null || true; fi
    if [ "$rc" = 0 ]; then log "PASS: profiles locust, gateway and secure ($(($(date +%s) - T0)) s)"
    else log "FAIL: profiles (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# -- 1. engine -------------------------------------------------------------------------------
echo '{}' >"$WORK/daemon.json"
setsid dockerd --config-file "$WORK/daemon.json" --data-root "$WORK/data" --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" -H "$DOCKER_HOST" --bridge=none --iptables=false --ip6tables=false \
    --ip-masq=false >"$WORK/dockerd.log" 2>&1 </dev/null &
DOCKERD_PID=$!
for i in $(seq 1 60); do
    timeout 5 docker version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -n 20 "$WORK/dockerd.log"; die "dockerd exited at start"; }
    [ "$i" -lt 60 ] || die "dockerd did not answer in 60 s"
    sleep 1
done
log "private dockerd up"

# -- 2. images -------------------------------------------------------------------------------
# One image for every service: callstate with the locust extra is callstate too (one build
# fewer; run.sh tests the plain image).
export CALLSTATE_LOCUST_IMAGE=callstate-prof-locust:$$ CALLSTATE_NGINX_IMAGE=callstate-prof-nginx:$$
export CALLSTATE_IMAGE=$CALLSTATE_LOCUST_IMAGE
tmo 420 bash "$REPO/tools/build-image.sh" --extras locust --tag "$CALLSTATE_LOCUST_IMAGE" >"$WORK/image-locust.log" 2>&1 \
    || { tail -n 20 "$WORK/image-locust.log"; die "tools/build-image.sh --extras locust failed"; }
tmo 300 docker build --network host -t "$CALLSTATE_NGINX_IMAGE" "$HERE/nginx" >"$WORK/nginx.log" 2>&1 \
    || { tail -n 20 "$WORK/nginx.log"; die "the nginx image did not build"; }
log "images built: $CALLSTATE_LOCUST_IMAGE, $CALLSTATE_NGINX_IMAGE"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export CALLSTATE_REPORT_DIR=$WORK/reports CALLSTATE_PORT CALLSTATE_GATEWAY_PORT
CALLSTATE_PORT=$(free_port)
CALLSTATE_GATEWAY_PORT=$(free_port)

# -- 3. locust -------------------------------------------------------------------------------
export CALLSTATE_LOCUST_WORKERS=2 CALLSTATE_LOCUST_USERS=8 CALLSTATE_LOCUST_TIME=8s
P=prof-locust-$$; PROJECTS+=("$P")
log "profile locust: up --exit-code-from locust-master locust-master worker (2 workers)"
dc "$P" 240 --profile locust up --no-build --scale worker=2 --exit-code-from locust-master locust-master worker \
    >"$WORK/locust.log" 2>&1 || { tail -n 30 "$WORK/locust.log"; die "the locust profile did not exit 0"; }
ls "$WORK"/reports/locust-client-*.jsonl >/dev/null 2>&1 || die "no worker wrote its client log under /reports"
[ "$(ls "$WORK"/reports/locust-client-*.jsonl | wc -l)" = 2 ] || die "not one client log per worker"
docker logs "$(dc "$P" 30 ps -q emulator)" 2>/dev/null >"$WORK/reports/locust-emulator.jsonl"
python3 - "$WORK/reports/locust.json" <<'EOF' || die "Locust's statistics are not as expected"
import json, sys
rows = {r["name"]: r["num_requests"] for r in json.load(open(sys.argv[1]))}
assert rows.get("cancel propagation", 0) > 0 and rows.get("0 RPC_S_OK", 0) > 0, rows
print("[profiles] locust:", rows)
EOF
docker run --rm --network none -v "$WORK/reports:/reports:ro" --entrypoint sh "$CALLSTATE_IMAGE" -c \
    'callstate check /reports/locust-client-*.jsonl /reports/locust-emulator.jsonl' >"$WORK/locust-check.log" 2>&1 \
    || { tail -n 20 "$WORK/locust-check.log"; die "callstate check of the locust run failed"; }
log "profile locust: PASS ($(tail -n 1 "$WORK/locust-check.log"))"
dc "$P" 60 --profile locust down --remove-orphans >/dev/null 2>&1 || true

# -- 4. gateway ------------------------------------------------------------------------------
P=prof-gateway-$$; PROJECTS+=("$P")
log "profile gateway: up --exit-code-from conformance conformance (nginx from Debian)"
dc "$P" 240 --profile gateway up --no-build --exit-code-from conformance conformance >"$WORK/gateway.log" 2>&1 \
    || { grep conformance_1 "$WORK/gateway.log" | tail -n 30; die "conformance through nginx did not exit 0"; }
python3 - "$WORK/reports/conformance.json" <<'EOF' || die "the conformance report is not as expected"
import json, sys
report = json.load(open(sys.argv[1]))
text = json.dumps(report)
assert '"held"' in text, "no held row"
print("[profiles] gateway: conformance ok =", report["ok"])
assert report["ok"] is True
EOF
log "profile gateway: PASS"

# -- 5. secure (the locked-down overlay: mutual TLS and a bearer token) ------------------------
P=prof-secure-$$; PROJECTS+=("$P")
CERT_PY=python3
[ -x "$REPO/.venv/bin/python" ] && CERT_PY=$REPO/.venv/bin/python
(cd "$WORK" && tmo 60 "$CERT_PY" "$REPO/tools/make_certs.py" tls --name emulator >"$WORK/certs.log" 2>&1) \
    || { tail -n 5 "$WORK/certs.log"; die "tools/make_certs.py failed"; }
chmod a+r "$WORK"/tls/*   # a throwaway PKI: the emulator runs as uid 10001 and reads its key
export CALLSTATE_TLS_DIR=$WORK/tls CALLSTATE_CALLS=300
CALLSTATE_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export CALLSTATE_TOKEN
CALLSTATE_PORT=$(free_port)
rm -f "$WORK/reports/load-report.json"
log "profile secure: -f docker-compose.secure.yml up --exit-code-from load load (mutual TLS + token)"
SECURE=(-f "$REPO/docker-compose.yml" -f "$REPO/docker-compose.secure.yml" -f "$HERE/compose.host.yml")
tmo 240 docker-compose --ansi never -p "$P" "${SECURE[@]}" up --no-build --exit-code-from load load \
    >"$WORK/secure.log" 2>&1 || { tail -n 30 "$WORK/secure.log"; die "the secure stack's load did not exit 0"; }
python3 - "$WORK/reports/load-report.json" <<'EOF2' || die "the secure load's report is not as expected"
import json, sys
report = json.load(open(sys.argv[1]))
assert report["calls"] == 300 and report["check"]["ok"] is True, (report["calls"], report["check"])
print("[profiles] secure: 300 calls over mutual TLS with a token, check ok")
EOF2
timeout 60 docker-compose --ansi never -p "$P" "${SECURE[@]}" down --remove-orphans >/dev/null 2>&1 || true
log "profile secure: PASS"
