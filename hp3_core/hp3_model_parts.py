"""Build the parts of an HP3 model from a weight file (the full model lands with the controller).

A weight file holds the token decoder under ``encoder.``, the head controller under
``controller.`` and the adaptive connector under ``connector.`` (see :mod:`hp3_core.weights`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .head_encoder.token_decoder import HeadTokenDecoder
from .weights import HP3Weights, WeightFileError, check_shapes, load_hp3_weights, shapes_of

ENCODER_PREFIX = "encoder."


def token_decoder_from_weights(weights: HP3Weights) -> HeadTokenDecoder:
    """The token decoder with the file's ``encoder.*`` tensors (keys and shapes checked)."""
    decoder = HeadTokenDecoder(weights.config.encoder)
    state = {k[len(ENCODER_PREFIX):]: v for k, v in weights.state_dict.items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise WeightFileError(weights.path, "it holds no head-encoder tensors ('encoder.*')",
                              "use a complete HP3 file (from `python -m hp3_core init` or `train`)")
    check_shapes(weights.path, {k: tuple(v.shape) for k, v in state.items()}, shapes_of(decoder))
    decoder.load_state_dict(state)
    return decoder.eval()


def load_token_decoder(path: str | Path, device: str | torch.device = "cpu") -> HeadTokenDecoder:
    return token_decoder_from_weights(load_hp3_weights(path)).to(device)
