"""``bench train``: one HP3 training step next to a standard ControlNet training step.

One process, random weights at real SD1.5 size (diffusers' default SD1.5 UNet config, as
``bench patch``) and the real-size HP3 (``HP3Config.for_family('sd15')``), batch 1, 512x512
(latent 64), 77 text tokens. Per stack, a full optimizer step:

* **hp3**: token decoder (one ArcFace vector + 257 CLIP ViT-L tokens) -> head controller -> UNet
  with the adaptive connector (:class:`~hp3_core.training.step.HP3TrainModule`, the trainer's own
  forward), MSE to the noise, backward, AdamW step on the HP3 parameters;
* **controlnet**: ``ControlNetModel.from_unet`` on the render -> UNet with its residuals, MSE,
  backward, AdamW on the ControlNet.

The UNet is frozen in the weight dtype (``--precision``), the trained parts are float32 master
weights under autocast, as in training. Not included: the VAE, the text encoder, CLIP vision and
the identity loss (the same frozen work for any method, or HP3-only and optional).

Reported: steps per second (median step time over ``--steps``) and peak memory: on CUDA
``torch.cuda.max_memory_allocated`` during the stack's steps (each stack's trainable model and
optimizer are built, measured and freed in turn); on the CPU the process's peak resident size so
far (``resource.getrusage``; monotonic, so the second stack's includes the first's). The last
lines are machine-readable: ``ratio_vs_controlnet`` (HP3 step time / ControlNet step time; > 1 is
slower), then, last, ``train_steps_per_s`` and ``train_peak_mem_gb`` (HP3).
"""
from __future__ import annotations

import gc
import logging
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from ..config import HP3Config
from .patch_bench import _unet_config

log = logging.getLogger(__name__)

PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CLIP_TOKENS = 257  # ViT-L/14 at 224 px


def _autocast(device: str, precision: str):
    if precision == "no":
        import contextlib
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=PRECISIONS[precision])


def build(device: str = "cpu", unet_config: dict | None = None, hp3_config: HP3Config | None = None,
          latent: int = 64, text_tokens: int = 77, clip_tokens: int = CLIP_TOKENS,
          precision: str = "no") -> dict[str, Callable[[], Callable[[], float]]]:
    """Stack name -> a factory that builds that stack's trainable model and optimizer and returns
    its step function (one full training step; returns the loss). The frozen UNet is shared."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from ..diffusers_patch import install
    from ..hp3_model import HP3Model
    from ..training.step import HP3TrainModule

    torch.manual_seed(0)
    dtype = PRECISIONS[precision]
    unet = UNet2DConditionModel(**(unet_config or _unet_config()))
    width = unet.config.cross_attention_dim
    x = torch.randn(1, 4, latent, latent, device=device)
    noise = torch.randn_like(x)
    t = torch.tensor([500], device=device)
    text = torch.randn(1, text_tokens, width, device=device, dtype=dtype)
    hint = torch.rand(1, 3, latent * 8, latent * 8, device=device)
    config = hp3_config or HP3Config.for_family("sd15")
    id_embeds = torch.nn.functional.normalize(torch.randn(1, config.encoder.id_dim, device=device), dim=-1)
    clip_hidden = torch.randn(1, clip_tokens, config.encoder.clip_width, device=device)

    def trainable(model: torch.nn.Module):
        model = model.to(device).float().train().requires_grad_(True)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step_fn(forward: Callable[[], torch.Tensor], optimizer) -> Callable[[], float]:
        def step() -> float:
            with _autocast(device, precision):
                pred = forward()
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())
        return step

    def hp3_stack() -> Callable[[], float]:
        hp3, opt = trainable(HP3Model.from_unet(config, unet))
        frozen = _frozen(unet, device, dtype)
        install(frozen, config)  # stays for the process (a benchmark)
        module = HP3TrainModule(hp3, frozen)
        return step_fn(lambda: module(x, t, text, id_embeds, clip_hidden, hint), opt)

    def controlnet_stack() -> Callable[[], float]:
        net, opt = trainable(ControlNetModel.from_unet(unet.float()))
        frozen = _frozen(unet, device, dtype)

        def forward() -> torch.Tensor:
            down, mid = net(x, t, text, controlnet_cond=hint, return_dict=False)
            return frozen(x.to(dtype), t, text, down_block_additional_residuals=[d.to(dtype) for d in down],
                          mid_block_additional_residual=mid.to(dtype)).sample
        return step_fn(forward, opt)

    # ControlNet first: it copies the UNet in float32 before HP3's hooks are installed on it.
    return {"controlnet": controlnet_stack, "hp3": hp3_stack}


def _frozen(unet, device: str, dtype: torch.dtype):
    unet.to(device)
    if unet.dtype != dtype:  # (diffusers warns on every dtype cast, even a no-op one)
        unet.to(dtype=dtype)
    return unet.requires_grad_(False)


def _peak_gb(device: str) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: kilobytes


def measure(stacks: dict[str, Callable[[], Callable[[], float]]], steps: int = 5,
            device: str = "cpu") -> dict[str, dict[str, float]]:
    """Per stack: ``steps_per_s`` (1 / median step time after one warm-up step) and ``peak_gb``."""
    cuda = torch.device(device).type == "cuda"
    results = {}
    for name, factory in stacks.items():
        step = factory()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        step()  # warm-up (optimizer state allocation, kernel selection)
        times = []
        for _ in range(max(1, steps)):
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        results[name] = {"steps_per_s": 1.0 / statistics.median(times), "peak_gb": _peak_gb(device)}
        log.info("%s: %.3f steps/s, peak %.2f GB", name, results[name]["steps_per_s"], results[name]["peak_gb"])
        del step
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return results


def report(results: dict[str, dict[str, float]], device: str, precision: str, steps: int,
           size: str = "SD1.5-size UNet, 512x512 (latent 64)") -> list[str]:
    hp3, cn = results["hp3"], results["controlnet"]
    peak = "peak GB (CUDA allocated)" if torch.device(device).type == "cuda" else "peak GB (process RSS so far)"
    lines = [f"bench train: {size}, batch 1, {device}, precision {precision}, median of {steps} steps",
             f"  {'stack':<12}{'steps/s':>10}{'s/step':>10}  {peak}"]
    for name, r in results.items():
        lines.append(f"  {name:<12}{r['steps_per_s']:>10.3f}{1 / r['steps_per_s']:>10.2f}  {r['peak_gb']:.2f}")
    lines.append(f"controlnet_steps_per_s: {cn['steps_per_s']:.4f}")
    lines.append(f"ratio_vs_controlnet: {cn['steps_per_s'] / hp3['steps_per_s']:.3f}")
    # The last two lines are the machine-readable contract.
    lines.append(f"train_steps_per_s: {hp3['steps_per_s']:.4f}")
    lines.append(f"train_peak_mem_gb: {hp3['peak_gb']:.3f}")
    return lines


def main(steps: int = 3, device: str = "cpu", precision: str | None = None) -> int:
    precision = precision or ("bf16" if torch.device(device).type == "cuda" else "no")
    results = measure(build(device, precision=precision), steps, device)
    sys.stdout.write("\n".join(report(results, device, precision, steps)) + "\n")
    return 0
