"""Tiny HP3 configs and weight files for tests (real format, toy sizes).

:func:`tiny_hp3_model` is the real :class:`~hp3_core.hp3_model.HP3Model` at toy sizes; the tiny
SD1.5 config matches the tiny ComfyUI UNet of :mod:`harness.comfy_inprocess` (channels 32, 32,
64, 64; context 32), so HP3 can be applied to it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from hp3_core.config import ControllerConfig, HeadEncoderConfig, HP3Config
from hp3_core.weights import save_hp3_weights


HINT_OUT = "controller.net.controlnet_cond_embedding.conv_out."  # the hint stem's zero-initialised conv


def tiny_hp3_config(family: str = "sd15", **overrides) -> HP3Config:
    if family == "sd15":
        controller = ControllerConfig(
            cross_attention_dim=32, block_out_channels=(32, 32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            transformer_layers_per_block=(1, 1, 1, 1), attention_head_dim=(8, 8, 8, 8))
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


def tiny_hp3_model(config: HP3Config, seed: int = 0, trained: bool = False):
    """A real :class:`~hp3_core.hp3_model.HP3Model` at tiny size, seeded.

    ``trained=False`` keeps the zero initialisations (an untrained model: the UNet must be
    unchanged); ``trained=True`` gives the connector and the controller's zero-initialised hint
    output small random values, as after training: HP3 visibly changes the UNet's output and that
    change depends on the render (so frames mixed up in a batch would show).
    """
    from hp3_core.hp3_model import HP3Model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = HP3Model(config)
        if trained:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.startswith("connector.") or name.startswith(HINT_OUT):
                        p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def tiny_state_dict(config: HP3Config, seed: int = 0, trained: bool = False) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tiny_hp3_model(config, seed, trained).state_dict().items()}


def write_tiny_hp3(path: Path, family: str = "sd15", seed: int = 0, trained: bool = False, **meta) -> Path:
    config = tiny_hp3_config(family)
    return save_hp3_weights(path, tiny_state_dict(config, seed, trained), config, extra_metadata=meta)
