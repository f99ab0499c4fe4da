"""The ``smirk`` backend: SMIRK's encoder on a landmark crop, FLAME 2020 head.

MediaPipe finds the face and its landmarks; SMIRK's crop (scale 1.4, 224x224) feeds the three
MobileNetV3 encoders, which give FLAME's shape (300), expression (50), eyelids (2), jaw (3), head
pose (3) and an orthographic camera (3). FLAME turns them into the full head (5023 vertices).
SMIRK's eyelid blendshapes (``l_eyelid.npy``, ``r_eyelid.npy`` from SMIRK's assets) and FLAME's
``FLAME_masks.pkl`` (face region) are used when found beside the model files.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .face_landmarks import FaceLandmarks
from .flame import FlameModel
from .flame_file import EYELID_NAMES, MASKS_NAME, load_flame
from .params import FaceInfo, HeadParams
from .smirk_crop import SMIRK_CROP_SIZE, smirk_crop_transform, warp_crop
from .smirk_encoder import load_smirk_encoder

log = logging.getLogger(__name__)


class FlameHeadModel:
    """Full FLAME head from SMIRK's parameters (model frame: FLAME's, metres)."""

    full_head = True

    def __init__(self, flame: FlameModel, name: str = "smirk") -> None:
        self.flame = flame
        self.name = name

    @property
    def faces(self) -> torch.Tensor:
        return self.flame.faces

    def face_subset(self) -> torch.Tensor:
        return self.flame.face_subset()

    @torch.no_grad()
    def vertices(self, params: HeadParams) -> torch.Tensor:
        eyelids = params.eyelids if self.flame.has_eyelids else None
        return self.flame(params.shape, params.expression, params.pose, params.jaw, eyelids=eyelids)


class SmirkReconstructor:
    """Reconstructs heads with SMIRK's encoder and FLAME (see the module docstring)."""

    def __init__(self, encoder_path: str | Path, flame_path: str | Path, name: str = "smirk",
                 device: str = "cpu") -> None:
        self.name = name
        self.device = torch.device(device)
        self.encoder = load_smirk_encoder(encoder_path, device=self.device)
        folders = {Path(encoder_path).parent, Path(flame_path).parent}
        eyelids = next((f for f in folders if all((f / n).is_file() for n in EYELID_NAMES)), None)
        masks = next((f / MASKS_NAME for f in folders if (f / MASKS_NAME).is_file()), None)
        if eyelids is None:
            log.warning("SMIRK eyelid blendshapes (%s) not found beside %s or %s: eyelids are not rendered",
                        " and ".join(EYELID_NAMES), encoder_path, flame_path)
        self.head_model = FlameHeadModel(FlameModel(load_flame(flame_path, eyelids=eyelids, masks=masks)), name)

    @torch.no_grad()
    def from_landmarks(self, image: np.ndarray, face: FaceLandmarks, face_index: int,
                       faces_found: int) -> HeadParams:
        crop = smirk_crop_transform(face.points[:, :2], crop_size=SMIRK_CROP_SIZE)
        patch = warp_crop(image, crop, SMIRK_CROP_SIZE)
        x = torch.from_numpy(patch).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        out = {k: v.float().cpu() for k, v in self.encoder(x).items()}
        return HeadParams(
            backend=self.name, shape=out["shape"], expression=out["expression"], eyelids=out["eyelids"],
            jaw=out["jaw"], pose=out["pose"], camera=out["camera"],
            image_to_crop=torch.from_numpy(crop).float()[None], crop_size=SMIRK_CROP_SIZE,
            image_size=[tuple(image.shape[:2])],
            faces=[FaceInfo(face.detector, face.confidence, face.box, face_index, faces_found)])
