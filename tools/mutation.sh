#!/usr/bin/env bash
# Mutation testing (not part of CI: slow). Mutates files IN PLACE, one mutant at a time, and
# restores each after its test run: run it on a clean checkout and do not edit meanwhile.
#   bash tools/mutation.sh core        # lifecycle rules and the checker, unit tests (over an hour on 2 cores)
#   bash tools/mutation.sh checker     # the checker alone, with the unit tests that use it (about an hour)
#   bash tools/mutation.sh pipes       # client pipe core and pipe scripts, pipe unit + end-to-end tests (1.5 hours)
#   bash tools/mutation.sh adapters    # client core, server handler, end-to-end tests (hours)
#   bash tools/mutation.sh pipes server/pipes.py   # a config's tests on the modules named instead of its own
# Prints the score and every surviving mutant; a survivor in a rule is a missing test.
# Stopping it (Ctrl-C, or a kill of its process group) restores any file left mutated.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-core}
config="tools/mutation-$which.toml"
usage="usage: bash tools/mutation.sh core|checker|pipes|adapters [MODULE.py ...]"
[ -f "$config" ] || { echo "$usage" >&2; exit 2; }
shift $(( $# > 0 ? 1 : 0 ))
bin=.venv/bin
export PATH="$PWD/$bin:$PATH"   # the test command's `python` is the project's
mkdir -p build
session="build/mutation-$which.sqlite"
git diff --quiet -- callstate client server || { echo "tools/mutation.sh: commit or stash your changes first (it edits files in place)" >&2; exit 2; }
if [ $# -gt 0 ]; then   # the same tests on other modules: a config of our own with its module-path replaced
    for m in "$@"; do [ -f "$m" ] || { echo "tools/mutation.sh: no module $m" >&2; echo "$usage" >&2; exit 2; }; done
    subset=$(printf '%s\n' "$@" | sed 's|.*/||; s|\.py$||' | paste -sd- -)
    "$bin/python" - "$config" "build/mutation-$which-$subset.toml" "$@" <<'PY'
import json, re, sys, tomllib
src, dst, *modules = sys.argv[1:]
text = open(src).read()
tomllib.loads(text)["cosmic-ray"]["module-path"]   # the config has one to replace
text, n = re.subn(r"(?m)^module-path = \[.*?\]$", lambda _: "module-path = " + json.dumps(modules), text)
assert n == 1, f"{src}: expected one single-line module-path"
open(dst, "w").write(text)
PY
    config="build/mutation-$which-$subset.toml"
    session="build/mutation-$which-$subset.sqlite"
fi
restore() { git diff --quiet -- callstate client server || { echo "tools/mutation.sh: files left mutated; restoring" >&2; git checkout -- callstate client server; }; }
trap restore EXIT
trap 'exit 130' INT TERM
rm -f "$session"
"$bin/cosmic-ray" init "$config" "$session"
"$bin/cr-filter-operators" "$session" "$config"
"$bin/cosmic-ray" baseline "$config"
"$bin/cosmic-ray" exec "$config" "$session"
"$bin/cr-report" "$session" --show-pending
