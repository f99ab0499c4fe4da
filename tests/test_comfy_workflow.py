"""The UI-to-API converter (hp3_core/comfy_workflow.py) reads every input form both hosts publish.

The unit tests use excerpts of real ``/object_info`` entries (2024: dropdowns as ``[[...], {...}]``;
2025: ``["COMBO", {"options": [...]}]``, ``control_after_generate``, ``forceInput``, ``input_order``).
The host tests convert every shipped workflow against the running host's own ``/object_info`` and
check that every required input of every node is given, with a dropdown value the host offers.
"""
from __future__ import annotations

import json

import pytest

from conftest import REPO
from hp3_core.comfy_workflow import combo_options, input_specs, is_widget, ui_to_api

WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))

# Excerpts of the 2025 host's /object_info (ComfyUI 0.3.64).
INFO_2025 = {
    "KSampler": {
        "input": {"required": {
            "model": ["MODEL", {"tooltip": "..."}],
            "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
            "cfg": ["FLOAT", {"default": 8.0}],
            "sampler_name": ["COMBO", {"multiselect": False, "options": ["euler", "dpmpp_2m"]}],
            "scheduler": ["COMBO", {"multiselect": False, "options": ["normal", "karras"]}],
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
            "denoise": ["FLOAT", {"default": 1.0}]}},
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                     "positive", "negative", "latent_image", "denoise"]}},
    "LatentBatchSeedBehavior": {"input": {"required": {
        "samples": ["LATENT", {}],
        "seed_behavior": ["COMBO", {"default": "fixed", "multiselect": False, "options": ["random", "fixed"]}]}}},
    "UpscaleModelLoader": {"input": {"required": {"model_name": ["COMBO", {"multiselect": False, "options": []}]}}},
    "LoadImage": {"input": {"required": {"image": [["a.jpg", "b.jpg"], {"image_upload": True}]}}},
    "SaveLoRA": {"input": {"required": {"lora": ["LORA_MODEL"], "prefix": ["STRING", {"default": "x"}]},
                           "optional": {"steps": ["INT", {"forceInput": True}]}}},
    "PrimitiveInt": {"input": {"required": {"value": ["INT", {"control_after_generate": True}]}}},
}
# The same nodes as the 2024 host publishes them.
INFO_2024 = {
    "KSampler": {"input": {"required": {
        "model": ["MODEL"], "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1}],
        "steps": ["INT", {"default": 20}], "cfg": ["FLOAT", {"default": 8.0}],
        "sampler_name": [["euler", "dpmpp_2m"]], "scheduler": [["normal", "karras"]],
        "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
        "denoise": ["FLOAT", {"default": 1.0}]}}},
    "LatentBatchSeedBehavior": {"input": {"required": {"samples": ["LATENT"],
                                                       "seed_behavior": [["random", "fixed"], {"default": "fixed"}]}}},
    "LoadImage": {"input": {"required": {"image": [["a.jpg", "b.jpg"], {"image_upload": True}]}}},
}


def _node(id_: int, type_: str, widgets, inputs=()) -> dict:
    return {"id": id_, "type": type_, "mode": 0, "widgets_values": widgets, "inputs": list(inputs)}


def _graph() -> dict:
    """LoadImage-free sampling graph: KSampler fed by LatentBatchSeedBehavior, a seed Primitive."""
    return {
        "nodes": [
            _node(1, "LatentBatchSeedBehavior", ["fixed"]),
            _node(2, "KSampler", [42, "fixed", 3, 7.5, "dpmpp_2m", "karras", 0.5],
                  [{"name": "latent_image", "link": 1}, {"name": "seed", "link": 2, "widget": {"name": "seed"}}]),
            _node(3, "PrimitiveNode", [7, "increment"]),
            _node(4, "Note", ["text"]),
        ],
        "links": [[1, 1, 0, 2, 2, "LATENT"], [2, 3, 0, 2, 1, "INT"]],
    }


@pytest.mark.parametrize("info", [INFO_2024, INFO_2025], ids=["form2024", "form2025"])
def test_both_dropdown_forms_and_the_seed_control_value(info):
    api = ui_to_api(_graph(), info)
    assert set(api) == {"1", "2"}  # Primitive and Note resolved away
    assert api["1"] == {"class_type": "LatentBatchSeedBehavior", "inputs": {"seed_behavior": "fixed"}}
    assert api["2"]["inputs"] == {"seed": 7, "steps": 3, "cfg": 7.5, "sampler_name": "dpmpp_2m",
                                  "scheduler": "karras", "latent_image": ["1", 0], "denoise": 0.5}


def test_combo_options_in_both_forms():
    assert combo_options(INFO_2024["LatentBatchSeedBehavior"]["input"]["required"]["seed_behavior"]) == ["random", "fixed"]
    assert combo_options(INFO_2025["LatentBatchSeedBehavior"]["input"]["required"]["seed_behavior"]) == ["random", "fixed"]
    assert combo_options(INFO_2025["UpscaleModelLoader"]["input"]["required"]["model_name"]) == []
    assert combo_options(["INT", {}]) is None


def test_force_input_is_a_socket_and_input_order_is_followed():
    assert not is_widget(INFO_2025["SaveLoRA"]["input"]["optional"]["steps"])
    assert is_widget(INFO_2025["UpscaleModelLoader"]["input"]["required"]["model_name"])
    info = {"input": {"required": {"b": ["INT"], "a": ["FLOAT"]}}, "input_order": {"required": ["a", "b"]}}
    assert [n for n, _ in input_specs(info)] == ["a", "b"]
    wf = {"nodes": [_node(1, "SaveLoRA", ["lora/x"], [{"name": "steps", "link": 5}, {"name": "lora", "link": 6}]),
                    _node(2, "PrimitiveInt", [12, "randomize"])],
          "links": [[5, 2, 0, 1, 2, "INT"], [6, 9, 0, 1, 0, "LORA_MODEL"]]}
    wf["nodes"].append(_node(9, "UpscaleModelLoader", ["x4.pth"]))
    api = ui_to_api(wf, INFO_2025)
    assert api["1"]["inputs"] == {"lora": ["9", 0], "prefix": "lora/x", "steps": ["2", 0]}
    assert api["2"]["inputs"] == {"value": 12}
    assert api["9"]["inputs"] == {"model_name": "x4.pth"}


def test_upload_value_and_files_without_extra_values():
    """LoadImage keeps its upload button's value after the file name; a file without it (or a
    seed without its control value) converts the same."""
    for widgets in (["b.jpg", "image"], ["b.jpg"]):
        assert ui_to_api({"nodes": [_node(1, "LoadImage", widgets)], "links": []}, INFO_2025)["1"]["inputs"] == {"image": "b.jpg"}
    wf = {"nodes": [_node(2, "KSampler", [5, 3, 7.5, "euler", "normal", 1.0])], "links": []}
    assert ui_to_api(wf, INFO_2025)["2"]["inputs"] == {"seed": 5, "steps": 3, "cfg": 7.5, "sampler_name": "euler",
                                                       "scheduler": "normal", "denoise": 1.0}


def test_named_widget_values():
    wf = {"nodes": [_node(1, "LatentBatchSeedBehavior", {"seed_behavior": "random"})], "links": []}
    assert ui_to_api(wf, INFO_2025)["1"]["inputs"] == {"seed_behavior": "random"}


def test_an_unknown_node_type_is_named():
    with pytest.raises(KeyError, match="NoSuchNode"):
        ui_to_api({"nodes": [_node(1, "NoSuchNode", [])], "links": []}, INFO_2025)


@pytest.fixture(scope="module")
def host_info(comfy_server) -> dict:
    return comfy_server.object_info()


@pytest.mark.server
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_workflow_gives_every_required_input_on_the_host(host_info, path):
    """Against the host's own /object_info: each required input is given (a link or a value)
    and each fixed dropdown value of an HP3 node (not a file name) is one the host offers."""
    workflow = json.loads(path.read_text())
    absent = sorted({n["type"] for n in workflow["nodes"]} - set(host_info) - {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
    if absent:  # a workflow for HP3 beside another pack (its own tests install that pack)
        pytest.skip(f"{path.name} needs node types this host does not have: {', '.join(absent)}")
    prompt = ui_to_api(workflow, host_info)
    assert prompt
    for key, node in prompt.items():
        info = host_info[node["class_type"]]
        for name, spec in info["input"].get("required", {}).items():
            assert name in node["inputs"], f"{path.name}: {node['class_type']} (node {key}) misses '{name}'"
            options = combo_options(spec)
            value = node["inputs"][name]
            is_file = isinstance(value, str) and "." in value  # model files differ per machine
            if options and node["class_type"].startswith("HP3") and not isinstance(value, list) and not is_file:
                assert value in options, f"{path.name}: {node['class_type']}.{name} = {value!r}"


@pytest.mark.server
def test_the_host_publishes_a_form_the_converter_reads(host_info, comfy_host_name):
    """Every input spec of every node is either a widget or a socket type name (never skipped),
    and the 2025 host does publish the COMBO form (so the test above covers it)."""
    forms = set()
    for info in host_info.values():
        for name, spec in input_specs(info):
            assert isinstance(spec, list) and spec, name
            assert is_widget(spec) or isinstance(spec[0], str), (name, spec)
            forms.add("COMBO" if spec[0] == "COMBO" else "list" if isinstance(spec[0], list) else "other")
    assert "list" in forms
    if comfy_host_name == "comfy2025":
        assert "COMBO" in forms
