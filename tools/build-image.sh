#!/usr/bin/env bash
# Build the callstate image with no container registry, and keep it.
#
#   sudo bash tools/build-image.sh [--tag NAME] [--extras EXTRAS] [--base IMAGE] [--save FILE.tar]
#
#   --tag NAME      image to build (default callstate:local; the compose file's CALLSTATE_IMAGE)
#   --extras X      callstate extras to install, e.g. locust (the locust profile's image,
#                   CALLSTATE_LOCUST_IMAGE, default callstate-locust:local)
#   --base IMAGE    a local base image with python3 >= 3.11 and venv; default: build one,
#                   callstate-base:bookworm, with debootstrap from the Debian mirror apt uses
#                   (DEBIAN_MIRROR overrides), its rootfs tarball cached in CALLSTATE_CACHE
#                   (default /var/cache/callstate)
#   --save FILE     also `docker save` the image into FILE (then `docker load -i FILE` elsewhere)
#
# Wheels of callstate and its dependencies are built on the host (pip wheel; PyPI or a
# configured index/find-links) into a copy of the working tree, and the image is built with
# `docker build --network none --build-arg BASE_IMAGE=... --build-arg WHEEL_DIR=wheels`:
# nothing is fetched from inside the build. Uses the engine DOCKER_HOST names (or the default
# socket). Exits non-zero, naming the step, when one fails.

set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=callstate:local
EXTRAS=
BASE=
SAVE=
SUITE=bookworm
ROOTFS_RECIPE=v1-minbase-python3-venv   # the same recipe (and cache file) as tests/container/run.sh

die() { echo "build-image: $*" >&2; exit 1; }
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --tag) TAG=${2:?--tag needs a name}; shift 2 ;;
        --extras) EXTRAS=${2:?--extras needs a value}; shift 2 ;;
        --base) BASE=${2:?--base needs an image}; shift 2 ;;
        --save) SAVE=${2:?--save needs a file}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v docker >/dev/null 2>&1 || die "no docker client (apt-get install docker.io)"
docker version >/dev/null 2>&1 || die "no Docker engine answers (start dockerd, or set DOCKER_HOST)"
export DOCKER_BUILDKIT=0   # the classic builder: no frontend image to pull

WORK=$(mktemp -d /tmp/callstate-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# -- 1. the base image -------------------------------------------------------------------
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local u
    u=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' | grep -E '/debian/?$' | head -n1 || true)
    [ -n "$u" ] || u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
        | grep -E '/debian/?$' | head -n1 || true)
    echo "${u:-http://deb.debian.org/debian}"
}

if [ -z "$BASE" ]; then
    BASE=callstate-base:$SUITE
    CACHE=${CALLSTATE_CACHE:-/var/cache/callstate}
    mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ] || CACHE=$WORK/cache
    mkdir -p "$CACHE"
    ROOTFS_TAR=$CACHE/rootfs-$SUITE-$(dpkg --print-architecture 2>/dev/null || echo amd64)-$ROOTFS_RECIPE.tar
    if ! { [ -s "$ROOTFS_TAR" ] && tar -tf "$ROOTFS_TAR" ./usr/bin/python3 >/dev/null 2>&1; }; then
        [ "$(id -u)" = 0 ] || die "debootstrap needs root (or pass --base IMAGE)"
        command -v debootstrap >/dev/null 2>&1 || die "no debootstrap (apt-get install debootstrap, or pass --base IMAGE)"
        MIRROR=$(debian_mirror)
        echo "build-image: debootstrap --variant=minbase $SUITE with python3, python3-venv from $MIRROR"
        ROOTFS=$WORK/rootfs
        debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$ROOTFS" "$MIRROR" \
            >"$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
            "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log "$ROOTFS"/debootstrap
        printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"
        tar --numeric-owner -C "$ROOTFS" -cf "$ROOTFS_TAR.tmp.$$" . && mv -f "$ROOTFS_TAR.tmp.$$" "$ROOTFS_TAR" \
            || die "tar of the rootfs failed"
    else
        echo "build-image: base rootfs from cache: $ROOTFS_TAR"
    fi
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE" >/dev/null \
        || die "docker import of the base rootfs failed"
fi
BASE_PY=$(docker run --rm --network none "$BASE" python3 -c \
    'import sys, venv, ensurepip; assert sys.version_info >= (3, 11); print("%d.%d" % sys.version_info[:2])') \
    || die "the base image $BASE has no python3 >= 3.11 with venv"
echo "build-image: base image $BASE (python $BASE_PY)"

# -- 2. wheels on the host, in a copy of the working tree ---------------------------------
CTX=$WORK/ctx
mkdir -p "$CTX"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) \
        | tar -C "$CTX" -xf -
else
    tar -C "$REPO" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ -cf - . \
        | tar -C "$CTX" -xf -
fi
PY=python3
"$PY" -m pip --version >/dev/null 2>&1 || PY=$REPO/.venv/bin/python
"$PY" -m pip --version >/dev/null 2>&1 || die "no pip on the host to build wheels"
HOST_PY=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SPEC=$CTX${EXTRAS:+[$EXTRAS]}
mkdir -p "$CTX/wheels"
if [ "$HOST_PY" = "$BASE_PY" ]; then
    echo "build-image: pip wheel callstate${EXTRAS:+[$EXTRAS]} and its dependencies (python $HOST_PY)"
    "$PY" -m pip wheel --disable-pip-version-check -q --wheel-dir "$CTX/wheels" "$SPEC" >"$WORK/wheel.log" 2>&1 \
        || { tail -n 20 "$WORK/wheel.log" >&2; die "pip wheel failed"; }
else
    PYV=${BASE_PY/./}
    M=$(uname -m)
    echo "build-image: host python $HOST_PY != base $BASE_PY: dependency wheels downloaded for cp$PYV"
    "$PY" -m pip wheel --disable-pip-version-check -q --no-deps --wheel-dir "$CTX/wheels" "$CTX" >"$WORK/wheel.log" 2>&1 \
        || { tail -n 20 "$WORK/wheel.log" >&2; die "pip wheel failed"; }
    WHL=$(ls "$CTX"/wheels/callstate-*.whl)
    "$PY" -m pip download --disable-pip-version-check -q --only-binary=:all: --python-version "$BASE_PY" \
        --implementation cp --abi "cp$PYV" --abi abi3 --abi none --platform "manylinux_2_28_$M" \
        --platform "manylinux_2_17_$M" --platform "manylinux2014_$M" --platform any \
        --dest "$CTX/wheels" "$WHL${EXTRAS:+[$EXTRAS]}" >>"$WORK/wheel.log" 2>&1 \
        || { tail -n 20 "$WORK/wheel.log" >&2; die "pip download of dependency wheels failed"; }
fi
rm -rf "$CTX/build" "$CTX"/*.egg-info

# -- 3. the image, built with no network ---------------------------------------------------
echo "build-image: docker build --network none -t $TAG (BASE_IMAGE=$BASE, WHEEL_DIR=wheels${EXTRAS:+, EXTRAS=$EXTRAS})"
docker build --network none -t "$TAG" --build-arg "BASE_IMAGE=$BASE" --build-arg WHEEL_DIR=wheels \
    --build-arg "EXTRAS=$EXTRAS" "$CTX" >"$WORK/build.log" 2>&1 \
    || { tail -n 30 "$WORK/build.log" >&2; die "docker build failed"; }
grep -q 'installing callstate offline' "$WORK/build.log" || die "the build did not install from the wheels"
docker run --rm --network none "$TAG" --version >/dev/null || die "the image does not run callstate"
echo "build-image: built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%d MB", $1 / 1e6 }'))"
if [ -n "$SAVE" ]; then
    docker save -o "$SAVE" "$TAG" || die "docker save to $SAVE failed"
    echo "build-image: saved to $SAVE (docker load -i $SAVE)"
fi
