"""SMIRK's image encoder (FLAME parameters from a face crop) and a safe loader for ``SMIRK_em1.pt``.

Architecture (same module names as SMIRK's ``src/smirk_encoder.py``, so the public checkpoint
loads with ``strict=True`` once its ``smirk_encoder.`` prefix is removed):

* ``pose_encoder``: timm ``tf_mobilenetv3_small_minimal_100`` (``features_only``; last feature map
  576 channels, global average pooled) -> ``pose_cam_layers.0`` Linear(576, 6):
  3 global-rotation values then the 3 camera values.
* ``shape_encoder``: timm ``tf_mobilenetv3_large_minimal_100`` (last feature map 960 channels)
  -> ``shape_layers.0`` Linear(960, 300).
* ``expression_encoder``: timm ``tf_mobilenetv3_large_minimal_100`` -> ``expression_layers.0``
  Linear(960, 55): 50 expression values, 2 eyelids, 3 jaw.

Checkpoint layout of ``SMIRK_em1.pt`` (a plain ``dict`` of tensors written by ``torch.save``):
``smirk_encoder.<key>`` for the 762 entries of :meth:`SmirkEncoder.state_dict` (parameters and
BatchNorm buffers, ``num_batches_tracked`` included) and ``smirk_generator.<key>`` for SMIRK's
image generator, which HP3 does not use. :func:`load_smirk_encoder` also accepts a bare encoder
state dict (no prefix).

Input: RGB image crop, float in [0, 1], ``[B, 3, 224, 224]`` (SMIRK's ``demo.py`` divides the
uint8 crop by 255; there is no mean/std normalisation). Make the crop with
:mod:`hp3_core.head3d.smirk_crop`.

Outputs, post-processed exactly as SMIRK's encoder does (no further activation anywhere else in
SMIRK; FLAME and the renderer use them as they are):

* ``shape`` [B, 300]: FLAME identity coefficients, raw linear output.
* ``expression`` [B, 50]: FLAME expression coefficients, raw linear output.
* ``eyelids`` [B, 2]: ``clamp(raw, 0, 1)``; index 0 weights FLAME's left-eyelid blendshape,
  index 1 the right one (SMIRK's ``FLAME.forward``).
* ``jaw`` [B, 3]: axis-angle of FLAME's jaw joint, radians: ``relu(raw[0])`` (mouth opening,
  never negative) and ``clamp(raw[1:3], -0.2, 0.2)``.
* ``pose`` [B, 3]: axis-angle of FLAME's global (root) rotation, radians, raw linear output.
* ``camera`` [B, 3]: orthographic camera ``(s, tx, ty)`` (see :mod:`hp3_core.head3d.camera`),
  raw linear output; SMIRK initialises the scale's bias to 7.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingModelFileError, WeightFileError
from ..optional import require
from .torch_checkpoint import CheckpointRefused, check_torch_checkpoint

POSE_BACKBONE = "tf_mobilenetv3_small_minimal_100"
SHAPE_EXPRESSION_BACKBONE = "tf_mobilenetv3_large_minimal_100"
N_SHAPE = 300
N_EXPRESSION = 50
CROP_SIZE = 224

ENCODER_PREFIX = "smirk_encoder."
GENERATOR_PREFIX = "smirk_generator."
CHECKPOINT_NAME = "SMIRK_em1.pt"
WHERE_TO_GET = ("the SMIRK repository's pretrained models (https://github.com/georgeretsi/smirk: "
                "pretrained_models/SMIRK_em1.pt, linked from its README)")
FIX_SMIRK = (f"use {CHECKPOINT_NAME} from the SMIRK repository's pretrained models "
             "(github.com/georgeretsi/smirk)")

# Our output names -> the names SMIRK's encoder uses for the same tensors.
SMIRK_OUTPUT_NAMES = {"shape": "shape_params", "expression": "expression_params",
                      "eyelids": "eyelid_params", "jaw": "jaw_params", "pose": "pose_params",
                      "camera": "cam"}


class SmirkWeightFileError(WeightFileError):
    """A SMIRK checkpoint that cannot be used; one line naming the file, the problem and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = FIX_SMIRK) -> None:
        super().__init__(path, problem, fix)
        self.args = (f"SMIRK encoder weights '{self.path}': {problem}. Fix: {fix}",)

    def __str__(self) -> str:
        return self.args[0]


def _backbone(name: str) -> tuple[nn.Module, int]:
    """A timm feature extractor (random weights, never downloaded) and its last feature width."""
    timm = require("timm", "SMIRK 3D head reconstruction")
    net = timm.create_model(name, pretrained=False, features_only=True)
    return net, int(net.feature_info[-1]["num_chs"])


def _pooled(backbone: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Last feature map of ``backbone``, globally average pooled: [B, C]."""
    return F.adaptive_avg_pool2d(backbone(img)[-1], 1).flatten(1)


class PoseEncoder(nn.Module):
    """Global rotation (3) and camera (3) from the small MobileNetV3."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, width = _backbone(POSE_BACKBONE)
        self.pose_cam_layers = nn.Sequential(nn.Linear(width, 6))
        # SMIRK's initialisation: near-zero outputs, camera scale starting at 7.
        head = self.pose_cam_layers[0]
        with torch.no_grad():
            head.weight.mul_(1e-3)
            head.bias.mul_(1e-3)
            head.weight[3] = 0.0
            head.bias[3] = 7.0

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Raw head output [B, 6]: pose (3) then camera (3)."""
        return self.pose_cam_layers(_pooled(self.encoder, img))


class ShapeEncoder(nn.Module):
    """FLAME identity coefficients from the large MobileNetV3."""

    def __init__(self, n_shape: int = N_SHAPE) -> None:
        super().__init__()
        self.encoder, width = _backbone(SHAPE_EXPRESSION_BACKBONE)
        self.shape_layers = nn.Sequential(nn.Linear(width, n_shape))
        with torch.no_grad():  # SMIRK starts from the mean shape
            self.shape_layers[0].weight.zero_()
            self.shape_layers[0].bias.zero_()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Raw head output [B, n_shape]."""
        return self.shape_layers(_pooled(self.encoder, img))


class ExpressionEncoder(nn.Module):
    """FLAME expression (n_exp), eyelids (2) and jaw (3) from the large MobileNetV3."""

    def __init__(self, n_exp: int = N_EXPRESSION) -> None:
        super().__init__()
        self.n_exp = n_exp
        self.encoder, width = _backbone(SHAPE_EXPRESSION_BACKBONE)
        self.expression_layers = nn.Sequential(nn.Linear(width, n_exp + 2 + 3))
        with torch.no_grad():
            self.expression_layers[0].weight.mul_(0.1)
            self.expression_layers[0].bias.mul_(0.1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Raw head output [B, n_exp + 5]: expression, eyelids (2), jaw (3)."""
        return self.expression_layers(_pooled(self.encoder, img))


class SmirkEncoder(nn.Module):
    """SMIRK's three encoders; :meth:`forward` returns FLAME parameters and the camera."""

    def __init__(self, n_exp: int = N_EXPRESSION, n_shape: int = N_SHAPE) -> None:
        super().__init__()
        self.n_exp = n_exp
        self.n_shape = n_shape
        self.pose_encoder = PoseEncoder()
        self.shape_encoder = ShapeEncoder(n_shape)
        self.expression_encoder = ExpressionEncoder(n_exp)

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """FLAME parameters and camera for a batch of crops.

        Args:
            img: [B, 3, H, W] RGB, float in [0, 1]; SMIRK was trained with H = W = 224 crops made
                by :func:`hp3_core.head3d.smirk_crop.smirk_crop_transform` (scale 1.4).

        Returns:
            ``shape`` [B, 300], ``expression`` [B, 50], ``eyelids`` [B, 2] in [0, 1],
            ``jaw`` [B, 3] (first >= 0, others in [-0.2, 0.2]), ``pose`` [B, 3], ``camera`` [B, 3]
            as described in the module docstring.
        """
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"SmirkEncoder expects [B, 3, H, W] RGB in [0, 1], got {tuple(img.shape)}")
        pose_cam = self.pose_encoder(img)
        shape = self.shape_encoder(img)
        exp = self.expression_encoder(img)
        n = self.n_exp
        jaw = torch.cat([F.relu(exp[:, n + 2:n + 3]), torch.clamp(exp[:, n + 3:n + 5], -0.2, 0.2)], dim=-1)
        return {
            "shape": shape,
            "expression": exp[:, :n],
            "eyelids": torch.clamp(exp[:, n:n + 2], 0.0, 1.0),
            "jaw": jaw,
            "pose": pose_cam[:, :3],
            "camera": pose_cam[:, 3:6],
        }


def _one_line(text: object, limit: int = 200) -> str:
    """``text`` as one short line, without ANSI escapes; torch's weights_only errors are reduced to
    their ``WeightsUnpickler error:`` reason (not the advice on how to load the file unsafely)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    reason = re.search(r"WeightsUnpickler error:\s*([^\n]*?)(?:\. Please use|\n|$)", text)
    line = " ".join((reason.group(1) if reason else text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _encoder_state(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors from SMIRK's full checkpoint or from a bare encoder state dict."""
    if not isinstance(raw, Mapping):
        raise SmirkWeightFileError(path, f"holds a {type(raw).__name__}, not a state dict of tensors")
    if isinstance(raw.get("state_dict"), Mapping):  # a trainer-style wrapper
        raw = raw["state_dict"]
    keys = [k for k in raw if isinstance(k, str)]
    if any(k.startswith(ENCODER_PREFIX) for k in keys):
        state = {k[len(ENCODER_PREFIX):]: v for k, v in raw.items()
                 if isinstance(k, str) and k.startswith(ENCODER_PREFIX)}
    elif any(k.startswith(("pose_encoder.", "shape_encoder.", "expression_encoder.")) for k in keys):
        state = {k: v for k, v in raw.items() if isinstance(k, str) and not k.startswith(GENERATOR_PREFIX)}
    else:
        example = f" (first key '{keys[0]}')" if keys else ""
        raise SmirkWeightFileError(path, f"contains no SMIRK encoder tensors: {len(raw)} entries, none "
                                         f"starting with '{ENCODER_PREFIX}'{example}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise SmirkWeightFileError(path, f"entry '{key}' is a {type(value).__name__}, not a tensor")
    return state


def _check_against(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise naming the first missing, unexpected or mis-shaped key, before load_state_dict."""
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in state:
            n_missing = sum(k not in state for k in expected)
            raise SmirkWeightFileError(path, f"tensor '{ENCODER_PREFIX}{key}' is missing (expected shape "
                                             f"{tuple(ref.shape)}; {n_missing} of {len(expected)} "
                                             f"encoder tensors missing)")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise SmirkWeightFileError(path, f"tensor '{ENCODER_PREFIX}{key}' has the wrong shape: "
                                             f"expected {tuple(ref.shape)}, found {tuple(state[key].shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise SmirkWeightFileError(path, f"unexpected tensor '{ENCODER_PREFIX}{extra[0]}' (shape "
                                         f"{tuple(state[extra[0]].shape)}; {len(extra)} unexpected in all): "
                                         f"not SMIRK's encoder architecture")


def load_smirk_encoder(path: str | Path, device: str | torch.device = "cpu") -> SmirkEncoder:
    """Load SMIRK's encoder from ``SMIRK_em1.pt`` (or a bare encoder state dict), in eval mode.

    The file is first checked by :func:`~.torch_checkpoint.check_torch_checkpoint` (zip format,
    uncompressed records, a ``data.pkl`` of bounded depth and size whose storages match their
    records: nothing is allocated that the file does not hold), then read with
    ``torch.load(..., weights_only=True)``: no arbitrary pickle code runs.

    Raises:
        MissingModelFileError: ``path`` does not exist.
        SmirkWeightFileError (a :class:`~hp3_core.errors.WeightFileError`): the file cannot be read
            safely, is not a state dict, or its encoder tensors do not match SMIRK's architecture
            (the message names the first offending key with expected and found shapes).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError("SMIRK encoder weights", [path.name], [path.parent], WHERE_TO_GET)
    try:
        check_torch_checkpoint(path)
    except CheckpointRefused as err:
        raise SmirkWeightFileError(path, f"refused before loading: {_one_line(err)}") from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SmirkWeightFileError(path, "refused by safe loading (torch.load weights_only=True: "
                                         f"{_one_line(err)}): it holds Python objects other than "
                                         "tensors, or is damaged") from None
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes the unpickler raise
        raise SmirkWeightFileError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: "
                                         f"{_one_line(err)})") from None
    state = _encoder_state(raw, path)
    model = SmirkEncoder()
    _check_against(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # e.g. a dtype that cannot be copied; shapes/keys were checked above
        raise SmirkWeightFileError(path, f"tensors cannot be loaded ({_one_line(err)})") from None
    return model.to(device).eval()
