#!/usr/bin/env bash
# A tour of every path of both lifecycles against a local server, then a check of both logs.
# Usage: bash tools/demo.sh   (after installing: pip install -e '.[dev]')
set -euo pipefail
CALLSTATE=${CALLSTATE:-callstate}
command -v "$CALLSTATE" >/dev/null || CALLSTATE="$(dirname "$0")/../.venv/bin/callstate"
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

"$CALLSTATE" serve --port 0 --port-file "$work/port" --log-file "$work/server.jsonl" 2>"$work/server.err" &
server=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { cat "$work/server.err"; exit 1; }
target="127.0.0.1:$(cat "$work/port")"
echo "== server on $target"

step() {
  echo; echo "== $1"; shift
  "$CALLSTATE" call --target "$target" --log-file "$work/client.jsonl" "$@" || true
}
step "complete (D -> Comp -> End; client 0)" --outcome complete --reply-bytes 16
step "abort with an application code (D -> A -> End; the exact code reaches the client)" --outcome abort --code 5001
step "fatal (D -> End; client 1726)" --outcome fatal
step "hold, then abortive cancel (client 1818; the server sees the cancel)" --outcome hold --cancel-after 0.2
step "hold, non-abortive cancel, server completes anyway (client 0)" --outcome hold --cancel-after 0.2 --non-abortive --on-cancel complete
step "hold, non-abortive cancel, server aborts (client 1818)" --outcome hold --cancel-after 0.2 --non-abortive
step "non-abortive cancel ignored, escalated to abortive after 0.3 s" --outcome hold --on-cancel ignore --cancel-after 0.2 --non-abortive --escalate-after 0.3
step "cancel before the call is made (C -> Can -> WComp)" --cancel-before-start
step "a call that fails to start (C -> End, nothing to complete)" --dispatch-delay -1
step "an out pipe: the server pushes 4, the caller pulls them (C -> Pull -> WComp)" --pipe out --server-messages 4
step "an in pipe: push 3, null push, the server pulled them (C -> Push -> WComp)" --pipe in --messages 3
step "a bidi pipe cancelled after the 2nd message pulled (abortive: 1818)" --pipe both --outcome hold --cancel-at after-received:2

echo; echo "== the server's counters"
"$CALLSTATE" watch --target "$target" --counters
echo; echo "== stopping the server (SIGTERM ends the call still held: it ignores cancels)"
kill -TERM "$server"; wait "$server" || true
cat "$work/server.err"
echo; echo "== callstate check client.jsonl server.jsonl"
"$CALLSTATE" check "$work/client.jsonl" "$work/server.jsonl"
