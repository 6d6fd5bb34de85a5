#!/usr/bin/env bash
# Container test (issue 4): build the callstate image with no registry at all, bring the
# docker-compose stack up, run the cancellation-heavy load through it, check the results,
# tear everything down.
#
#   bash tests/container/run.sh
#
# Needs root and apt (it installs docker.io, docker-compose and debootstrap when missing,
# and starts a private dockerd). Prints "SKIPPED: <reason>" and exits 0 when it cannot
# run; exits non-zero on any failure, after printing the last logs of dockerd and of the
# containers. Everything it starts lives under one temp dir and is removed on exit,
# failure or not.
#
# Steps:
#  1. a private dockerd (--bridge=none --iptables=false, own data/exec root and socket);
#  2. a base image from a debootstrap'ed Debian bookworm rootfs with python3 + venv,
#     imported with `docker import` (rootfs tarball cached in /var/cache/callstate);
#  3. wheels of callstate and all its dependencies built on the host (`pip wheel`);
#  4. `docker-compose build` of the repo's docker-compose.yml with BASE_IMAGE=that base and
#     WHEEL_DIR=those wheels (pip --no-index inside the build: no network needed);
#  5. `docker-compose up` with tests/container/compose.host.yml (host networking), wait for
#     the emulator's HEALTHCHECK, run the load service to completion;
#     then a hold-heavy load and `docker-compose stop emulator` while it holds calls (the
#     file's stop_grace_period): exit 0 in under 10 s, every call ended (1722) and logged;
#  6. check the load report (calls on every path, zero invariant violations), the
#     emulator's stdout (JSON state lines only, an End for every call) and `callstate check`
#     on every client's log with it; `serve --log-file` on a mounted folder run as its owner
#     (-u 4321:4321: the file is theirs); bad configuration (a log folder uid 10001 cannot
#     write, a missing TLS file, a token with a newline): one line in `docker logs`, non-zero.
#
# Environment knobs (all optional):
#   CALLSTATE_CONTAINER_TEST=0        skip (prints SKIPPED)
#   CALLSTATE_CONTAINER_CACHE=DIR     cache dir (default /var/cache/callstate)
#   CALLSTATE_CONTAINER_KEEP=1        keep the temp dir (logs, reports) after the run
#   CALLSTATE_CONTAINER_CALLS=N       calls for the load run (default 1000)
#   CALLSTATE_CONTAINER_BUDGET=S      time budget of all steps before cleanup (default 480)
#   DEBIAN_MIRROR=URL                 mirror for debootstrap (default: the one apt uses)

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T0=$(date +%s)
SUITE=bookworm
BASE_TAG=callstate-base:$SUITE
# Bump when the rootfs recipe changes, so a stale cache is not reused.
ROOTFS_RECIPE=v1-minbase-python3-venv
PATHS=(complete abort fatal hold cancel-abortive cancel-non-abortive)

# Every step runs under `tmo`: its own limit, cut to what is left of the whole budget.
BUDGET=${CALLSTATE_CONTAINER_BUDGET:-480}
DEADLINE=$((T0 + BUDGET))
IN_CLEANUP=0

# fd 3 and 4: the script's own stdout and stderr. A trap can run inside a command whose
# output is redirected to a file; progress and cleanup messages must still be seen.
exec 3>&1 4>&2
log() { printf '[container %4ds] %s\n' "$(($(date +%s) - T0))" "$*" >&3; }
skip() { echo "SKIPPED: $*"; exit 0; }
die() { log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- can it run at all?
[ "${CALLSTATE_CONTAINER_TEST:-1}" != 0 ] || skip "CALLSTATE_CONTAINER_TEST=0"
[ "$(uname -s)" = Linux ] || skip "containers need Linux (this is $(uname -s))"
[ "$(id -u)" = 0 ] || skip "needs root to install and start a private dockerd"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get to install the container engine"
command -v python3 >/dev/null 2>&1 || skip "no python3 on the host to build wheels"
command -v timeout >/dev/null 2>&1 || skip "no timeout(1)"

# ---------------------------------------------------------------- state and cleanup
WORK=$(mktemp -d /tmp/callstate-ctr.XXXXXX)
chmod 755 "$WORK"
SOCK=$WORK/docker.sock
DOCKERD_PID=
PROJECT=callstate-ctr-$$
COMPOSE_FILES=()
RUN_DIRS_MADE=()
STATUS=1

export DOCKER_HOST=unix://$SOCK
export DOCKER_CONFIG=$WORK/docker-config        # no user credential helpers or contexts
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH COMPOSE_FILE COMPOSE_PROJECT_NAME || true
mkdir -p "$DOCKER_CONFIG"

tmo() { # tmo SECONDS command...: timeout(1), capped by the budget (not during cleanup)
    local secs=$1 left; shift
    if [ "$IN_CLEANUP" = 0 ]; then
        left=$((DEADLINE - $(date +%s)))
        if [ "$left" -le 0 ]; then log "FAIL: over the ${BUDGET} s budget before: $*"; return 124; fi
        [ "$secs" -le "$left" ] || secs=$left
    fi
    timeout -k 10 "$secs" "$@"
}

dc() { # dc SECONDS compose-args...
    local secs=$1; shift
    tmo "$secs" docker-compose --ansi never -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"
}

unmount_under() { # lazily unmount anything still mounted below $1, deepest first
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

show_logs() {
    log "---- last dockerd log lines ----"
    tail -n 40 "$WORK/dockerd.log" 2>/dev/null || true
    if [ -n "$DOCKERD_PID" ] && [ ${#COMPOSE_FILES[@]} -gt 0 ]; then
        log "---- containers ----"
        timeout 20 docker ps -a 2>&1 || true
        log "---- last container log lines ----"
        dc 30 logs --no-color --tail=60 2>&1 || true
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    exec 1>&3 2>&4
    IN_CLEANUP=1
    [ "$STATUS" = 0 ] || { [ "$rc" != 0 ] || rc=1; }
    if [ "$rc" != 0 ]; then show_logs; fi
    log "cleanup"
    if [ -n "$DOCKERD_PID" ]; then
        if [ ${#COMPOSE_FILES[@]} -gt 0 ]; then
            dc 60 down --volumes --remove-orphans --rmi all >"$WORK/down.log" 2>&1 \
                || { log "compose down failed:"; tail -n 20 "$WORK/down.log"; }
        fi
        timeout 30 docker rm -f "$PROJECT-held" "$PROJECT-vol" "$PROJECT-bad1" "$PROJECT-bad2" "$PROJECT-bad3" >/dev/null 2>&1 || true
        timeout 30 docker image rm -f "$BASE_TAG" >/dev/null 2>&1 || true
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            log "dockerd did not stop in 20 s: SIGKILL"
            kill -KILL "$DOCKERD_PID" 2>/dev/null || true
            sleep 1
        fi
        # containerd (a child of dockerd) holds the same exec root; make sure it is gone.
        if [ -f "$WORK/exec/containerd/containerd.pid" ]; then
            kill -TERM "$(cat "$WORK/exec/containerd/containerd.pid")" 2>/dev/null || true
        fi
    fi
    unmount_under "$WORK"
    for d in "${RUN_DIRS_MADE[@]}"; do rmdir "$d" 2>/dev/null || true; done
    if [ "${CALLSTATE_CONTAINER_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK" 2>/dev/null || { sleep 2; unmount_under "$WORK"; rm -rf "$WORK" || true; }
    fi
    if [ "$rc" = 0 ]; then
        log "PASS: container test ($(($(date +%s) - T0)) s)"
    else
        log "FAIL: container test (exit $rc, $(($(date +%s) - T0)) s)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- 0. the engine
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    tmo 240 apt-get update -q >"$WORK/apt.log" 2>&1 \
        || { tail -n 30 "$WORK/apt.log"; die "apt-get update failed"; }
    tmo 360 apt-get install -y -q --no-install-recommends "${need[@]}" >>"$WORK/apt.log" 2>&1 \
        || { tail -n 30 "$WORK/apt.log"; die "apt-get install ${need[*]} failed"; }
fi
command -v docker >/dev/null 2>&1 || die "no docker client after installing docker.io"
log "engine: $(dockerd --version); $(docker-compose version --short 2>/dev/null | head -n1 | sed 's/^/docker-compose /')"

# ---------------------------------------------------------------- 1. private dockerd
# dockerd makes /run/docker and /run/containerd/s even with its own exec root: note
# whether they were there, to remove them afterwards only if this run made them (empty).
RUN_DIRS_MADE=()
for d in /run/docker/plugins /run/docker /run/containerd/s /run/containerd; do
    [ -e "$d" ] || RUN_DIRS_MADE+=("$d")
done
echo '{}' >"$WORK/daemon.json"   # ignore /etc/docker/daemon.json of any system engine
mkdir -p "$WORK/data" "$WORK/exec"
log "starting dockerd (--bridge=none, socket $SOCK)"
setsid dockerd \
    --config-file "$WORK/daemon.json" \
    --data-root "$WORK/data" \
    --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" \
    -H "unix://$SOCK" \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    >"$WORK/dockerd.log" 2>&1 </dev/null &
DOCKERD_PID=$!
for i in $(seq 1 60); do
    if timeout 5 docker version >/dev/null 2>&1; then break; fi
    kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited at start"
    [ "$i" -lt 60 ] || die "dockerd did not answer in 60 s"
    sleep 1
done
log "dockerd up: $(docker version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}'), storage $(docker info --format '{{.Driver}}')"

# ---------------------------------------------------------------- 2. base image, no registry
CACHE=${CALLSTATE_CONTAINER_CACHE:-/var/cache/callstate}
mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ] || CACHE=$WORK/cache
mkdir -p "$CACHE"
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
ROOTFS_TAR=$CACHE/rootfs-$SUITE-$ARCH-$ROOTFS_RECIPE.tar

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    # deb822 sources first, then one-line sources: the first Debian archive apt uses.
    local u
    u=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' \
        | grep -E '/debian/?$' | head -n1 || true)
    if [ -z "$u" ]; then
        u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
            | grep -E '/debian/?$' | head -n1 || true)
    fi
    echo "${u:-http://deb.debian.org/debian}"
}

if [ -s "$ROOTFS_TAR" ] && tar -tf "$ROOTFS_TAR" ./usr/bin/python3 >/dev/null 2>&1; then
    log "base rootfs from cache: $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
else
    MIRROR=$(debian_mirror)
    log "debootstrap --variant=minbase $SUITE with python3, python3-venv from $MIRROR (no cache yet)"
    ROOTFS=$WORK/rootfs
    tmo 360 debootstrap --variant=minbase --include=python3,python3-venv \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { unmount_under "$ROOTFS"; tail -n 30 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    unmount_under "$ROOTFS"
    # Slim it: no package caches, lists, docs, man pages or translations in the image.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
        "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* \
        "$ROOTFS"/var/log/*.log "$ROOTFS"/debootstrap
    printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"
    tmo 120 tar --numeric-owner -C "$ROOTFS" -cf "$ROOTFS_TAR.tmp.$$" . \
        || { rm -f "$ROOTFS_TAR.tmp.$$"; die "tar of the rootfs failed"; }
    mv -f "$ROOTFS_TAR.tmp.$$" "$ROOTFS_TAR"
    rm -rf "$ROOTFS"
    log "base rootfs built and cached: $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
fi
tmo 120 docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$ROOTFS_TAR" "$BASE_TAG" >/dev/null || die "docker import of the base rootfs failed"
BASE_PY=$(tmo 60 docker run --rm --network none "$BASE_TAG" python3 -c \
    'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2])') \
    || die "the base image cannot run python3"
log "base image $BASE_TAG imported (python $BASE_PY)"

# ---------------------------------------------------------------- 3. wheels on the host
CTX=$WORK/ctx
mkdir -p "$CTX"
# The build context is a copy of the working tree as git sees it (tracked and untracked,
# minus ignored files), so the test never writes into the repository.
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -C "$CTX" -xf -
else
    tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=venv --exclude=build \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$CTX" -xf -
fi
[ -f "$CTX/pyproject.toml" ] && [ -f "$CTX/Dockerfile" ] && [ -f "$CTX/docker-compose.yml" ] \
    || die "build context is missing pyproject.toml, Dockerfile or docker-compose.yml"

# Host python with pip for `pip wheel` (the repo's .venv as a fallback).
PY=python3
if ! "$PY" -m pip --version >/dev/null 2>&1; then
    [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -m pip --version >/dev/null 2>&1 \
        || die "no pip for the host's python3 (needed to build wheels)"
    PY=$REPO/.venv/bin/python
fi
HOST_PY=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
WHEELS=$CTX/wheels
mkdir -p "$WHEELS"
if [ "$HOST_PY" = "$BASE_PY" ]; then
    log "pip wheel: callstate and its dependencies for python $BASE_PY (host python $HOST_PY)"
    tmo 300 "$PY" -m pip wheel --disable-pip-version-check -q \
        --wheel-dir "$WHEELS" "$CTX" >"$WORK/wheel.log" 2>&1 \
        || { tail -n 30 "$WORK/wheel.log"; die "pip wheel failed"; }
else
    # Host python differs from the base's: build callstate (pure Python) here, fetch
    # binary wheels of its dependencies for the base's python and platform.
    PYV=${BASE_PY/./}
    log "host python $HOST_PY != base $BASE_PY: pip wheel callstate, pip download deps for cp$PYV"
    tmo 300 "$PY" -m pip wheel --disable-pip-version-check -q --no-deps \
        --wheel-dir "$WHEELS" "$CTX" >"$WORK/wheel.log" 2>&1 \
        || { tail -n 30 "$WORK/wheel.log"; die "pip wheel failed"; }
    M=$(uname -m)
    tmo 300 "$PY" -m pip download --disable-pip-version-check -q \
        --only-binary=:all: --python-version "$BASE_PY" --implementation cp --abi "cp$PYV" --abi abi3 --abi none \
        --platform "manylinux_2_28_$M" --platform "manylinux_2_17_$M" --platform "manylinux2014_$M" --platform any \
        --dest "$WHEELS" "$WHEELS"/callstate-*.whl >>"$WORK/wheel.log" 2>&1 \
        || { tail -n 30 "$WORK/wheel.log"; die "pip download of dependency wheels failed"; }
fi
rm -rf "$CTX/build" "$CTX"/*.egg-info
log "wheels: $(cd "$WHEELS" && ls | tr '\n' ' ')"

# ---------------------------------------------------------------- 4. compose build
# The emulator binds its port seconds after it is chosen (the image builds in between): a port the
# kernel hands out (bind to 0) may meanwhile be taken as another socket's ephemeral port ("Address
# already in use", seen under load). One below the ephemeral range, free now, is not handed out so.
PORT=$(python3 - <<'PYEOF'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for port in random.sample(range(max(1024, low - 12000), low), 200):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
PYEOF
)
[ -n "$PORT" ] || die "no free port below the ephemeral range"
REPORTS=$WORK/reports
mkdir -p "$REPORTS"
export CALLSTATE_IMAGE=callstate-ctr:$$
export CALLSTATE_BASE_IMAGE=$BASE_TAG
export CALLSTATE_WHEEL_DIR=wheels
export CALLSTATE_PORT=$PORT
export CALLSTATE_REPORT_DIR=$REPORTS
export CALLSTATE_CALLS=${CALLSTATE_CONTAINER_CALLS:-1000}
export CALLSTATE_CONCURRENCY=${CALLSTATE_CONCURRENCY:-16}
export CALLSTATE_MAX_HOLD=${CALLSTATE_MAX_HOLD:-5}
COMPOSE_FILES=(-f "$CTX/docker-compose.yml" -f "$CTX/tests/container/compose.host.yml")
[ -f "$CTX/tests/container/compose.host.yml" ] || die "no tests/container/compose.host.yml in the context"

log "docker-compose build (BASE_IMAGE=$BASE_TAG, WHEEL_DIR=wheels, offline pip)"
(cd "$CTX" && tmo 60 docker-compose config -q) \
    || die "docker-compose config rejected the default files (docker-compose.yml + override)"
dc 60 config -q || die "docker-compose config rejected the host-network files"
dc 360 build >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; die "docker-compose build failed"; }
grep -q 'installing callstate offline' "$WORK/build.log" || die "the build did not take the offline wheel path"
log "image $CALLSTATE_IMAGE built ($(docker image inspect --format '{{.Size}}' "$CALLSTATE_IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }'))"
[ "$(docker image inspect --format '{{.Config.User}}' "$CALLSTATE_IMAGE")" = callstate ] \
    || die "the image does not run as the non-root user callstate"

# ---------------------------------------------------------------- 5. up, healthy, load
log "docker-compose up -d emulator (host network, port $PORT)"
dc 120 up -d --no-build emulator >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; die "compose up emulator failed"; }
EMU=$(dc 30 ps -q emulator)
[ -n "$EMU" ] || die "no emulator container"
health=
for i in $(seq 1 90); do
    health=$(timeout 10 docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$EMU" 2>/dev/null || echo unknown)
    [ "$health" = healthy ] && break
    [ "$(timeout 10 docker inspect --format '{{.State.Running}}' "$EMU" 2>/dev/null)" = true ] \
        || die "the emulator container stopped (health: $health)"
    [ "$health" != unhealthy ] || die "the emulator is unhealthy"
    [ $((i % 10)) != 0 ] || log "waiting for the emulator to be healthy ($health, ${i} s)"
    sleep 1
done
[ "$health" = healthy ] || die "the emulator was not healthy in 90 s (last: $health)"
log "emulator healthy"
[ "$(timeout 10 docker exec "$EMU" id -u)" != 0 ] || die "the emulator runs as root"

log "docker-compose up -d load ($CALLSTATE_CALLS calls, concurrency $CALLSTATE_CONCURRENCY)"
dc 120 up -d --no-build load >>"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; die "compose up load failed"; }
LOAD=$(dc 30 ps -q load)
[ -n "$LOAD" ] || die "no load container"
LOAD_RC=$(tmo 300 docker wait "$LOAD") || die "the load did not finish in 300 s"
log "load exited with $LOAD_RC"
timeout 30 docker logs "$LOAD" >"$WORK/load.out" 2>"$WORK/load.err" || true
if [ "$LOAD_RC" != 0 ]; then
    tail -n 40 "$WORK/load.out" "$WORK/load.err"
    die "callstate load exited $LOAD_RC"
fi

# Bad configuration, as a user gets it wrong: one line naming what is wrong in `docker logs`
# and a non-zero exit, for a state log folder the image's user cannot write (a host folder
# mounted as is), a TLS file that is not there (CALLSTATE_TLS_DIR pointing elsewhere) and a
# token read from a file with its newline. Started now, side by side, judged after the stop.
VOL=$WORK/vol
mkdir -p "$VOL/own" "$VOL/root" && chown 4321:4321 "$VOL/own" && chmod 755 "$VOL/root"
BAD=0
bad_start() { # bad_start docker-run-args...: a server that must refuse to start
    BAD=$((BAD + 1))
    tmo 30 docker run -d --name "$PROJECT-bad$BAD" --network none "$@" >/dev/null || die "docker run (bad $BAD) failed"
}
CHECKED=0
bad_check() { # bad_check WHAT NEEDLE: the next started one failed with one line holding NEEDLE
    local what=$1 needle=$2 name rc
    CHECKED=$((CHECKED + 1)); name=$PROJECT-bad$CHECKED
    rc=$(tmo 30 docker wait "$name") || die "the server ($what) did not exit"
    timeout 10 docker logs "$name" >"$WORK/bad.out" 2>"$WORK/bad.err" || true
    if [ "$rc" = 0 ] || [ -s "$WORK/bad.out" ] || [ "$(wc -l <"$WORK/bad.err")" != 1 ] || ! grep -q -- "$needle" "$WORK/bad.err"; then
        cat "$WORK/bad.err"; die "$what: not one clear line and a non-zero exit (exit $rc)"
    fi
    log "  $what: exit $rc, $(cat "$WORK/bad.err")"
}
bad_start -v "$VOL/root:/logs" "$CALLSTATE_IMAGE" serve --log-file /logs/server.jsonl
bad_start -v "$VOL/root:/tls:ro" "$CALLSTATE_IMAGE" serve --tls-cert /tls/server.pem --tls-key /tls/server.key \
    --tls-client-ca /tls/ca.pem
bad_start -e "CALLSTATE_TOKEN=$(printf 's3cret\n ')" "$CALLSTATE_IMAGE" serve

# Graceful stop with calls in flight, as `docker compose stop`/`down` does it while a load runs:
# a hold-heavy load (the image's `load`, host network) holds calls on the emulator, then SIGTERM
# to the server (PID 1 in its container), within the service's stop_grace_period (no -t: the
# compose file's own): it must exit 0, end every call it holds (1722) and log each End.
HELD=$PROJECT-held
log "a hold-heavy load, then docker-compose stop emulator while it runs (stop_grace_period of the file)"
tmo 60 docker run -d --name "$HELD" --network host --user 0:0 -v "$REPORTS:/reports" "$CALLSTATE_IMAGE" \
    load --target "127.0.0.1:$PORT" --calls 2000 --concurrency 48 --mix hold=100 --hold-for 60 \
    --cancel abortive=10,non-abortive=20 --no-verify --log-file /reports/held-client.jsonl \
    >"$WORK/held.id" 2>&1 || { cat "$WORK/held.id"; die "docker run of the hold-heavy load failed"; }
EMU_LOG=$(timeout 10 docker inspect --format '{{.LogPath}}' "$EMU")   # the engine's file of its output
BEFORE=$(wc -l <"$EMU_LOG")
for i in $(seq 1 100); do   # evidence: the held calls' lines in the emulator's state log
    [ "$(wc -l <"$EMU_LOG")" -gt $((BEFORE + 100)) ] && break
    if [ "$i" = 100 ] || [ "$(timeout 10 docker inspect --format '{{.State.Running}}' "$HELD")" != true ]; then
        timeout 10 docker logs "$HELD" 2>&1 | tail -n 5
        die "the hold-heavy load made no calls"
    fi
    sleep 0.2
done
T_STOP=$(date +%s%N)
dc 60 stop emulator >>"$WORK/up.log" 2>&1 || die "compose stop emulator failed"
STOP_MS=$((($(date +%s%N) - T_STOP) / 1000000))
EMU_RC=$(timeout 10 docker inspect --format '{{.State.ExitCode}}' "$EMU")
log "emulator stopped in $STOP_MS ms, exit $EMU_RC"
[ "$STOP_MS" -lt 10000 ] || die "the emulator took $STOP_MS ms to stop (its --grace is 2 s)"
timeout 60 docker wait "$HELD" >/dev/null 2>&1 || die "the hold-heavy load did not end after the server stopped"
# Server log: the emulator's stdout as Docker captured it (stderr kept apart).
timeout 30 docker logs "$EMU" >"$REPORTS/server.jsonl" 2>"$WORK/emulator.err" \
    || die "docker logs of the emulator failed"
if [ "$EMU_RC" != 0 ]; then
    tail -n 20 "$WORK/emulator.err"
    die "the emulator exited $EMU_RC on SIGTERM (expected a graceful 0)"
fi
# The image's server runs on uvloop, the loop serve --loop auto takes where it is installed (a base
# dependency): what users of the image get, said on its start line.
grep -q '^callstate: serving .*, event loop: uvloop)$' "$WORK/emulator.err" \
    || die "the emulator's start line does not say it runs on uvloop: $(grep -m1 'serving' "$WORK/emulator.err")"
log "the emulator ran on uvloop"

# ---------------------------------------------------------------- 6. checks
log "checking the report and the state logs"
python3 - "$REPORTS/load-report.json" "$REPORTS/server.jsonl" "${PATHS[@]}" <<'PY' || die "result checks failed"
import json, sys

report_path, server_log, *paths = sys.argv[1:]
problems = []
with open(report_path) as f:
    report = json.load(f)
calls = report.get("calls")
by_path = report.get("paths") or {}
check = report.get("check") or {}
print(f"  report: calls={calls} paths={json.dumps(by_path, sort_keys=True)}")
print(f"          by_code={json.dumps(report.get('by_code'), sort_keys=True)} check={json.dumps(check, sort_keys=True)[:300]}")
if not isinstance(calls, int) or calls <= 0:
    problems.append(f"report has no calls: {calls!r}")
for p in paths:
    if not isinstance(by_path.get(p), int) or by_path[p] <= 0:
        problems.append(f"no calls on path {p!r}")
if not isinstance(report.get("by_code"), dict) or not report["by_code"]:
    problems.append("report has no by_code counts")
if check.get("ok") is not True or check.get("violations") != 0:
    problems.append(f"invariant check not clean: ok={check.get('ok')!r} violations={check.get('violations')!r}")

keys = {"ts", "side", "call_id", "state", "prev", "event"}
lines = states = 0
bad = []
ids, ended, shut = set(), set(), 0
with open(server_log) as f:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        lines += 1
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append((n, line[:120].rstrip()))
            continue
        if isinstance(obj, dict) and keys <= obj.keys() and obj["side"] == "server":
            states += 1
            ids.add(obj["call_id"])
            if obj["state"] == "End" and obj["event"] == "enter":
                ended.add(obj["call_id"])
                shut += obj.get("code") == 1722
print(f"  emulator stdout: {lines} lines, {states} server state lines, {len(ids)} call ids, {len(ended)} End,"
      f" {shut} ended by the stop (1722)")
if ids - ended:
    problems.append(f"{len(ids - ended)} calls have no End in the emulator's log, e.g. {sorted(ids - ended)[0]}")
if shut == 0:
    problems.append("no call was in flight at the stop (no End with 1722): the graceful stop was not exercised")
if bad:
    problems.append(f"{len(bad)} emulator stdout lines are not JSON, first: {bad[0]}")
if states == 0:
    problems.append("the emulator's log holds no JSON state lines")
if isinstance(calls, int) and len(ids) < calls // 2:
    problems.append(f"the emulator logged only {len(ids)} call ids for {calls} calls")
for p in problems:
    print("  PROBLEM:", p)
sys.exit(1 if problems else 0)
PY

# Both sides' logs through the checker, inside the image (the same build users get).
log "callstate check on the emulator's stdout and the load's client log (in the image)"
tmo 120 docker run --rm --network none -v "$REPORTS:/reports:ro" "$CALLSTATE_IMAGE" \
    check /reports/server.jsonl /reports/load-client.jsonl /reports/held-client.jsonl >"$WORK/check.out" 2>&1 \
    || { tail -n 30 "$WORK/check.out"; die "callstate check found violations"; }
tail -n 3 "$WORK/check.out" | sed 's/^/  /'

# The server's state log on a mounted folder, as docs/containers.md says: run as the folder's
# owner (--user), the file is theirs.
log "serve --log-file on a mounted folder as its owner (--user 4321:4321)"
tmo 60 docker run -d --name "$PROJECT-vol" --network host --user 4321:4321 -e "CALLSTATE_PORT=$PORT" \
    -v "$VOL/own:/logs" "$CALLSTATE_IMAGE" serve --bind 127.0.0.1 --port "$PORT" --log-file /logs/server.jsonl \
    >/dev/null || die "docker run of serve with --user failed"
for i in $(seq 1 50); do
    timeout 10 docker exec "$PROJECT-vol" callstate call --target "127.0.0.1:$PORT" --timeout 2 >/dev/null 2>&1 && break
    [ "$i" -lt 50 ] || die "serve --user 4321:4321 answered no call in 10 s"
    sleep 0.2
done
timeout 30 docker stop "$PROJECT-vol" >/dev/null || die "docker stop of serve --user failed"
[ "$(timeout 10 docker inspect --format '{{.State.ExitCode}}' "$PROJECT-vol")" = 0 ] || die "serve --user did not exit 0"
[ "$(stat -c %u:%g "$VOL/own/server.jsonl")" = 4321:4321 ] || die "the state log is not owned by the --user"
grep -q '"state":"End"' "$VOL/own/server.jsonl" || die "the state log on the volume has no End"
timeout 30 docker rm "$PROJECT-vol" >/dev/null 2>&1 || true

log "bad configuration: one line in docker logs, non-zero exit"
bad_check "unwritable log folder" "Permission denied"
bad_check "missing TLS file" "/tls/server.pem"
bad_check "token with a newline" "CALLSTATE_TOKEN"

log "docker-compose down"
dc 120 down --volumes --remove-orphans --rmi all >"$WORK/down.log" 2>&1 \
    || { tail -n 20 "$WORK/down.log"; die "compose down failed"; }
COMPOSE_FILES=()
STATUS=0
