"""CLI commands, one module each (see :mod:`hp3_core.cli`)."""
from . import bench, build_dataset, build_head_asset, demo, encode, evaluate, generate, info, init, retarget, train

# In the order `--help` lists them: inspect, make weights, run, data + training, measure.
COMMANDS = [info, init, retarget, encode, generate, demo, build_dataset, train, evaluate, bench,
            build_head_asset]
