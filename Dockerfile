# callstate container image: `callstate serve` as a non-root user, state log on stdout.
#
# Build args:
#   BASE_IMAGE  any image with python3 >= 3.11 and the venv module
#               (default python:3.11-slim; CI uses a debootstrapped Debian bookworm).
#   WHEEL_DIR   a folder inside the build context holding a wheel of callstate and of
#               every dependency (`pip wheel --wheel-dir DIR .`). Set it and the build
#               installs with `pip --no-index` from there, needing no network. Leave it
#               empty (default) and the build installs the source tree from PyPI deps.
#   EXTRAS      extras of callstate to install, e.g. "locust" (default none); the compose
#               file's locust profile builds its own image with it.
#   CALLSTATE_UID  uid of the `callstate` user the server runs as (default 10001).
#
#   docker build -t callstate:local .
#   docker build -t callstate:local --build-arg WHEEL_DIR=wheels --build-arg BASE_IMAGE=my/python:3.11 .
#
# No `# syntax=` line on purpose: the classic builder and BuildKit both take this file
# without fetching a frontend image, so it builds with no registry at all.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS install
ARG WHEEL_DIR=
ARG EXTRAS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY . /src
RUN set -eu; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), "callstate needs Python >= 3.11, the base has " + sys.version'; \
    python3 -m venv /opt/callstate; \
    if [ -n "${WHEEL_DIR}" ]; then \
        echo "installing callstate offline from /src/${WHEEL_DIR}"; \
        /opt/callstate/bin/pip install --no-index --find-links "/src/${WHEEL_DIR}" "callstate${EXTRAS:+[$EXTRAS]}"; \
    else \
        echo "installing callstate from source (dependencies from the package index)"; \
        /opt/callstate/bin/pip install "/src${EXTRAS:+[$EXTRAS]}"; \
    fi; \
    printf 'from callstate.locust import CallstateUser\n' > /opt/callstate/locustfile.py; \
    /opt/callstate/bin/callstate --version

FROM ${BASE_IMAGE}
ARG CALLSTATE_UID=10001
ENV PATH=/opt/callstate/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CALLSTATE_PORT=50051
RUN useradd --system --uid "${CALLSTATE_UID}" --user-group --create-home \
        --home-dir /home/callstate --shell /usr/sbin/nologin callstate
COPY --from=install /opt/callstate /opt/callstate
USER callstate
WORKDIR /home/callstate
EXPOSE 50051
# Asks the standard grpc.health.v1.Health service; exit 0 only when SERVING.
# CALLSTATE_PORT must match --port when you run serve on another port.
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD callstate health --target "127.0.0.1:${CALLSTATE_PORT}" --timeout 3 || exit 1
ENTRYPOINT ["callstate"]
# State log (JSON lines) goes to stdout, human messages to stderr: `docker logs` shows both.
CMD ["serve", "--bind", "0.0.0.0", "--port", "50051"]
