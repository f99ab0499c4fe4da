"""Writing a FLAME model as a FLAME-style ``.npz``: FLAME's field names, no pickled objects.

A user can convert FLAME's ``generic_model.pkl`` once (read by the restricted reader in
:mod:`.flame_file`) into an ``.npz`` that any numpy reads without a pickle:
``save_flame_npz(load_flame("generic_model.pkl"), "generic_model.npz")``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .flame_file import FLAME_N_SHAPE, FlameAssets


def flame_fields(assets: FlameAssets, extras: bool = True) -> dict[str, np.ndarray]:
    """The FLAME-named fields of ``assets`` (posedirs in FLAME's [V, 3, P] layout).

    Args:
        extras: also ``l_eyelid``/``r_eyelid``/``face_vertex_ids`` when the assets have them.
    """
    n_v, n_j = assets.num_vertices, assets.num_joints
    kintree = np.stack([assets.parents, np.arange(n_j)]).astype(np.int64)
    kintree[0, 0] = 2**32 - 1  # as in FLAME's file
    fields = {
        "v_template": assets.v_template,
        "shapedirs": assets.shapedirs,
        "posedirs": assets.posedirs.T.reshape(n_v, 3, -1),
        "J_regressor": assets.J_regressor,
        "kintree_table": kintree,
        "weights": assets.lbs_weights,
        "f": assets.faces.astype(np.uint32),
        "J": assets.J_regressor @ assets.v_template,
    }
    if assets.n_shape != min(FLAME_N_SHAPE, assets.shapedirs.shape[2]):
        fields["n_shape"] = np.asarray(assets.n_shape, np.int64)
    if extras and assets.eyelids is not None:
        fields["l_eyelid"], fields["r_eyelid"] = assets.eyelids[0], assets.eyelids[1]
    if extras and assets.face_vertex_ids is not None:
        fields["face_vertex_ids"] = assets.face_vertex_ids
    return fields


def save_flame_npz(assets: FlameAssets, path: str | Path, extras: bool = True) -> Path:
    """Write ``assets`` as a FLAME-style ``.npz`` (no pickled objects; see :func:`flame_fields`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez(fh, **flame_fields(assets, extras))
    return path
