"""One HP3 forward on a training batch: token decoder -> head controller -> UNet with the
adaptive connector. Shared by the trainer and ``bench train`` so the benchmark times the real path.

:class:`HP3TrainModule` holds the trainable :class:`~hp3_core.hp3_model.HP3Model` as its only
submodule (that is what accelerate/DDP wraps and synchronises); the frozen UNet is referenced,
not registered, so it is neither broadcast nor saved with the trainable state. HP3's hooks must be
installed on the UNet (:func:`hp3_core.diffusers_patch.install`) while the module runs.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..connector import active, current
from ..diffusers_patch import activate, sdxl_added_cond


class HP3TrainModule(nn.Module):
    """The trainable HP3 model + a reference to the frozen base UNet."""

    def __init__(self, hp3: nn.Module, unet: nn.Module) -> None:
        super().__init__()
        self.hp3 = hp3
        self._unet = (unet,)  # a tuple: not a submodule (frozen, kept out of DDP and state_dict)

    @property
    def unet(self) -> nn.Module:
        return self._unet[0]

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, id_embeds: torch.Tensor,
                clip_hidden: torch.Tensor, hint: torch.Tensor,
                added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The UNet's prediction with HP3 on every row.

        Args:
            noisy: [B, 4, h, w] noised latents; timesteps: [B] long, 0..999;
            text: [B, L, C] text encoder hidden states;
            id_embeds: [B, 512] source ArcFace embeddings (zeros: head condition dropped);
            clip_hidden: [B, T, clip_width] CLIP vision penultimate states of the source head crop;
            hint: [B, 3, 8h, 8w] the target's shaded render, 0..1;
            added_cond_kwargs: SDXL's ``text_embeds`` [B, 1280] and ``time_ids`` [B, 6]; None for SD1.5.

        Returns:
            [B, 4, h, w] the UNet's output (epsilon, v or x0 per the scheduler's prediction type).
        """
        unet = self.unet
        tokens = self.hp3.token_decoder(id_embeds.unsqueeze(1), clip_hidden.unsqueeze(1))  # one reference each
        y = None
        if added_cond_kwargs is not None:
            y = sdxl_added_cond(unet, added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"])
        conds = self.hp3.control_features(noisy, timesteps, tokens, hint, y)
        dtype = unet.dtype
        with activate(self.hp3, conds):
            return unet(noisy.to(dtype), timesteps, encoder_hidden_states=text.to(dtype),
                        added_cond_kwargs=added_cond_kwargs).sample


def connector_checkpoint(module: nn.Module, *args):
    """diffusers' ``gradient_checkpointing_func`` for a UNet carrying HP3's hooks.

    The connector reads the call's conditions from a context variable, which is not set when the
    backward pass recomputes a block (later, and on CUDA in the autograd engine's own thread). So
    the conditions active now are captured and re-activated around the recomputation
    (``context_fn``, non-reentrant checkpointing), making it identical to the forward.
    """
    state = current()

    def contexts():
        return contextlib.nullcontext(), active(state)

    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False, context_fn=contexts)


def enable_gradient_checkpointing(unet: nn.Module, hp3: nn.Module) -> None:
    """Checkpoint the UNet's blocks (connector-aware) and the controller's (diffusers' default)."""
    unet.enable_gradient_checkpointing(gradient_checkpointing_func=connector_checkpoint)
    hp3.controller.net.enable_gradient_checkpointing()
