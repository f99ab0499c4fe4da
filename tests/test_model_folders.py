"""The core's model-folder resolver: the command line's folder convention and the file search
that ComfyUI's nodes use too (they pass ``folder_paths``' lists in)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hp3_core.errors import MissingModelFileError
from hp3_core.model_folders import MODEL_FOLDERS, cli_folders, find_file, require_file


def test_cli_folders_are_each_folder_then_its_kind_subfolder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli_folders([a, str(b)], "smirk") == [a, a / "smirk", b, b / "smirk"]
    assert cli_folders([], "flame") == []


def test_find_file_takes_the_first_folder_then_the_first_name(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "generic_model.npz").write_bytes(b"x")
    (second / "generic_model.pkl").write_bytes(b"x")
    names = ("generic_model.pkl", "generic_model.npz")
    assert find_file(names, [tmp_path / "missing", first, second]) == first / "generic_model.npz"
    assert find_file(names, [second, first]) == second / "generic_model.pkl"
    assert find_file(("other.pt",), [first, second]) is None


def test_a_name_cannot_climb_out_of_its_folder(tmp_path):
    # As ComfyUI's get_full_path: '../' in a (node input) file name stays inside the folder.
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    folder = tmp_path / "hp3"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.safetensors").write_bytes(b"x")
    assert find_file(["../secret.safetensors"], [folder]) is None
    assert find_file(["sub/w.safetensors"], [folder]) == folder / "sub" / "w.safetensors"


def test_missing_file_lists_every_folder_and_name(tmp_path):
    folders = cli_folders([tmp_path / "models"], "smirk")
    with pytest.raises(MissingModelFileError) as err:
        require_file(["SMIRK_em1.pt"], folders, "SMIRK encoder", "github.com/georgeretsi/smirk")
    msg = str(err.value)
    assert "SMIRK encoder not found: expected SMIRK_em1.pt" in msg and "github.com/georgeretsi/smirk" in msg
    assert err.value.searched == [str(f) for f in folders]
    (folders[1]).mkdir(parents=True)
    (folders[1] / "SMIRK_em1.pt").write_bytes(b"x")
    assert require_file(["SMIRK_em1.pt"], folders, "SMIRK encoder") == folders[1] / "SMIRK_em1.pt"


def test_the_table_names_the_pack_folders_with_their_files():
    assert set(MODEL_FOLDERS) == {"hp3", "insightface", "smirk", "flame"}
    assert ".safetensors" in MODEL_FOLDERS["hp3"].extensions and ".pkl" in MODEL_FOLDERS["flame"].extensions
    assert all(Path(f.sub).name == f.sub and f.holds for f in MODEL_FOLDERS.values())
