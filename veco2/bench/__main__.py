"""``python -m veco2.bench ...``: the same as ``veco2 bench ...``."""

import sys

from .cli import main

sys.exit(main())
