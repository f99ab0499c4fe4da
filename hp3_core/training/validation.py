"""Periodic validation images: the HP3 diffusers pipeline on fixed (source, target) pairs.

Each row of the PNG grid is one pair: source image | target's render (the hint) | generated
(target caption, HP3 strength 1) | target image. The sampler's seed is fixed, so grids of
successive steps differ only by the weights.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..image_io import load_image
from .pairs import Pair, PairDataset

log = logging.getLogger(__name__)


def _tile(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    return image


@torch.no_grad()
def validation_grid(pipe, hp3, clip, pairs: PairDataset, chosen: list[Pair], steps: int, guidance: float,
                    seed: int = 0) -> np.ndarray:
    """The grid [rows * S, 4 * S, 3] uint8 (S = the training resolution).

    HP3's hooks must not be installed on ``pipe.unet`` (the pipeline installs its own).
    """
    from ..pipeline import HP3Pipeline
    device = pipe.unet.device
    runner = HP3Pipeline(pipe, hp3)
    size = pairs.resolution
    rows = []
    for pair in chosen:
        sample = pairs.sample(pair)
        clip_hidden = clip.encode(sample["source_crop"][None])                       # [1, T, C]
        tokens = hp3.token_decoder(sample["source_arcface"][None, None].to(device),
                             clip_hidden[None].to(device))[0]                          # [N, D]
        render = sample["render"].permute(1, 2, 0)                                    # [S, S, 3] 0..1
        generator = torch.Generator(device="cpu").manual_seed(seed)
        out = runner(prompt=sample["caption"], head_tokens=tokens, render=render, num_inference_steps=steps,
                     guidance_scale=guidance, generator=generator, height=size, width=size, output_type="np")
        generated = (np.clip(out.images[0], 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        items = pairs.dataset.items
        rows.append(np.concatenate([
            _tile(load_image(items[pair.source].image_file), size),
            (render.numpy() * 255 + 0.5).astype(np.uint8),
            _tile(generated, size),
            _tile(load_image(items[pair.target].image_file), size)], axis=1))
    return np.concatenate(rows, axis=0)


def save_grid(path: str | Path, grid: np.ndarray) -> Path:
    from ..image_io import save_image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(path, grid)
    log.info("validation grid: %s", path)
    return path
