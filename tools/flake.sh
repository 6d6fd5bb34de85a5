#!/usr/bin/env bash
# Run the test suite N times while a CPU hog keeps every core busy, to find tests that pass
# only on a quiet machine. Prints one line per run and a summary; exits 1 if any run failed.
#
#   tools/flake.sh [N] [pytest args...]      N defaults to 10; e.g. tools/flake.sh 3 -m unit
#
# Env: FLAKE_HOG (the stress-ng CPU workers, default: the number of cores; 0 for none),
#      PYTHON (default: .venv/bin/python, else python3). Each run's output is kept in
#      $FLAKE_DIR (default: a new temp folder) as run-K.log; the failing tests are listed.
set -uo pipefail

cd "$(dirname "$0")/.."
runs=${1:-10}
shift || true
case $runs in ''|*[!0-9]*|0) echo "usage: tools/flake.sh [N>=1] [pytest args...]" >&2; exit 2 ;; esac
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
hog=${FLAKE_HOG:-$(nproc)}
out=${FLAKE_DIR:-$(mktemp -d -t callstate-flake.XXXXXX)}
mkdir -p "$out"

hog_pid=""
stop_hog() {
    if [ -n "$hog_pid" ] && kill -0 "$hog_pid" 2>/dev/null; then
        kill -TERM "$hog_pid" 2>/dev/null
        wait "$hog_pid" 2>/dev/null
    fi
}
trap 'stop_hog' EXIT
trap 'stop_hog; exit 130' INT
trap 'stop_hog; exit 143' TERM

if [ "$hog" != 0 ]; then
    if ! command -v stress-ng >/dev/null 2>&1; then
        echo "flake: stress-ng is not installed (tools/system-deps.sh installs it)" >&2
        exit 2
    fi
    stress-ng --cpu "$hog" --quiet &
    hog_pid=$!
    echo "flake: $runs runs of the suite, stress-ng --cpu $hog (PID $hog_pid) keeping the cores busy; logs in $out"
else
    echo "flake: $runs runs of the suite, no CPU hog; logs in $out"
fi

failed=0
for k in $(seq 1 "$runs"); do
    start=$(date +%s)
    "$python" -m pytest -q -p no:cacheprovider "$@" >"$out/run-$k.log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^=+ .*(passed|failed|error).* =+$' "$out/run-$k.log" | tail -1)
    if [ "$rc" = 0 ]; then
        echo "run $k/$runs: pass in ${took} s  ${summary}"
    else
        failed=$((failed + 1))
        echo "run $k/$runs: FAIL (pytest exit $rc) in ${took} s  ${summary}"
        grep -E '^(FAILED|ERROR) ' "$out/run-$k.log" | sed 's/^/    /'
    fi
done
under=""
[ "$hog" != 0 ] && under=" under stress-ng --cpu $hog"
echo "flake: $((runs - failed))/$runs runs green$under"
[ "$failed" = 0 ]
