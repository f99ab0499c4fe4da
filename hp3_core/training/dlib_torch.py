"""dlib's face recognition ResNet in torch, differentiable, from dlib's own ``.dat`` file.

The network (dlib's metric-learning ResNet, ``dlib_face_recognition_resnet_model_v1.dat``, public
domain) is rebuilt layer by layer from :func:`~hp3_core.head_encoder.dlib_format.read_network`: a
150x150 RGB face chip, a 7x7/2 convolution to 32 channels with a per-channel affine (dlib's frozen
batch norm) and ReLU, a 3x3/2 max pool, then residual blocks (two 3x3 convolutions, each with its
affine, and the block's input added before the last ReLU) at 32, 64, 128 and 256 channels. A
block that halves the resolution strides its first convolution by 2 and adds its input through a
2x2/2 average pool; when the two differ in size (channels, or one pixel of height/width), dlib adds
them as if the smaller were zero-padded at the end of each axis, and so does this module. Last,
the mean over all pixels and a 256 -> 128 linear map without bias: the 128-d descriptor, compared
by Euclidean distance (dlib's threshold for "same person": 0.6).

Input normalisation is dlib's ``input_rgb_image``: ``(pixel - mean_rgb) / 256`` on 0..255 pixels.

How the file's ``tag``/``skip`` markers are read (their tag numbers are not stored): one marker
alone opens a residual block (remember the block's input); two in a row close a down-sampling
block's main branch (remember its output, continue from the block's input, whose average pool
follows). ``add_prev`` adds the remembered main branch when there is one, else the block's input.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import HP3Error
from ..head_encoder.dlib_format import Layer, read_network

log = logging.getLogger(__name__)


def _pad_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: a + b on the larger of each axis, missing values taken as zero."""
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(shape):
            return t
        return F.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return grow(a) + grow(b)


class _Affine(nn.Module):
    """dlib's ``affine_`` (a batch norm folded into gamma, beta per channel)."""

    def __init__(self, gamma: torch.Tensor, beta: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("gamma", gamma.view(1, -1, 1, 1))
        self.register_buffer("beta", beta.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class TorchDlibRecognizer(nn.Module):
    """dlib's face recogniser on aligned chips: [B, 3, 150, 150] RGB in -1..1 -> [B, 128]
    descriptors. ``normalize=True`` (the default, as training's loss compares cosines) returns unit
    vectors; ``normalize=False`` gives dlib's raw descriptors. Frozen: nothing requires grad."""

    def __init__(self, layers: list[Layer], name: str = "dlib_face_recognition_resnet_model_v1.dat") -> None:
        super().__init__()
        self.name = name
        if not layers or layers[0].kind != "input":
            raise HP3Error(f"dlib model '{name}': no input layer")
        inp = layers[0].fields
        self.input_size = int(inp["size"][0])
        self.register_buffer("mean", torch.tensor(inp["mean_rgb"], dtype=torch.float32).view(1, 3, 1, 1))
        self.program: list[tuple[str, int]] = []  # (op, index into self.ops or -1)
        self.ops = nn.ModuleList()
        channels = 3
        for layer in layers[1:]:
            module = self._module(layer, channels, name)
            if layer.kind == "con":
                channels = int(layer.fields["num_filters"])
            self.program.append((layer.kind, len(self.ops) if module is not None else -1))
            if module is not None:
                self.ops.append(module)
        self.output_dim = int(next(m.out_features for m in self.ops if isinstance(m, nn.Linear)))
        self.requires_grad_(False).eval()

    @staticmethod
    def _module(layer: Layer, channels: int, name: str) -> nn.Module | None:
        f, p = layer.fields, torch.from_numpy(layer.params.copy())
        if layer.kind == "con":
            n, kh, kw = int(f["num_filters"]), int(f["nr"]), int(f["nc"])
            conv = nn.Conv2d(channels, n, (kh, kw), stride=(f["stride_y"], f["stride_x"]),
                             padding=(f["padding_y"], f["padding_x"]))
            w = n * channels * kh * kw
            if p.numel() != w + n:
                raise HP3Error(f"dlib model '{name}': a convolution holds {p.numel()} values, not {w + n}")
            conv.weight.data.copy_(p[:w].view(n, channels, kh, kw))
            conv.bias.data.copy_(p[w:])
            return conv
        if layer.kind == "affine":
            half = p.numel() // 2
            return _Affine(p[:half], p[half:])
        if layer.kind in ("max_pool", "avg_pool"):
            if f["nr"] == 0:  # dlib's avg_pool_everything
                return None
            pool = nn.MaxPool2d if layer.kind == "max_pool" else nn.AvgPool2d
            return pool((f["nr"], f["nc"]), stride=(f["stride_y"], f["stride_x"]),
                        padding=(f["padding_y"], f["padding_x"]))
        if layer.kind == "fc":
            n_in, n_out = int(f["num_inputs"]), int(f["num_outputs"])
            if f["bias_mode"] != 1 or p.numel() != n_in * n_out:
                raise HP3Error(f"dlib model '{name}': expected a {n_in}x{n_out} linear layer without bias")
            fc = nn.Linear(n_in, n_out, bias=False)
            fc.weight.data.copy_(p.view(n_in, n_out).t())  # dlib stores [inputs, outputs]
            return fc
        if layer.kind in ("relu", "tag", "add_prev", "loss_metric"):
            return None
        raise HP3Error(f"dlib model '{name}': layer kind '{layer.kind}' is not supported")

    @classmethod
    def from_file(cls, path: str | Path) -> TorchDlibRecognizer:
        """Read ``dlib_face_recognition_resnet_model_v1.dat`` (CPU, float32)."""
        path = Path(path)
        return cls(read_network(path), name=path.name)

    def train(self, mode: bool = True) -> TorchDlibRecognizer:
        return super().train(False)  # frozen

    def descriptors(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw dlib descriptors [B, 128] of chips [B, 3, 150, 150] RGB on the 0..255 scale."""
        dtype = self.mean.dtype
        x = (pixels.to(dtype) - self.mean) / 256.0
        block_in: torch.Tensor | None = None  # the current residual block's input
        outer_in: torch.Tensor | None = None  # what block_in was before the last marker
        branch: torch.Tensor | None = None
        tags_in_a_row = 0
        for kind, idx in self.program:
            if kind == "tag":
                tags_in_a_row += 1
                if tags_in_a_row == 1:
                    outer_in, block_in = block_in, x
                else:  # the second of a pair: end of a down-sampling block's main branch
                    branch, x, block_in = x, outer_in, outer_in
                continue
            tags_in_a_row = 0
            if kind == "relu":
                x = F.relu(x)
            elif kind == "add_prev":
                x = _pad_add(x, branch if branch is not None else block_in)
                branch = None
            elif kind == "avg_pool" and idx < 0:
                x = x.mean(dim=(2, 3))
            elif kind == "loss_metric":
                break
            else:
                x = self.ops[idx](x)
        return x

    def forward(self, faces: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``faces``: [B, 3, 150, 150] RGB in -1..1 (the VAE's range) -> [B, 128]."""
        emb = self.descriptors((faces.float() + 1.0) * 127.5).float()
        return F.normalize(emb, dim=-1) if normalize else emb
