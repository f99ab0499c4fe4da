"""Face similarity: how well the generated face keeps the source person's identity.

Model: whichever identity backend is there (``identity`` auto: insightface when a pack is found,
else dlib), through the same analyzers as HP3's head encoder and its identity loss: insightface's
ArcFace recognizer (antelopev2 ``glintr100.onnx`` or buffalo_l ``w600k_r50.onnx``) on the 5-point
aligned 112x112 face, or dlib's public-domain ResNet (128-d) on its 150x150 chip. The report's
label names the model.

Formula, per sample: ``face_sim = mean_r cos(e(generated), e(source_r))`` over the identity's R
source photos, with ``e`` the L2-normalised embedding, so ``cos = e_g . e_r`` in [-1, 1] (1: the
same face). A generated image where no face is found scores 0 and is listed as a failure.

A second recognizer guards against overfitting the metric (training optimises the identity
loss's cosine): ``face_sim_2`` is the same formula with an explicit second ArcFace-format ONNX
file, else the *other* insightface pack's recognizer (both antelopev2 and buffalo_l found), else
the other identity backend: dlib when the first is insightface (an independent model: other
architecture, other training data), insightface when the first is dlib.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import HP3Error, InputImageError, MissingModelFileError
from ..head_encoder.face_analysis import (PACK_ORDER, FaceAnalyzer, InsightFaceAnalyzer, find_pack,
                                          load_recognizer)
from ..head_encoder.identity import load_face_analyzer, resolve_identity

log = logging.getLogger(__name__)


class SecondRecognizer(FaceAnalyzer):
    """An explicit second recognizer ONNX on the detections of another analyzer (same faces)."""

    def __init__(self, base: InsightFaceAnalyzer, recognizer: str | Path) -> None:
        super().__init__()
        path = Path(recognizer)
        if not path.is_file():
            raise MissingModelFileError("second face recognizer", [path.name], [path.parent])
        self._base = base
        self._recognizer = load_recognizer(path, base.providers)
        self.input_size = self._recognizer.input_size
        self.detector = base.detector
        self.recognizer = path.name

    def _detect(self, image: np.ndarray, name: str):
        return self._base._detect(image, name)

    def _choose(self, faces, face_index: int, shape: tuple, name: str):
        return self._base._choose(faces, face_index, shape, name)

    def _embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        return self._recognizer.embed(aligned_rgb)


def build_analyzers(models_dir: Sequence[str | Path], pack: str = "auto", detection: str = "insightface",
                    second_recognizer: str | Path | None = None, identity: str = "auto",
                    dlib_dirs: Sequence[str | Path] = ()) -> list[FaceAnalyzer]:
    """The primary analyzer and, when available, a second one with another recognizer.

    The primary is ``identity``'s (auto: insightface when a pack is found, else dlib). The second
    is the explicit ``second_recognizer`` file, else the other pack's recognizer when both packs
    are installed (with ``pack="auto"``), else the other identity backend when its files are
    there. Raises :class:`MissingModelFileError` (or :class:`~hp3_core.errors.MissingDependencyError`)
    when the primary's files are missing (the caller skips the metric with that message).
    """
    backend = resolve_identity(identity, list(models_dir), pack)
    if backend == "dlib":
        primary = load_face_analyzer("dlib", list(models_dir), list(dlib_dirs), detection=detection)
        try:
            find_pack(list(models_dir), pack, require_detector=detection == "insightface")
        except MissingModelFileError:
            return [primary]
        return [primary, InsightFaceAnalyzer(list(models_dir), pack=pack, detection=detection)]
    primary = InsightFaceAnalyzer(list(models_dir), pack=pack, detection=detection)
    if second_recognizer:
        return [primary, SecondRecognizer(primary, second_recognizer)]
    if pack == "auto":
        for other in PACK_ORDER:
            if other == primary.pack:
                continue
            try:
                find_pack(list(models_dir), other, require_detector=detection == "insightface")
            except MissingModelFileError:
                continue
            return [primary, InsightFaceAnalyzer(list(models_dir), pack=other, detection=detection)]
    from ..head_encoder.dlib_analysis import dlib_available
    if dlib_available(list(dlib_dirs)):
        return [primary, load_face_analyzer("dlib", list(models_dir), list(dlib_dirs), detection=detection)]
    return [primary]


def describe(analyzer: FaceAnalyzer) -> str:
    """The recogniser for the report: ``"ArcFace glintr100.onnx (antelopev2; detector: ...)"`` or
    ``"dlib dlib_face_recognition_resnet_model_v1.dat (public domain, 128-d; detector: ...)"``."""
    if analyzer.identity == "dlib":
        return f"dlib {analyzer.recognizer} (public domain, 128-d; detector: {analyzer.detector})"
    where = "explicit file" if isinstance(analyzer, SecondRecognizer) else getattr(analyzer, "pack", "?")
    return f"ArcFace {analyzer.recognizer} ({where}; detector: {analyzer.detector})"


class FaceSimilarity:
    """Cosine of identity embeddings, generated vs the identity's sources (module docstring).

    Source embeddings are computed once per identity and kept.
    """

    def __init__(self, analyzers: Sequence[FaceAnalyzer]) -> None:
        if not analyzers:
            raise ValueError("FaceSimilarity needs at least one analyzer")
        self.analyzers = list(analyzers)
        self._sources: dict[str, list[np.ndarray]] = {}

    def set_sources(self, identity: str, images: Sequence[np.ndarray], names: Sequence[str]) -> None:
        """Embed the identity's source photos with every analyzer ([R, E] each: 512 ArcFace, 128 dlib).

        Raises:
            InputImageError: a source photo has no face (a protocol error: fix the photo).
        """
        if identity in self._sources:
            return
        embs = []
        for analyzer in self.analyzers:
            try:
                embs.append(np.stack([analyzer.analyze(im, name=n).embedding for im, n in zip(images, names)]))
            except InputImageError as err:
                raise HP3Error(f"identity '{identity}': {err}") from err
        self._sources[identity] = embs

    def score(self, identity: str, image: np.ndarray, name: str) -> tuple[list[float], str | None]:
        """``([face_sim per analyzer], failure or None)``; no face -> 0 with the reason."""
        if identity not in self._sources:
            raise KeyError(f"set_sources({identity!r}) first")
        out, failure = [], None
        for analyzer, sources in zip(self.analyzers, self._sources[identity]):
            try:
                e = analyzer.analyze(image, name=name).embedding
            except InputImageError as err:
                failure = failure or f"no face for {analyzer.recognizer}: {err}"
                out.append(0.0)
                continue
            out.append(float(np.mean(sources @ e)))
        return out, failure
