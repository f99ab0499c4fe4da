"""Reading an ICT-FaceKit checkout: the OBJ morph targets of ICT Face Model Light.

ICT-FaceKit (github.com/ICT-VGL/ICT-FaceKit, MIT licence, USC Institute for Creative
Technologies, 2020) ships ``FaceXModel/``: OBJ files of one topology (26,719 vertices, quads and
triangles), in centimetres, x to the subject's left, y up, z forward (toward a frontal camera):

* ``generic_neutral_mesh.obj``: the mean head;
* ``identity000.obj`` .. ``identity099.obj``: the mean plus one identity PCA mode (unit standard
  deviation: the FaceKit's own sampler draws identity weights from N(0, 1));
* one OBJ per expression shape, named as Apple ARKit's blendshapes with ``_L``/``_R``: the mean
  plus that shape at weight 1. There are 55 (the README's table lists 53; ``cheekRaiser_L/R``
  exist too).

Only vertex positions differ between the files; faces are read from the neutral mesh.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import HP3Error

NEUTRAL = "generic_neutral_mesh.obj"
NUM_VERTICES = 26719
IDENTITY_PATTERN = re.compile(r"^identity(\d{3})\.obj$")
# Files of FaceXModel/ that are neither identities nor expressions we fit: the mean, and the
# pupil dilation shapes (not ARKit shapes; a landmark fit cannot observe them).
NOT_EXPRESSIONS = {NEUTRAL, "PupilDilate_L.obj", "PupilDilate_R.obj"}

# Vertex ranges of the FaceKit's geometries (its README, "Face Model Topology"), inclusive.
PARTS: dict[str, tuple[int, int]] = {
    "face": (0, 9408),
    "head_and_neck": (9409, 11247),
    "mouth_socket": (11248, 13293),
    "eye_socket_left": (13294, 13677),
    "eye_socket_right": (13678, 14061),
    "gums_and_tongue": (14062, 17038),
    "teeth": (17039, 21450),
    "sclera_left": (21451, 22220),
    "iris_left": (22221, 23020),
    "sclera_right": (23021, 23790),
    "iris_right": (23791, 24590),
}
# The twelve front teeth (canines and incisors, upper and lower): the only ones an open mouth
# shows from the front; the molars would add 3,000 vertices nobody sees.
FRONT_TEETH: tuple[tuple[int, int], ...] = ((17895, 18390), (20079, 20618))
# Multi-PIE 68-point landmarks as FaceKit vertex indices (its README, "Facial Landmarks").
LANDMARKS_68 = (1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272,
                4088, 3443, 268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942,
                4857, 1140, 2075, 1147, 4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751,
                3756, 3721, 3725, 3732, 5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957,
                5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966)


class FaceKitError(HP3Error):
    """A FaceKit checkout that cannot be read (names the file and what is wrong)."""


@dataclass
class FaceKit:
    """The whole FaceKit model as arrays.

    Attributes:
        neutral: [V, 3] float64 mean vertices, centimetres.
        polygons: faces of the neutral mesh (lists of 3 or 4 vertex indices, 0-based).
        identity: [I, V, 3] float64 identity modes (deltas from the mean, 1 standard deviation).
        expression: [E, V, 3] float64 expression shapes (deltas from the mean at weight 1).
        expression_names: E names (ARKit style), in the order of ``expression``.
        commit: git commit of the checkout, when it is a git work tree (else "unknown").
    """

    neutral: np.ndarray
    polygons: list[list[int]]
    identity: np.ndarray
    expression: np.ndarray
    expression_names: list[str]
    commit: str


def read_obj(path: Path, with_faces: bool = False) -> tuple[np.ndarray, list[list[int]]]:
    """Vertex positions [V, 3] (float64) and, if asked, faces (0-based) of an OBJ file."""
    verts: list[list[str]] = []
    faces: list[list[int]] = []
    try:
        with open(path, encoding="ascii", errors="strict") as fh:
            for line in fh:
                if line.startswith("v "):
                    verts.append(line.split()[1:4])
                elif with_faces and line.startswith("f "):
                    faces.append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
        out = np.array(verts, dtype=np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise FaceKitError(f"cannot read {path}: {err}") from None
    if out.ndim != 2 or out.shape[1] != 3:
        raise FaceKitError(f"{path} has no vertex list of x y z rows")
    return out, faces


def read_facekit(root: Path | str, commit: str | None = None) -> FaceKit:
    """Read ``root/FaceXModel`` (or ``root`` itself if it holds the OBJs).

    Args:
        commit: the FaceKit commit to record (default: read from ``root`` when it is a git
            work tree, else "unknown").

    Raises:
        FaceKitError: a missing neutral mesh, a file whose vertex count differs from it, or no
            identity or expression files.
    """
    root = Path(root)
    folder = root / "FaceXModel" if (root / "FaceXModel").is_dir() else root
    neutral_path = folder / NEUTRAL
    if not neutral_path.is_file():
        raise FaceKitError(f"{neutral_path} not found; pass the ICT-FaceKit checkout (the folder "
                           f"that holds FaceXModel/)")
    neutral, polygons = read_obj(neutral_path, with_faces=True)
    identities, expressions, names = [], [], []
    for path in sorted(folder.glob("*.obj")):
        if path.name in NOT_EXPRESSIONS:
            continue
        verts, _ = read_obj(path)
        if verts.shape != neutral.shape:
            raise FaceKitError(f"{path} has {len(verts)} vertices, the neutral mesh {len(neutral)}")
        if IDENTITY_PATTERN.match(path.name):
            identities.append(verts - neutral)
        else:
            expressions.append(verts - neutral)
            names.append(path.stem)
    if not identities or not expressions:
        raise FaceKitError(f"{folder} holds {len(identities)} identity and {len(expressions)} "
                           f"expression OBJs; both are needed")
    return FaceKit(neutral=neutral, polygons=polygons, identity=np.stack(identities),
                   expression=np.stack(expressions), expression_names=names,
                   commit=commit or git_commit(root))


def git_commit(root: Path) -> str:
    """The checkout's commit hash, or "unknown" when ``root`` is not a git work tree."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else "unknown"
