"""HP3's head controller: a ControlNet-shaped copy of the UNet's encoder and middle block.

Its hint is the 3D render (diffusers' conv hint stem, last conv zero-initialised) and its
cross-attention context is the **head tokens**, not the text. It returns the encoder's features
at every skip (the "3D-aware head conditions"); the adaptive connector, not ControlNet's zero
convolutions, brings them into the UNet's decoder. Built from diffusers' ``ControlNetModel``
parts (its trailing zero convs are dropped), initialised from the base UNet's weights.

SDXL's added conditioning: ComfyUI's ``y`` ([B, 2816] = pooled text + size/crop embeddings) is
exactly what diffusers' ``add_embedding`` linear takes, so it is fed straight to it.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ControllerConfig


class HeadController(nn.Module):
    """Encoder + middle block of a UNet, conditioned on a render and on head tokens."""

    def __init__(self, config: ControllerConfig) -> None:
        super().__init__()
        from diffusers import ControlNetModel
        self.config = config
        net = ControlNetModel(**config.to_diffusers())
        # HP3's connector replaces ControlNet's zero convolutions.
        del net.controlnet_down_blocks
        del net.controlnet_mid_block
        self.net = net

    @classmethod
    def from_unet(cls, unet, config: ControllerConfig) -> HeadController:
        """A controller whose shared layers are copies of a diffusers ``UNet2DConditionModel``'s."""
        ctrl = cls(config)
        own = ctrl.net.state_dict()
        unet_state = unet.state_dict()
        copied = {k: unet_state[k] for k in own if k in unet_state and unet_state[k].shape == own[k].shape}
        ctrl.net.load_state_dict(copied, strict=False)
        return ctrl

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                hint: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Condition features, one per decoder block in UNet order (deepest first).

        Args:
            sample: [B, 4, h, w] the UNet's input latent (already scaled for the model).
            timesteps: [B] discrete timesteps (0..999).
            context: [B, N, D] head tokens.
            hint: [B, 3, 8h, 8w] the 3D render in 0..1.
            y: [B, adm] SDXL's added conditioning (None for SD1.5).

        Returns:
            K tensors, K = number of decoder blocks; entry i has the channels and size of the skip
            that decoder block i takes. The middle block's output is added to entry 0 (same
            size), so the controller's deepest features reach the decoder too.
        """
        net = self.net
        dtype = net.conv_in.weight.dtype
        emb = net.time_embedding(net.time_proj(timesteps).to(dtype))
        if net.config.addition_embed_type == "text_time":
            if y is None:
                raise ValueError("an SDXL head controller needs the added conditioning y")
            emb = emb + net.add_embedding(y.to(dtype))
        h = net.conv_in(sample.to(dtype)) + net.controlnet_cond_embedding(hint.to(dtype))
        skips = [h]
        for block in net.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context.to(dtype))
            else:
                h, res = block(hidden_states=h, temb=emb)
            skips.extend(res)
        h = net.mid_block(h, emb, encoder_hidden_states=context.to(dtype))
        out = skips[::-1]
        out[0] = out[0] + h
        return out
