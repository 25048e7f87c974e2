"""``python -m prune_fast COMMAND …``; see :mod:`prune_fast.cli`."""
import sys

from .cli import main

sys.exit(main())
