"""A reader for dlib's serialised face-recognition network (``dlib_face_recognition_resnet_model_v1.dat``).

This is our own reader of dlib's binary serialisation, written from the format as it appears in
the file (checked byte by byte against the shipped model); nothing is executed, only numbers are
read. The format:

* **integers** are packed: one control byte (low 4 bits: how many value bytes follow, bit 0x80:
  negative), then the magnitude, little-endian.
* **floats** (scalars) are ``mantissa`` (packed int64) and ``exponent`` (packed int16):
  ``value = mantissa * 2**exponent``; exponents 32000/32001/32002 mean +inf/-inf/nan.
* **strings**: a packed length, then the bytes. **bools**: one ASCII byte ``'1'`` or ``'0'``.
* **tensors** (version 2): ``num_samples, k, nr, nc`` packed, then ``n*k*nr*nc`` float32
  little-endian. **alias tensors** (version 1): a shape only (a view into the layer's params).
* **the network**: a chain of nested layers, serialised *outer layer first, then its sub-network*.
  Every layer writes its wrapper's version (2 for a computational layer, 1 for a ``tag`` or
  ``skip``, 3 for the one on top of the input), so the file starts with the loss layer, then one
  version number per layer from the top of the network down, then the input layer; the layers'
  details (their parameters) follow from the input upward, each followed by its wrapper's state
  (three bools, three empty tensors; plus the sample expansion factor for the first layer).

:func:`read_network` returns the layers bottom-up (input first) as :class:`Layer` records with the
``tag``/``skip`` wrappers in place (their tag numbers are not stored: the model's builder,
:mod:`hp3_core.training.dlib_torch`, interprets them by position).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HP3Error

log = logging.getLogger(__name__)

# Float exponents dlib uses for the special values.
_INF, _NINF, _NAN = 32000, 32001, 32002
# Guard against a damaged length field asking for gigabytes (the real model has 5.6M floats).
MAX_TENSOR_VALUES = 64_000_000


class DlibFormatError(HP3Error):
    """A ``.dat`` file that is not a dlib network of the kind this reader knows."""


@dataclass
class Layer:
    """One layer of a dlib network.

    Attributes:
        kind: ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``,
            ``input``, ``loss_metric``, or ``tag`` (a tag or skip wrapper: a position marker).
        params: the layer's parameter tensor as a flat float32 array (empty for most kinds).
        fields: the layer's settings (filter counts, window sizes, strides, paddings, ...).
    """

    kind: str
    params: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    fields: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Sequential reader of dlib's primitive types."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"dlib model '{self.name}': {what} at byte {self.pos}; the file is damaged "
                               f"or is not dlib_face_recognition_resnet_model_v1.dat")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file (wanted {n} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent == _INF:
            return math.inf
        if exponent == _NINF:
            return -math.inf
        if exponent == _NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def string(self) -> str:
        n = self.int()
        if not 0 <= n <= 256:
            raise self.fail(f"implausible string length {n}")
        return self.take(n).decode("ascii", errors="replace")

    def bool(self) -> bool:
        c = self.take(1)
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {c!r}")
        return c == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.fail(f"tensor format {version} (this reader knows 2)")
        shape = [self.int() for _ in range(4)]
        count = int(np.prod(shape))
        if any(s < 0 for s in shape) or count > MAX_TENSOR_VALUES:
            raise self.fail(f"implausible tensor shape {shape}")
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, ...]:
        version = self.int()
        if version != 1:
            raise self.fail(f"alias tensor format {version} (this reader knows 1)")
        return tuple(self.int() for _ in range(4))


def _details(r: _Reader, name: str) -> Layer:
    """One layer's serialised details, its name already read."""
    if name == "con_4":
        params = r.tensor().reshape(-1)
        f = {k: r.int() for k in ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
        f["filters_shape"], f["biases_shape"] = r.alias(), r.alias()
        for k in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
            f[k] = r.float()
        return Layer("con", params, f)
    if name == "affine_":
        params = r.tensor().reshape(-1)
        f = {"gamma_shape": r.alias(), "beta_shape": r.alias(), "mode": r.int()}
        return Layer("affine", params, f)
    if name == "relu_":
        return Layer("relu")
    if name in ("max_pool_2", "avg_pool_2"):
        f = {k: r.int() for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
        return Layer(name[:-2], fields=f)
    if name == "add_prev_":
        return Layer("add_prev")
    if name == "fc_2":
        f: dict[str, Any] = {"num_outputs": r.int(), "num_inputs": r.int()}
        params = r.tensor().reshape(-1)
        f.update(weights_shape=r.alias(), biases_shape=r.alias(), bias_mode=r.int())
        for k in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
            f[k] = r.float()
        return Layer("fc", params, f)
    raise r.fail(f"unknown layer '{name}' (this reader knows con_4, affine_, relu_, max_pool_2, "
                 f"avg_pool_2, add_prev_, fc_2)")


def _wrapper_state(r: _Reader, first: bool) -> None:
    """What a layer's wrapper writes after the details: three flags and three empty buffers
    (gradients, cached output); the first layer also its sample expansion factor."""
    for _ in range(3):
        r.bool()
    for _ in range(3):
        r.tensor()
    if first:
        r.int()


def read_network(path: str | Path) -> list[Layer]:
    """The layers of a dlib metric-learning network file, input first, loss last.

    Raises:
        DlibFormatError: the file is not such a network (names the byte offset and what was found).
    """
    path = Path(path)
    r = _Reader(path.read_bytes(), str(path))
    if r.int() != 1 or r.string() != "loss_metric_2":
        raise r.fail("no metric-learning loss layer at the start (not a face recognition network)")
    loss = Layer("loss_metric", fields={"margin": r.float(), "distance_threshold": r.float()})
    wrappers: list[int] = []  # top of the network first: 2 = layer, 1 = tag/skip, 3 = first layer
    while True:
        v = r.int()
        if v not in (1, 2, 3):
            raise r.fail(f"unexpected layer wrapper version {v}")
        wrappers.append(v)
        if v == 3:
            break
    if r.string() != "input_rgb_image_sized":
        raise r.fail("the input layer is not dlib's input_rgb_image_sized")
    means = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    layers = [Layer("input", fields={"mean_rgb": means, "size": size})]
    for i, v in enumerate(reversed(wrappers)):
        if v == 1:
            layers.append(Layer("tag"))
            continue
        layers.append(_details(r, r.string()))
        _wrapper_state(r, first=i == 0)
    layers.append(loss)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left after the network")
    log.debug("read dlib network %s: %d layers", path.name, len(layers))
    return layers
