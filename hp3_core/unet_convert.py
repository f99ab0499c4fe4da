"""A diffusers ``UNet2DConditionModel`` from an LDM/ComfyUI-format UNet state dict, offline.

SD checkpoints (``.safetensors``) and ComfyUI's ``BaseModel.diffusion_model`` hold the UNet under
LDM names (``input_blocks.*``, ``middle_block.*``, ``output_blocks.*``; in a checkpoint prefixed
by ``model.diffusion_model.``). The tensors are renamed by diffusers' own converter
(:func:`diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`); the UNet's config is
derived here from an HP3 :class:`~hp3_core.config.ControllerConfig` (which mirrors the UNet's
encoder), so nothing is fetched from the hub.

:func:`controller_config_from_ldm` goes the other way: it reads the architecture off the tensor
shapes (levels, widths, resnets per level, attention depth, context width, SDXL's added
conditioning), so ``init`` works for the real SD1.5/SDXL UNets and for test-sized ones alike.
What shapes cannot say follows the family's convention: SD1.5 uses 8 attention heads per block,
SDXL 64-wide heads, both 32 GroupNorm groups and SDXL a 256-wide size/crop embedding.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import FAMILIES, FAMILY_NAMES, ControllerConfig, HP3Config
from .errors import HP3Error

LDM_PREFIX = "model.diffusion_model."
# Latent sample size of the real models (512 px and 1024 px); only informative in diffusers.
SAMPLE_SIZES = {"sd15": 64, "sdxl": 128}
SDXL_TIME_EMBED_DIM = 256


def ldm_unet_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The UNet's entries of a checkpoint, without the ``model.diffusion_model.`` prefix.

    A state dict already without the prefix (ComfyUI's ``diffusion_model.state_dict()``, a
    UNet-only file) is returned as is.
    """
    if any(k.startswith(LDM_PREFIX) for k in state):
        return {k[len(LDM_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
    if "input_blocks.0.0.weight" in state:
        return dict(state)
    if "conv_in.weight" in state:
        raise HP3Error("this UNet is already in diffusers format (conv_in.weight); HP3 needs an "
                       "SD checkpoint or ComfyUI UNet (model.diffusion_model.* / input_blocks.*)")
    raise HP3Error("no Stable Diffusion UNet found (no 'model.diffusion_model.*' or 'input_blocks.*' "
                   "tensors); use a full SD1.5/SDXL .safetensors checkpoint")


def read_checkpoint_unet(path: str | Path) -> dict[str, torch.Tensor]:
    """The UNet tensors of a ``.safetensors`` SD checkpoint (prefix stripped), read lazily.

    Only safetensors is read (never pickle); the header is checked first so that a pickle, a
    truncated file or a non-SD file gets a message that names it.
    """
    from safetensors import safe_open

    from .weights import _read_safetensors_header
    path = Path(path)
    try:
        header, _ = _read_safetensors_header(path)
    except HP3Error as err:  # reword: this is a base checkpoint, not an HP3 file
        raise HP3Error(f"base checkpoint '{path}': {getattr(err, 'problem', err)}. "
                       f"Fix: {getattr(err, 'fix', 'use a .safetensors checkpoint')}") from None
    keys = list(header)
    if any(k.startswith(LDM_PREFIX) for k in keys):
        wanted = [k for k in keys if k.startswith(LDM_PREFIX)]
    else:
        wanted = keys
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for k in wanted:
            state[k] = f.get_tensor(k)
    try:
        return ldm_unet_state(state)
    except HP3Error as err:
        raise HP3Error(f"base checkpoint '{path}': {err}") from None


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def controller_config_from_ldm(state: Mapping[str, Any], family: str) -> ControllerConfig:
    """The :class:`ControllerConfig` mirroring an LDM-format UNet (values: tensors or shapes).

    Raises:
        HP3Error: not a UNet of ``family`` (e.g. an SDXL UNet given as ``sd15``).
    """
    if family not in FAMILIES:
        raise HP3Error(f"unknown base family '{family}'; use one of {', '.join(FAMILIES)}")
    state = ldm_unet_state(state)
    shapes = {k: _shape(v) for k, v in state.items()}
    has_adm = "label_emb.0.0.weight" in shapes
    if family == "sdxl" and not has_adm:
        raise HP3Error("the checkpoint's UNet has no added conditioning (label_emb), so it is not SDXL; "
                       "use --family sd15")
    if family == "sd15" and has_adm:
        raise HP3Error("the checkpoint's UNet has SDXL's added conditioning (label_emb); use --family sdxl")
    in_channels = shapes["input_blocks.0.0.weight"][1]
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]  # input-block ids of each level's resnets
    for i in blocks[1:]:
        if f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(i)
    counts = {len(ids) for ids in levels}
    if len(counts) != 1 or not levels[0]:
        raise HP3Error(f"unexpected UNet layout: resnets per level {[len(ids) for ids in levels]}")
    layers_per_block = counts.pop()
    chans, types, depths, heads = [], [], [], []
    linear = False
    context = None
    for ids in levels:
        ch = shapes[f"input_blocks.{ids[0]}.0.out_layers.3.weight"][0]
        chans.append(ch)
        proj = f"input_blocks.{ids[0]}.1.proj_in.weight"
        if proj in shapes:
            types.append("CrossAttnDownBlock2D")
            depths.append(len({m.group(1) for k in shapes
                               if (m := re.match(rf"input_blocks\.{ids[0]}\.1\.transformer_blocks\.(\d+)\.", k))}))
            linear = len(shapes[proj]) == 2
            context = shapes[f"input_blocks.{ids[0]}.1.transformer_blocks.0.attn2.to_k.weight"][1]
        else:
            types.append("DownBlock2D")
            depths.append(1)
        heads.append(math.gcd(ch, 8) if family == "sd15" else max(1, ch // 64))
    if context is None:
        key = "middle_block.1.transformer_blocks.0.attn2.to_k.weight"
        if key not in shapes:
            raise HP3Error("the UNet has no cross-attention; it is not an SD1.5/SDXL UNet")
        context = shapes[key][1]
    extra: dict[str, Any] = {}
    if has_adm:
        adm = shapes["label_emb.0.0.weight"][1]
        if adm <= 6 * SDXL_TIME_EMBED_DIM:
            raise HP3Error(f"SDXL added conditioning of width {adm} is too narrow for the standard "
                           f"6 x {SDXL_TIME_EMBED_DIM} size/crop embedding; not an SDXL UNet")
        extra = {"addition_embed_type": "text_time", "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
                 "projection_class_embeddings_input_dim": adm}
    return ControllerConfig(
        cross_attention_dim=context, block_out_channels=tuple(chans), down_block_types=tuple(types),
        layers_per_block=layers_per_block, transformer_layers_per_block=tuple(depths),
        attention_head_dim=tuple(heads), use_linear_projection=linear, in_channels=in_channels, **extra)


def up_block_types_from_ldm(state: Mapping[str, Any], layers_per_block: int) -> tuple[str, ...]:
    """The decoder's block types as the tensors have them (deepest first).

    Real SD UNets mirror the encoder, but a UNet is free not to (ComfyUI builds the decoder from
    its own ``transformer_depth_output``), so the conversion follows the tensors.
    """
    state = ldm_unet_state(state)
    ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"output_blocks\.(\d+)\.", k))})
    types = []
    for first in ids[::layers_per_block + 1]:
        attn = f"output_blocks.{first}.1.proj_in.weight" in state
        types.append("CrossAttnUpBlock2D" if attn else "UpBlock2D")
    return tuple(types)


def unet_config(controller: ControllerConfig | HP3Config, family: str | None = None,
                out_channels: int | None = None, sample_size: int | None = None,
                up_block_types: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``UNet2DConditionModel`` keyword arguments for the UNet a controller config mirrors.

    ``up_block_types`` defaults to the mirror of the encoder's (as in SD1.5 and SDXL).
    """
    if isinstance(controller, HP3Config):
        family = family or controller.family
        controller = controller.controller
    up_types = up_block_types or tuple("CrossAttnUpBlock2D" if t.startswith("CrossAttn") else "UpBlock2D"
                                       for t in reversed(controller.down_block_types))
    config: dict[str, Any] = {
        "sample_size": sample_size or SAMPLE_SIZES.get(family or "", 64),
        "in_channels": controller.in_channels,
        "out_channels": out_channels or controller.in_channels,
        "down_block_types": list(controller.down_block_types),
        "up_block_types": list(up_types),
        "block_out_channels": list(controller.block_out_channels),
        "layers_per_block": controller.layers_per_block,
        "transformer_layers_per_block": list(controller.transformer_layers_per_block),
        "attention_head_dim": list(controller.attention_head_dim),
        "cross_attention_dim": controller.cross_attention_dim,
        "use_linear_projection": controller.use_linear_projection,
        "norm_num_groups": controller.norm_num_groups,
    }
    if controller.addition_embed_type:
        config.update(addition_embed_type=controller.addition_embed_type,
                      addition_time_embed_dim=controller.addition_time_embed_dim,
                      projection_class_embeddings_input_dim=controller.projection_class_embeddings_input_dim)
    return config


def convert_ldm_unet(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """LDM names -> diffusers names, by diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    prefixed = {LDM_PREFIX + k: v for k, v in ldm_unet_state(state).items()}
    return convert_ldm_unet_checkpoint(prefixed, dict(config))


def unet_from_ldm(state: Mapping[str, torch.Tensor], config: HP3Config | ControllerConfig | None = None,
                  family: str | None = None, dtype: torch.dtype | None = None):
    """A diffusers ``UNet2DConditionModel`` holding an LDM-format UNet's weights.

    Args:
        state: the UNet's tensors, with or without the ``model.diffusion_model.`` prefix.
        config: the HP3/controller config the UNet mirrors; inferred from the shapes when None
            (then ``family`` is required).
        dtype: cast the weights (e.g. ``torch.float32``); by default they keep theirs.

    Raises:
        HP3Error: the tensors do not fit the config (names the first missing/unexpected keys).
    """
    from diffusers import UNet2DConditionModel
    state = ldm_unet_state(state)
    if config is None:
        if family is None:
            raise ValueError("unet_from_ldm needs a config or a family")
        config = controller_config_from_ldm(state, family)
    if isinstance(config, HP3Config):
        family = family or config.family
    controller = config.controller if isinstance(config, HP3Config) else config
    out_channels = _shape(state["out.2.weight"])[0] if "out.2.weight" in state else None
    up_types = up_block_types_from_ldm(state, controller.layers_per_block)
    if len(up_types) != len(controller.block_out_channels):
        raise HP3Error(f"the UNet has {len(up_types)} decoder levels but the config "
                       f"{len(controller.block_out_channels)}; it is not a UNet of this layout")
    cfg = unet_config(controller, family=family, out_channels=out_channels, up_block_types=up_types)
    converted = convert_ldm_unet(state, cfg)
    if dtype is not None:
        converted = {k: v.to(dtype) for k, v in converted.items()}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    own = unet.state_dict()
    missing = [k for k in own if k not in converted]
    unexpected = [k for k in converted if k not in own]
    wrong = [k for k in own if k in converted and tuple(own[k].shape) != tuple(converted[k].shape)]
    if missing or unexpected or wrong:
        name = FAMILY_NAMES.get(family or "", "the configured")
        raise HP3Error(f"the UNet's weights do not fit the {name} UNet layout: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    unet.load_state_dict(converted, strict=True, assign=True)
    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    if left:  # a tensor the converter does not provide (a new diffusers layer?)
        raise HP3Error(f"converting the UNet left {len(left)} tensor(s) unset, e.g. {left[:3]}")
    return unet.eval()


def _per_block(value: Any, n: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * n


def controller_config_from_unet(unet) -> ControllerConfig:
    """The :class:`ControllerConfig` mirroring a diffusers ``UNet2DConditionModel`` (the inverse of
    :func:`hp3_core.unet_convert.unet_config`)."""
    c = unet.config
    n = len(c.block_out_channels)
    if not isinstance(c.layers_per_block, int):
        raise HP3Error(f"the base UNet's layers_per_block {c.layers_per_block!r} varies per block; "
                       "HP3 needs an SD1.5/SDXL-shaped UNet")
    heads = c.num_attention_heads if c.num_attention_heads is not None else c.attention_head_dim
    return ControllerConfig(
        cross_attention_dim=int(c.cross_attention_dim), block_out_channels=tuple(c.block_out_channels),
        down_block_types=tuple(c.down_block_types), layers_per_block=int(c.layers_per_block),
        transformer_layers_per_block=_per_block(c.transformer_layers_per_block, n),
        attention_head_dim=_per_block(heads, n), use_linear_projection=bool(c.use_linear_projection),
        in_channels=int(c.in_channels), norm_num_groups=int(c.norm_num_groups),
        addition_embed_type=c.addition_embed_type, addition_time_embed_dim=c.addition_time_embed_dim,
        projection_class_embeddings_input_dim=c.projection_class_embeddings_input_dim)
