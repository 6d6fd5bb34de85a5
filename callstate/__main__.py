"""`python -m callstate`: the same as the `callstate` command (the CLI lives in callstate.cli)."""

import sys

from callstate.cli import main

sys.exit(main())
