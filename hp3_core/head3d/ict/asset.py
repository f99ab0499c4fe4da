"""The shipped ICT head asset: a compact full-head morphable model for the ``ict`` backend.

Made once by ``python -m hp3_core build-head-asset --ict <ICT-FaceKit checkout>``
(:mod:`.build_asset`) and shipped in the pack as ``data/ict_head.npz`` with the FaceKit's MIT
licence beside it. Reading it needs nothing but numpy (``allow_pickle=False``: no code runs).

Contents (V kept vertices, F triangles, all in the FaceKit's frame: centimetres, x to the
subject's left, y up, z forward):

* ``vertices`` [V, 3] float32: the mean head;
* ``triangles`` [F, 3] int32, consistently wound (outward);
* ``identity`` [I, V, 3] float16: identity PCA modes at one standard deviation (I = 100);
* ``expression`` [E, V, 3] float16: ARKit-named expression shapes at weight 1 (E = 55);
* ``expression_names`` [E] str;
* ``region`` [V] uint8: index into :data:`REGIONS`;
* ``neck_weight`` [V] float32: 1 on the head, falling to 0 at the bottom of the neck (how much of
  the head's rotation a vertex follows; the rest follows the body);
* ``mediapipe_triangle`` [478] int32 and ``mediapipe_barycentric`` [478, 3] float32: the
  surface point matching each of MediaPipe's 478 landmarks;
* ``landmarks68`` [68] int32: the FaceKit README's Multi-PIE 68 landmarks as kept-vertex indices;
* ``source_index`` [V] int32: each kept vertex's index in the FaceKit;
* ``provenance``: JSON (FaceKit commit, licence, what was kept, builder version).

float16 deltas: the largest rounding error is measured at build time and recorded in the
provenance (under 0.001 cm for the FaceKit).
"""
from __future__ import annotations

import functools
import json
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import HP3Error

ASSET_PATH = Path(__file__).resolve().parent / "data" / "ict_head.npz"
LICENCE_PATH = ASSET_PATH.parent / "LICENSE-ICT-FaceKit.txt"
FORMAT_VERSION = 1
REGIONS = ("face", "scalp", "ears", "neck", "mouth", "teeth", "sclera", "iris")
# What the ``face`` render region keeps: the face surface and what shows through its holes.
FACE_REGIONS = ("face", "mouth", "teeth", "sclera", "iris")
NUM_MEDIAPIPE = 478
# A bound on what a valid asset can hold, checked from the zip directory before anything is
# read, so a damaged or hostile file cannot make the loader allocate gigabytes.
MAX_UNCOMPRESSED_BYTES = 64 << 20


class HeadAssetError(HP3Error):
    """The ICT head asset is missing or damaged (names the file and the fix)."""


@dataclass(frozen=True)
class ICTHeadAsset:
    """The arrays of the asset (see the module docstring for shapes and units)."""

    vertices: np.ndarray
    triangles: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    expression_names: tuple[str, ...]
    region: np.ndarray
    neck_weight: np.ndarray
    mediapipe_triangle: np.ndarray
    mediapipe_barycentric: np.ndarray
    landmarks68: np.ndarray
    source_index: np.ndarray
    provenance: dict[str, Any]

    @property
    def num_identity(self) -> int:
        return self.identity.shape[0]

    @property
    def num_expression(self) -> int:
        return self.expression.shape[0]

    def region_mask(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """[V] bool: vertices whose region is one of ``names``."""
        unknown = set(names) - set(REGIONS)
        if unknown:
            raise ValueError(f"unknown head regions {sorted(unknown)}; known: {REGIONS}")
        return np.isin(self.region, [REGIONS.index(n) for n in names])

    def triangle_region(self) -> np.ndarray:
        """[F] uint8 region of each triangle (that of its first corner; parts never share one)."""
        return self.region[self.triangles[:, 0]]

    def expression_index(self, name: str) -> int:
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"the ICT head has no expression shape {name!r}") from None


def save_asset(asset: ICTHeadAsset, path: Path | str) -> None:
    """Write ``asset`` as a compressed npz (no pickled objects)."""
    check_asset(asset, str(path))
    arrays = {f.name: getattr(asset, f.name) for f in fields(asset)}
    arrays["expression_names"] = np.array(asset.expression_names)
    arrays["provenance"] = np.array(json.dumps(asset.provenance, sort_keys=True))
    arrays["format_version"] = np.array(FORMAT_VERSION)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_asset(path: Path | str | None = None) -> ICTHeadAsset:
    """Read and check an asset (default: the shipped one, read once per process).

    Raises:
        HeadAssetError: missing, unreadable or inconsistent file, with the fix.
    """
    return _load_cached(str(Path(path).resolve()) if path is not None else str(ASSET_PATH))


@functools.lru_cache(maxsize=2)
def _load_cached(path: str) -> ICTHeadAsset:
    fix = ("reinstall the pack (the file ships with it) or rebuild it with `python -m hp3_core "
           "build-head-asset --ict <ICT-FaceKit checkout>`")
    if not Path(path).is_file():
        raise HeadAssetError(f"ICT head asset {path} not found; {fix}")
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(i.file_size for i in zf.infolist())
        if total > MAX_UNCOMPRESSED_BYTES:
            raise HeadAssetError(f"ICT head asset {path} would unpack to {total >> 20} MB, more than "
                                 f"any valid asset; {fix}")
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    except HeadAssetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise HeadAssetError(f"cannot read ICT head asset {path} ({err}); {fix}") from None
    try:
        version = int(raw.pop("format_version"))
        if version != FORMAT_VERSION:
            raise ValueError(f"format version {version}, this pack reads {FORMAT_VERSION}")
        asset = ICTHeadAsset(
            vertices=raw["vertices"].astype(np.float32), triangles=raw["triangles"].astype(np.int64),
            identity=raw["identity"], expression=raw["expression"],
            expression_names=tuple(str(n) for n in raw["expression_names"]),
            region=raw["region"], neck_weight=raw["neck_weight"].astype(np.float32),
            mediapipe_triangle=raw["mediapipe_triangle"].astype(np.int64),
            mediapipe_barycentric=raw["mediapipe_barycentric"].astype(np.float32),
            landmarks68=raw["landmarks68"].astype(np.int64), source_index=raw["source_index"],
            provenance=json.loads(str(raw["provenance"])))
        check_asset(asset, path)
    except HeadAssetError:
        raise
    except (KeyError, ValueError, TypeError) as err:
        raise HeadAssetError(f"ICT head asset {path} is damaged ({err}); {fix}") from None
    return asset


def check_asset(asset: ICTHeadAsset, name: str) -> None:
    """Shapes, index ranges and finiteness; a :class:`HeadAssetError` naming what is wrong."""
    v = asset.vertices.shape[0]
    problems = []
    expect = {"vertices": (v, 3), "identity": (asset.identity.shape[0], v, 3),
              "expression": (len(asset.expression_names), v, 3), "region": (v,),
              "neck_weight": (v,), "mediapipe_triangle": (NUM_MEDIAPIPE,),
              "mediapipe_barycentric": (NUM_MEDIAPIPE, 3), "landmarks68": (68,), "source_index": (v,)}
    for key, shape in expect.items():
        if getattr(asset, key).shape != shape:
            problems.append(f"{key} has shape {getattr(asset, key).shape}, expected {shape}")
    tri = asset.triangles
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.min(initial=0) < 0 or tri.max(initial=0) >= v:
        problems.append("triangles must be [F, 3] indices of the vertices")
    if asset.region.max(initial=0) >= len(REGIONS):
        problems.append("region labels out of range")
    if asset.mediapipe_triangle.min(initial=0) < 0 or asset.mediapipe_triangle.max(initial=0) >= len(tri):
        problems.append("mediapipe_triangle out of range")
    if asset.landmarks68.min(initial=0) < 0 or asset.landmarks68.max(initial=0) >= v:
        problems.append("landmarks68 out of range")
    for key in ("vertices", "identity", "expression", "neck_weight", "mediapipe_barycentric"):
        if not np.isfinite(getattr(asset, key)).all():
            problems.append(f"{key} holds NaN or infinite values")
    if problems:
        raise HeadAssetError(f"ICT head asset {name} is damaged: " + "; ".join(problems))
