"""The HP3 model: token decoder + head controller + adaptive connector, in one weight file.

State-dict layout (the weight file, :mod:`hp3_core.weights`): ``token_decoder.*`` (the head-token
decoder; ``encoder.*`` in format-1 files, renamed when read), ``controller.*`` (the
ControlNet-shaped encoder copy), ``connector.*`` (per decoder block: ``inject``,
``scale_conv``/``scale_out``, ``shift_conv``/``shift_out``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import HP3Config
from .connector import AdaptiveConnector
from .controller import HeadController
from .head_encoder.token_decoder import HeadTokenDecoder
from .weights import HP3Weights, WeightFileError, check_shapes, load_hp3_weights, shapes_of

TOKEN_DECODER_PREFIX = "token_decoder."


class HP3Model(nn.Module):
    """Everything HP3 trains; the base UNet stays frozen and outside."""

    def __init__(self, config: HP3Config, controller: HeadController | None = None) -> None:
        super().__init__()
        self.config = config
        self.token_decoder = HeadTokenDecoder(config.encoder)
        self.controller = controller if controller is not None else HeadController(config.controller)
        self.connector = AdaptiveConnector(config.controller, config.connector)

    @classmethod
    def from_weights(cls, weights: HP3Weights) -> HP3Model:
        """The model of a loaded weight file (keys and shapes checked first, then a strict load)."""
        model = cls(weights.config)
        check_shapes(weights.path, {k: tuple(v.shape) for k, v in weights.state_dict.items()}, shapes_of(model))
        model.load_state_dict(weights.state_dict)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_unet(cls, config: HP3Config, unet) -> HP3Model:
        """An untrained model: controller copied from a diffusers UNet, connector zero."""
        return cls(config, controller=HeadController.from_unet(unet, config.controller))

    def head_tokens(self, features) -> torch.Tensor:
        """[N, D] head tokens of a :class:`~hp3_core.head_encoder.features.HeadFeatures`."""
        return self.token_decoder.tokens_for(features)

    def control_features(self, sample: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor,
                         hint: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The 3D-aware head conditions ``c``: the controller's features, one per decoder block
        (see :class:`HeadController`); the connector brings them into the UNet.

        Args:
            sample: [B, 4, h, w]; timesteps: [B]; tokens: [B, N, D]; hint: [B, 3, 8h, 8w] in 0..1;
            y: SDXL's [B, adm] or None.
        """
        return self.controller(sample, timesteps, tokens, hint, y)


def token_decoder_from_weights(weights: HP3Weights) -> HeadTokenDecoder:
    """Only the token decoder (``token_decoder.*``) of a weight file: cheap, for encoding heads."""
    decoder = HeadTokenDecoder(weights.config.encoder)
    state = {k[len(TOKEN_DECODER_PREFIX):]: v for k, v in weights.state_dict.items()
             if k.startswith(TOKEN_DECODER_PREFIX)}
    if not state:
        raise WeightFileError(weights.path, "it holds no token-decoder tensors "
                              "('token_decoder.*'; 'encoder.*' in format 1)",
                              "use a complete HP3 file (from `python -m hp3_core init` or `train`)")
    check_shapes(weights.path, {k: tuple(v.shape) for k, v in state.items()}, shapes_of(decoder))
    decoder.load_state_dict(state)
    return decoder.eval()


def load_token_decoder(path: str | Path, device: str | torch.device = "cpu") -> HeadTokenDecoder:
    return token_decoder_from_weights(load_hp3_weights(path)).to(device)
