from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.tiny_hp3 import write_tiny_hp3
from hp3_core.commands import COMMANDS


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hp3_core", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_top_level_help_lists_every_command():
    out = cli("--help")
    assert out.returncode == 0
    for module in COMMANDS:
        assert module.NAME in out.stdout


@pytest.mark.parametrize("name", [m.NAME for m in COMMANDS])
def test_each_command_has_help(name):
    out = cli(name, "--help")
    assert out.returncode == 0 and f"python -m hp3_core {name}" in out.stdout


def test_info_describes_a_file(tmp_path):
    path = write_tiny_hp3(tmp_path / "w.safetensors", "sdxl", trained_steps="42")
    out = cli("info", str(path))
    assert out.returncode == 0, out.stderr
    assert "base family: SDXL (sdxl)" in out.stdout and "trained_steps: 42" in out.stdout
    data = json.loads(cli("info", str(path), "--json").stdout)
    assert data["config"]["family"] == "sdxl" and data["metadata"]["trained_steps"] == "42"


def test_failure_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"PK\x03\x04junk")
    out = cli("info", str(bad))
    assert out.returncode == 1 and out.stdout == ""
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
    assert "Fix:" in lines[0] and "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"PK\x03\x04junk")
    out = cli("info", str(bad), "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr and "WeightFileError" in out.stderr


def test_unknown_command_fails():
    assert cli("frobnicate").returncode == 2
