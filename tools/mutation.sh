#!/usr/bin/env bash
# Mutation testing (not part of CI: slow). Mutates files IN PLACE, one mutant at a time, and
# restores each after its test run: run it on a clean checkout and do not edit meanwhile.
#   bash tools/mutation.sh core        # lifecycle rules and the checker, unit tests (minutes)
#   bash tools/mutation.sh adapters    # client core, server handler, end-to-end tests (an hour or more)
# Prints the score and every surviving mutant; a survivor in a rule is a missing test.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-core}
config="tools/mutation-$which.toml"
[ -f "$config" ] || { echo "usage: bash tools/mutation.sh core|adapters" >&2; exit 2; }
bin=.venv/bin
export PATH="$PWD/$bin:$PATH"   # the test command's `python` is the project's
mkdir -p build
session="build/mutation-$which.sqlite"
git diff --quiet -- callstate client server || { echo "tools/mutation.sh: commit or stash your changes first (it edits files in place)" >&2; exit 2; }
rm -f "$session"
"$bin/cosmic-ray" init "$config" "$session"
"$bin/cr-filter-operators" "$session" "$config"
"$bin/cosmic-ray" baseline "$config"
"$bin/cosmic-ray" exec "$config" "$session"
"$bin/cr-report" "$session" --show-pending
git diff --quiet -- callstate client server || { echo "tools/mutation.sh: files left mutated; restoring" >&2; git checkout -- callstate client server; }
