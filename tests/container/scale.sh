#!/usr/bin/env bash
# Container test of the compose profile `scale` (issue 17): N emulator replicas
# (`--scale emulator=N`) behind Debian's nginx with the shipped config, a cancellation-heavy
# load through it (30% non-abortive cancels), then: every cancel notice reached its call (no
# "unknown" answer; each delivered notice is a cancel_seen in the log of the replica that
# dispatched the call), every replica held calls, and `callstate check` passes over the
# client log and the replicas' logs.
#
#   bash tests/container/scale.sh
#
# Needs root and apt (installs docker.io, docker-compose and debootstrap when missing, starts
# a private dockerd). Prints "SKIPPED: <reason>" and exits 0 when it cannot run; non-zero on
# any failure, after the last logs. Everything lives under one temp dir, removed on exit.
#   CALLSTATE_CONTAINER_TEST=0     skip
#   CALLSTATE_CONTAINER_CACHE=DIR  cache of the Debian rootfs (default /var/cache/callstate,
#                                  shared with tests/container/run.sh)
#   CALLSTATE_SCALE_REPLICAS=N     replicas (default 3)
#   CALLSTATE_CONTAINER_BUDGET=S   time budget before cleanup (default 900)
#   CALLSTATE_CONTAINER_KEEP=1     keep the temp dir (logs, reports) after the run
#   DEBIAN_MIRROR=URL              mirror for debootstrap and the nginx build

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T0=$(date +%s)
SUITE=bookworm
REPLICAS=${CALLSTATE_SCALE_REPLICAS:-3}
BUDGET=${CALLSTATE_CONTAINER_BUDGET:-900}
DEADLINE=$((T0 + BUDGET))

exec 3>&1 4>&2
log() { printf '[scale %4ds] %s\n' "$(($(date +%s) - T0))" "$*" >&3; }
skip() { echo "SKIPPED: $*"; exit 0; }
die() { log "FAIL: $*"; exit 1; }

[ "${CALLSTATE_CONTAINER_TEST:-1}" != 0 ] || skip "CALLSTATE_CONTAINER_TEST=0"
[ "$(uname -s)" = Linux ] || skip "containers need Linux"
[ "$(id -u)" = 0 ] || skip "needs root to install and start a private dockerd"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get to install the container engine"

WORK=$(mktemp -d /tmp/callstate-scale.XXXXXX)
chmod 755 "$WORK"
SOCK=$WORK/docker.sock
DOCKERD_PID=
PROJECT=callstate-scale-$$
BASE_TAG=callstate-scale-base:$$
export DOCKER_HOST=unix://$SOCK DOCKER_CONFIG=$WORK/docker-config DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH COMPOSE_FILE COMPOSE_PROJECT_NAME || true
mkdir -p "$DOCKER_CONFIG"

tmo() { # tmo SECONDS command...: timeout(1) capped by the budget
    local secs=$1 left; shift
    left=$((DEADLINE - $(date +%s)))
    [ "$left" -gt 0 ] || { log "over the ${BUDGET} s budget before: $*"; return 124; }
    [ "$secs" -le "$left" ] || secs=$left
    timeout -k 10 "$secs" "$@"
}
FILES=()
dc() { local secs=$1; shift; tmo "$secs" docker-compose --ansi never -p "$PROJECT" "${FILES[@]}" "$@"; }

unmount_under() {
    local m
    while read -r m; do umount -l "$m" 2>/dev/null || true; done \
        < <(awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    exec 1>&3 2>&4
    DEADLINE=$(($(date +%s) + 120))
    if [ "$rc" != 0 ] && [ -n "$DOCKERD_PID" ]; then
        log "---- containers and their last lines ----"
        timeout 20 docker ps -a 2>&1 || true
        [ ${#FILES[@]} -gt 0 ] && dc 30 logs --no-color --tail=30 2>&1 | tail -n 80 || true
        tail -n 20 "$WORK/dockerd.log" 2>/dev/null || true
    fi
    if [ -n "$DOCKERD_PID" ]; then
        [ ${#FILES[@]} -gt 0 ] && dc 90 --profile scale down --volumes --remove-orphans --rmi all >/dev/null 2>&1 || true
        timeout 30 docker image rm -f "$BASE_TAG" >/dev/null 2>&1 || true
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
        [ -f "$WORK/exec/containerd/containerd.pid" ] && kill -TERM "$(cat "$WORK/exec/containerd/containerd.pid")" 2>/dev/null || true
    fi
    unmount_under "$WORK"
    if [ "${CALLSTATE_CONTAINER_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK" 2>/dev/null || true; fi
    if [ "$rc" = 0 ]; then log "PASS: scale container test ($(($(date +%s) - T0)) s)"
    else log "FAIL: scale container test (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- the engine, a private dockerd
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { tmo 240 apt-get update -q && tmo 360 apt-get install -y -q --no-install-recommends "${need[@]}"; } \
        >"$WORK/apt.log" 2>&1 || { tail -n 20 "$WORK/apt.log"; die "apt-get install ${need[*]} failed"; }
fi
echo '{}' >"$WORK/daemon.json"
mkdir -p "$WORK/data" "$WORK/exec"
setsid dockerd --config-file "$WORK/daemon.json" --data-root "$WORK/data" --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" -H "unix://$SOCK" \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 </dev/null &
DOCKERD_PID=$!
for i in $(seq 1 60); do
    timeout 5 docker version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited at start"
    [ "$i" -lt 60 ] || die "dockerd did not answer in 60 s"
    sleep 1
done
log "dockerd up ($(docker version --format '{{.Server.Version}}'))"

# ---------------------------------------------------------------- a Debian base, no registry
mirror() {
    [ -n "${DEBIAN_MIRROR:-}" ] && { echo "$DEBIAN_MIRROR"; return; }
    local u
    u=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'tolower($1) == "uris:" { print $2 }' \
        | grep -E '/debian/?$' | head -n1 || true)
    [ -n "$u" ] || u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" { print $2 }' | grep -E '/debian/?$' | head -n1 || true)
    echo "${u:-http://deb.debian.org/debian}"
}
CACHE=${CALLSTATE_CONTAINER_CACHE:-/var/cache/callstate}
mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ] || CACHE=$WORK/cache
mkdir -p "$CACHE"
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
ROOTFS_TAR=$CACHE/rootfs-$SUITE-$ARCH-v1-minbase-python3-venv.tar   # tests/container/run.sh's cache
if ! { [ -s "$ROOTFS_TAR" ] && tar -tf "$ROOTFS_TAR" ./usr/bin/python3 >/dev/null 2>&1; }; then
    MIRROR=$(mirror)
    log "debootstrap --variant=minbase $SUITE with python3, python3-venv from $MIRROR"
    ROOTFS=$WORK/rootfs
    tmo 420 debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || { unmount_under "$ROOTFS"; tail -n 20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    unmount_under "$ROOTFS"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log "$ROOTFS"/debootstrap
    printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"
    tmo 120 tar --numeric-owner -C "$ROOTFS" -cf "$ROOTFS_TAR.tmp.$$" . && mv -f "$ROOTFS_TAR.tmp.$$" "$ROOTFS_TAR"
    rm -rf "$ROOTFS"
fi
tmo 120 docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE_TAG" >/dev/null \
    || die "docker import of the base rootfs failed"
BASE_PY=$(tmo 60 docker run --rm --network none "$BASE_TAG" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
log "base image $BASE_TAG (python $BASE_PY)"

# ---------------------------------------------------------------- wheels, build
CTX=$WORK/ctx
mkdir -p "$CTX"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -C "$CTX" -xf -
PY=python3
"$PY" -m pip --version >/dev/null 2>&1 || PY=$REPO/.venv/bin/python
[ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$BASE_PY" ] \
    || skip "the host's python is not the base image's $BASE_PY (tests/container/run.sh handles that case)"
tmo 300 "$PY" -m pip wheel --disable-pip-version-check -q --wheel-dir "$CTX/wheels" "$CTX" >"$WORK/wheel.log" 2>&1 \
    || { tail -n 20 "$WORK/wheel.log"; die "pip wheel failed"; }
rm -rf "$CTX/build" "$CTX"/*.egg-info

REPORTS=$WORK/reports
mkdir -p "$REPORTS" && chmod 777 "$REPORTS"
export CALLSTATE_IMAGE=callstate-scale:$$ CALLSTATE_BALANCER_IMAGE=callstate-scale-nginx:$$
export CALLSTATE_BASE_IMAGE=$BASE_TAG CALLSTATE_NGINX_BASE_IMAGE=$BASE_TAG CALLSTATE_WHEEL_DIR=wheels
export CALLSTATE_REPORT_DIR=$REPORTS CALLSTATE_CALLS=${CALLSTATE_CONTAINER_CALLS:-600} CALLSTATE_CONCURRENCY=16
export CALLSTATE_LOAD_MIX=complete=40,abort=10,hold=50 CALLSTATE_SCALE_CANCEL=abortive=20,non-abortive=30
export CALLSTATE_MAX_HOLD=30 CALLSTATE_SERVER_MIX=complete=100
FILES=(-f "$CTX/docker-compose.yml" -f "$CTX/tests/container/compose.scale.yml")
dc 60 --profile scale config -q || die "docker-compose config rejected the scale files"
log "docker-compose build (the callstate image offline from wheels; nginx from Debian)"
dc 600 --profile scale build >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; die "build failed"; }

# ---------------------------------------------------------------- up: N replicas, nginx, the load
log "up: $REPLICAS replicas, the balancer, the load"
dc 300 --profile scale up --no-build --scale "emulator=$REPLICAS" --exit-code-from load-scale load-scale \
    >"$WORK/up.log" 2>&1 || { tail -n 40 "$WORK/up.log"; die "the load through the balancer failed"; }
[ "$(dc 30 ps -q emulator | wc -l)" = "$REPLICAS" ] || die "not $REPLICAS replicas"
dc 60 --profile scale stop >/dev/null 2>&1 || die "stop failed"    # SIGTERM: each replica flushes its log
# Every replica's state log as docs/containers.md says to take it (`ps -a`: they are stopped).
mkdir -p "$REPORTS/servers"
for c in $(dc 30 ps -a -q emulator); do
    [ "$(timeout 10 docker inspect --format '{{.State.ExitCode}}' "$c")" = 0 ] || die "replica $c did not exit 0 on SIGTERM"
    timeout 30 docker logs "$c" 2>/dev/null >"$REPORTS/servers/$c.jsonl" || die "docker logs $c failed"
done
SERVER_LOGS=("$REPORTS"/servers/*.jsonl)
[ ${#SERVER_LOGS[@]} = "$REPLICAS" ] || die "expected $REPLICAS server logs, found ${#SERVER_LOGS[@]}"

# ---------------------------------------------------------------- the verdict
CHECK_PY=$REPO/.venv/bin/python
[ -x "$CHECK_PY" ] || CHECK_PY=python3
"$CHECK_PY" - "$REPORTS/scale-client.jsonl" "$REPORTS/servers" "$REPLICAS" <<'EOF' || die "a notice missed its call"
import json, pathlib, sys
client_log, servers, replicas = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
def calls(path):
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            e = json.loads(line)
            out.setdefault(e["call_id"], []).append(e)
    return out
client = calls(client_log)
holder, logs = {}, []
for i, path in enumerate(sorted(servers.glob("*.jsonl"))):
    logs.append(calls(path))
    for cid, es in logs[-1].items():
        if any(e["state"] == "D" and e["prev"] is None for e in es):
            holder[cid] = i
shares = [sum(1 for h in holder.values() if h == r) for r in range(replicas)]
assert min(shares) > 0, f"a replica held no call: {shares}"
routed, missed = 0, []
for cid, es in client.items():
    sent = [e for e in es if e["event"] == "cancel_sent"]
    if not sent:
        continue
    detail = sent[0].get("detail", "")
    if detail.startswith("unknown: the client was closed"):
        continue   # the load ended before the answer came back: nothing to route
    if cid not in holder:
        assert "(unknown)" not in detail, (cid, detail)
        continue   # escalated to an abortive cancel before it reached a replica
    routed += 1
    if "(unknown)" in detail or (detail.startswith("delivered") and not any(
            e["event"] == "cancel_seen" and e.get("cancel") == "non-abortive" for e in logs[holder[cid]][cid])):
        missed.append(cid)
for cid in missed[:3]:
    print(f"missed: {cid} held by replica {holder[cid]}", file=sys.stderr)
    for e in client[cid]:
        print("  client", json.dumps(e), file=sys.stderr)
    for e in logs[holder[cid]][cid]:
        print("  server", json.dumps(e), file=sys.stderr)
assert not missed, f"{len(missed)} of {routed} notices missed their call"
assert routed >= 25, routed   # any one misrouted notice fails above
print(f"{len(client)} calls, {routed} notices routed to their replica, calls per replica {shares}")
EOF
"$CHECK_PY" -m callstate check "$REPORTS/scale-client.jsonl" "$REPORTS/servers" >"$WORK/check.txt" 2>&1 \
    || { cat "$WORK/check.txt"; die "callstate check failed over the client log and the replicas' logs"; }
log "$(head -n1 "$WORK/check.txt")"
