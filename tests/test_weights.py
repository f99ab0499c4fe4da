"""The HP3 weight format: a round trip, and every way a wrong file is rejected.

Each rejection must be one line that names the file and says how to fix it.
"""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from harness.tiny_hp3 import tiny_hp3_config, tiny_state_dict, write_tiny_hp3
from hp3_core.errors import WeightFileError
from hp3_core.weights import (FORMAT_VERSION, META_CONFIG, META_FORMAT, check_family, load_hp3_weights,
                              read_hp3_header, save_hp3_weights, shapes_of)


def assert_one_line_naming(err: pytest.ExceptionInfo, path, *needles: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and "Fix:" in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


@pytest.fixture
def good(tmp_path):
    return write_tiny_hp3(tmp_path / "good.safetensors", "sd15", seed=3, trained_steps="1200")


def test_round_trip_keeps_tensors_config_and_metadata(tmp_path):
    config = tiny_hp3_config("sdxl", render_backend="synthetic")
    sd = {k: v.to(torch.bfloat16) if "queries" in k else v for k, v in tiny_state_dict(config, 5).items()}
    path = save_hp3_weights(tmp_path / "sub" / "w.safetensors", sd, config, {"dataset": "id_group_hp3"})
    w = load_hp3_weights(path, expected=shapes_of(sd))
    assert w.config == config and w.family == "sdxl"
    assert w.metadata[META_FORMAT] == str(FORMAT_VERSION) and w.metadata["dataset"] == "id_group_hp3"
    assert set(w.state_dict) == set(sd)
    for k in sd:
        assert w.state_dict[k].dtype == sd[k].dtype and torch.equal(w.state_dict[k], sd[k])
    assert not list(path.parent.glob("*.partial")), "the temporary file must be renamed away"
    assert "SDXL" in w.summary() and "dataset: id_group_hp3" in w.summary()


def test_header_is_read_without_the_tensors(good):
    config, meta, specs = read_hp3_header(good)
    assert config.family == "sd15" and meta["trained_steps"] == "1200"
    assert specs["token_decoder.queries"].shape == (4, 32) and specs["token_decoder.queries"].dtype == "F32"


def test_missing_file(tmp_path):
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(tmp_path / "nope.safetensors")
    assert_one_line_naming(err, tmp_path / "nope.safetensors", "no such file")


@pytest.mark.parametrize("content, needle", [
    (b"PK\x03\x04" + b"\0" * 64, "pickle"),            # torch.save zip (.ckpt, .pt)
    (b"\x80\x02}q\x00" + b"\0" * 64, "pickle"),        # legacy pickle
    (b"hello, this is plainly a text file\n" * 4, "not a safetensors file"),
    (b"\x10\0\0\0\0\0\0\0not json here!!!!!", "not JSON"),
    (b"\x01\x02", "too short"),
])
def test_not_safetensors(tmp_path, content, needle):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    assert_one_line_naming(err, path, needle)


def test_real_torch_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    assert_one_line_naming(err, path, "pickle", ".safetensors")


@pytest.mark.parametrize("where", ["in_header", "in_data", "last_byte"])
def test_truncated_file(good, tmp_path, where):
    data = good.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    end = {"in_header": 8 + header_len // 2, "in_data": len(data) - 100, "last_byte": len(data) - 1}[where]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:end])
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(cut)
    assert_one_line_naming(err, cut, "truncated", "again")


def test_trailing_garbage(good, tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(good.read_bytes() + b"\0" * 10)
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    assert_one_line_naming(err, path, "10 bytes after")


@pytest.mark.parametrize("key, kind", [
    ("model.diffusion_model.input_blocks.0.0.weight", "models/checkpoints"),
    ("lora_unet_down_blocks_0.lora_up.weight", "models/loras"),
    ("control_model.input_hint_block.0.weight", "models/controlnet"),
    ("vision_model.embeddings.patch_embedding.weight", "models/clip_vision"),
])
def test_other_safetensors_say_where_they_belong(tmp_path, key, kind):
    path = tmp_path / "other.safetensors"
    save_file({key: torch.zeros(2, 2)}, str(path))
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    assert_one_line_naming(err, path, "not an HP3 weight file", kind)


def _rewrite_metadata(src, dst, **changes):
    from safetensors import safe_open
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_newer_format_asks_for_an_update(good, tmp_path):
    path = _rewrite_metadata(good, tmp_path / "new.safetensors", **{META_FORMAT: str(FORMAT_VERSION + 1)})
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    assert_one_line_naming(err, path, "newer", "update the HP3 node pack")


def test_broken_config(good, tmp_path):
    cfg = json.loads(tiny_hp3_config().to_json())
    cfg["controller"]["attention_head_dim"] = [2]
    path = _rewrite_metadata(good, tmp_path / "cfg.safetensors", **{META_CONFIG: json.dumps(cfg)})
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    assert_one_line_naming(err, path, "config cannot be read", "attention_head_dim")


def test_wrong_family_for_the_model(good):
    check_family(good, "sd15", "sd15")
    with pytest.raises(WeightFileError) as err:
        check_family(good, "sd15", "sdxl")
    assert_one_line_naming(err, good, "trained for SD1.5", "MODEL it is applied to is SDXL",
                           "load an SD1.5 checkpoint")


def test_missing_and_unexpected_keys(good):
    expected = shapes_of(tiny_state_dict(tiny_hp3_config()))
    missing = dict(expected, **{"controller.extra.weight": (3, 3)})
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(good, expected=missing)
    assert_one_line_naming(err, good, "1 missing key(s)", "'controller.extra.weight'")
    fewer = {k: v for k, v in expected.items() if k != "token_decoder.queries"}
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(good, expected=fewer)
    assert_one_line_naming(err, good, "1 unexpected key(s)", "'token_decoder.queries'")


def test_shape_mismatch_names_key_expected_and_found(good):
    expected = shapes_of(tiny_state_dict(tiny_hp3_config()))
    expected["token_decoder.clip_proj.weight"] = (32, 1280)
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(good, expected=expected)
    assert_one_line_naming(err, good, "'token_decoder.clip_proj.weight'", "expected [32, 1280]", "found [32, 48]")


def test_corrupt_entry_lengths(good, tmp_path):
    data = good.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [999]
    raw = json.dumps(header).encode()
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    assert_one_line_naming(err, path, f"'{key}'", "claims")


def test_a_format_1_file_keeps_loading_into_todays_key_layout(tmp_path):
    """Format 1 named the token decoder ``encoder.*``; such a file loads as ``token_decoder.*`` and
    gives the same model (the same head tokens) as the same weights saved today."""
    from hp3_core.hp3_model import HP3Model, load_token_decoder
    from harness.tiny_hp3 import tiny_hp3_model
    config = tiny_hp3_config("sd15")
    today = tiny_state_dict(config, seed=4, trained=True)
    assert any(k.startswith("token_decoder.") for k in today) and not any(k.startswith("encoder.") for k in today)
    old = {("encoder." + k[len("token_decoder."):] if k.startswith("token_decoder.") else k): v
           for k, v in today.items()}
    path = tmp_path / "format1.safetensors"
    save_file(old, str(path), metadata={META_FORMAT: "1", "hp3.family": "sd15", META_CONFIG: config.to_json()})
    _, _, specs = read_hp3_header(path)
    assert set(specs) == set(today)
    loaded = load_hp3_weights(path)
    assert set(loaded.state_dict) == set(today)
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in today.items())
    model = HP3Model.from_weights(loaded)
    reference = tiny_hp3_model(config, seed=4, trained=True).eval()
    ids, clip = torch.randn(1, 1, 512), torch.randn(1, 1, 50, config.encoder.clip_width)
    with torch.no_grad():  # both on the same (inference) code path
        assert torch.equal(model.token_decoder(ids, clip), reference.token_decoder(ids, clip))
    assert torch.equal(load_token_decoder(path).queries, reference.token_decoder.queries)
    assert FORMAT_VERSION == 2 and load_hp3_weights(write_tiny_hp3(tmp_path / "now.safetensors")).metadata[
        META_FORMAT] == "2"
