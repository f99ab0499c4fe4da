"""A ComfyUI host (2024 or 2025, see harness/hosts.py) imported in the test process, on the CPU,
with the HP3 pack loaded.

The host folder goes first on ``sys.path`` so that ``import nodes`` is ComfyUI's ``nodes.py``,
never the pack's ``nodes/`` package. The pack is loaded with the host's own ``load_custom_node``,
exactly as the server does: the 2024 host registers it under the folder name ``ComfyUI-HP3``, the
2025 host under its full path and makes ``load_custom_node`` a coroutine; both are handled here.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from hp3_core.comfy_server import PACK_LINK_NAME


@dataclass
class ComfyHost:
    """Handles on the in-process host's modules and the loaded pack."""

    dir: Path
    comfy: ModuleType           # the ``comfy`` package
    nodes: ModuleType           # ComfyUI's nodes.py
    folder_paths: ModuleType
    pack: ModuleType            # this pack, as ComfyUI loaded it
    name: str = "comfy2024"     # which host (harness.hosts.HOST_NAMES)

    def module(self, name: str) -> ModuleType:
        return importlib.import_module(name)

    def pack_module(self, name: str) -> ModuleType:
        """A module of the loaded pack, e.g. ``pack_module('hp3_core.weights')``."""
        return importlib.import_module(f"{self.pack.__name__}.{name}")


def loaded_pack(pack_path: Path) -> ModuleType | None:
    """The pack's top module as the host registered it (any name), or None when not loaded."""
    init = (Path(pack_path) / "__init__.py").absolute()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).absolute() == init:
            return module
    return None


def load_custom_node(comfy_nodes: ModuleType, pack_path: Path) -> bool:
    """The host's ``load_custom_node`` (a coroutine on the 2025 host, a plain call in 2024)."""
    result = comfy_nodes.load_custom_node(str(pack_path))
    if not inspect.iscoroutine(result):
        return result
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(result)
    # An event loop already runs in this thread (Playwright's sync API keeps one): use another.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, result).result()


def load_host(host_dir: Path, name: str = "comfy2024") -> ComfyHost:
    host_dir = Path(host_dir).resolve()
    loaded = sys.modules.get("nodes")
    if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve().parent != host_dir:
        raise RuntimeError(f"another ComfyUI ({loaded.__file__}) is already imported in this process: "
                           "one in-process host per pytest run (--host)")
    if str(host_dir) not in sys.path:
        sys.path.insert(0, str(host_dir))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.model_management  # noqa: F401
    import comfy.sample  # noqa: F401
    import folder_paths
    import nodes as comfy_nodes
    if Path(comfy_nodes.__file__).resolve().parent != host_dir:
        raise RuntimeError(f"'nodes' resolved to {comfy_nodes.__file__}, not the host's nodes.py")
    pack_path = host_dir / "custom_nodes" / PACK_LINK_NAME
    pack = loaded_pack(pack_path)
    if pack is None:
        if not load_custom_node(comfy_nodes, pack_path):
            raise RuntimeError(f"ComfyUI could not load the pack from {pack_path} (see the log above)")
        pack = loaded_pack(pack_path)
    if pack is None:
        raise RuntimeError(f"ComfyUI reported the pack loaded but no module has {pack_path}/__init__.py")
    return ComfyHost(host_dir, sys.modules["comfy"], comfy_nodes, folder_paths, pack, name)


# An SD1.5-shaped UNet (4 levels, 2 res blocks each, attention on the first 3 levels, 12 input and
# 12 output blocks like the real one) at a width that runs in milliseconds on a CPU.
TINY_SD15_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    # num_heads 8 as ComfyUI's SD15 config forces it anyway (unet_extra_config).
    "num_res_blocks": 2, "channel_mult": [1, 1, 2, 2], "num_heads": 8, "num_head_channels": -1,
    "use_spatial_transformer": True, "legacy": False, "context_dim": 32,
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    # ComfyUI pops this list from the end: output blocks 0-2 (deepest) have no attention, as in SD1.5.
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False,
    "use_checkpoint": False,
}

# The tiny SDXL-shaped UNet (fits tiny_hp3_config("sdxl")): context 64, y = pooled 64 + 6 size
# embeddings of 8.
TINY_SDXL_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": 2, "channel_mult": [1, 2, 2], "use_spatial_transformer": True, "legacy": False,
    "context_dim": 64, "adm_in_channels": 64 + 6 * 8, "num_classes": "sequential",
    "transformer_depth": [0, 0, 1, 1, 1, 1], "transformer_depth_middle": 1,
    # ComfyUI pops this list from the end: output blocks 0-5 (deepest) have attention, 6-8 none.
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_linear_in_transformer": True, "use_temporal_attention": False, "use_checkpoint": False,
}
TINY_CONTEXT_DIM = 32


def init_parameters(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter a value: ComfyUI's ops leave weights uninitialised (torch.empty).

    Norm scales are 1 and their shifts 0; other weights are small seeded normals, biases too,
    so the output depends on every layer (no zero-initialised output conv as in training).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)


def tiny_sd15_model(host: ComfyHost, seed: int = 0):
    """A real ``comfy.model_base.BaseModel`` (SD15 config class) in a ``ModelPatcher`` on the CPU."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    config = comfy.supported_models.SD15(dict(TINY_SD15_UNET))
    model = comfy.model_base.BaseModel(config, device=torch.device("cpu"))
    init_parameters(model, seed)
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def make_conditioning(batch: int = 1, tokens: int = 8, width: int = TINY_CONTEXT_DIM, seed: int = 0):
    """A ComfyUI CONDITIONING list (the tiny model has no CLIP, so tests make it directly)."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, width, generator=gen), {}]]
