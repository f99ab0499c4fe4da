"""CLI commands, one module each (see :mod:`hp3_core.cli`)."""
from . import demo, info

COMMANDS = [info, demo]
