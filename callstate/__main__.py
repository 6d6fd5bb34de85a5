import sys

from callstate.cli import main

sys.exit(main())
