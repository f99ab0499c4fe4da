"""``init``: an untrained HP3 weight file for a base checkpoint.

The head controller is a copy of the base UNet's encoder and middle block, the adaptive connector
is zero (so the file leaves the base model unchanged until trained) and the head-token decoder is
freshly initialised (seeded). The controller's architecture is read off the checkpoint's tensor
shapes (see :func:`hp3_core.unet_convert.controller_config_from_ldm`) and must be of ``--family``.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from ..config import CLIP_VISION_WIDTHS, FAMILIES, HP3Config
from ..errors import HP3Error
from . import checks, common_options
from ..unet_convert import controller_config_from_ldm, read_checkpoint_unet, unet_from_ldm
from ..weights import save_hp3_weights

NAME = "init"
HELP = "make untrained HP3 weights for a base SD1.5/SDXL checkpoint (controller copied from its UNet)"
log = logging.getLogger(__name__)

BACKENDS = ("ict", "smirk", "mediapipe")  # what a user trains with (auto would depend on files present)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="the base model's .safetensors checkpoint (SD1.5 or SDXL)")
    p.add_argument("--family", required=True, choices=FAMILIES, help="the base model's family")
    p.add_argument("--out", required=True, help="the HP3 .safetensors file to write")
    p.add_argument("--clip-width", type=int, default=1024, choices=sorted(CLIP_VISION_WIDTHS),
                   help="hidden width of the CLIP vision model to train with (1024 ViT-L/14, 1280 ViT-H/14)")
    common_options.add_backend(p, "whose renders the controller will learn", choices=BACKENDS, default="smirk")
    p.add_argument("--identity", choices=("insightface", "dlib"), default="insightface",
                   help="the identity embedding the token decoder reads: insightface ArcFace (512-d) or dlib "
                        "(128-d, public domain); train with a dataset built with the same")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="tensor type of the file")
    p.add_argument("--seed", type=int, default=0, help="seed of the token decoder's initialisation")


def build_config(unet_state, family: str, clip_width: int = 1024, backend: str = "smirk",
                 identity: str = "insightface") -> HP3Config:
    """The HP3 config for a base UNet (LDM names), its controller mirroring that UNet."""
    return HP3Config.for_controller(controller_config_from_ldm(unet_state, family), family, clip_width, backend,
                                    identity=identity)



def run(args: argparse.Namespace) -> int:
    from ..hp3_model import HP3Model
    base = checks.input_file("--base", args.base)  # a pickle .ckpt gets its own message below
    checks.whole("--seed", args.seed, 0, 2 ** 64 - 1)
    out = checks.output_file("--out", args.out, (".safetensors",))
    if out.resolve() == base.resolve():
        raise HP3Error(f"--out '{out}' is the base checkpoint itself; choose another file name")
    state = read_checkpoint_unet(base)
    config = build_config(state, args.family, args.clip_width, args.backend, args.identity)
    log.info("base UNet: %s, blocks %s, context %d", config.family_name,
             list(config.controller.block_out_channels), config.controller.cross_attention_dim)
    unet = unet_from_ldm(state, config, dtype=torch.float32)
    del state
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        model = HP3Model.from_unet(config, unet)
    del unet
    dtype = DTYPES[args.dtype]
    tensors = {k: v.to(dtype) for k, v in model.state_dict().items()}
    save_hp3_weights(out, tensors, config, extra_metadata={
        "base_checkpoint": base.name, "status": "untrained", "trained_steps": "0"})
    sys.stdout.write(f"wrote untrained {config.family_name} HP3 weights "
                     f"({sum(t.numel() for t in tensors.values()):,} parameters) to {out}\n")
    return 0
