"""HP3 on a diffusers ``UNet2DConditionModel`` (SD1.5 and SDXL layouts).

Decoder block ``i`` (UNet order, deepest first) is
``unet.up_blocks[i // (layers_per_block + 1)].resnets[i % (layers_per_block + 1)]``, a
``ResnetBlock2D`` that diffusers' up blocks call as ``resnet(cat([h, skip]), temb)`` (positional;
``input_tensor=`` as keyword is accepted too). Per decoder block, :func:`install` puts:

* **injection**: a forward pre-hook on the resnet that replaces its input by
  ``cat([inject(i, h), skip])`` -- the same as ``h = z_d + ZeroConv(c)`` before the concatenation
  (the first ``decoder_channels`` channels of the input are the decoder features ``h``), so the
  resnet's shortcut sees it too, exactly as in ComfyUI where the patch acts before ``cat``;
* **modulation**: ``resnet.norm1`` becomes :class:`~hp3_core.connector.ModulatedGroupNorm`
  wrapping the original GroupNorm (shared, not copied).

Both read the connector state of the call in progress from :func:`hp3_core.connector.active`;
nothing per call is stored on the UNet, and with no active state (or a zero connector) the UNet is
bit-for-bit the bare one. :func:`remove` restores the original modules.

Usage::

    with installed(unet, hp3.config):
        features = hp3.control_features(latent, t, tokens, render, y)
        with activate(hp3, features, rows):
            eps = unet(latent, t, encoder_hidden_states=text).sample
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .apply_checks import check_decoder_fits
from .config import HP3Config
from .connector import ConnectorState, ModulatedGroupNorm, active, inject
from .errors import HP3Error


@dataclass
class HP3Handle:
    """What :func:`install` changed on a UNet, for :func:`remove`."""

    unet: nn.Module
    resnets: list[nn.Module]
    decoder_channels: list[int]
    hooks: list = field(default_factory=list)
    removed: bool = False


def decoder_resnets(unet) -> list[nn.Module]:
    """The first resnet of each decoder block, in UNet order (deepest first)."""
    n = _layers_per_block(unet) + 1
    out = []
    for level, block in enumerate(unet.up_blocks):
        if len(block.resnets) != n:
            raise HP3Error(f"up block {level} has {len(block.resnets)} resnets, expected {n}; "
                           "not an SD1.5/SDXL-shaped UNet")
        out.extend(block.resnets)
    return out


def _layers_per_block(unet) -> int:
    lpb = unet.config.layers_per_block
    if not isinstance(lpb, int):
        raise HP3Error(f"UNet layers_per_block {lpb!r} varies per block; HP3 needs one value")
    return lpb


def decoder_channels(unet) -> list[tuple[int, int]]:
    """(decoder-feature channels, skip channels) entering each decoder block of ``unet``."""
    from .unet_convert import controller_config_from_unet
    return controller_config_from_unet(unet).decoder_channels()


def install(unet, config: HP3Config | None = None, weights_path: str = "<in memory>") -> HP3Handle:
    """Install HP3's two hooks on every decoder block of ``unet``; returns the handle for :func:`remove`.

    Args:
        config: when given (the HP3 model's config), the UNet's decoder must have the channels
            that config's connector was built for (:func:`~hp3_core.apply_checks.check_decoder_fits`,
            the check ComfyUI's Apply HP3 makes too).
        weights_path: names the weights in that check's message.

    Raises:
        HP3Error: HP3 is already installed on this UNet, or the layouts differ.
    """
    resnets = decoder_resnets(unet)
    if config is not None:
        check_decoder_fits([r.in_channels for r in resnets], config, weights_path)
    chans = decoder_channels(unet)
    for i, (resnet, (dec, skip)) in enumerate(zip(resnets, chans, strict=True)):
        if isinstance(resnet.norm1, ModulatedGroupNorm):
            raise HP3Error("HP3 is already installed on this UNet; remove() it first")
        if resnet.in_channels != dec + skip:
            raise HP3Error(f"decoder block {i} takes {resnet.in_channels} channels, expected "
                           f"{dec} + {skip}; not an SD1.5/SDXL-shaped UNet")
    handle = HP3Handle(unet=unet, resnets=resnets, decoder_channels=[d for d, _ in chans])
    for i, resnet in enumerate(resnets):
        resnet.norm1 = ModulatedGroupNorm(resnet.norm1, i)
        handle.hooks.append(resnet.register_forward_pre_hook(_injection_hook(i, handle.decoder_channels[i]),
                                                             with_kwargs=True))
    return handle


def _injection_hook(index: int, channels: int):
    def hook(module, args, kwargs):
        if args:
            x = args[0]
        elif "input_tensor" in kwargs:
            x = kwargs["input_tensor"]
        else:
            raise TypeError("ResnetBlock2D called without input_tensor")
        h = x[:, :channels]
        new_h = inject(index, h)
        if new_h is h:  # no active conditions: leave the call untouched
            return None
        x = torch.cat([new_h, x[:, channels:]], dim=1)
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "input_tensor": x}
    return hook


def remove(handle: HP3Handle) -> None:
    """Undo :func:`install`: remove the hooks and put the original GroupNorms back."""
    if handle.removed:
        return
    for hook in handle.hooks:
        hook.remove()
    for resnet in handle.resnets:
        if isinstance(resnet.norm1, ModulatedGroupNorm):
            resnet.norm1 = resnet.norm1.original
    handle.removed = True


@contextlib.contextmanager
def installed(unet, config: HP3Config | None = None, weights_path: str = "<in memory>") -> Iterator[HP3Handle]:
    """:func:`install` for the duration of a ``with`` block."""
    handle = install(unet, config, weights_path)
    try:
        yield handle
    finally:
        remove(handle)


def activate(model, features: Sequence[torch.Tensor], rows: torch.Tensor | float | None = None):
    """Context manager: the installed hooks apply ``model``'s connector to ``features``.

    Args:
        model: an :class:`~hp3_core.hp3_model.HP3Model` (its ``connector`` is used).
        features: :meth:`HP3Model.control_features`'s output for this call.
        rows: [B] strengths (0 leaves a row the bare UNet's, e.g. the unconditional half of a
            CFG batch), or one float for every row; default 1.
    """
    batch = features[0].shape[0]
    if rows is None:
        rows = 1.0
    if not torch.is_tensor(rows):
        rows = torch.full((batch,), float(rows))
    return active(ConnectorState(features=list(features), rows=rows, connector=model.connector))


def sdxl_added_cond(unet, text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """SDXL's ``y`` for the controller: ``concat(text_embeds, add_time_proj(time_ids))``, [B, adm].

    This is what the UNet's ``add_embedding`` takes (and ComfyUI's ``y``), from the
    ``added_cond_kwargs`` a diffusers SDXL pipeline passes.
    """
    time_embeds = unet.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
    return torch.cat([text_embeds, time_embeds.to(text_embeds.dtype)], dim=-1)
