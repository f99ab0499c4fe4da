"""Face analysis for HP3's head encoder: find one face, align it, embed its identity (ArcFace).

The identity embedding is insightface's ArcFace recognizer run on the 112x112 crop that
insightface's ``face_align.norm_crop`` makes from five keypoints, L2-normalised, exactly as
insightface's own ``FaceAnalysis`` computes ``face.normed_embedding``. The model files come from an
insightface *pack* the user installs (:data:`PACKS`); nothing is ever downloaded: every ONNX file
is loaded by its explicit path (``insightface.model_zoo.get_model(<path>.onnx)`` with
``download=False``; ``FaceAnalysis`` and ``get_model(<name>)`` are never used).

How insightface 2.1 handles the recognizer (``model_zoo/model_zoo.py``, ``arcface_onnx.py``):

* ``ModelRouter`` picks the wrapper class from the ONNX signature: 5 or more outputs -> ``SCRFD``,
  192x192 input -> ``Landmark``, 96x96 -> ``Attribute``, two 128x128 inputs -> ``INSwapper``, any
  other square input of at least 112 px and a multiple of 16 -> ``ArcFaceONNX``. glintr100.onnx
  and w600k_r50.onnx ([N, 3, 112, 112] -> [N, 512]) are routed to ``ArcFaceONNX``.
* ``ArcFaceONNX.get_feat`` takes **BGR** uint8 crops and calls ``cv2.dnn.blobFromImages(...,
  swapRB=True)``, so the network itself sees **RGB**, as ``(x - 127.5) / 127.5`` in NCHW. (If one
  of the graph's first 8 node names starts with ``Sub``/``_minus`` and one with ``Mul``/``_mul``,
  it is an MXNet export that normalises inside the graph and the mean/std become 0/1.)
* A file the router does not give to ``ArcFaceONNX`` (or that it fails on, e.g. a recognizer with
  dynamic height/width, which its ``>=`` test cannot compare) is run by this module's own
  onnxruntime session with the same preprocessing.

Detection, two ways (``detection=``):

* ``"insightface"``: the pack's SCRFD detector (``detect(bgr, max_num=0)``; ``prepare`` is called
  once with ``input_size=(det_size, det_size)``, which also turns off SCRFD's default two-scale
  128+640 detection of dynamic-input models).
* ``"mediapipe"``: the project's MediaPipe face mesh (embedded in the wheel, offline): the five
  keypoints are the iris centres (landmark 468 is the eye on the image's left, i.e. the subject's
  right eye, 473 the other), the nose tip (1) and the mouth corners (61 image-left, 291
  image-right). No detector file is needed.

Faces are sorted by box area, largest first; ``face_index`` picks one (0 = largest).

Reusing analyzers: loading the ONNX sessions takes a while and holds memory, so nodes should go
through :data:`analyzer_cache` (``analyzer_cache.get(folders, pack=..., providers=...,
detection=...)``), a small LRU of ready analyzers keyed by the folders, the pack, the providers,
the detection backend, the detector settings and the resolved model files (so installing a pack
later is picked up on the next call). Analyzers are thread-safe: inference runs under a lock, and
no per-call state (thresholds, input sizes) is ever changed on the shared insightface objects.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np

from ..errors import HP3Error, InputImageError, MissingModelFileError
from ..optional import require

PACKS: dict[str, dict[str, str]] = {
    "antelopev2": {"detector": "scrfd_10g_bnkps.onnx", "recognizer": "glintr100.onnx"},
    "buffalo_l": {"detector": "det_10g.onnx", "recognizer": "w600k_r50.onnx"},
}
PACK_ORDER = ("antelopev2", "buffalo_l")  # what pack="auto" tries, in order
PACK_CHOICES = ("auto", *PACK_ORDER)
DETECTIONS = ("insightface", "mediapipe")
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
WHERE_TO_GET = ("the insightface model zoo (https://github.com/deepinsight/insightface/tree/master/"
                "model_zoo: antelopev2.zip or buffalo_l.zip; the models are licensed for "
                "non-commercial research use only): unzip so the .onnx files sit in "
                "<insightface folder>/models/<pack>/, e.g. ComfyUI/models/insightface/models/antelopev2/")
FEATURE = "Face analysis (the identity embedding of HP3's head encoder)"

EMBEDDING_DIM = 512
ALIGNED_SIZE = 112
# MediaPipe face-mesh indices of the five ArcFace keypoints, in insightface's order: image-left eye
# (iris centre), image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
MEDIAPIPE_KEYPOINTS = (468, 473, 1, 61, 291)


@dataclass(frozen=True, eq=False)
class AnalyzedFace:
    """One analysed face.

    Attributes:
        box: (x0, y0, x1, y1) in image pixels.
        keypoints: [5, 2] float32 image pixels, the recognizer's own five points. insightface/ArcFace
            order: the eye on the image's left (the subject's right eye), the other eye, the nose
            tip, the mouth corner on the image's left, the mouth corner on the image's right. dlib
            (:mod:`.dlib_analysis`): the outer and inner corner of the eye on the image's right,
            the outer and inner corner of the other eye, the base of the nose.
        embedding: [D] float32, L2-normalised identity embedding (ArcFace: 512, dlib: 128).
        det_score: the detector's confidence (None when the detector gives none).
        detector: which detector found the face.
        recognizer: the recognizer's file name (e.g. ``glintr100.onnx``).
        aligned: [112, 112, 3] uint8 RGB, the crop the recognizer saw (for previews; resized to
            112 when the recognizer's input is another size).
        face_index: which face this is (0 = largest).
        faces_found: how many faces the detector found in the image.
        identity: the identity backend (``insightface`` or ``dlib``).
    """

    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    embedding: np.ndarray
    det_score: float | None
    detector: str
    recognizer: str
    aligned: np.ndarray
    face_index: int
    faces_found: int
    identity: str = "insightface"


@dataclass(frozen=True)
class _Detection:
    box: tuple[float, float, float, float]
    keypoints: np.ndarray  # [5, 2] float32
    score: float | None

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


# --------------------------------------------------------------------------- finding the pack


def _as_folders(folders: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[Path]:
    if folders is None:
        return []
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    out: list[Path] = []
    for f in folders:
        p = Path(os.path.expanduser(str(f)))
        if p not in out:
            out.append(p)
    return out


def pack_dirs(folder: str | os.PathLike, pack: str) -> list[Path]:
    """Where ``pack`` may live under one insightface folder, in search order.

    ``<folder>/models/<pack>/`` (insightface's own layout, ComfyUI's ``models/insightface``),
    ``<folder>/<pack>/``, and ``<folder>/models/<pack>/<pack>/`` (antelopev2.zip unzipped into a
    folder of the same name nests one level deeper).
    """
    folder = Path(folder)
    return [folder / "models" / pack, folder / pack, folder / "models" / pack / pack]


def find_pack(folders: str | os.PathLike | Iterable[str | os.PathLike] | None, pack: str = "auto",
              require_detector: bool = False) -> tuple[str, dict[str, Path | None]]:
    """Find an insightface pack's files: ``(pack_name, {"recognizer": path, "detector": path|None})``.

    ``pack="auto"`` tries antelopev2, then buffalo_l. The recognizer is always required; the
    detector only with ``require_detector`` (detection="insightface"), and then both must sit in
    the same pack folder. Raises :class:`MissingModelFileError` listing every folder searched and
    the files expected.
    """
    if pack not in PACK_CHOICES:
        raise HP3Error(f"unknown insightface pack '{pack}'; use one of {', '.join(PACK_CHOICES)}")
    roots = _as_folders(folders)
    candidates = PACK_ORDER if pack == "auto" else (pack,)
    partial: tuple[str, Path] | None = None
    for name in candidates:
        files = PACKS[name]
        for d in (d for root in roots for d in pack_dirs(root, name)):
            rec, det = d / files["recognizer"], d / files["detector"]
            if not rec.is_file():
                continue
            if det.is_file():
                return name, {"recognizer": rec, "detector": det}
            if not require_detector:
                return name, {"recognizer": rec, "detector": None}
            partial = partial or (name, d)
    looked = "looked in <folder>/models/<pack>/ and <folder>/<pack>/"
    if partial is not None:
        name, d = partial
        files = PACKS[name]
        raise MissingModelFileError(
            f"InsightFace face detector {files['detector']} for detection='insightface' (the "
            f"{name} folder {d} has {files['recognizer']} but not the detector; "
            f"detection='mediapipe' needs no detector file; {looked})",
            [f"{name}/{files['detector']}"], roots, WHERE_TO_GET)
    expected = [f"{name}/{PACKS[name]['recognizer']}"
                + (f" + {name}/{PACKS[name]['detector']}" if require_detector else "")
                for name in candidates]
    raise MissingModelFileError(f"InsightFace model pack '{pack}' ({looked})", expected, roots,
                                WHERE_TO_GET)


# --------------------------------------------------------------------------- analyzers


class FaceAnalyzer:
    """Finds faces, aligns the chosen one and returns its identity embedding.

    Subclasses provide :meth:`_detect` (all faces, any order) and :meth:`_embed` (one aligned RGB
    crop -> raw embedding) and set :attr:`detector` and :attr:`recognizer`; one whose alignment is
    not ArcFace's 5-point ``norm_crop`` overrides :meth:`_align`.
    """

    detector: str = ""
    recognizer: str = ""
    detection: str = ""               # which detector finds the faces (the analyzer's ``detection``)
    # detection -> "<the detector>; <the fix>" for an image where the analyzer's own detector finds
    # no face (its limits differ from MediaPipe's, whose case choose_face words itself).
    no_face_found_by: ClassVar[Mapping[str, str]] = {}
    input_size: int = ALIGNED_SIZE
    identity: str = "insightface"     # the identity backend (what HP3 files record)
    embedding_dim: int = EMBEDDING_DIM

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def analyze(self, image: np.ndarray, face_index: int = 0, name: str = "image") -> AnalyzedFace:
        """The ``face_index``-th largest face of ``image`` (RGB uint8 [H, W, 3]), analysed.

        Raises :class:`InputImageError` naming ``name`` when there is no face or too few.
        """
        image = _as_rgb(image, name)
        with self._lock:
            faces = sorted(self._detect(image, name), key=lambda f: f.area, reverse=True)
            face = self._choose(faces, face_index, image.shape, name)
            face, aligned = self._align(image, face)
            raw = np.asarray(self._embed(aligned), dtype=np.float32).reshape(-1)
        if raw.size != self.embedding_dim:
            raise HP3Error(f"the face recognizer {self.recognizer} gives {raw.size} values, not the "
                           f"{self.embedding_dim} of its identity embedding; use the model's own recognizer file")
        norm = float(np.linalg.norm(raw))
        if not np.isfinite(norm) or norm == 0.0:
            raise InputImageError(f"the face in {name} could not be aligned for recognition (its "
                                  f"keypoints {face.keypoints.round(1).tolist()} are degenerate); "
                                  f"use a clearer photo of the face")
        if aligned.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
            import cv2
            aligned = cv2.resize(aligned, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=cv2.INTER_AREA)
        return AnalyzedFace(
            box=tuple(float(v) for v in face.box), keypoints=face.keypoints.astype(np.float32),
            embedding=(raw / norm).astype(np.float32), det_score=face.score,
            detector=self.detector, recognizer=self.recognizer, aligned=aligned,
            face_index=face_index, faces_found=len(faces), identity=self.identity)

    def _align(self, image: np.ndarray, face: _Detection) -> tuple[_Detection, np.ndarray]:
        """(the face, with the keypoints to report, and the aligned RGB crop the recognizer reads)."""
        return face, _norm_crop(image, face.keypoints, self.input_size)

    def _choose(self, faces: list[_Detection], face_index: int, shape: tuple, name: str) -> _Detection:
        by = self.no_face_found_by.get(self.detection)
        if not faces and by:
            raise InputImageError(f"no face found in {name} ({shape[1]}x{shape[0]} px) by {by}")
        from ..head3d.face_landmarks import choose_face
        return choose_face(faces, face_index, shape, name)

    def _detect(self, image: np.ndarray, name: str) -> list[_Detection]:
        raise NotImplementedError

    def _embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class InsightFaceAnalyzer(FaceAnalyzer):
    """ArcFace identity embeddings from an insightface pack (see the module docstring).

    Args:
        folders: insightface folders (ComfyUI's ``models/insightface`` and any ``insightface:``
            path of extra_model_paths.yaml); the pack is looked for as in :func:`find_pack`.
        pack: "auto" (antelopev2, then buffalo_l), "antelopev2" or "buffalo_l".
        providers: "cpu" (default: keeps VRAM for the diffusion model) or "cuda".
        detection: "insightface" (the pack's SCRFD) or "mediapipe" (no detector file needed).
        det_size: SCRFD's square input size.
        det_thresh: SCRFD's score threshold.
    """

    no_face_found_by = {"insightface": "insightface's SCRFD face detector; use a photo where the face is "
                                       "visible and at least about 40 px wide"}

    def __init__(self, folders, pack: str = "auto", providers: str = "cpu",
                 detection: str = "insightface", det_size: int = 640, det_thresh: float = 0.5) -> None:
        super().__init__()
        if detection not in DETECTIONS:
            raise HP3Error(f"unknown face detection '{detection}'; use one of {', '.join(DETECTIONS)}")
        if providers not in PROVIDERS:
            raise HP3Error(f"unknown providers '{providers}'; use one of {', '.join(PROVIDERS)}")
        _require_runtime()
        self.pack, files = find_pack(folders, pack, require_detector=detection == "insightface")
        self.files = files
        self.detection = detection
        self.providers = list(PROVIDERS[providers])
        self.recognizer = files["recognizer"].name
        self._recognizer = load_recognizer(files["recognizer"], self.providers)
        self.input_size = self._recognizer.input_size
        if detection == "insightface":
            self._scrfd = _load_detector(files["detector"], self.providers, det_size, det_thresh)
            self.detector = f"insightface SCRFD ({files['detector'].name}, {det_size}px)"
        else:
            from ..head3d.face_landmarks import DETECTOR_NAME, shared_landmarker
            self._landmarker = shared_landmarker()
            self.detector = DETECTOR_NAME

    def _detect(self, image: np.ndarray, name: str) -> list[_Detection]:
        if self.detection == "mediapipe":
            idx = list(MEDIAPIPE_KEYPOINTS)
            return [_Detection(box=f.box, keypoints=f.points[idx, :2].astype(np.float32), score=f.confidence)
                    for f in self._landmarker.detect(image)]
        det, kpss = self._scrfd.detect(np.ascontiguousarray(image[..., ::-1]), max_num=0)
        if len(det) and kpss is None:
            raise HP3Error(f"the face detector {self.files['detector']} gives no keypoints; use the "
                           f"pack's own SCRFD file or detection='mediapipe'")
        return [_Detection(box=tuple(float(v) for v in det[i, :4]),
                           keypoints=np.asarray(kpss[i], dtype=np.float32).reshape(5, 2),
                           score=float(det[i, 4])) for i in range(len(det))]

    def _embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        return self._recognizer.embed(aligned_rgb)


class AnalyzerCache:
    """A small LRU of ready :class:`InsightFaceAnalyzer` objects, so nodes don't reload ONNX
    sessions per call. The key holds the folders, pack, providers, detection and detector
    settings, and the resolved model files with their modification times (a pack installed or
    replaced later is loaded on the next call)."""

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple, InsightFaceAnalyzer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, folders, pack: str = "auto", providers: str = "cpu", detection: str = "insightface",
            det_size: int = 640, det_thresh: float = 0.5) -> InsightFaceAnalyzer:
        _require_runtime()
        roots = tuple(str(p) for p in _as_folders(folders))
        _, files = find_pack(roots, pack, require_detector=detection == "insightface")
        stamp = tuple((str(p), p.stat().st_mtime_ns) for p in files.values() if p is not None)
        key = (roots, pack, providers, detection, int(det_size), float(det_thresh), stamp)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            analyzer = InsightFaceAnalyzer(roots, pack=pack, providers=providers, detection=detection,
                                           det_size=det_size, det_thresh=det_thresh)
            self._items[key] = analyzer
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
            return analyzer

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


analyzer_cache = AnalyzerCache()


# --------------------------------------------------------------------------- model loading


def _require_runtime() -> None:
    require("onnxruntime", FEATURE)
    require("insightface", FEATURE)


def _load_error(path: Path, err: Exception) -> HP3Error:
    return HP3Error(f"insightface model '{path}' cannot be loaded ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); it may be incomplete: "
                    f"download the pack again from {WHERE_TO_GET}")


class _InsightFaceRecognizer:
    """insightface's ``ArcFaceONNX`` (takes BGR; feeds the network RGB, (x - 127.5) / 127.5)."""

    def __init__(self, model) -> None:
        self.model = model
        self.input_size = int(model.input_size[0])

    def embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        return self.model.get_feat(np.ascontiguousarray(aligned_rgb[..., ::-1]))[0]


class _OrtRecognizer:
    """The same preprocessing as ``ArcFaceONNX`` in a plain onnxruntime session."""

    def __init__(self, path: Path, providers: list[str]) -> None:
        ort = require("onnxruntime", FEATURE)
        self.session = ort.InferenceSession(str(path), providers=providers)
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise HP3Error(f"'{path}' is not a face recognizer (its input is {shape}, not "
                           f"[N, 3, 112, 112]); use the pack's own recognizer file")
        size = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else ALIGNED_SIZE
        self.input_size = int(size)
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.mean, self.std = arcface_normalisation(path)

    def embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        x = (aligned_rgb.astype(np.float32) - self.mean) / self.std
        blob = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        return self.session.run([self.output_name], {self.input_name: blob})[0][0]


def arcface_normalisation(path: Path) -> tuple[float, float]:
    """ArcFaceONNX's rule: MXNet exports (Sub and Mul among the first 8 nodes) normalise inside."""
    try:
        import onnx
        nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    except Exception:  # noqa: BLE001 - onnx missing or unreadable: insightface's default applies
        return 127.5, 127.5
    sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    return (0.0, 1.0) if sub and mul else (127.5, 127.5)


def load_recognizer(path: Path, providers: list[str]):
    """An ArcFace recogniser ONNX file (insightface's loader, else onnxruntime directly), never downloaded."""
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    try:
        model = get_model(str(path), providers=providers, download=False)
    except Exception:  # noqa: BLE001 - the router cannot read this file: try plain onnxruntime
        model = None
    if isinstance(model, ArcFaceONNX):
        model.prepare(0)  # once; with our explicit providers it changes nothing
        return _InsightFaceRecognizer(model)
    try:
        return _OrtRecognizer(path, providers)
    except HP3Error:
        raise
    except Exception as err:  # noqa: BLE001 - onnxruntime's own errors (bad protobuf, ...)
        raise _load_error(path, err) from err


def _load_detector(path: Path, providers: list[str], det_size: int, det_thresh: float):
    from insightface.model_zoo import get_model
    try:
        model = get_model(str(path), providers=providers, download=False)
    except Exception as err:  # noqa: BLE001
        raise _load_error(path, err) from err
    if model is None or not hasattr(model, "detect") or getattr(model, "taskname", "") != "detection":
        raise HP3Error(f"'{path}' is not an SCRFD face detector (insightface routes it to "
                       f"{type(model).__name__}); use the pack's own detector file or "
                       f"detection='mediapipe'")
    model.prepare(0, input_size=(int(det_size), int(det_size)), det_thresh=float(det_thresh))
    return model


# --------------------------------------------------------------------------- helpers


def _as_rgb(image, name: str) -> np.ndarray:
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    from ..image_io import to_rgb_uint8
    return to_rgb_uint8(image, name)


def alignment_matrix(keypoints: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """[2, 3] float64 similarity transform image pixels -> aligned crop pixels (cv2 convention,
    pixel centres at integers): insightface's ``estimate_norm`` of five keypoints [5, 2] onto the
    ArcFace template. Training's differentiable alignment uses the same matrix."""
    from insightface.utils import face_align
    with warnings.catch_warnings():
        # scikit-image 0.26 deprecates SimilarityTransform.estimate, which estimate_norm calls.
        warnings.filterwarnings("ignore", message=".*`estimate` is deprecated", category=FutureWarning)
        return np.asarray(face_align.estimate_norm(np.asarray(keypoints, np.float32).reshape(5, 2), size),
                          dtype=np.float64)


def _norm_crop(image: np.ndarray, keypoints: np.ndarray, size: int) -> np.ndarray:
    """insightface's ``norm_crop``: the aligned ``size`` x ``size`` face, black outside the image."""
    import cv2
    return cv2.warpAffine(image, alignment_matrix(keypoints, size), (size, size), borderValue=0.0)
