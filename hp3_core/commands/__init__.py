"""CLI commands, one module each (see :mod:`hp3_core.cli`)."""
from . import bench, demo, info, retarget

COMMANDS = [info, retarget, bench, demo]
