"""The core's checks of what applying HP3 takes (the same rules for the ComfyUI nodes and diffusers)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from hp3_core.apply_checks import (check_connector_finite, check_finite_number, check_head_finite, device_of,
                                   stack_renders, warn_if_other_backend)
from hp3_core.errors import HP3Error


def test_numbers_must_be_finite_and_numeric():
    check_finite_number("strength", 0.5)
    with pytest.raises(HP3Error, match=r"'strength' is nan \(not finite\)"):
        check_finite_number("strength", float("nan"))
    with pytest.raises(HP3Error, match="'end_percent' must be a number, got 'x'"):
        check_finite_number("end_percent", "x")


def test_head_and_connector_weights_must_be_finite():
    check_head_finite(SimpleNamespace(id_embeds=torch.zeros(1, 4), clip_hidden=None))
    with pytest.raises(HP3Error, match="clip_hidden contains NaN/inf"):
        check_head_finite(SimpleNamespace(id_embeds=torch.zeros(1, 4), clip_hidden=torch.tensor([float("inf")])))
    model = SimpleNamespace(connector=torch.nn.Linear(2, 2))
    check_connector_finite(model, "w.safetensors")
    with torch.no_grad():
        model.connector.bias[1] = float("nan")
    with pytest.raises(HP3Error, match=r"'w.safetensors' hold NaN/inf values in connector\.bias"):
        check_connector_finite(model, "w.safetensors")


def test_renders_stack_at_the_first_frames_size():
    a, b = torch.rand(1, 32, 48, 3), torch.rand(1, 64, 64, 3)
    renders = stack_renders([a, b])
    assert renders.shape == (2, 32, 48, 3) and renders.dtype == torch.float32
    assert torch.equal(renders[0], a[0])  # the first frame is kept as it is
    with pytest.raises(HP3Error, match=r"must be \[1, H, W, 3\], got \[1, 32, 48\]"):
        stack_renders([a, torch.rand(1, 32, 48)])
    with pytest.raises(HP3Error, match="NaN/inf"):
        stack_renders([torch.full((1, 8, 8, 3), float("nan"))])
    with pytest.raises(HP3Error, match="no shaded renders"):
        stack_renders([])


def test_another_backend_than_trained_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="hp3_core.apply_checks"):
        assert not warn_if_other_backend("ict", "ict", "w.safetensors")
        assert not warn_if_other_backend(None, "mediapipe", "w.safetensors")
        assert warn_if_other_backend("smirk", "mediapipe", "w.safetensors")
    assert len(caplog.records) == 1 and "'mediapipe' backend" in caplog.text and "trained with 'smirk'" in caplog.text


def test_device_of_a_module():
    assert device_of(torch.nn.Linear(2, 2)) == torch.device("cpu")
