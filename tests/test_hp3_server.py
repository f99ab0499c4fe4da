"""A full sampling run through the 2024 ComfyUI server (/prompt) with the pack's HP3 nodes.

The tiny SD1.5-shaped MODEL, the conditioning, the head features and a VAE-free latent preview come
from the test-only node package ``tests/harness/comfy_test_nodes`` (category ``HP3 tests``), which
this module's own server loads as a second custom node folder through the ``custom_nodes:`` entry
of its ``extra_model_paths.yaml``. The 3D head is the real mediapipe retarget of the sample images.
"""
from __future__ import annotations

from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO, start_server
from harness.tiny_hp3 import write_tiny_hp3
from hp3_core.comfy_server import execution_error
from hp3_core.head_encoder.features import HeadFeatures

pytestmark = pytest.mark.server
TEST_NODES = REPO / "tests" / "harness" / "comfy_test_nodes"


@pytest.fixture(scope="module")
def hp3_server(comfy_host_dir, tmp_path_factory):
    """A server of its own: the pack, the test-only nodes and tiny trained HP3 weights."""
    root = tmp_path_factory.mktemp("hp3_server_models")
    write_tiny_hp3(root / "hp3" / "tiny_sd15_trained.safetensors", "sd15", trained=True)
    write_tiny_hp3(root / "hp3" / "tiny_sdxl.safetensors", "sdxl", trained=True)
    (root / "custom_nodes").mkdir()
    (root / "custom_nodes" / "hp3_test_nodes").symlink_to(TEST_NODES, target_is_directory=True)
    gen = torch.Generator().manual_seed(0)
    head = HeadFeatures(id_embeds=torch.randn(1, 512, generator=gen),
                        clip_hidden=torch.randn(1, 50, 48, generator=gen),  # tiny_hp3_config: clip_width 48
                        crops=torch.rand(1, 32, 32, 3, generator=gen),
                        keypoints=[np.zeros((5, 2), np.float32)], clip_width=48)
    head_path = head.save(root / "head.safetensors")
    yaml_path = root / "extra_model_paths.yaml"
    yaml_path.write_text(f"hp3_server_tests:\n  base_path: {root}\n  hp3: hp3\n  custom_nodes: custom_nodes\n")
    tmp = tmp_path_factory.mktemp("hp3_server")
    server = start_server(comfy_host_dir, tmp, yaml_path)
    try:
        yield SimpleNamespace(server=server, head=Path(head_path), output=tmp / "output")
    finally:
        server.stop()


def sampling_graph(tag: str, head: Path, hp3_name: str | None = None, strength: float = 1.0) -> dict:
    """tiny MODEL [-> HP3Apply] -> KSampler -> SaveLatent + preview SaveImage (API format).

    ``tag`` names the saved files: a new tag makes the save nodes run again (the server caches the
    outputs of unchanged nodes between prompts).
    """
    graph = {
        "1": {"class_type": "HP3TestTinyModel", "inputs": {"seed": 0}},
        "2": {"class_type": "HP3TestConditioning", "inputs": {"seed": 1, "tokens": 8, "width": 32}},
        "3": {"class_type": "HP3TestConditioning", "inputs": {"seed": 2, "tokens": 8, "width": 32}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 1234, "steps": 3, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"hp3_server/{tag}"}},
        "7": {"class_type": "HP3TestLatentPreview", "inputs": {"samples": ["5", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"hp3_server/{tag}"}},
    }
    if hp3_name is not None:
        graph.update({
            "10": {"class_type": "HP3ModelLoader", "inputs": {"hp3_name": hp3_name}},
            "11": {"class_type": "HP3TestLoadHead", "inputs": {"path": str(head)}},
            "12": {"class_type": "HP3ReconstructorLoader", "inputs": {"backend": "mediapipe", "device": "cpu"}},
            "14": {"class_type": "LoadImage", "inputs": {"image": "source_s42.jpg"}},
            "15": {"class_type": "LoadImage", "inputs": {"image": "driving_d9.jpg"}},
            "16": {"class_type": "HP3HeadRetarget", "inputs": {
                "reconstructor": ["12", 0], "source": ["14", 0], "driving": ["15", 0], "mode": "full",
                "region": "head", "face_index": 0, "missing_face": "error"}},
            "13": {"class_type": "HP3Apply", "inputs": {
                "model": ["1", 0], "hp3_model": ["10", 0], "head": ["11", 0], "head3d": ["16", 0],
                "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
        })
        graph["5"]["inputs"]["model"] = ["13", 0]
    return graph


def run_latent(ctx, graph: dict) -> tuple[torch.Tensor, dict]:
    """Run ``graph``; the sampled latent (read back from the .latent file) and the history entry."""
    from safetensors.torch import load_file
    entry = ctx.server.run(graph)
    (saved,) = entry["outputs"]["6"]["latents"]
    path = ctx.output / saved["subfolder"] / saved["filename"]
    assert path.is_file(), path
    return load_file(str(path))["latent_tensor"], entry


def test_test_nodes_are_loaded_beside_the_pack(hp3_server):
    info = hp3_server.server.object_info()
    for name in ("HP3TestTinyModel", "HP3TestConditioning", "HP3TestLoadHead", "HP3TestLatentPreview"):
        assert info[name]["category"] == "HP3 tests"
    assert "HP3Apply" in info and "tiny_sd15_trained.safetensors" in info["HP3ModelLoader"]["input"]["required"]["hp3_name"][0]
    # The 2025 host reports its own audio nodes (no torchaudio) as IMPORT FAILED: only packs count.
    failed = [line for line in hp3_server.server.log_path.read_text().splitlines() if "IMPORT FAILED" in line]
    assert all("nodes_audio" in line for line in failed), failed


def test_sampling_through_prompt_with_hp3(hp3_server):
    from PIL import Image
    server, head = hp3_server.server, hp3_server.head

    base, _ = run_latent(hp3_server, sampling_graph("base", head))
    assert base.shape == (1, 4, 8, 8) and torch.isfinite(base).all()

    # (1) The patched run produces a latent file and a PNG.
    patched, entry = run_latent(hp3_server, sampling_graph("s1", head, "tiny_sd15_trained.safetensors", 1.0))
    (image,) = entry["outputs"]["8"]["images"]
    png = Image.open(BytesIO(server.view(image["filename"], image["subfolder"])))
    assert png.size == (64, 64)
    assert torch.isfinite(patched).all()

    # (2) strength 0 reproduces the unpatched sampling bit for bit.
    zero, _ = run_latent(hp3_server, sampling_graph("s0", head, "tiny_sd15_trained.safetensors", 0.0))
    assert torch.equal(zero, base)

    # (3) strength 1 changes it.
    assert not torch.equal(patched, base)
    assert (patched - base).abs().max() > 1e-4

    # (4) SDXL HP3 weights on the SD1.5 MODEL fail that prompt with the family message ...
    bad = server.wait(server.queue_prompt(sampling_graph("bad", head, "tiny_sdxl.safetensors", 1.0)))
    error = execution_error(bad)
    assert error is not None and error["node_type"] == "HP3Apply"
    assert "trained for SDXL but the MODEL it is applied to is SD1.5" in error["exception_message"]
    assert "tiny_sdxl.safetensors" in error["exception_message"]
    # ... and the next prompt still runs, with the same result as before.
    again, _ = run_latent(hp3_server, sampling_graph("again", head, "tiny_sd15_trained.safetensors", 1.0))
    assert torch.equal(again, patched)
