"""``bench patch``: what HP3 adds to a sampling step, next to an InstantID-like stack.

One process, random weights at real SD1.5 size, a 64x64 latent (512 px) with classifier-free
guidance (batch 2: cond + uncond), on the CPU here (or CUDA when asked). Per step:

* **bare**: the UNet alone;
* **hp3**: the head controller on the conditional row only (the unconditional branch gets no
  head conditions) + the UNet with the adaptive connector installed;
* **instantid_like**: IP-Adapter attention (16 extra image tokens in every cross-attention) +
  a ControlNet copy of the UNet encoder run on both rows, as InstantID does.

Reported: median wall time, FLOPs (``torch.utils.flop_counter``, exact and machine-independent)
and the peak resident memory growth during a step, each as a ratio to bare. The last two lines
are machine-readable: ``ratio_hp3: <r>`` and ``ratio_instantid_like: <r>`` (time ratios).
"""
from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import torch

from ..config import HP3Config



def _unet_config() -> dict:
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


class _PeakRss:
    """Samples the process's resident memory in a thread: the growth over a block of code."""

    def __init__(self) -> None:
        import psutil
        self.proc = psutil.Process()

    def measure(self, fn: Callable[[], object]) -> float:
        base = peak = self.proc.memory_info().rss
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, self.proc.memory_info().rss)
                time.sleep(0.002)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            fn()
        finally:
            done.set()
            t.join()
        return (peak - base) / 2**20


def _flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def build(device: str = "cpu", unet_config: dict | None = None, hp3_config: HP3Config | None = None,
          latent: int = 64, text_tokens: int = 77):
    """The three step functions sharing one UNet (random weights; SD1.5 size unless given), and a
    cleanup function."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

    from .. import connector as hp3_connector
    from ..diffusers_patch import install, remove
    from ..hp3_model import HP3Model

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(unet_config or _unet_config())).to(device).eval().requires_grad_(False)
    width = unet.config.cross_attention_dim
    x = torch.randn(2, 4, latent, latent, device=device)
    t = torch.tensor([500, 500], device=device)
    text = torch.randn(2, text_tokens, width, device=device)
    hint = torch.rand(2, 3, latent * 8, latent * 8, device=device)

    def bare():
        return unet(x, t, text).sample

    # HP3: controller on the conditional row, connector hooks during the UNet call.
    config = hp3_config or HP3Config.for_family("sd15")
    hp3 = HP3Model.from_unet(config, unet).to(device).eval().requires_grad_(False)
    for p in hp3.connector.parameters():  # trained-looking weights: the zero convs do real work
        p.normal_(0, 0.01)
    tokens = torch.randn(1, config.encoder.num_tokens, config.encoder.width, device=device)

    def with_hp3():
        features = hp3.control_features(x[:1], t[:1], tokens, hint[:1])
        features = [torch.cat([c, torch.zeros_like(c)]) for c in features]
        state = hp3_connector.ConnectorState(features, torch.tensor([1.0, 0.0], device=device), hp3.connector)
        with hp3_connector.active(state):
            return unet(x, t, text).sample

    # InstantID-like: IP-Adapter processors on cross-attention + a ControlNet on both rows.
    controlnet = ControlNetModel.from_unet(unet).to(device).eval().requires_grad_(False)
    image_tokens = torch.randn(2, 16, width, device=device)
    plain = dict(unet.attn_processors)
    ip = {}
    for name in plain:
        if name.endswith("attn2.processor"):
            block = name.split(".")[0]
            if block == "mid_block":
                hidden = unet.config.block_out_channels[-1]
            elif block == "up_blocks":
                hidden = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
            else:
                hidden = unet.config.block_out_channels[int(name.split(".")[1])]
            ip[name] = IPAdapterAttnProcessor2_0(hidden, width, num_tokens=(16,)).to(device)
        else:
            ip[name] = AttnProcessor2_0()

    def instantid_like():
        down, mid = controlnet(x, t, image_tokens, controlnet_cond=hint, return_dict=False)
        unet.set_attn_processor(dict(ip))  # diffusers pops from the dict it is given
        try:
            # IP-Adapter's original layout: image tokens after the text; its processors split them.
            return unet(x, t, torch.cat([text, image_tokens], 1), down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
        finally:
            unet.set_attn_processor(dict(plain))

    handle = install(unet)
    return {"bare": bare, "hp3": with_hp3, "instantid_like": instantid_like}, lambda: remove(handle)


def _quiet_ip_adapter_warning() -> None:
    import warnings
    warnings.filterwarnings("ignore", message="You have passed a tensor as `encoder_hidden_states`")


def measure(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Per stack: median ms, GFLOPs and peak resident growth (MB) of one step."""
    rss = _PeakRss()
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, fn in steps.items():
            fn()  # warm-up
            results[name] = {"gflops": _flops(fn), "mem_mb": rss.measure(fn)}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(repeats):  # interleaved, so load changes hit all three alike
            for name, fn in steps.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    for name in steps:
        results[name]["ms"] = statistics.median(times[name]) * 1000
    return results


def main(repeats: int = 3, device: str = "cpu") -> int:
    _quiet_ip_adapter_warning()
    steps, cleanup = build(device)
    try:
        results = measure(steps, repeats)
    finally:
        cleanup()
    base = results["bare"]
    lines = [f"bench patch: SD1.5-size UNet, 64x64 latent, CFG batch 2, {device}, {torch.get_num_threads()} threads, "
             f"median of {repeats}"]
    lines.append(f"  {'stack':<16}{'ms/step':>10}{'x bare':>8}{'GFLOPs':>10}{'x bare':>8}{'peak MB':>10}")
    for name, r in results.items():
        lines.append(f"  {name:<16}{r['ms']:>10.0f}{r['ms'] / base['ms']:>8.2f}{r['gflops']:>10.1f}"
                     f"{r['gflops'] / base['gflops']:>8.2f}{r['mem_mb']:>10.0f}")
    from .report import write_report
    write_report(lines, {"ratio_hp3": results["hp3"]["ms"] / base["ms"],
                         "ratio_instantid_like": results["instantid_like"]["ms"] / base["ms"]}, digits=3)
    return 0
