"""`python -m pefttool` runs the `pefttool` command."""

import sys

from .cli import main

sys.exit(main())
