"""Every example workflow in example_workflows/ runs on the ComfyUI server (each --host) through /prompt.

Each file is converted to the API format with :func:`hp3_core.comfy_workflow.ui_to_api` and the
server's ``/object_info``, exactly as a user's "Queue Prompt" would send it. The core loaders of
real weights are then replaced by the test-only stand-ins of ``tests/harness/comfy_test_nodes``
(same outputs: a tiny SD1.5- or SDXL-shaped MODEL with a text encoder and VAE stand-in, a tiny
ControlNet, a tiny upscale model, a tiny CLIP vision), face detection is switched to MediaPipe (a
tiny ArcFace-format recognizer is the only insightface file), and the sampling is shrunk (64x64
latents, 2 steps). HP3 weights are tiny trained files under the names the workflows select. The
3D retarget is the real MediaPipe one on the sample images. The workflows have no muted nodes
(tests/test_workflows_files.py): what runs here is what runs for a user.
"""
from __future__ import annotations

import json
from io import BytesIO
from types import SimpleNamespace
from typing import Any


import pytest
import torch

from conftest import REPO, start_server
from harness.peer_workflows import NAMES as PEER_WORKFLOWS
from harness.tiny_hp3 import write_tiny_hp3
from harness.tiny_onnx import write_tiny_pack
from hp3_core.comfy_workflow import ui_to_api

pytestmark = pytest.mark.server
# The public-weights workflows need the peer packs: tests/test_peer_interop.py loads and validates them.
WORKFLOWS = sorted(p for p in (REPO / "example_workflows").glob("*.json") if p.stem not in PEER_WORKFLOWS)
TEST_NODES = REPO / "tests" / "harness" / "comfy_test_nodes"
SAVE_NODES = {"SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG"}
TINY_SIZE = 64
TINY_STEPS = 2


@pytest.fixture(scope="module")
def wf_server(comfy_host_dir, tmp_path_factory):
    """A server of its own: the pack, the test-only stand-ins, HP3 weights under the workflows'
    file names, and a tiny insightface recognizer."""
    root = tmp_path_factory.mktemp("workflow_models")
    write_tiny_hp3(root / "hp3" / "hp3_sd15.safetensors", "sd15", trained=True)
    write_tiny_hp3(root / "hp3" / "hp3_sdxl.safetensors", "sdxl", trained=True)
    write_tiny_pack(root / "insightface", "antelopev2")
    (root / "custom_nodes").mkdir()
    (root / "custom_nodes" / "hp3_test_nodes").symlink_to(TEST_NODES, target_is_directory=True)
    yaml_path = root / "extra_model_paths.yaml"
    yaml_path.write_text(f"hp3_workflow_tests:\n  base_path: {root}\n  hp3: hp3\n  insightface: insightface\n"
                         f"  custom_nodes: custom_nodes\n")
    tmp = tmp_path_factory.mktemp("workflow_server")
    server = start_server(comfy_host_dir, tmp, yaml_path)
    try:
        yield SimpleNamespace(server=server, output=tmp / "output", info=server.object_info())
    finally:
        server.stop()


def tiny_prompt(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The workflow's API prompt with stand-ins for real weights and tiny sampling sizes."""
    prompt = ui_to_api(workflow, object_info)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            family = "sdxl" if "xl" in inputs["ckpt_name"].lower() else "sd15"
            node.update(class_type="HP3TestTinyCheckpoint", inputs={"family": family, "seed": 0})
        elif kind == "ControlNetLoader":
            node.update(class_type="HP3TestTinyControlNet", inputs={"seed": 0})
        elif kind == "UpscaleModelLoader":
            node.update(class_type="HP3TestTinyUpscaleModel", inputs={"scale": 4, "seed": 0})
        elif kind == "CLIPVisionLoader":
            node.update(class_type="HP3TestTinyClipVision", inputs={"seed": 0})
        elif kind == "HP3FaceAnalysisLoader":
            inputs["detection"] = "mediapipe"  # the tiny pack has the recognizer only
        elif kind == "EmptyLatentImage":
            inputs.update(width=TINY_SIZE, height=TINY_SIZE)
        elif kind in ("KSampler", "KSamplerAdvanced"):
            inputs["steps"] = TINY_STEPS
    return prompt


def test_stand_ins_replace_every_real_weight_loader(wf_server):
    real = {"CheckpointLoaderSimple", "ControlNetLoader", "UpscaleModelLoader", "CLIPVisionLoader"}
    for path in WORKFLOWS:
        prompt = tiny_prompt(json.loads(path.read_text()), wf_server.info)
        assert not real & {n["class_type"] for n in prompt.values()}, path.name
        assert all(n["class_type"] in wf_server.info for n in prompt.values()), path.name


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs_through_prompt(wf_server, path):
    from PIL import Image
    server = wf_server.server
    prompt = tiny_prompt(json.loads(path.read_text()), wf_server.info)
    entry = server.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    outputs = entry["outputs"]
    saves = [k for k, n in prompt.items() if n["class_type"] in SAVE_NODES]
    shows = [k for k, n in prompt.items() if n["class_type"] in ("HP3ModelInfo", "PreviewImage")]
    assert saves or shows, "a workflow shows or saves something"
    for key in saves:
        images = outputs[key]["images"]
        assert images, f"{prompt[key]['class_type']} (node {key}) wrote nothing"
        for image in images:
            file = wf_server.output / image["subfolder"] / image["filename"]
            assert image["type"] == "output" and file.is_file() and file.stat().st_size > 0, file
    for key in shows:
        assert outputs[key].get("images") or outputs[key].get("text"), f"node {key} showed nothing"

    def sizes(kind: str) -> list[tuple[int, int]]:
        return [Image.open(BytesIO(server.view(i["filename"], i["subfolder"]))).size
                for k in saves if prompt[k]["class_type"] == kind for i in outputs[k]["images"]]

    if path.stem == "hp3_controlnet_upscale":
        # hires pass: latent x1.5; then the 4x model scaled by 0.5
        hires, upscaled = (sizes_of(prompt, outputs, server, p) for p in ("hp3_hires", "hp3_upscaled"))
        assert hires == [(TINY_SIZE * 3 // 2,) * 2] and upscaled == [(TINY_SIZE * 3,) * 2]
    if path.stem == "hp3_video_batch":
        assert sizes("SaveImage") == [(TINY_SIZE, TINY_SIZE)] * 2  # one image per driving frame
        (anim,) = [i for k in saves if prompt[k]["class_type"] == "SaveAnimatedWEBP" for i in outputs[k]["images"]]
        assert Image.open(BytesIO(server.view(anim["filename"], anim["subfolder"]))).format == "WEBP"
    if path.stem == "hp3_portrait_sdxl":
        assert sizes("SaveImage") == [(TINY_SIZE, TINY_SIZE)]
    if path.stem == "hp3_retarget":  # the plain retarget demo: the four maps, nothing sampled
        prefixes = sorted(i["filename"].split("_")[0] for k in saves for i in outputs[k]["images"])
        assert prefixes == ["depth", "mask", "normal", "shaded"], [i["filename"] for k in saves for i in outputs[k]["images"]]
    if path.stem == "hp3_retarget_controlnet":  # the depth ControlNet's image, and the maps it saw
        assert sizes_of(prompt, outputs, server, "hp3_retarget_controlnet") == [(TINY_SIZE, TINY_SIZE)]
        previews = [k for k, n in prompt.items() if n["class_type"] == "PreviewImage"]
        assert len(previews) == 2 and all(outputs[k]["images"][0]["type"] == "temp" for k in previews)
        shown = [outputs[k]["images"][0] for k in previews]
        assert all(Image.open(BytesIO(server.view(i["filename"], i["subfolder"], "temp"))).size == (720, 720)
                   for i in shown), "the maps have the driving image's full resolution"


def sizes_of(prompt: dict, outputs: dict, server, prefix: str) -> list[tuple[int, int]]:
    """Sizes of the images a SaveImage with ``filename_prefix`` wrote."""
    from PIL import Image
    keys = [k for k, n in prompt.items() if n["inputs"].get("filename_prefix") == prefix]
    assert keys, prefix
    return [Image.open(BytesIO(server.view(i["filename"], i["subfolder"]))).size
            for k in keys for i in outputs[k]["images"]]


def test_video_batch_frames_follow_their_driving_frame(wf_server):
    """hp3_video_batch.json samples one latent per driving frame from the same noise; HP3 gives
    each row its own frame's render, so the rows differ (the tiny HP3 changes are small)."""
    from safetensors.torch import load_file
    prompt = tiny_prompt(json.loads((REPO / "example_workflows" / "hp3_video_batch.json").read_text()), wf_server.info)
    (sampler,) = [k for k, n in prompt.items() if n["class_type"] == "KSampler"]
    prompt["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": "video_rows"}}
    entry = wf_server.server.run(prompt, timeout=300)
    (saved,) = entry["outputs"]["900"]["latents"]
    rows = load_file(str(wf_server.output / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    assert rows.shape == (2, 4, TINY_SIZE // 8, TINY_SIZE // 8) and rows.isfinite().all()

    # Without HP3 (strength 0) the same noise gives the same image for every frame.
    for node in prompt.values():
        if node["class_type"] == "HP3Apply":
            node["inputs"]["strength"] = 0.0
    prompt["900"]["inputs"]["filename_prefix"] = "video_rows_s0"
    entry = wf_server.server.run(prompt, timeout=300)
    (saved,) = entry["outputs"]["900"]["latents"]
    base = load_file(str(wf_server.output / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    assert torch.equal(base[0], base[1])
    assert all((rows[i] - base[i]).abs().max() > 1e-4 for i in range(2)), "HP3 changes every frame"
    assert (rows[0] - rows[1]).abs().max() > 1e-6


def test_retarget_controlnet_sample_follows_the_depth_map(wf_server):
    """hp3_retarget_controlnet.json: the 3D depth map reaches the sampler through the core ControlNet
    (no HP3 weights anywhere): strength 0 gives the plain checkpoint's latent, the shipped strength
    another one, and another driving image (another depth map) a third."""
    from safetensors.torch import load_file
    wf = json.loads((REPO / "example_workflows" / "hp3_retarget_controlnet.json").read_text())
    prompt = tiny_prompt(wf, wf_server.info)
    assert not {"HP3ModelLoader", "HP3Apply"} & {n["class_type"] for n in prompt.values()}
    (sampler,) = [k for k, n in prompt.items() if n["class_type"] == "KSampler"]
    (apply,) = [k for k, n in prompt.items() if n["class_type"] == "ControlNetApplyAdvanced"]
    (retarget,) = [k for k, n in prompt.items() if n["class_type"] == "HP3HeadRetarget"]
    assert prompt[apply]["inputs"]["image"] == [retarget, 3]  # the depth output

    def latent(tag: str, strength: float, driving: str | None = None) -> torch.Tensor:
        run = json.loads(json.dumps(prompt))
        run[apply]["inputs"]["strength"] = strength
        if driving:
            link = run[retarget]["inputs"]["driving"]
            run[link[0]]["inputs"]["image"] = driving
        run["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": tag}}
        (saved,) = wf_server.server.run(run, timeout=300)["outputs"]["900"]["latents"]
        return load_file(str(wf_server.output / saved["subfolder"] / saved["filename"]))["latent_tensor"]

    plain = latent("rc_plain", 0.0)
    shipped = latent("rc_depth", prompt[apply]["inputs"]["strength"])
    other = latent("rc_other", prompt[apply]["inputs"]["strength"], driving="source_s42.jpg")
    assert plain.shape == shipped.shape == (1, 4, TINY_SIZE // 8, TINY_SIZE // 8) and shipped.isfinite().all()
    assert (shipped - plain).abs().max() > 1e-4, "the ControlNet changes the image"
    assert (shipped - other).abs().max() > 1e-6, "another pose and expression change it too"


def test_the_same_seed_gives_every_frame_the_same_noise():
    """hp3_video_batch.json: the frames share the seed and, through Batch Seed Behavior 'fixed',
    the starting noise (they differ by pose and expression only)."""
    wf = json.loads((REPO / "example_workflows" / "hp3_video_batch.json").read_text())
    by_type = {n["type"]: n for n in wf["nodes"]}
    assert by_type["LatentBatchSeedBehavior"]["widgets_values"] == ["fixed"]
    assert by_type["KSampler"]["widgets_values"][1] == "fixed"
    latent_link = next(i["link"] for i in by_type["KSampler"]["inputs"] if i["name"] == "latent_image")
    assert next(l for l in wf["links"] if l[0] == latent_link)[1] == by_type["LatentBatchSeedBehavior"]["id"]
