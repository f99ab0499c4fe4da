"""SMIRK and FLAME files for tests: random weights in the real files' layouts."""
from __future__ import annotations

from pathlib import Path

import torch

from hp3_core.head3d.smirk_encoder import ENCODER_PREFIX, GENERATOR_PREFIX, SmirkEncoder


def write_smirk_checkpoint(path: str | Path, encoder: SmirkEncoder, *, with_generator: bool = True) -> Path:
    """Save ``encoder`` in SMIRK's checkpoint layout.

    Keys are ``smirk_encoder.<state dict key>``; with ``with_generator`` a few small dummy
    ``smirk_generator.*`` tensors (named like SMIRK's U-Net generator) are added, as in the real file.
    """
    path = Path(path)
    state: dict[str, torch.Tensor] = {ENCODER_PREFIX + k: v.detach().cpu().clone()
                                      for k, v in encoder.state_dict().items()}
    if with_generator:
        state[GENERATOR_PREFIX + "encoder1.enc1conv1.weight"] = torch.zeros(32, 6, 3, 3)
        state[GENERATOR_PREFIX + "encoder1.enc1norm1.weight"] = torch.ones(32)
        state[GENERATOR_PREFIX + "conv.weight"] = torch.zeros(3, 32, 1, 1)
        state[GENERATOR_PREFIX + "conv.bias"] = torch.zeros(3)
    torch.save(state, path)
    return path


def write_synthetic_models(root: str | Path, seed: int = 0) -> Path:
    """SMIRK and FLAME files with random weights, as a user lays them out: ``root/smirk/SMIRK_em1.pt``
    and ``root/flame/generic_model.pkl`` (with SMIRK's eyelids and FLAME's masks beside it).

    They run the whole ``smirk`` backend (encoder, FLAME, renders) without the real files; the
    results mean nothing. Returns ``root`` (what ``--models-dir`` takes).
    """
    from harness.flame_synthetic import write_synthetic_flame

    root = Path(root)
    (root / "smirk").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    write_smirk_checkpoint(root / "smirk" / "SMIRK_em1.pt", SmirkEncoder().eval())
    write_synthetic_flame(root / "flame" / "generic_model.pkl", fmt="pkl", seed=seed)
    return root
