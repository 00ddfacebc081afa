"""`python -m rubik.cli`: the `rubik` command."""

import sys

from . import main

sys.exit(main())
