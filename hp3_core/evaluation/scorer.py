"""Scores one image with every metric whose models are available.

Each metric's models are loaded once; a metric whose files (or packages) are missing is skipped
with a note naming the file and where it was looked for, and the others still run. A generated
image without a face is a *failure*, never a crash: face and head similarity are 0, pose and
expression errors are empty, the row says why (``[face]``, ``[head]``, ``[pose]`` tags), and
CLIPScore (which needs no face) is still computed.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import HP3Error, InputImageError
from .face_similarity import FaceSimilarity, build_analyzers, describe
from .head_similarity import ClipImageEmbedder, HeadSimilarity
from .pose_expression import COLUMNS as POSE_COLUMNS
from .pose_expression import PoseExpression, expression_meaning
from .prompt_alignment import ClipScore
from .protocol import EvaluationSettings, Sample
from .results import Row

log = logging.getLogger(__name__)

# metric column -> failure tag of its group (a failure with that tag, or [image], counts against it)
TAGS = {"face_sim": "face", "face_sim_2": "face", "head_sim": "head", "clip_score": "clip",
        **{c: "pose" for c in POSE_COLUMNS}}


class Scorer:
    """The metrics' models and per-identity / per-driver caches.

    Attributes:
        notes: metric column -> why it is skipped (only skipped metrics appear).
        labels: metric column -> the model (and embedding / units) it uses, for the report.
    """

    def __init__(self, settings: EvaluationSettings, device: str = "cpu") -> None:
        self.notes: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        self.face = self.head = self.pose = self.clip = None
        self.landmarker = None
        try:
            from ..head3d.face_landmarks import shared_landmarker
            self.landmarker = shared_landmarker()
        except HP3Error as err:
            self._skip(("head_sim", *POSE_COLUMNS), err)
        try:
            analyzers = build_analyzers(settings.models_dir, settings.pack, settings.detection,
                                        settings.second_recognizer, settings.identity, settings.dlib_dirs)
            self.face = FaceSimilarity(analyzers)
            for col, a in zip(("face_sim", "face_sim_2"), analyzers):
                self.labels[col] = describe(a)
            if len(analyzers) < 2:
                self.notes["face_sim_2"] = ("skipped: no second recognizer (install dlib's public-domain model: "
                                            "pip install --no-deps dlib-bin face-recognition-models; or both "
                                            "insightface packs, antelopev2 and buffalo_l; or give "
                                            "--second-recognizer FILE.onnx)")
        except HP3Error as err:
            self._skip(("face_sim", "face_sim_2"), err)
        head_path = settings.head_clip or settings.clip
        if self.landmarker is not None:
            if head_path is None:
                self.notes["head_sim"] = "skipped: no CLIP model given (--clip FOLDER or --head-clip PATH)"
            else:
                try:
                    embedder = ClipImageEmbedder(head_path, device=device)
                    self.head = HeadSimilarity(embedder)
                    self.labels["head_sim"] = f"CLIP vision '{head_path}', {embedder.kind}"
                except HP3Error as err:
                    self._skip(("head_sim",), err)
            try:
                self.pose = PoseExpression(settings.backend, settings.models_dir, device=device)
                for col in POSE_COLUMNS:
                    self.labels[col] = f"3D backend {self.pose.backend}"
                self.labels["expr_rmse"] = expression_meaning(self.pose.backend)
            except HP3Error as err:
                self._skip(POSE_COLUMNS, err)
        if settings.clip is None:
            self.notes["clip_score"] = "skipped: no CLIP model folder given (--clip FOLDER: a full CLIPModel)"
        else:
            try:
                self.clip = ClipScore(settings.clip, device=device)
                self.labels["clip_score"] = f"CLIPModel '{settings.clip}', 100 * max(cos, 0)"
            except HP3Error as err:
                self._skip(("clip_score",), err)
        self._drivers: dict[str, tuple[object | None, str]] = {}

    def _skip(self, columns: Sequence[str], err: Exception) -> None:
        for col in columns:
            self.notes.setdefault(col, f"skipped: {err}")
        log.warning("metric(s) %s skipped: %s", ", ".join(columns), err)

    # -- per identity / driver ---------------------------------------------------------------
    def set_identity(self, identity: str, images: Sequence[np.ndarray], names: Sequence[str]) -> None:
        """Embed the identity's sources (once). Raises :class:`HP3Error` if a source has no face."""
        if self.face is not None:
            self.face.set_sources(identity, images, names)
        if self.head is not None:
            boxes = []
            for im, n in zip(images, names):
                try:
                    boxes.append(self.landmarker.pick(im, 0, n)[0].box)
                except InputImageError as err:
                    raise HP3Error(f"identity '{identity}': {err}") from err
            self.head.set_sources(identity, images, boxes)

    def set_driver(self, name: str, image: np.ndarray | None, label: str) -> None:
        """Reconstruct the driver's head once; a driver without a face is noted, not fatal."""
        if self.pose is None or name in self._drivers:
            return
        if image is None:
            self._drivers[name] = (None, f"[pose] driver image {label} not found")
            return
        try:
            face, count = self.landmarker.pick(image, 0, label)
            self._drivers[name] = (self.pose.params(image, face, count), "")
        except InputImageError as err:
            self._drivers[name] = (None, f"[pose] no face in the driver: {err}")

    # -- one sample ----------------------------------------------------------------------------
    def score(self, sample: Sample, image: np.ndarray, name: str) -> tuple[dict[str, float | None], list[str]]:
        """``(metric values, failure reasons)`` of one generated image (RGB uint8 [H, W, 3])."""
        values: dict[str, float | None] = {}
        failures: list[str] = []
        if self.face is not None:
            sims, why = self.face.score(sample.identity, image, name)
            values.update(zip(("face_sim", "face_sim_2"), sims))
            if why:
                failures.append(f"[face] {why}")
        face = None
        if self.landmarker is not None and (self.head is not None or self.pose is not None):
            try:
                face, count = self.landmarker.pick(image, 0, name)
            except InputImageError as err:
                failures.append(f"[head] [pose] no face found by MediaPipe: {err}")
        if self.head is not None:
            values["head_sim"] = self.head.score(sample.identity, image, face.box) if face is not None else 0.0
        if self.pose is not None and face is not None:
            driver, why = self._drivers.get(sample.driver, (None, "[pose] driver not set"))
            if driver is None:
                failures.append(why)
            else:
                values.update(self.pose.errors(self.pose.params(image, face, count), driver))
        if self.clip is not None:
            values["clip_score"] = self.clip.score(image, sample.prompt)
        return values, failures


def missing_image_row(sample: Sample, condition: str, path: str) -> Row:
    return Row(sample.identity, sample.prompt_index, sample.prompt, sample.driver, condition, path, values={},
               failure=f"[image] image not found: {path}")
