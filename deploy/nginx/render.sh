#!/bin/sh
# Write nginx's callstate config from the template (Debian's nginx: deploy/nginx/Dockerfile).
#   render.sh TEMPLATE OUT
# Fills ${CALLSTATE_PORT} and ${CALLSTATE_GATEWAY_PORT}, and turns the template's
# `server emulator:${CALLSTATE_PORT}` line into one `server ADDRESS:PORT` line per address the
# replicas' name (CALLSTATE_EMULATOR_HOST, default emulator) resolves to. One line each matters:
# nginx's consistent hash places *server names* on its ring, so one name with several
# addresses would be a single point whose addresses take turns: calls and their cancel
# notices would be spread round-robin instead of following the call id.
set -eu
template=$1
out=$2
host=${CALLSTATE_EMULATOR_HOST:-emulator}
port=${CALLSTATE_PORT:-50051}
gateway=${CALLSTATE_GATEWAY_PORT:-8080}
addresses=$(getent ahostsv4 "$host" | awk '{ print $1 }' | sort -u)
[ -n "$addresses" ] || { echo "render.sh: $host resolves to no address" >&2; exit 1; }
: >"$out.tmp"
while IFS= read -r line; do
    case "$line" in
        *'server emulator:${CALLSTATE_PORT}'*)
            for a in $addresses; do
                printf '%s\n' "$line" | sed -e "s/emulator:\${CALLSTATE_PORT}/$a:$port/" >>"$out.tmp"
            done ;;
        *)
            printf '%s\n' "$line" | sed -e "s/\${CALLSTATE_PORT}/$port/g" -e "s/\${CALLSTATE_GATEWAY_PORT}/$gateway/g" \
                >>"$out.tmp" ;;
    esac
done <"$template"
mv "$out.tmp" "$out"
echo "render.sh: $(echo "$addresses" | wc -l) replicas of $host: $(echo $addresses)" >&2
