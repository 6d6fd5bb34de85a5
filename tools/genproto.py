"""Regenerate the protobuf and gRPC stubs in callstate/v1 from protos/.

    python tools/genproto.py          # write the stubs
    python tools/genproto.py --check  # exit 1 when the committed stubs are stale

Needs grpcio-tools (pinned in the `dev` extra, so the output is reproducible).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_ROOT = ROOT  # protos/callstate/v1/x.proto -> callstate/v1/x_pb2.py
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [p.relative_to(out) for p in out.rglob("*") if p.name.endswith(SUFFIXES)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    opts = parser.parse_args()
    if not opts.check:
        generate(PACKAGE_ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [str(rel) for rel in fresh
                 if not (PACKAGE_ROOT / rel).exists() or not filecmp.cmp(Path(tmp) / rel, PACKAGE_ROOT / rel, shallow=False)]
    if stale:
        print("stale generated code (run: python tools/genproto.py):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    print(f"generated code is up to date ({len(fresh)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
