"""``python -m prune_fast.kernels.aot`` (see :mod:`prune_fast.kernels.aot.cli`)."""
import sys

from .cli import main

sys.exit(main())
