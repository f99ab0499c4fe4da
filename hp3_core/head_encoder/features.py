"""The "head object" passed between nodes: one person's encoder features from R reference photos.

A :class:`HeadFeatures` holds what the frozen backbones computed for each reference image (the
ArcFace identity, the CLIP vision penultimate hidden states of the head crop) plus what previews
and logs need (the head crops, 5 keypoints in crop pixels, face-analysis info), and optionally
the N x D head tokens once an HP3 model's decoder has been applied.

It is saved as ``.safetensors`` (tensors) with its JSON description in the metadata, never a
pickle, so ``python -m hp3_core encode --out tokens.safetensors`` files are safe to share::

    id_embeds [R, 512] float32   clip_hidden [R, T, C]   crops [R, S, S, 3] float32
    keypoints.{r} [K, 2]         tokens [N, D] (optional)
    __metadata__["hp3.head_features"] = {"format": 1, "num_refs": R, "clip_width": C,
                                         "source_names": [...], "face_info": [...]}
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HP3Error, MissingModelFileError

META_KEY = "hp3.head_features"
FORMAT_VERSION = 1


@dataclass
class HeadFeatures:
    """Encoder features of one person from R reference images.

    Attributes:
        id_embeds: [R, E] float32 identity embeddings (ArcFace E = 512, dlib E = 128; the backend
            is in ``face_info[r]["identity"]``), L2-normalised (rows that are not unit length are
            normalised on construction; unit rows are kept bit-exact).
        clip_hidden: [R, T, C] CLIP vision penultimate hidden states of the head crops.
        crops: [R, S, S, 3] float 0..1, the head crops (for previews).
        keypoints: R arrays [5, 2]: the face's 5 keypoints (eyes, nose, mouth corners) in crop
            pixels.
        clip_width: C, the CLIP vision width (1024 ViT-L/14, 1280 ViT-H/14).
        source_names: R names of the reference images (file names or node labels).
        face_info: R JSON-serialisable dicts (detector, score, box, face index, ...).
        tokens: [N, D] head tokens when an HP3 model's decoder was applied, else None.
    """

    id_embeds: torch.Tensor
    clip_hidden: torch.Tensor
    crops: torch.Tensor
    keypoints: list[np.ndarray]
    clip_width: int
    source_names: list[str] = field(default_factory=list)
    face_info: list[dict[str, Any]] = field(default_factory=list)
    tokens: torch.Tensor | None = None

    def __post_init__(self) -> None:
        r = int(self.id_embeds.shape[0]) if self.id_embeds.ndim == 2 else -1
        if r < 1:
            raise ValueError(f"id_embeds must be [R, 512] with R >= 1, got {list(self.id_embeds.shape)}")
        if self.clip_hidden.ndim != 3 or self.clip_hidden.shape[0] != r:
            raise ValueError(f"clip_hidden must be [R={r}, T, C], got {list(self.clip_hidden.shape)}")
        if int(self.clip_hidden.shape[-1]) != int(self.clip_width):
            raise ValueError(f"clip_width {self.clip_width} does not match clip_hidden's width "
                             f"{self.clip_hidden.shape[-1]}")
        if self.crops.ndim != 4 or self.crops.shape[0] != r or self.crops.shape[-1] != 3:
            raise ValueError(f"crops must be [R={r}, S, S, 3], got {list(self.crops.shape)}")
        self.keypoints = [np.asarray(k) for k in self.keypoints]
        if len(self.keypoints) != r:
            raise ValueError(f"expected {r} keypoint arrays, got {len(self.keypoints)}")
        if not self.source_names:
            self.source_names = [f"reference {i}" for i in range(r)]
        if not self.face_info:
            self.face_info = [{} for _ in range(r)]
        if len(self.source_names) != r or len(self.face_info) != r:
            raise ValueError(f"source_names ({len(self.source_names)}) and face_info "
                             f"({len(self.face_info)}) must have one entry per reference ({r})")
        if self.tokens is not None and self.tokens.ndim != 2:
            raise ValueError(f"tokens must be [N, D], got {list(self.tokens.shape)}")
        self.clip_width = int(self.clip_width)
        backends = {str(info.get("identity", "insightface")) for info in self.face_info}
        if len(backends) > 1:
            raise HP3Error(f"cannot combine references encoded by different identity backends "
                           f"({', '.join(sorted(backends))}); encode every reference with one face analysis")
        ids = self.id_embeds.float()
        norms = ids.norm(dim=-1, keepdim=True)
        if not torch.all((norms - 1).abs() < 1e-4):
            ids = ids / norms.clamp_min(1e-12)
        self.id_embeds = ids

    @property
    def identity(self) -> str:
        """The identity backend of ``id_embeds`` (``insightface`` or ``dlib``; features saved before
        it was recorded are insightface's). Mixed backends are refused on construction."""
        found = {str(info.get("identity", "insightface")) for info in self.face_info}
        return found.pop() if found else "insightface"

    @property
    def num_refs(self) -> int:
        """R, the number of reference images."""
        return int(self.id_embeds.shape[0])

    def to(self, device: torch.device | str) -> HeadFeatures:
        """A copy with every tensor on ``device`` (keypoints and metadata are shared)."""
        return HeadFeatures(id_embeds=self.id_embeds.to(device), clip_hidden=self.clip_hidden.to(device),
                            crops=self.crops.to(device), keypoints=list(self.keypoints),
                            clip_width=self.clip_width, source_names=list(self.source_names),
                            face_info=list(self.face_info),
                            tokens=None if self.tokens is None else self.tokens.to(device))

    def with_tokens(self, tokens: torch.Tensor | None) -> HeadFeatures:
        """A copy carrying ``tokens`` [N, D] (or none)."""
        out = self.to(self.id_embeds.device)
        out.tokens = tokens
        return out

    @classmethod
    def cat(cls, parts: list[HeadFeatures]) -> HeadFeatures:
        """All references of several objects (same person, same CLIP model) in one; tokens dropped."""
        if not parts:
            raise ValueError("HeadFeatures.cat needs at least one part")
        widths = {p.clip_width for p in parts}
        shapes = {tuple(p.clip_hidden.shape[1:]) for p in parts}
        if len(widths) > 1 or len(shapes) > 1:
            raise HP3Error(f"cannot combine head features from different CLIP vision models "
                           f"(feature shapes {sorted(shapes)}); encode every reference with one model")
        sizes = {tuple(p.crops.shape[1:]) for p in parts}
        if len(sizes) > 1:
            raise HP3Error(f"cannot combine head features with different crop sizes {sorted(sizes)}")
        dev = parts[0].id_embeds.device
        return cls(id_embeds=torch.cat([p.id_embeds.to(dev) for p in parts]),
                   clip_hidden=torch.cat([p.clip_hidden.to(dev) for p in parts]),
                   crops=torch.cat([p.crops.to(dev) for p in parts]),
                   keypoints=[k for p in parts for k in p.keypoints], clip_width=parts[0].clip_width,
                   source_names=[n for p in parts for n in p.source_names],
                   face_info=[f for p in parts for f in p.face_info])

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file (atomically); returns its path."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors: dict[str, torch.Tensor] = {
            "id_embeds": self.id_embeds, "clip_hidden": self.clip_hidden, "crops": self.crops}
        for i, k in enumerate(self.keypoints):
            tensors[f"keypoints.{i}"] = torch.from_numpy(np.ascontiguousarray(k))
        if self.tokens is not None:
            tensors["tokens"] = self.tokens
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        meta = {"format": FORMAT_VERSION, "num_refs": self.num_refs, "clip_width": self.clip_width,
                "source_names": list(self.source_names), "face_info": list(self.face_info)}
        try:
            text = json.dumps(meta, default=_json_default)
        except TypeError as err:
            raise HP3Error(f"head features cannot be saved: face_info is not JSON-serialisable ({err})") from err
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={META_KEY: text})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> HeadFeatures:
        """Read a file written by :meth:`save`.

        Raises:
            MissingModelFileError: the file does not exist.
            HP3Error: it is not a head-features file, or is from a newer pack, or is incomplete.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MissingModelFileError("HP3 head features file", [path.name], [path.parent])
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
            raise HP3Error(f"head features '{path}' is not a readable .safetensors file: {err}") from err
        if META_KEY not in metadata:
            raise HP3Error(f"'{path}' is not an HP3 head-features file (no '{META_KEY}' metadata); "
                           f"make it with the HP3 encode node or `python -m hp3_core encode`")
        try:
            meta = json.loads(metadata[META_KEY])
            version = int(meta["format"])
            r = int(meta["num_refs"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise HP3Error(f"head features '{path}': unreadable metadata ({err})") from err
        if version > FORMAT_VERSION:
            raise HP3Error(f"head features '{path}' use format {version}, newer than this pack's "
                           f"{FORMAT_VERSION}; update the pack")
        needed = ["id_embeds", "clip_hidden", "crops"] + [f"keypoints.{i}" for i in range(r)]
        missing = [k for k in needed if k not in tensors]
        if missing:
            raise HP3Error(f"head features '{path}' lack tensors {missing}; the file is incomplete")
        try:
            return cls(id_embeds=tensors["id_embeds"], clip_hidden=tensors["clip_hidden"],
                       crops=tensors["crops"],
                       keypoints=[tensors[f"keypoints.{i}"].cpu().numpy() for i in range(r)],
                       clip_width=int(meta["clip_width"]), source_names=list(meta["source_names"]),
                       face_info=list(meta["face_info"]), tokens=tensors.get("tokens"))
        except (KeyError, ValueError) as err:
            raise HP3Error(f"head features '{path}' are inconsistent: {err}") from err


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays, tuples and paths in face_info -> JSON types."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
