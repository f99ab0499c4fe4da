"""``generate``: a head-preserving portrait with diffusers: encode the source head, retarget it to
the driving image's pose and expression, and run an SD1.5/SDXL pipeline with HP3 (writes the
image and, beside it, the shaded render ``<out>_shaded.png``)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..errors import HP3Error
from ..head3d.reconstructor import BACKENDS, build_reconstructor
from ..head_encoder.face_analysis import DETECTIONS, PACK_CHOICES
from ..image_io import load_image, save_image
from .retarget import model_folders

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
    p.add_argument("--models-dir", action="append", default=[],
                   help="insightface folder holding models/<pack>/; also searched for SMIRK/FLAME files (repeatable)")
    p.add_argument("--clip-vision", required=True,
                   help="CLIP vision model: a .safetensors file or a transformers folder")
    p.add_argument("--pack", choices=PACK_CHOICES, default="auto", help="insightface pack")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="3D backend for the retargeted render")
    p.add_argument("--detection", choices=DETECTIONS, default="insightface", help="face detector for encoding")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, default=1.0, help="HP3 strength (0: the base model)")
    p.add_argument("--start", type=float, default=0.0, help="fraction of the steps where HP3 starts")
    p.add_argument("--end", type=float, default=1.0, help="fraction of the steps where HP3 ends")
    p.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..head_encoder.clip_vision import ClipVisionEncoder
    from ..head_encoder.encode_heads import encode_heads
    from ..head_encoder.face_analysis import InsightFaceAnalyzer
    from ..head3d.retarget_images import retarget_images
    from ..pipeline import HP3Pipeline

    if args.device == "cuda" and not torch.cuda.is_available():
        raise HP3Error("--device cuda: no CUDA device is available; use --device cpu")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise HP3Error(f"--out must be a .png or .jpg file, got '{args.out}'")
    for n, v in (("--steps", args.steps), ("--width", args.width or 8), ("--height", args.height or 8)):
        if v <= 0:
            raise HP3Error(f"{n} must be positive, got {v}")

    hp3 = HP3Pipeline.from_files(args.base, args.hp3, device=args.device)
    hp3.pipe.set_progress_bar_config(disable=True)

    sources = [load_image(p) for p in args.source]
    analyzer = InsightFaceAnalyzer(args.models_dir, pack=args.pack, detection=args.detection)
    clip = ClipVisionEncoder.from_local(args.clip_vision, device=args.device)
    features = encode_heads(sources, analyzer, clip.encode, names=[f"source '{p}'" for p in args.source])

    reconstructor = build_reconstructor(args.backend, model_folders(args.models_dir, "smirk"),
                                        model_folders(args.models_dir, "flame"), device=args.device)
    result = retarget_images(reconstructor, sources[0], [load_image(args.driving)],
                             source_name=f"source '{args.source[0]}'")
    shaded = result.maps[0].shaded[0].float().clamp(0, 1)  # [H, W, 3]

    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        output = hp3(prompt=args.prompt, head_tokens=features, render=shaded, strength=args.strength,
                     start=args.start, end=args.end, negative_prompt=args.negative_prompt,
                     num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generator,
                     width=args.width, height=args.height, output_type="np")
    image = np.asarray(output.images[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(out, (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    render_path = out.with_name(f"{out.stem}_shaded.png")
    save_image(render_path, (shaded.cpu().numpy() * 255 + 0.5).astype(np.uint8))
    log.info("%s: %dx%d, %d steps, HP3 strength %g (%s backend) -> %s (render: %s)", hp3.family, image.shape[1],
             image.shape[0], args.steps, args.strength, result.backend, out, render_path)
    return 0
