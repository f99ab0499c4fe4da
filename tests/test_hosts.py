"""Where the test hosts come from (tests/harness/hosts.py): the 2025 host's tarball or folder,
found beside the repo or through HP3_COMFYUI_DIR, unpacked into a temporary folder with the pack
linked; a clear error naming every place looked at when it is absent."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from harness import hosts
from hp3_core.comfy_server import PACK_LINK_NAME, ComfyServerError


def fake_host_tarball(folder: Path) -> Path:
    """A tarball shaped like comfyui-a125cd84.tar.gz: ComfyUI/main.py and ComfyUI/comfy/."""
    src = folder / "src" / "ComfyUI"
    (src / "comfy").mkdir(parents=True)
    (src / "custom_nodes").mkdir()
    (src / "main.py").write_text("# fake host\n")
    path = folder / hosts.COMFY2025_TARBALL
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="ComfyUI")
    return path


def test_the_2025_host_is_unpacked_from_the_folder_the_env_names(tmp_path, monkeypatch):
    fake_host_tarball(tmp_path / "hosts")
    monkeypatch.setenv(hosts.COMFY2025_ENV, str(tmp_path / "hosts"))
    dest = hosts.prepare("comfy2025", tmp_path / "run" / "ComfyUI")
    assert (dest / "main.py").read_text() == "# fake host\n"
    link = dest / "custom_nodes" / PACK_LINK_NAME
    assert link.is_symlink() and link.resolve() == hosts.REPO
    assert hosts.prepare("comfy2025", dest) == dest, "a prepared host is reused"


def test_an_unpacked_folder_is_copied_not_modified(tmp_path, monkeypatch):
    with tarfile.open(fake_host_tarball(tmp_path)) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    monkeypatch.setenv(hosts.COMFY2025_ENV, str(tmp_path / "unpacked" / "ComfyUI"))
    dest = hosts.prepare("comfy2025", tmp_path / "run" / "ComfyUI")
    assert (dest / "custom_nodes" / PACK_LINK_NAME).is_symlink()
    assert not (tmp_path / "unpacked" / "ComfyUI" / "custom_nodes" / PACK_LINK_NAME).exists()


def test_a_missing_host_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(hosts.COMFY2025_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setattr(hosts, "REPO", tmp_path / "repo")
    with pytest.raises(ComfyServerError, match="HP3_COMFYUI_DIR") as err:
        hosts.comfy2025_source()
    assert str(tmp_path / "nowhere") in str(err.value) and hosts.COMFY2025_TARBALL in str(err.value)
    with pytest.raises(ValueError, match="comfy2024, comfy2025"):
        hosts.prepare("comfy1999", tmp_path / "x")
