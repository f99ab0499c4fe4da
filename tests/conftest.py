"""Fixtures every test module reuses: assets, the ComfyUI hosts (in-process and server), the
browser, tiny models and weights.

What ``make test`` installs (the ComfyUI host, Chromium) is required: its absence fails the test
under CI (``CI=true``) and skips it with the reason elsewhere. The photos and clips the tests
read ship in ``tests/data`` (see NOTICE.md there), so nothing skips for want of them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.needs import require
from harness.tiny_hp3 import write_tiny_hp3
from hp3_core.comfy_server import ComfyServer

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "tests" / "data"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def assets() -> Path:
    """The folder of test photos and clips (``faces/``, ``id_group_hp3/``), part of the repo."""
    assert (ASSETS / "faces").is_dir(), f"test photos missing from {ASSETS} (they ship with the repo)"
    return ASSETS


def pytest_addoption(parser) -> None:
    from harness.hosts import DEFAULT_HOST, HOST_NAMES
    parser.addoption("--host", default=DEFAULT_HOST, choices=HOST_NAMES,
                     help="the ComfyUI host of the host-dependent tests (one per pytest run: both "
                          "hosts cannot be imported in one process); make test runs both")


def pytest_generate_tests(metafunc) -> None:
    # Every test that reaches a host gets its name in the id, e.g. test_x[comfy2025].
    if "comfy_host_name" in metafunc.fixturenames:
        name = metafunc.config.getoption("--host")
        metafunc.parametrize("comfy_host_name", [name], ids=[name], scope="session")


def pytest_collection_modifyitems(config, items) -> None:
    # A run on another host than the default repeats only the tests that reach a host: the
    # host-independent ones already ran in the default run (make test runs both).
    from harness.hosts import DEFAULT_HOST
    if config.getoption("--host") == DEFAULT_HOST:
        return
    other = [i for i in items if "comfy_host_name" not in getattr(i, "fixturenames", ())]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [i for i in items if "comfy_host_name" in getattr(i, "fixturenames", ())]


@pytest.fixture(scope="session")
def comfy_host_dir(comfy_host_name, tmp_path_factory) -> Path:
    """A runnable ComfyUI (the --host one) in a temporary folder, the pack in custom_nodes."""
    from harness.hosts import prepare
    from hp3_core.comfy_server import ComfyServerError
    try:
        return prepare(comfy_host_name, tmp_path_factory.mktemp("host") / "ComfyUI")
    except ComfyServerError as err:
        require(False, str(err))


@pytest.fixture(scope="session")
def comfy(comfy_host_dir, comfy_host_name):
    """The --host ComfyUI imported in-process (CPU) with the pack loaded: a ComfyHost."""
    from harness.comfy_inprocess import load_host
    return load_host(comfy_host_dir, comfy_host_name)


@pytest.fixture
def tiny_model(comfy):
    """A fresh tiny SD1.5-shaped MODEL (ModelPatcher over a real BaseModel), every weight set."""
    from harness.comfy_inprocess import tiny_sd15_model
    return tiny_sd15_model(comfy)


@pytest.fixture
def patch_mod(comfy):
    """nodes/hp3_patch.py as the in-process host loaded it (HP3's patch of the host's model)."""
    return comfy.pack_module("nodes.hp3_patch")


@pytest.fixture
def hp3_folder(comfy, tmp_path) -> Path:
    """A temporary folder added to the in-process host's 'hp3' model paths (removed afterwards)."""
    fp = comfy.folder_paths
    fp.add_model_folder_path("hp3", str(tmp_path))
    fp.filename_list_cache.clear()
    yield tmp_path
    fp.folder_names_and_paths["hp3"][0].remove(str(tmp_path))
    fp.filename_list_cache.clear()


@pytest.fixture(scope="session")
def server_models(tmp_path_factory) -> dict[str, Path]:
    """Model files for the server host, reached only through an extra_model_paths.yaml."""
    root = tmp_path_factory.mktemp("user_models")
    write_tiny_hp3(root / "hp3" / "tiny_sd15.safetensors", "sd15", trained_steps="0")
    write_tiny_hp3(root / "hp3" / "tiny_sdxl.safetensors", "sdxl")
    (root / "hp3" / "not_hp3.safetensors").write_bytes(b"PK\x03\x04 a pickle zip, not safetensors")
    yaml_path = root / "extra_model_paths.yaml"
    yaml_path.write_text(f"hp3_tests:\n  base_path: {root}\n  hp3: hp3\n")
    return {"root": root, "yaml": yaml_path}


def start_server(host_dir: Path, tmp: Path, yaml_path: Path | None = None) -> ComfyServer:
    """Start a server whose input folder holds the workflows' sample images."""
    (tmp / "input").mkdir(parents=True, exist_ok=True)
    for image in (REPO / "workflows" / "inputs").glob("*.jpg"):
        shutil.copyfile(image, tmp / "input" / image.name)
    server = ComfyServer(host_dir, extra_model_paths=[yaml_path] if yaml_path else [],
                         output_dir=tmp / "output", input_dir=tmp / "input", temp_dir=tmp,
                         log_path=tmp / "server.log")
    return server.start()


@pytest.fixture(scope="session")
def comfy_server(comfy_host_dir, server_models, tmp_path_factory):
    """The --host ComfyUI server on a free 127.0.0.1 port with the pack in custom_nodes."""
    server = start_server(comfy_host_dir, tmp_path_factory.mktemp("server"), server_models["yaml"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    from harness.browser import ComfyBrowser, chromium_path
    exe = chromium_path()
    require(exe is not None, "Chromium is not installed (apt-get install chromium)")
    b = ComfyBrowser(exe)
    try:
        yield b
    finally:
        b.close()
