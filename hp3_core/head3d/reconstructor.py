"""Reconstructors: an image in, head parameters out; and choosing one among the backends.

Backends (one interface, :class:`Reconstructor`):

* ``smirk``: SMIRK's encoder on a MediaPipe-landmark crop, FLAME 2020 head (the user's files);
* ``ict``: the embedded offline default, a full head: ICT-FaceKit Light (MIT) fitted to
  MediaPipe's landmarks (:mod:`.ict`);
* ``mediapipe``: MediaPipe's face mesh, face only, an approximation (:mod:`.mediapipe_head`).

``auto`` picks ``smirk`` when its files are found, else ``ict``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import InputImageError, MissingModelFileError
from ..model_folders import find_file
from .face_landmarks import FaceLandmarks, shared_landmarker
from .flame_file import FLAME_MODEL_NAMES as FLAME_FILES
from .mediapipe_head import MediaPipeHeadModel, params_from_landmarks
from .params import HeadParams
from .render_head import HeadModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "smirk", "ict", "mediapipe")
SMIRK_FILES = ("SMIRK_em1.pt",)
WHERE_SMIRK = "github.com/georgeretsi/smirk (pretrained model SMIRK_em1.pt)"
WHERE_FLAME = "flame.is.tue.mpg.de (FLAME 2020, generic_model.pkl; registration, non-commercial licence)"


@runtime_checkable
class Reconstructor(Protocol):
    """What every 3D backend gives: its name, its head model, and head parameters from landmarks."""

    name: str
    head_model: HeadModel

    def from_landmarks(self, image: np.ndarray, face: FaceLandmarks, face_index: int,
                       faces_found: int) -> HeadParams: ...


@dataclass
class Reconstruction:
    """Heads for a list of images; images without a usable face are listed, not reconstructed."""

    params: HeadParams | None
    found: list[int] = field(default_factory=list)        # indices of the images in ``params``
    missing: dict[int, str] = field(default_factory=dict)  # image index -> why


def reconstruct(reconstructor: Reconstructor, images: Sequence[np.ndarray], face_index: int = 0,
                names: Sequence[str] | None = None, allow_missing: bool = False,
                on_item=None) -> Reconstruction:
    """Detect one face per image (the ``face_index``-th largest) and reconstruct it.

    Args:
        images: RGB uint8 [H, W, 3] each.
        names: how to name each image in errors (default ``image k``).
        allow_missing: keep going past images without a face (listed in ``missing``); otherwise
            the first one raises :class:`InputImageError` naming it.
        on_item: called after each image (progress bars, interruption checks).
    """
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    landmarker = shared_landmarker()
    heads, found, missing = [], [], {}
    for i, image in enumerate(images):
        try:
            face, count = landmarker.pick(image, face_index, names[i])
            heads.append(reconstructor.from_landmarks(image, face, face_index, count))
            found.append(i)
        except InputImageError as err:
            if not allow_missing:
                raise
            missing[i] = str(err)
            log.warning("%s", err)
        if on_item is not None:
            on_item(i)
    params = HeadParams.cat(heads) if heads else None
    return Reconstruction(params=params, found=found, missing=missing)


class MediaPipeReconstructor:
    """The offline default: MediaPipe's face mesh, face only."""

    name = "mediapipe"

    def __init__(self) -> None:
        self.head_model = MediaPipeHeadModel()

    def from_landmarks(self, image: np.ndarray, face: FaceLandmarks, face_index: int,
                       faces_found: int) -> HeadParams:
        return params_from_landmarks([face], [image.shape[:2]], [face_index], [faces_found])


def build_reconstructor(backend: str = "auto", smirk_folders: Sequence[str | Path] = (),
                        flame_folders: Sequence[str | Path] = (), device: str = "cpu") -> Reconstructor:
    """The reconstructor for ``backend`` (see the module docstring).

    Raises:
        MissingModelFileError: ``smirk`` was asked for and a file is missing (lists the folders).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown 3D backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "mediapipe":
        return MediaPipeReconstructor()
    if backend == "ict":
        from .ict import ICTReconstructor
        return ICTReconstructor()
    smirk = find_file(SMIRK_FILES, smirk_folders)
    flame = find_file(FLAME_FILES, flame_folders)
    if backend == "auto":
        if smirk is None or flame is None:
            log.info("SMIRK/FLAME files not found; using the offline ICT full-head backend")
            from .ict import ICTReconstructor
            return ICTReconstructor()
        backend = "smirk"
    if smirk is None:
        raise MissingModelFileError("SMIRK encoder", SMIRK_FILES, smirk_folders, WHERE_SMIRK)
    if flame is None:
        raise MissingModelFileError("FLAME head model", FLAME_FILES, flame_folders, WHERE_FLAME)
    from .smirk_reconstructor import SmirkReconstructor
    return SmirkReconstructor(smirk, flame, name=backend, device=device)
