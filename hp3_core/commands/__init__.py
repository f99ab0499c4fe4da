"""CLI commands, one module each (see :mod:`hp3_core.cli`)."""
from . import bench, demo, encode, info, init, retarget

COMMANDS = [info, init, retarget, encode, bench, demo]
