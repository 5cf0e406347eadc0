"""``python -m approxdrop ARGS``: the ``approxdrop`` command."""

import sys

from .experiments.cli import main

sys.exit(main())
