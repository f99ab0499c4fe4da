"""``generate``: a head-preserving portrait with diffusers: encode the source head, retarget it to
the driving image's pose and expression, and run an SD1.5/SDXL pipeline with HP3 (writes the
image and, beside it, the shaded render ``<out>_shaded.png``)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..errors import HP3Error
from ..generation import driving_render, encode_sources, generate_image, load_models
from ..image_io import load_image, save_image
from . import checks, common_options

NAME = "generate"
HELP = "generate a head-preserving image with a local diffusers SD1.5/SDXL pipeline and HP3"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="local diffusers pipeline folder (with model_index.json)")
    p.add_argument("--hp3", required=True, help="HP3 weights (.safetensors, the same file as the ComfyUI nodes)")
    p.add_argument("--source", nargs="+", required=True, help="photos of the person whose head is kept")
    p.add_argument("--driving", required=True, help="image giving the pose and expression")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--out", required=True, help="output image (.png/.jpg); the render goes beside it")
    common_options.add_models_dir(p, (common_options.INSIGHTFACE_PACKS, common_options.SMIRK_FLAME_FILES))
    common_options.add_clip_vision(p)
    common_options.add_pack(p)
    common_options.add_backend(p, "for the retargeted render")
    common_options.add_detection(p, "for encoding", with_dlib=False)
    common_options.add_dlib_dir(p)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, default=1.0, help="HP3 strength (0: the base model)")
    p.add_argument("--start", type=float, default=0.0,
                   help="where HP3 starts: a percent (0..1) of the noise schedule, as ComfyUI's start_percent")
    p.add_argument("--end", type=float, default=1.0,
                   help="where HP3 ends: a percent (0..1) of the noise schedule, as ComfyUI's end_percent")
    p.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's)")
    common_options.add_device(p, choices=("cpu", "cuda"))


def check_arguments(args: argparse.Namespace) -> None:
    """Every option checked before any model loads (one-line errors naming the option and the fix)."""
    if not Path(args.base).is_dir():
        raise HP3Error(f"--base '{args.base}' is not a diffusers pipeline folder (no such folder); give a local "
                       f"folder with model_index.json")
    checks.input_file("--hp3", args.hp3, (".safetensors",))
    for path in args.source:
        checks.input_file("--source", path)
    checks.input_file("--driving", args.driving)
    checks.input_path("--clip-vision", args.clip_vision)
    checks.search_folders("--models-dir", args.models_dir)
    checks.search_folders("--dlib-dir", args.dlib_dir)
    checks.whole("--steps", args.steps, 1, 1000, meaning="sampling steps; 20-50 is typical")
    checks.number("--guidance", args.guidance, 0.0, 100.0, meaning="classifier-free guidance; 5-9 is typical")
    checks.whole("--seed", args.seed, 0, 2 ** 64 - 1)
    checks.number("--strength", args.strength, 0.0, 10.0, meaning="HP3 strength; 0 = the base model, 1 = full")
    checks.number("--start", args.start, 0.0, 1.0, meaning="percent of the noise schedule where HP3 starts")
    checks.number("--end", args.end, 0.0, 1.0, meaning="percent of the noise schedule where HP3 ends")
    if args.start > args.end:
        raise HP3Error(f"--start ({args.start}) is after --end ({args.end}); use --start <= --end")
    for option, value in (("--width", args.width), ("--height", args.height)):
        checks.whole(option, value, 64, 4096, meaning="pixels")
        if value is not None and value % 8:
            raise HP3Error(f"{option} must be a multiple of 8 (the VAE's scale), got {value}; "
                           f"use {value - value % 8 or 8}")
    checks.device("--device", args.device)
    checks.output_file("--out", args.out, (".png", ".jpg", ".jpeg"))


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    out = Path(args.out)

    models = load_models(args.base, args.hp3, args.models_dir, args.clip_vision, pack=args.pack,
                         detection=args.detection, backend=args.backend, device=args.device,
                         dlib_dirs=args.dlib_dir)
    sources = [load_image(p) for p in args.source]
    features = encode_sources(models, sources, [f"source '{p}'" for p in args.source])
    shaded, result = driving_render(models, sources[0], load_image(args.driving),
                                    source_name=f"source '{args.source[0]}'")
    image = generate_image(models, features, shaded, args.prompt, args.negative_prompt, steps=args.steps,
                           guidance=args.guidance, seed=args.seed, strength=args.strength, start=args.start,
                           end=args.end, width=args.width, height=args.height)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(out, image)
    render_path = out.with_name(f"{out.stem}_shaded.png")
    save_image(render_path, (shaded.cpu().numpy() * 255 + 0.5).astype(np.uint8))
    log.info("%s: %dx%d, %d steps, HP3 strength %g (%s backend, %s identity) -> %s (render: %s)",
             models.hp3.family, image.shape[1], image.shape[0], args.steps, args.strength, result.backend,
             features.identity, out, render_path)
    return 0
