"""The trained state -> the nodes' HP3 weight file (:func:`hp3_core.weights.save_hp3_weights`)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..weights import save_hp3_weights


def export_weights(path: str | Path, model, step: int, dataset: str | Path, base: str | Path,
                   ema=None, extra: Mapping[str, str] | None = None,
                   dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model``'s weights (the EMA's when ``ema`` is given) as an HP3 file.

    Metadata: ``status=trained``, ``trained_steps``, ``dataset`` and ``base`` (folder names), and
    ``ema``; the config (in the file) carries the dataset's render backend/style and the
    identity-loss weight, so the nodes warn when applied with another 3D backend.

    Args:
        model: the (unwrapped) :class:`~hp3_core.hp3_model.HP3Model`.
        ema: a diffusers ``EMAModel`` tracking ``model``'s parameters, or None.
        dtype: tensor type in the file (float32: the trained master weights).
    """
    params = list(model.parameters())
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    finally:
        if ema is not None:
            ema.restore(params)
    meta = {"status": "trained", "trained_steps": str(int(step)), "dataset": Path(dataset).name,
            "base_model": Path(base).name, "ema": str(ema is not None).lower(),
            "render_backend": model.config.render_backend, "render_style": model.config.render_style}
    meta.update({str(k): str(v) for k, v in (extra or {}).items()})
    return save_hp3_weights(path, state, model.config, extra_metadata=meta)
