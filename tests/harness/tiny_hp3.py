"""Tiny HP3 configs and weight files for tests (real format, toy sizes).

:func:`tiny_state_dict` holds the real token decoder's tensors under ``encoder.``; until the
controller and connector classes exist, ``controller.*`` and ``connector.*`` are stand-ins laid
out as the model will be, with shapes that follow from the config.
"""
from __future__ import annotations

from pathlib import Path

import torch

from hp3_core.config import ControllerConfig, HeadEncoderConfig, HP3Config
from hp3_core.weights import save_hp3_weights


def tiny_hp3_config(family: str = "sd15", **overrides) -> HP3Config:
    if family == "sd15":
        controller = ControllerConfig(
            cross_attention_dim=32, block_out_channels=(32, 32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            transformer_layers_per_block=(1, 1, 1, 1), attention_head_dim=(2, 2, 2, 2))
    elif family == "sdxl":
        controller = ControllerConfig(
            cross_attention_dim=64, block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            transformer_layers_per_block=(1, 1, 1), attention_head_dim=(2, 2, 2),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=64 + 6 * 8)
    else:
        raise ValueError(family)
    encoder = HeadEncoderConfig(width=controller.cross_attention_dim, num_tokens=4, num_layers=1,
                                num_heads=2, clip_width=48)
    return HP3Config(family=family, encoder=encoder, controller=controller, **overrides)


def tiny_state_dict(config: HP3Config, seed: int = 0) -> dict[str, torch.Tensor]:
    from hp3_core.head_encoder.token_decoder import HeadTokenDecoder
    c = config.controller
    decoder = HeadTokenDecoder(config.encoder, seed=seed)
    out = {f"encoder.{k}": v.detach().clone() for k, v in decoder.state_dict().items()}
    shapes: dict[str, tuple[int, ...]] = {
        "controller.conv_in.weight": (c.block_out_channels[0], c.in_channels, 3, 3),
        "controller.hint.conv_out.weight": (c.block_out_channels[0],
                                            c.conditioning_embedding_out_channels[-1], 3, 3),
    }
    for i, ch in enumerate(c.block_out_channels):
        shapes[f"connector.{i}.zero_in.weight"] = (ch, ch, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    return out | {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def write_tiny_hp3(path: Path, family: str = "sd15", seed: int = 0, **meta) -> Path:
    config = tiny_hp3_config(family)
    return save_hp3_weights(path, tiny_state_dict(config, seed), config, extra_metadata=meta)
