"""The example workflow files (example_workflows/, the one template folder current ComfyUI reads):
UI format 0.4, a note per workflow, a thumbnail per template, no second copy the host would list."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
# Loaders of model files -> the models folder a workflow's note must name.
FILE_LOADERS = {"CheckpointLoaderSimple": "models/checkpoints", "ControlNetLoader": "models/controlnet",
                "UpscaleModelLoader": "models/upscale_models", "CLIPVisionLoader": "models/clip_vision",
                "HP3ModelLoader": "models/hp3", "HP3FaceAnalysisLoader": "models/insightface"}
# Every folder name the 2025 host reads templates from (app/custom_node_manager.py).
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def test_workflows_live_in_one_template_folder():
    """The 2025 host lists the JSON files of all these folders: a second copy would list each
    template twice. workflows/ keeps only the sample inputs."""
    assert WORKFLOWS
    for folder in TEMPLATE_FOLDERS[1:]:
        assert not list((REPO / folder).glob("*.json")), f"{folder}/ holds workflows: keep them in example_workflows/"


def test_every_template_has_a_jpeg_thumbnail():
    """The Templates dialog shows <name>.jpg beside each template (made from the test screenshots)."""
    from PIL import Image
    for path in WORKFLOWS:
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} is missing (python tests/harness/thumbnails.py)"
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and image.width >= 256 and image.height >= 160, thumb.name
            assert len(set(image.convert("L").resize((32, 20)).getdata())) > 8, f"{thumb.name} is blank"


def test_the_new_workflows_exist():
    names = {p.name for p in WORKFLOWS}
    assert {"hp3_retarget.json", "hp3_retarget_controlnet.json", "hp3_portrait_sd15.json",
            "hp3_portrait_sdxl.json", "hp3_controlnet_upscale.json", "hp3_video_batch.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_node_is_live(path):
    """No muted or bypassed sections: a workflow runs as it loads (a user who must find and unmute a
    group gets nothing from Queue Prompt); a variant is a workflow of its own."""
    wf = json.loads(path.read_text())
    assert [n["id"] for n in wf["nodes"] if n.get("mode", 0) != 0] == []


def _feeds(wf: dict, dst_type: str, dst_input: str) -> tuple[str, str]:
    """(node type, output name) linked into ``dst_input`` of the one ``dst_type`` node."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    (dst,) = [n for n in nodes.values() if n["type"] == dst_type]
    link_id = next(i["link"] for i in dst["inputs"] if i["name"] == dst_input)
    _, src, slot, *_ = next(l for l in wf["links"] if l[0] == link_id)
    return nodes[src]["type"], nodes[src]["outputs"][slot]["name"]


def test_retarget_controlnet_feeds_the_3d_depth_map_to_a_core_depth_controlnet():
    wf = json.loads((REPO / "example_workflows" / "hp3_retarget_controlnet.json").read_text())
    types = [n["type"] for n in wf["nodes"]]
    assert not {"HP3ModelLoader", "HP3Apply", "HP3HeadEncode"} & set(types), "works without HP3 weights"
    assert _feeds(wf, "ControlNetApplyAdvanced", "image") == ("HP3HeadRetarget", "depth")
    assert _feeds(wf, "ControlNetApplyAdvanced", "control_net") == ("ControlNetLoader", "CONTROL_NET")
    (loader,) = [n for n in wf["nodes"] if n["type"] == "ControlNetLoader"]
    assert loader["widgets_values"] == ["control_v11f1p_sd15_depth.pth"]
    assert _feeds(wf, "KSampler", "positive") == ("ControlNetApplyAdvanced", "positive")
    assert _feeds(wf, "KSampler", "negative") == ("ControlNetApplyAdvanced", "negative")
    assert _feeds(wf, "KSampler", "model") == ("CheckpointLoaderSimple", "MODEL")
    assert _feeds(wf, "SaveImage", "images") == ("VAEDecode", "IMAGE")
    previewed = {_feeds({**wf, "nodes": [n for n in wf["nodes"] if n["type"] != "PreviewImage" or n is p]},
                        "PreviewImage", "images") for p in wf["nodes"] if p["type"] == "PreviewImage"}
    assert {("HP3HeadRetarget", "depth"), ("HP3HeadRetarget", "normal")} <= previewed
    assert len(wf["groups"]) == 2, "the 3D retarget and the SD1.5 + ControlNet parts are grouped"


def test_retarget_demo_is_the_plain_retarget():
    """hp3_retarget.json (what `make demo` runs) needs no model file and points to the ControlNet
    variant."""
    wf = json.loads((REPO / "example_workflows" / "hp3_retarget.json").read_text())
    assert not set(FILE_LOADERS) & {n["type"] for n in wf["nodes"]}
    assert wf["groups"] == []
    (note,) = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "Note"]
    assert "hp3_retarget_controlnet.json" in note


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_file_is_ui_format_04_with_a_note(path):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4 and {"last_node_id", "last_link_id", "nodes", "links", "groups", "config",
                                      "extra"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] == max(nodes) and wf["last_link_id"] == max((l[0] for l in wf["links"]), default=0)
    for link_id, src, slot, dst, dst_slot, kind in wf["links"]:
        assert link_id in (nodes[src]["outputs"][slot]["links"] or [])
        assert nodes[src]["outputs"][slot]["type"] == kind
        (inp,) = [i for i in nodes[dst].get("inputs", []) if i["link"] == link_id]
        assert inp["type"] == kind
    for node in nodes.values():  # only linked sockets listed as inputs (the 2024 UI needs it)
        assert all(i.get("link") is not None for i in node.get("inputs", [])), node["id"]
    notes = [n["widgets_values"][0] for n in nodes.values() if n["type"] in ("Note", "MarkdownNote")]
    assert notes, "every workflow explains itself in a Note"
    text = "\n".join(notes)
    for node in nodes.values():
        folder = FILE_LOADERS.get(node["type"])
        if folder:
            assert folder in text, f"the note must say which files go in {folder} ({node['type']})"
            for value in node.get("widgets_values") or []:
                if isinstance(value, str) and value.endswith((".safetensors", ".pth", ".pt", ".onnx")):
                    assert value in text, f"the note must name {value}"
