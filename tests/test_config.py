from __future__ import annotations

import dataclasses

import pytest

from harness.tiny_hp3 import tiny_hp3_config
from hp3_core.config import HP3Config
from hp3_core.errors import HP3Error


@pytest.mark.parametrize("family, width, blocks", [("sd15", 768, 4), ("sdxl", 2048, 3)])
def test_family_defaults_match_the_base_unets(family, width, blocks):
    c = HP3Config.for_family(family)
    assert c.encoder.width == c.controller.cross_attention_dim == width
    assert len(c.controller.block_out_channels) == blocks
    assert c.encoder.num_tokens == 16 and c.encoder.num_layers == 4 and c.encoder.id_dim == 512
    assert (c.controller.addition_embed_type == "text_time") == (family == "sdxl")


@pytest.mark.parametrize("config", [HP3Config.for_family("sd15"), HP3Config.for_family("sdxl"),
                                    tiny_hp3_config("sdxl", render_backend="mediapipe")])
def test_json_round_trip_is_exact(config):
    again = HP3Config.from_json(config.to_json())
    assert again == config
    assert isinstance(again.controller.block_out_channels, tuple)


def test_unknown_field_is_named():
    data = HP3Config.for_family("sd15").to_dict()
    data["encoder"]["mystery"] = 1
    with pytest.raises(HP3Error, match=r"unknown field\(s\) \['mystery'\] in 'encoder'"):
        HP3Config.from_dict(data)


def test_missing_required_field_is_named():
    data = HP3Config.for_family("sd15").to_dict()
    del data["controller"]["block_out_channels"]
    with pytest.raises(HP3Error, match="block_out_channels"):
        HP3Config.from_dict(data)


def test_inconsistent_configs_are_rejected():
    c = HP3Config.for_family("sd15")
    with pytest.raises(HP3Error, match="unknown base family"):
        dataclasses.replace(c, family="sd3")
    with pytest.raises(HP3Error, match="must equal"):
        dataclasses.replace(c, encoder=dataclasses.replace(c.encoder, width=1024, num_heads=8))
    with pytest.raises(HP3Error, match="multiple of"):
        dataclasses.replace(c.encoder, width=770).validate()
    with pytest.raises(HP3Error, match="entries"):
        dataclasses.replace(c.controller, attention_head_dim=(8, 8)).validate()
