#!/usr/bin/env bash
# System packages the set-up (python3-venv, where python3 lacks ensurepip) and the tests use
# beyond Python; CI (.ci/run) runs this. Each install is a no-op
# when the binary is already there. Without root or apt-get it installs nothing and says so
# (the tests that need a package skip, exit 0). With them, a package that could not be
# installed (the apt lock held by another apt, a mirror down) is an error: its reason is
# printed and the script exits 1, so a CI does not go on to skip those tests silently.
set -uo pipefail

APT_LOCK_WAIT=${APT_LOCK_WAIT:-120}   # seconds to wait for another apt/dpkg to let go of its lock
failed=()

apt_quiet() {   # apt_quiet ARGS...: run apt-get, print only its first error line when it fails
    local out
    if out=$(DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "$@" 2>&1); then
        return 0
    fi
    echo "system-deps: apt-get $*: $(grep -m1 -E '^(E|Err):' <<<"$out" || tail -n1 <<<"$out")"
    return 1
}

need() {   # need BINARY PACKAGE REASON
    local binary=$1 package=$2 reason=$3
    if command -v "$binary" >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "system-deps: not installing $package (needs root and apt-get); tests that use $binary skip: $reason"
        return 0
    fi
    if [ -z "${_APT_UPDATED:-}" ]; then
        apt_quiet update -qq || echo "system-deps: apt-get update failed; trying the package lists already here"
        _APT_UPDATED=1
    fi
    if ! apt_quiet install -y -qq --no-install-recommends "$package"; then
        echo "system-deps: could not install $package; tests that use $binary would skip: $reason"
        failed+=("$package")
    fi
}

# The README's next step, python3 -m venv, needs ensurepip, which Debian and Ubuntu ship apart
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt_quiet update -qq || echo "system-deps: apt-get update failed; trying the package lists already here"
        _APT_UPDATED=1
        apt_quiet install -y -qq --no-install-recommends python3-venv || failed+=(python3-venv)
    else
        echo "system-deps: python3 has no ensurepip, so python3 -m venv fails: install python3-venv (apt-get, as root)"
    fi
fi
need chromium chromium "the HTML report is rendered in a real headless browser"
need nginx nginx "callstate conformance is tested through a real nginx (grpc_pass over h2c)"
need haproxy haproxy "callstate conformance is tested through a real HAProxy (mode http, proto h2)"
need stress-ng stress-ng "tools/flake.sh runs the suite while stress-ng keeps every core busy"
need npm npm "grpc-js and buf curl, clients that know nothing of callstate, are installed with npm"
need docker-compose docker-compose "the compose files and their profiles are validated with docker-compose config (no docker daemon needed)"

# grpc-js and buf, clients that know nothing of callstate, for the stand-in's tests (pinned in
# tests/js/package.json and package-lock.json; installed into tests/js/node_modules, git-ignored)
if command -v npm >/dev/null 2>&1; then
    js=$(dirname "$0")/../tests/js
    if [ ! -d "$js/node_modules/@grpc/grpc-js" ] || [ ! -e "$js/node_modules/.bin/buf" ]; then
        (cd "$(dirname "$0")/../tests/js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
            || echo "system-deps: npm ci in tests/js failed; the grpc-js and buf curl tests skip"
    fi
else
    echo "system-deps: no npm; the grpc-js and buf curl tests of the stand-in skip"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "system-deps: FAILED to install: ${failed[*]}" >&2
    exit 1
fi
