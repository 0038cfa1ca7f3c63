"""`python -m stepstream`: the command line (see stepstream.cli)."""

import sys

from .cli import main

sys.exit(main())
