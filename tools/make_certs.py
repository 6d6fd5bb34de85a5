"""Make a throw-away CA, a server certificate and a client certificate for trying TLS and
mutual TLS (needs `cryptography`, in the dev extra). Not for production: use your own PKI.

    python tools/make_certs.py tls                      # tls/ca.pem, server.pem/.key, client.pem/.key
    python tools/make_certs.py tls --name emulator      # the server certificate also names "emulator"

The server certificate always names localhost and 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.certs import make_tls_files  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where to write the PEM files")
    parser.add_argument("--name", action="append", default=[], help="another DNS name for the server certificate")
    parser.add_argument("--days", type=int, default=30, help="validity in days (default: %(default)s)")
    opts = parser.parse_args()
    try:
        files = make_tls_files(opts.folder, tuple(opts.name), opts.days)
    except OSError as exc:
        print(f"make_certs: {exc}", file=sys.stderr)
        return 1
    for f in (files.ca, files.server_cert, files.server_key, files.client_cert, files.client_key):
        f.chmod(0o644)   # the container's non-root user reads them from a mounted folder
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
