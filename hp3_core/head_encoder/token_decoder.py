"""The head encoder's trainable part: N learnable head tokens that read identity and appearance.

docs/method.md section 1: the ArcFace identity (512-d, one vector per reference image) and the CLIP
vision penultimate hidden states of the head crop (T tokens per reference) are projected to the
token width D by two Linears and concatenated as the keys/values ("memory") of a small
Transformer decoder whose queries are N learnable head tokens. Output: N x D head tokens, which
the base UNet attends to like text.

Layout of the parameters (state-dict keys; the HP3 weight file stores them under ``encoder.``)::

    id_proj.weight [D, id_dim]        id_proj.bias [D]
    clip_proj.weight [D, clip_width]  clip_proj.bias [D]
    queries [N, D]
    layers.{i}.*                      torch.nn.TransformerDecoderLayer (pre-norm, GELU, 4D MLP)
    norm.weight [D], norm.bias [D]    final LayerNorm
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import HeadEncoderConfig
from ..errors import HP3Error
from .clip_vision import clip_arch_name

QUERY_INIT_STD = 0.02


class ClipWidthMismatchError(HP3Error):
    """The CLIP vision model's width differs from the one the HP3 weights were trained with."""

    def __init__(self, found: int, expected: int, weights_name: str = "these HP3 weights") -> None:
        self.found = int(found)
        self.expected = int(expected)
        super().__init__(f"the CLIP vision model gives {found}-wide features ({clip_arch_name(found)}) "
                         f"but {weights_name} were trained with {expected} ({clip_arch_name(expected)}); "
                         f"load the matching CLIP vision model")


def check_clip_width(found: int, expected: int, weights_name: str = "these HP3 weights") -> None:
    """Raise :class:`ClipWidthMismatchError` unless ``found == expected``."""
    if int(found) != int(expected):
        raise ClipWidthMismatchError(found, expected, weights_name)


class HeadTokenDecoder(nn.Module):
    """ArcFace + CLIP-vision features of R references -> N head tokens [B, N, D].

    Memory (keys/values of every cross-attention): per reference ``r``, one identity token
    ``id_proj(id_embeds[:, r])`` followed by its T appearance tokens ``clip_proj(clip_hidden[:, r])``;
    the R references' memories are **concatenated along the sequence axis**, giving
    ``R * (1 + T)`` memory tokens. No positional encoding is added across references (CLIP's own
    position embeddings are inside each reference's features), and attention is a weighted sum
    over memory tokens, so the tokens are **invariant to the order of the references**; several
    photos of one person simply give the queries more evidence to attend to. R = 1 is the
    single-image case.

    Batches whose items have different numbers of references are padded to the largest R and
    passed with ``ref_mask`` [B, R] (True = real reference, False = padding): the padding's
    memory tokens are masked out of every cross-attention, so an item's tokens equal those of
    the unpadded item alone.

    Initialisation is deterministic (independent of the global RNG): the module is built under a
    private RNG seeded with ``seed``; the Linears and attention use PyTorch's defaults, the
    queries are drawn from N(0, 0.02) (the BERT/ViT token-embedding scale; IP-Adapter's Resampler
    uses randn / sqrt(D), the same order), LayerNorms start at identity.
    """

    def __init__(self, config: HeadEncoderConfig, seed: int = 0) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.id_proj = nn.Linear(config.id_dim, d)
            self.clip_proj = nn.Linear(config.clip_width, d)
            self.queries = nn.Parameter(torch.randn(config.num_tokens, d) * QUERY_INIT_STD)
            self.layers = nn.ModuleList(
                nn.TransformerDecoderLayer(d, config.num_heads, dim_feedforward=4 * d, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
                for _ in range(config.num_layers))
            self.norm = nn.LayerNorm(d)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def width(self) -> int:
        return self.config.width

    def memory(self, id_embeds: torch.Tensor, clip_hidden: torch.Tensor) -> torch.Tensor:
        """The concatenated memory [B, R * (1 + T), D] (reference by reference: id, then CLIP)."""
        b, r, t = clip_hidden.shape[:3]
        ident = self.id_proj(id_embeds).unsqueeze(2)                  # [B, R, 1, D]
        appearance = self.clip_proj(clip_hidden)                       # [B, R, T, D]
        return torch.cat([ident, appearance], dim=2).reshape(b, r * (1 + t), -1)

    def forward(self, id_embeds: torch.Tensor, clip_hidden: torch.Tensor,
                ref_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Head tokens.

        Args:
            id_embeds: [B, R, id_dim] identity embeddings (L2-normalised; ArcFace 512, dlib 128).
            clip_hidden: [B, R, T, clip_width] CLIP vision penultimate hidden states.
            ref_mask: [B, R] bool, True for real references; None = all real.

        Returns:
            [B, N, D] in the module's dtype, on its device.

        Raises:
            ClipWidthMismatchError: ``clip_hidden``'s width is not the config's ``clip_width``.
        """
        cfg = self.config
        if clip_hidden.ndim != 4:
            raise ValueError(f"clip_hidden must be [B, R, T, C], got {list(clip_hidden.shape)}")
        check_clip_width(clip_hidden.shape[-1], cfg.clip_width)
        if id_embeds.ndim != 3 or id_embeds.shape[:2] != clip_hidden.shape[:2]:
            raise ValueError(f"id_embeds must be [B, R, {cfg.id_dim}] matching clip_hidden "
                             f"{list(clip_hidden.shape)}, got {list(id_embeds.shape)}")
        if id_embeds.shape[-1] != cfg.id_dim:
            raise HP3Error(f"the identity embedding is {id_embeds.shape[-1]}-d but these HP3 weights "
                           f"expect {cfg.id_dim}-d ({cfg.identity}); load face analysis with identity "
                           f"'{cfg.identity}'")
        p = self.queries
        id_embeds = id_embeds.to(device=p.device, dtype=p.dtype)
        clip_hidden = clip_hidden.to(device=p.device, dtype=p.dtype)
        b, r, t = clip_hidden.shape[:3]
        memory = self.memory(id_embeds, clip_hidden)
        pad = None
        if ref_mask is not None:
            ref_mask = ref_mask.to(device=p.device, dtype=torch.bool)
            if ref_mask.shape != (b, r):
                raise ValueError(f"ref_mask must be [B, R] = [{b}, {r}], got {list(ref_mask.shape)}")
            if not ref_mask.any(dim=1).all():
                raise ValueError("ref_mask leaves a batch item with no reference")
            # PyTorch's key_padding_mask: True = ignore.
            pad = (~ref_mask).unsqueeze(2).expand(b, r, 1 + t).reshape(b, r * (1 + t))
        x = p.unsqueeze(0).expand(b, -1, -1)
        for layer in self.layers:
            x = layer(x, memory, memory_key_padding_mask=pad)
        return self.norm(x)

    def tokens_for(self, features) -> torch.Tensor:
        """[N, D] head tokens of one person's :class:`~hp3_core.head_encoder.features.HeadFeatures`."""
        check_clip_width(features.clip_width, self.config.clip_width)
        from .identity import check_identity_backend
        check_identity_backend(features.identity, self.config.identity)
        return self(features.id_embeds.unsqueeze(0), features.clip_hidden.unsqueeze(0))[0]
