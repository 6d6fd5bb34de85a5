#!/usr/bin/env bash
# System packages the tests use beyond Python; CI (.ci/run) runs this. Each install is a no-op
# when the binary is already there, and prints why it did nothing when it cannot install.
set -uo pipefail

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
        apt-get update -qq >/dev/null || echo "system-deps: apt-get update failed"
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null \
        || echo "system-deps: could not install $package; tests that use $binary skip: $reason"
}

need chromium chromium "the HTML report is rendered in a real headless browser"
need nginx nginx "callstate conformance is tested through a real nginx (grpc_pass over h2c)"
need haproxy haproxy "callstate conformance is tested through a real HAProxy (mode http, proto h2)"

# grpc-js, a client that knows nothing of callstate, for the stand-in's tests (pinned in
# tests/js/package.json and package-lock.json; installed into tests/js/node_modules, git-ignored)
if command -v npm >/dev/null 2>&1; then
    if [ ! -d "$(dirname "$0")/../tests/js/node_modules/@grpc/grpc-js" ]; then
        (cd "$(dirname "$0")/../tests/js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
            || echo "system-deps: npm ci in tests/js failed; the grpc-js tests skip"
    fi
else
    echo "system-deps: no npm; the grpc-js tests of the stand-in skip"
fi
