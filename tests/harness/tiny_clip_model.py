"""A tiny full CLIP model folder (text + vision towers, projections, tokenizer) for CLIPScore
tests: ``CLIPModel.from_pretrained(folder, local_files_only=True)`` and
``AutoTokenizer.from_pretrained(folder)`` load it offline."""
from __future__ import annotations

from pathlib import Path

import torch

from harness.tiny_clip import TINY_CLIP
from harness.tiny_pipeline import tiny_text_config, write_tokenizer


def write_tiny_clip_model(folder: Path, seed: int = 0) -> Path:
    import transformers
    tokenizer = write_tokenizer(folder)
    vision = {k: v for k, v in TINY_CLIP.items() if k != "projection_dim"}
    config = transformers.CLIPConfig(text_config=tiny_text_config(tokenizer), vision_config=vision,
                                     projection_dim=TINY_CLIP["projection_dim"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
