"""Prompt alignment: CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation
Metric for Image Captioning").

Model: a full CLIP model folder in transformers layout (``CLIPModel`` weights as safetensors +
its tokenizer files, e.g. openai/clip-vit-large-patch14 saved with ``save_pretrained``), loaded
with ``local_files_only=True``; nothing is downloaded.

Formula: ``clip_score = 100 * max(cos(E_I(image), E_T(prompt)), 0)`` with ``E_I``/``E_T`` CLIP's
projected image and text embeddings. The 100 scale is torchmetrics' ``CLIPScore`` convention (the
one personalization papers report, typically 20-35 for ViT-L/14); Hessel et al.'s own weight is
2.5, i.e. ``CLIP-S = clip_score / 40``. The whole image is scored (resized on its shortest side to
the model's input size, bicubic, centre crop, CLIP mean/std: ``clip_preprocess``, which matches
``CLIPImageProcessor``); the prompt is tokenised by the folder's tokenizer, truncated to the text
model's maximum length (77 tokens for OpenAI CLIP).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import HP3Error, MissingModelFileError
from ..head_encoder.clip_vision import clip_preprocess, quiet_transformers
from ..optional import require

SCALE = 100.0
WHERE = ("a full CLIP model folder in transformers layout (config.json, model.safetensors, tokenizer "
         "files), e.g. openai/clip-vit-large-patch14 saved with save_pretrained")


class ClipScore:
    """CLIPScore of (image, prompt) pairs with a local ``CLIPModel`` (module docstring)."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        transformers = require("transformers", "CLIPScore")
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MissingModelFileError("CLIP model for CLIPScore", ["config.json"], [folder], WHERE)
        if not list(folder.glob("*.safetensors")):
            raise MissingModelFileError("CLIP model weights for CLIPScore", ["model.safetensors"], [folder], WHERE)
        try:
            with quiet_transformers():
                self.model = transformers.CLIPModel.from_pretrained(
                    str(folder), local_files_only=True, use_safetensors=True).eval().to(device)
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise HP3Error(f"CLIP model '{folder}' for CLIPScore cannot be loaded ({str(err).splitlines()[0]}); "
                           f"it must be {WHERE}") from err
        self.folder = folder
        self.device = device
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """[P] unit-length projected text embedding (cached per prompt)."""
        if prompt not in self._text:
            tok = self.tokenizer([prompt], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            pooled = self.model.text_model(input_ids=tok["input_ids"],
                                           attention_mask=tok.get("attention_mask")).pooler_output
            self._text[prompt] = torch.nn.functional.normalize(self.model.text_projection(pooled), dim=-1)[0]
        return self._text[prompt]

    @torch.no_grad()
    def image_embedding(self, image: np.ndarray) -> torch.Tensor:
        """[P] unit-length projected image embedding of an RGB uint8 [H, W, 3] image."""
        x = torch.from_numpy(np.ascontiguousarray(image))[None].float().to(self.device) / 255.0
        pixels = clip_preprocess(x, size=int(self.model.config.vision_config.image_size))
        pooled = self.model.vision_model(pixel_values=pixels.to(self.model.dtype)).pooler_output
        return torch.nn.functional.normalize(self.model.visual_projection(pooled), dim=-1)[0]

    def cosine(self, image: np.ndarray, prompt: str) -> float:
        """cos(E_I(image), E_T(prompt)) in [-1, 1]."""
        return float(self.image_embedding(image).float() @ self.text_embedding(prompt).float())

    def score(self, image: np.ndarray, prompt: str) -> float:
        """CLIPScore = 100 * max(cos, 0)."""
        return SCALE * max(self.cosine(image, prompt), 0.0)
