"""Head similarity: how well the generated *head* (face, hair, head shape) keeps the source's.

Model: a CLIP vision transformer (transformers layout: a ``CLIPVisionModelWithProjection`` or full
``CLIPModel`` folder, or a single ``.safetensors`` file as in ComfyUI's ``models/clip_vision``),
loaded by :meth:`~hp3_core.head_encoder.clip_vision.ClipVisionEncoder.from_local` (local files
only). The image is the **head crop** (:func:`~hp3_core.head_encoder.head_crop.head_crop`: square,
2.2x the MediaPipe face box, lifted to keep hair), preprocessed with ComfyUI's/CLIP's
``clip_preprocess`` (shortest side to the model's size, bicubic, centre crop, CLIP mean/std).

Embedding: the **projected image embedding** ``image_embeds = visual_projection(pooler_output)``
(pooler_output = post-LayerNorm class token), exactly ``CLIPVisionModelWithProjection``'s; when the
checkpoint has no ``visual_projection.weight`` the **pooled output** itself is used (the report
says which). Not the penultimate hidden states HP3's encoder reads: a metric on the features the
model is trained on would reward copying them.

Formula, per sample: ``head_sim = mean_r cos(v(crop_generated), v(crop_source_r))``, ``v`` the
embedding above, in [-1, 1]. No face in the generated image: 0, listed as a failure.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import MissingModelFileError
from ..head_encoder.clip_vision import ClipVisionEncoder
from ..head_encoder.head_crop import head_crop

PROJECTION_KEY = "visual_projection.weight"


def projection_weight(path: str | Path) -> torch.Tensor | None:
    """``visual_projection.weight`` [P, width] from a CLIP file or folder's safetensors, or None."""
    from safetensors import safe_open
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                if key == PROJECTION_KEY or key.endswith("." + PROJECTION_KEY):
                    return sf.get_tensor(key).float()
    return None


class ClipImageEmbedder:
    """L2-normalised CLIP image embeddings: projected (``image_embeds``) or pooled (module doc)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        path = Path(path)
        if not path.exists():
            raise MissingModelFileError("CLIP vision model for head similarity", [path.name], [path.parent])
        self.encoder = ClipVisionEncoder.from_local(path, device=device)
        proj = projection_weight(path)
        self.projection = proj.to(self.encoder.device) if proj is not None else None
        self.path = path
        self.kind = ("image_embeds (visual_projection of the pooled class token)" if proj is not None
                     else "pooled output (post-LayerNorm class token; the checkpoint has no visual_projection)")

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 [S, S, 3] crops -> [B, P] float32, unit length."""
        pixels = self.encoder.preprocess(np.stack(images)).to(self.encoder.dtype)
        pooled = self.encoder.model(pixel_values=pixels).pooler_output.float()
        if self.projection is not None:
            pooled = pooled @ self.projection.T
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()


class HeadSimilarity:
    """CLIP cosine of head crops, generated vs the identity's sources (module docstring)."""

    def __init__(self, embedder: ClipImageEmbedder) -> None:
        self.embedder = embedder
        self._sources: dict[str, np.ndarray] = {}

    def crop_embedding(self, image: np.ndarray, face_box: tuple[float, float, float, float]) -> np.ndarray:
        """[P] embedding of the head crop around ``face_box`` (MediaPipe landmark box, pixels)."""
        return self.embedder.embed([head_crop(image, face_box).image])[0]

    def set_sources(self, identity: str, images: Sequence[np.ndarray], boxes: Sequence[tuple]) -> None:
        if identity not in self._sources:
            self._sources[identity] = np.stack([self.crop_embedding(im, b) for im, b in zip(images, boxes)])

    def score(self, identity: str, image: np.ndarray, face_box: tuple[float, float, float, float]) -> float:
        return float(np.mean(self._sources[identity] @ self.crop_embedding(image, face_box)))
