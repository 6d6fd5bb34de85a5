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



def _days(text: str) -> int:
    """--days: a whole number of days, at least 1 (a certificate valid for none is refused by cryptography)."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"{days} days: a certificate must be valid for at least 1 day")
    return days


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where to write the PEM files")
    parser.add_argument("--name", action="append", default=[], help="another DNS name for the server certificate")
    parser.add_argument("--days", type=_days, default=30, help="validity in days (default: %(default)s)")
    opts = parser.parse_args()
    try:
        from tests.certs import make_tls_files
    except ImportError as exc:   # the base install has no cryptography
        print(f"make_certs: {exc.name or exc} is not installed: pip install cryptography (it is in the dev extra)",
              file=sys.stderr)
        return 1
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
