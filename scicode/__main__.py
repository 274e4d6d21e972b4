"""`python -m scicode`: the command line (see `scicode.cli`)."""

import sys

from scicode.cli import main

sys.exit(main())
