"""CLI commands, one module each (see :mod:`hp3_core.cli`)."""
from . import bench, demo, encode, info, retarget

COMMANDS = [info, retarget, encode, bench, demo]
