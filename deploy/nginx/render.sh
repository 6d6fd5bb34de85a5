#!/bin/sh
# Write nginx's callstate config from the template (Debian's nginx: deploy/nginx/Dockerfile).
#   render.sh TEMPLATE OUT
# Fills ${CALLSTATE_PORT} and ${CALLSTATE_GATEWAY_PORT}, and turns the template's
# `server emulator:${CALLSTATE_PORT}` line into one `server ADDRESS:PORT` line per replica:
# each HOST:PORT of CALLSTATE_REPLICAS when it is set (replicas you run yourself, e.g.
# "10.0.0.1:50051 10.0.0.2:50051" or three ports of one machine), else each address the
# replicas' name (CALLSTATE_EMULATOR_HOST, default emulator) resolves to, on CALLSTATE_PORT.
# One line each matters: nginx's consistent hash places *server names* on its ring, so one name
# with several addresses would be a single point whose addresses take turns: calls and their
# cancel notices would be spread round-robin instead of following the call id.
set -eu
template=$1
out=$2
host=${CALLSTATE_EMULATOR_HOST:-emulator}
port=${CALLSTATE_PORT:-50051}
gateway=${CALLSTATE_GATEWAY_PORT:-8080}
if [ -n "${CALLSTATE_REPLICAS:-}" ]; then
    replicas=$(printf '%s\n' $CALLSTATE_REPLICAS)
    what="CALLSTATE_REPLICAS"
    for r in $replicas; do   # nginx would take a bare HOST as HOST:80, and "a:1,b:2" as one name
        p=${r##*:} h=${r%:*}
        case "$r" in *,*) p= ;; esac
        case "$p" in ''|*[!0-9]*) ;; *) [ "$h" != "$r" ] && [ -n "$h" ] && continue ;; esac
        echo "render.sh: CALLSTATE_REPLICAS: '$r' is not HOST:PORT (one HOST:PORT per replica, separated by spaces)" >&2
        exit 1
    done
else
    replicas=$(getent ahostsv4 "$host" | awk -v port="$port" '{ print $1 ":" port }' | sort -u)
    [ -n "$replicas" ] || { echo "render.sh: $host resolves to no address" >&2; exit 1; }
    what=$host
fi
: >"$out.tmp"
while IFS= read -r line || [ -n "$line" ]; do   # a last line without its newline too
    case "$line" in
        *'server emulator:${CALLSTATE_PORT}'*)
            for r in $replicas; do
                printf '%s\n' "$line" | sed -e "s/emulator:\${CALLSTATE_PORT}/$r/" >>"$out.tmp"
            done ;;
        *)
            printf '%s\n' "$line" | sed -e "s/\${CALLSTATE_PORT}/$port/g" -e "s/\${CALLSTATE_GATEWAY_PORT}/$gateway/g" \
                >>"$out.tmp" ;;
    esac
done <"$template"
mv "$out.tmp" "$out"
echo "render.sh: $(echo "$replicas" | wc -l) replicas of $what: $(echo $replicas)" >&2
