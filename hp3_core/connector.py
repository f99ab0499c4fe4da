"""HP3's adaptive connector: the head conditions enter each decoder block of the frozen UNet.

At decoder block i, before the skip concatenation, and at the block's own first GroupNorm::

    h = z_d + ZeroConv(c)                                  # z_d: decoder features
    n = GN(concat(h, z_e))                                 # z_e: the encoder skip
    y = n + n * ZeroConv(Conv(c)) + ZeroConv(Conv(c))      # two separate Conv branches

Every ZeroConv starts at zero, so an untrained connector leaves the UNet exactly as it was.
The Conv branches are narrow (SPADE-like, ``ConnectorConfig.hidden_channels``) to keep the cost
far below a second UNet decoder.

The hosts (ComfyUI, diffusers) install two hooks per decoder block: :func:`inject` on the
decoder features before the concatenation, and :class:`ModulatedGroupNorm` in place of the
block's first GroupNorm. Both read the conditions of the model call in progress from a context
variable (:func:`active`), so the installed modules hold no per-call state.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import ConnectorConfig, ControllerConfig


def zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class BlockConnector(nn.Module):
    """The connector of one decoder block."""

    def __init__(self, cond_channels: int, decoder_channels: int, skip_channels: int, hidden: int) -> None:
        super().__init__()
        norm_channels = decoder_channels + skip_channels
        self.inject = zero_conv(cond_channels, decoder_channels)
        self.scale_conv = nn.Conv2d(cond_channels, hidden, 3, padding=1)
        self.scale_out = zero_conv(hidden, norm_channels)
        self.shift_conv = nn.Conv2d(cond_channels, hidden, 3, padding=1)
        self.shift_out = zero_conv(hidden, norm_channels)

    def injection(self, c: torch.Tensor) -> torch.Tensor:
        return self.inject(c)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each [B, decoder + skip channels, h, w]."""
        return self.scale_out(F.silu(self.scale_conv(c))), self.shift_out(F.silu(self.shift_conv(c)))


class AdaptiveConnector(nn.Module):
    """One :class:`BlockConnector` per decoder block (UNet order)."""

    def __init__(self, controller: ControllerConfig, config: ConnectorConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            BlockConnector(skip, dec, skip, config.hidden_channels) for dec, skip in controller.decoder_channels())


@dataclass
class ConnectorState:
    """What the connector applies during one UNet call.

    Attributes:
        features: the controller's features, per decoder block [B, C, h, w] (rows that get no
            HP3 hold anything, e.g. zeros).
        rows: [B] float: the strength for rows that get HP3 (the conditional ones), 0 for the
            others; it multiplies every change, so 0-rows are exactly the base UNet.
        connector: the connector whose weights apply.
    """

    features: list[torch.Tensor]
    rows: torch.Tensor
    connector: AdaptiveConnector


_active: contextvars.ContextVar[ConnectorState | None] = contextvars.ContextVar("hp3_connector_state",
                                                                              default=None)


@contextlib.contextmanager
def active(state: ConnectorState | None) -> Iterator[None]:
    """Make ``state`` the conditions the installed hooks use while the body runs."""
    token = _active.set(state)
    try:
        yield
    finally:
        _active.reset(token)


def current() -> ConnectorState | None:
    """The conditions active in this context (None outside :func:`active`)."""
    return _active.get()


def enter_active(state: ConnectorState | None) -> contextvars.Token:
    """Like :func:`active` for hosts that enter and leave in separate hooks (before/after a call)."""
    return _active.set(state)


def leave_active(token: contextvars.Token) -> None:
    _active.reset(token)


def _features_at(state: ConnectorState, index: int, like: torch.Tensor) -> torch.Tensor:
    c = state.features[index]
    if c.shape[-2:] != like.shape[-2:]:  # odd latent sizes: the UNet pads/crops by one
        c = F.interpolate(c, size=like.shape[-2:], mode="nearest")
    return c


def _rows(state: ConnectorState, like: torch.Tensor) -> torch.Tensor:
    return state.rows.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def inject(index: int, h: torch.Tensor) -> torch.Tensor:
    """``h + ZeroConv(c)`` on the conditional rows of decoder block ``index`` (no-op when inactive)."""
    state = _active.get()
    if state is None:
        return h
    block = state.connector.blocks[index]
    c = _features_at(state, index, h)
    w = block.inject.weight
    return h + _rows(state, h) * block.injection(c.to(w.device, w.dtype)).to(h.dtype)


class ModulatedGroupNorm(nn.Module):
    """A decoder block's own first GroupNorm, followed by the connector's modulation.

    ``y = n + rows * (n * scale + shift)`` with ``n`` the original GroupNorm. It holds the
    original's ``weight`` and ``bias`` (the same Parameter objects, no copy) under the same names,
    so the host's weight patches (LoRAs, model merges) still find ``...in_layers.0.weight`` and
    apply to it while HP3 is installed.
    """

    def __init__(self, norm: nn.GroupNorm, index: int) -> None:
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias
        self.index = index
        self._original = (norm,)  # a tuple: kept for restoring, not registered as a submodule

    @property
    def original(self) -> nn.Module:
        """The GroupNorm this replaces (hosts put it back when HP3 is removed)."""
        return self._original[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Cast like ComfyUI's manual-cast ops: weights may be stored in another dtype/device.
        w = None if self.weight is None else self.weight.to(device=x.device, dtype=x.dtype)
        b = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        n = F.group_norm(x, self.num_groups, w, b, self.eps)
        state = _active.get()
        if state is None:
            return n
        block = state.connector.blocks[self.index]
        c = _features_at(state, self.index, n)
        cw = block.scale_conv.weight
        scale, shift = block.modulation(c.to(cw.device, cw.dtype))
        return n + _rows(state, n) * (n * scale.to(n.dtype) + shift.to(n.dtype))
