"""``encode``: a person's head features (ArcFace identity + CLIP vision of the head crop) from one
or more source photos, saved as ``.safetensors``; with ``--hp3`` also the head tokens."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import HP3Error
from ..head_encoder.clip_vision import ClipVisionEncoder
from ..head_encoder.encode_heads import encode_heads
from ..head_encoder.identity import load_face_analyzer
from ..head_encoder.head_crop import HEAD_SCALE
from ..image_io import load_image
from . import checks, common_options

NAME = "encode"
HELP = "encode a person's head (ArcFace + CLIP vision of the head crop) from source photos"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", nargs="+", required=True, help="one or more photos of the same person")
    common_options.add_models_dir(p)
    common_options.add_identity(p)
    common_options.add_dlib_dir(p)
    common_options.add_clip_vision(p)
    p.add_argument("--out", required=True, help="output .safetensors")
    common_options.add_pack(p)
    common_options.add_detection(p)
    common_options.add_face_index(p)
    p.add_argument("--crop-scale", type=float, default=HEAD_SCALE, help="head crop side / face box side")
    p.add_argument("--hp3", help="HP3 weights: also compute the head tokens with their decoder")
    common_options.add_device(p, "for CLIP vision")


def check_arguments(args: argparse.Namespace) -> None:
    """Every option checked before any model loads (one-line errors naming the option and the fix)."""
    for path in args.source:
        checks.input_file("--source", path)
    checks.search_folders("--models-dir", args.models_dir)
    checks.search_folders("--dlib-dir", args.dlib_dir)
    checks.input_path("--clip-vision", args.clip_vision)
    if args.hp3:
        checks.input_file("--hp3", args.hp3, (".safetensors",))
    checks.whole("--face-index", args.face_index, 0, meaning="0 = the largest face")
    checks.number("--crop-scale", args.crop_scale, 1.2, 4.0,
                  meaning=f"head crop side / face box side; {HEAD_SCALE} keeps hair and head shape")
    checks.device("--device", args.device)
    checks.output_file("--out", args.out, (".safetensors",))


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    analyzer = load_face_analyzer(args.identity, args.models_dir, args.dlib_dir, pack=args.pack,
                                  detection=args.detection)
    clip = ClipVisionEncoder.from_local(args.clip_vision, device=args.device)
    images = [load_image(p) for p in args.source]
    features = encode_heads(images, analyzer, clip.encode, names=[f"source '{p}'" for p in args.source],
                            face_index=args.face_index, crop_scale=args.crop_scale)
    if args.hp3:
        from ..hp3_model import load_token_decoder
        decoder = load_token_decoder(args.hp3)
        features = features.with_tokens(decoder.tokens_for(features).detach())
    if not str(args.out).endswith(".safetensors"):
        raise HP3Error(f"--out must be a .safetensors file, got '{args.out}'")
    features.save(Path(args.out))
    log.info("encoded %d reference(s), CLIP width %d (%s)%s -> %s", features.num_refs, features.clip_width,
             clip.arch_name, f", {features.tokens.shape[0]} head tokens" if features.tokens is not None else "",
             args.out)
    return 0
