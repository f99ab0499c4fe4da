"""Configuration of an HP3 model, per base family (SD1.5, SDXL).

An HP3 model is three trainable parts on a frozen base UNet (docs/method.md):

* the **head encoder** heads (ArcFace and CLIP-vision projections plus a small Transformer
  decoder with ``num_tokens`` learnable queries), :class:`HeadEncoderConfig`;
* the **head controller**, a ControlNet-shaped copy of the base UNet's encoder and middle block,
  whose architecture must mirror the base UNet's, :class:`ControllerConfig` (field names follow
  diffusers' ``ControlNetModel`` config so the controller can be built from it directly);
* the **adaptive connector**, whose shapes follow from the controller's block channels.

The config travels inside every HP3 weight file (see :mod:`hp3_core.weights`), so a file alone
says which base family, CLIP-vision width and 3D render style it was trained for.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import HP3Error

Family = Literal["sd15", "sdxl"]
FAMILIES: tuple[str, ...] = ("sd15", "sdxl")

# Human names, for messages.
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}

# Identity backends and their embedding widths (hp3_core.head_encoder.identity has the models).
IDENTITY_DIMS = {"insightface": 512, "dlib": 128}

# CLIP-vision hidden widths users may pair with HP3 (ViT-L/14, ViT-H/14, ViT-bigG/14).
CLIP_VISION_WIDTHS = {1024: "ViT-L/14", 1280: "ViT-H/14", 1664: "ViT-bigG/14"}


@dataclass(frozen=True)
class HeadEncoderConfig:
    """Sizes of the head encoder's trainable heads.

    Attributes:
        width: D, the width of a head token; equals the base UNet's cross-attention width
            (768 for SD1.5, 2048 for SDXL) so tokens can be attended to like text.
        num_tokens: N, the number of learnable head-token queries.
        num_layers: L, Transformer decoder layers.
        num_heads: attention heads of the decoder (``width`` must divide by it).
        id_dim: width of the identity embedding (ArcFace: 512, dlib: 128).
        clip_width: width of the CLIP-vision hidden states (1024 ViT-L/14, 1280 ViT-H/14).
        identity: the identity backend the identity embedding comes from (``insightface`` or
            ``dlib``); their embeddings are different spaces, so weights trained with one refuse
            the other. Files written before the field existed were all insightface.
    """

    width: int
    num_tokens: int = 16
    num_layers: int = 4
    num_heads: int = 8
    id_dim: int = 512
    clip_width: int = 1024
    identity: str = "insightface"

    def validate(self) -> None:
        if self.identity not in IDENTITY_DIMS:
            raise HP3Error(f"HP3 config: unknown encoder identity '{self.identity}'; "
                           f"use one of {', '.join(IDENTITY_DIMS)}")
        if self.id_dim != IDENTITY_DIMS[self.identity]:
            raise HP3Error(f"HP3 config: encoder id_dim {self.id_dim} is not the {self.identity} "
                           f"embedding's width {IDENTITY_DIMS[self.identity]}")
        if self.width % self.num_heads:
            raise HP3Error(f"HP3 config: encoder width {self.width} must be a multiple of "
                           f"encoder num_heads {self.num_heads}")
        for name in ("width", "num_tokens", "num_layers", "num_heads", "id_dim", "clip_width"):
            if getattr(self, name) <= 0:
                raise HP3Error(f"HP3 config: encoder {name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class ControllerConfig:
    """Architecture of the head controller (mirrors the base UNet's encoder + middle block).

    Field names and meanings are those of ``diffusers.ControlNetModel``; ``attention_head_dim``
    is, as in diffusers' SD configs, the number of attention heads per block.
    """

    cross_attention_dim: int
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    layers_per_block: int = 2
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    attention_head_dim: tuple[int, ...] = (8, 8, 8, 8)
    use_linear_projection: bool = False
    in_channels: int = 4
    norm_num_groups: int = 32
    # SDXL's added conditioning (pooled text + size/crop ids): "text_time", else None.
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    # Hint stem for the 3D render (RGB, full resolution = 8x the latent).
    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)

    def validate(self) -> None:
        n = len(self.block_out_channels)
        for name in ("down_block_types", "transformer_layers_per_block", "attention_head_dim"):
            if len(getattr(self, name)) != n:
                raise HP3Error(f"HP3 config: controller {name} has {len(getattr(self, name))} "
                               f"entries but block_out_channels has {n}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise HP3Error(f"HP3 config: controller block_out_channels {self.block_out_channels} "
                           f"must all be multiples of norm_num_groups {self.norm_num_groups}")

    def decoder_channels(self) -> list[tuple[int, int]]:
        """(decoder-feature channels, skip channels) entering each decoder block, in UNet order.

        The encoder's skips are conv_in's output then every resnet and downsampler output; the
        decoder has ``layers_per_block + 1`` blocks per level, deepest level first, each taking
        the last remaining skip. Decoder features enter a level with the previous level's width.
        """
        chans = list(self.block_out_channels)
        skips = [chans[0]]
        for i, ch in enumerate(chans):
            skips += [ch] * self.layers_per_block
            if i < len(chans) - 1:
                skips.append(ch)
        out, prev = [], chans[-1]
        for level, ch in enumerate(reversed(chans)):
            for k in range(self.layers_per_block + 1):
                out.append((prev if k == 0 else ch, skips.pop()))
            prev = ch
        return out

    def to_diffusers(self) -> dict[str, Any]:
        """Keyword arguments for ``diffusers.ControlNetModel``."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class ConnectorConfig:
    """Widths of the adaptive connector's modulation branches.

    The paper gives none. Full-width 3x3 convolutions at every decoder block cost more than a
    whole ControlNet, so each branch is SPADE-like: a narrow 3x3 conv (``hidden_channels``) from
    the condition, then a zero-initialised 1x1 conv to the GroupNorm's width.
    """

    hidden_channels: int = 64

    def validate(self) -> None:
        if self.hidden_channels <= 0:
            raise HP3Error(f"HP3 config: connector hidden_channels must be positive, got {self.hidden_channels}")


# What the controller sees from each 3D backend (recorded in the weight file as render_style).
RENDER_STYLES = {"smirk": "shaded_full_head", "ict": "shaded_full_head_ict",
                 "mediapipe": "shaded_face"}


@dataclass(frozen=True)
class HP3Config:
    """Everything needed to rebuild an HP3 model and check what it may be paired with.

    Attributes:
        family: base model family, ``"sd15"`` or ``"sdxl"``.
        encoder: head encoder sizes.
        controller: head controller architecture.
        render_backend: the 3D backend the weights were trained with (``smirk``, ``ict``,
            ``mediapipe``); applying them with another backend warns, since the controller
            has learnt that backend's renders.
        render_style: what the controller saw: ``shaded_full_head`` (FLAME head, docs/method.md),
            ``shaded_full_head_ict`` (the ICT full head) or ``shaded_face`` (MediaPipe's face-only mesh).
        id_loss_weight: lambda of ``L_diff + lambda * L_id`` used in training (for the record).
    """

    family: str
    encoder: HeadEncoderConfig
    controller: ControllerConfig
    render_backend: str = "smirk"
    render_style: str = "shaded_full_head"
    id_loss_weight: float = 1.0
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise HP3Error(f"HP3 config: unknown base family '{self.family}'; "
                           f"use one of {', '.join(FAMILIES)}")
        self.encoder.validate()
        self.controller.validate()
        self.connector.validate()
        if self.encoder.width != self.controller.cross_attention_dim:
            raise HP3Error(f"HP3 config: head-token width {self.encoder.width} must equal the "
                           f"controller's cross_attention_dim {self.controller.cross_attention_dim}")

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES[self.family]

    @classmethod
    def for_family(cls, family: str, **overrides: Any) -> HP3Config:
        """The default config for a real base model of ``family`` (``sd15`` or ``sdxl``)."""
        if family == "sd15":
            controller = ControllerConfig(
                cross_attention_dim=768,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                transformer_layers_per_block=(1, 1, 1, 1),
                attention_head_dim=(8, 8, 8, 8),
            )
        elif family == "sdxl":
            controller = ControllerConfig(
                cross_attention_dim=2048,
                block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20),
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            )
        else:
            raise HP3Error(f"unknown base family '{family}'; use one of {', '.join(FAMILIES)}")
        encoder = HeadEncoderConfig(width=controller.cross_attention_dim)
        return cls(family=family, encoder=encoder, controller=controller, **overrides)

    @classmethod
    def for_controller(cls, controller: ControllerConfig, family: str, clip_width: int = 1024,
                       backend: str = "smirk", identity: str = "insightface") -> HP3Config:
        """The config around a controller that mirrors a base UNet (``init`` and ``train``):
        head tokens as wide as its cross-attention, default decoder sizes, ``backend``'s render
        style, an identity projection as wide as ``identity``'s embedding (512 or 128)."""
        defaults = HeadEncoderConfig(width=controller.cross_attention_dim)
        heads = defaults.num_heads if controller.cross_attention_dim % defaults.num_heads == 0 else 1
        if identity not in IDENTITY_DIMS:
            raise HP3Error(f"unknown identity backend '{identity}'; use one of {', '.join(IDENTITY_DIMS)}")
        encoder = HeadEncoderConfig(width=controller.cross_attention_dim, clip_width=clip_width, num_heads=heads,
                                    id_dim=IDENTITY_DIMS[identity], identity=identity)
        return cls(family=family, encoder=encoder, controller=controller, render_backend=backend,
                   render_style=RENDER_STYLES[backend])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HP3Config:
        """Rebuild from :meth:`to_dict`; unknown or missing fields raise :class:`HP3Error`."""
        data = dict(data)
        try:
            encoder = _build(HeadEncoderConfig, data.pop("encoder"), "encoder")
            controller = _build(ControllerConfig, data.pop("controller"), "controller")
        except KeyError as err:
            raise HP3Error(f"HP3 config: section {err} is missing") from None
        connector = _build(ConnectorConfig, data.pop("connector", {}), "connector")
        return _build(cls, {**data, "encoder": encoder, "controller": controller, "connector": connector},
                      "config")

    @classmethod
    def from_json(cls, text: str) -> HP3Config:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise HP3Error(f"HP3 config is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise HP3Error("HP3 config must be a JSON object")
        return cls.from_dict(data)


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate a config dataclass, naming unknown/missing fields instead of a TypeError."""
    if not isinstance(data, dict):
        raise HP3Error(f"HP3 config: '{where}' must be an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HP3Error(f"HP3 config: unknown field(s) {unknown} in '{where}' "
                       f"(written by a newer pack? update the pack)")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise HP3Error(f"HP3 config: field(s) {missing} missing in '{where}'")
    # JSON has no tuples; the dataclasses are frozen and hashable with tuples.
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)
