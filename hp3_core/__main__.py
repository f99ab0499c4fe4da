"""``python -m hp3_core <command>``: see :mod:`hp3_core.cli`."""
import sys

from .cli import main

sys.exit(main())
