"""CLI commands, one module each (see :mod:`hp3_core.cli`)."""
from . import bench, demo, encode, generate, info, init, retarget

COMMANDS = [info, init, retarget, encode, generate, bench, demo]
