"""HP3 beside the face packs people already use: IPAdapter_plus and InstantID as published
(tarballs in ../shared/hosts/peers/, unpacked into a custom_nodes folder of the host under test;
tests/harness/peers.py), and the public-weights workflows (tests/harness/peer_workflows.py).

* The workflows load in the graph editor with no missing node type, and /prompt validates them up
  to the model files: the only errors are the model files that are not there, each named.
* In-process: HP3 (tiny stand-in) and IP-Adapter Plus (a tiny weight file in its loader's layout,
  read by its own loader) on one tiny MODEL, in both orders: both act, the order does not matter,
  each is exactly itself when the other is off, and the clones they came from are untouched.

IPAdapter_plus (2025-02) imports ``node_helpers`` and cannot load on the 2024 host: its tests run
on the 2025 host (``make test`` runs this file on both); on the 2024 host a test shows the import
failure the user would see. InstantID loads on both hosts. Under CI a missing peer tarball fails.
"""
from __future__ import annotations

import json
import re
import urllib.request
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, require, start_server
from harness.peer_workflows import MODEL_FILES, NAMES, PEERS_NEEDED, build_all
from harness.peers import PEER_HOSTS, PEER_TARBALLS, peer_tarball, peers_dir, unpack_peer
from hp3_core.comfy_workflow import combo_options, input_specs, ui_to_api

TEMPLATES = REPO / "example_workflows"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
IPADAPTER = "ComfyUI_IPAdapter_plus"
INSTANTID = "ComfyUI_InstantID"
# The peers' model-file loaders: node type -> (input, models folder).
PEER_FILE_LOADERS = {"IPAdapterModelLoader": ("ipadapter_file", "models/ipadapter"),
                     "InstantIDModelLoader": ("instantid_file", "models/instantid"),
                     "LoraLoaderModelOnly": ("lora_name", "models/loras")}


def needs_peer(name: str, host: str) -> None:
    """The peer's tarball must be there (CI fails without it); skip where the pack cannot load."""
    require(peer_tarball(name) is not None,
            f"peer pack {PEER_TARBALLS[name]} is missing from {peers_dir()} (../shared/hosts/peers)")
    if host not in PEER_HOSTS[name]:
        pytest.skip(f"{name} as published cannot load on the {host} host (it needs "
                    f"{' or '.join(PEER_HOSTS[name])}); test_peers_load_where_they_can_and_failures_are_reported shows why")


@pytest.fixture(scope="module")
def peer_nodes(tmp_path_factory):
    """A custom_nodes folder with every peer pack whose tarball is there."""
    folder = tmp_path_factory.mktemp("peer_custom_nodes")
    for name in PEER_TARBALLS:
        if peer_tarball(name) is not None:
            unpack_peer(name, folder)
    return folder


@pytest.fixture(scope="module")
def peer_server(comfy_host_dir, peer_nodes, tmp_path_factory):
    """The --host server with HP3 and the peers installed (no model files at all)."""
    root = tmp_path_factory.mktemp("peer_server")
    yaml_path = root / "extra_model_paths.yaml"
    yaml_path.write_text(f"hp3_peer_tests:\n  base_path: {root}\n  custom_nodes: {peer_nodes}\n")
    server = start_server(comfy_host_dir, root / "run", yaml_path)
    try:
        yield SimpleNamespace(server=server, url=server.url, info=server.object_info(),
                              log=lambda: server.log_path.read_text(errors="replace"))
    finally:
        server.stop()


# -- the workflow files ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_workflow_note_names_every_model_file_where_and_licence(name):
    wf = json.loads((TEMPLATES / f"{name}.json").read_text())
    (note,) = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "Note"]
    for file, folder, where, licence in MODEL_FILES[name]:
        assert file in note and folder in note and where in note and licence in note, file
    selected = [v for n in wf["nodes"] for v in n.get("widgets_values") or []
                if isinstance(v, str) and v.endswith((".safetensors", ".pth", ".bin", ".pt"))]
    assert selected and all(v in note for v in selected)
    if "ipadapter" in name or "instantid" in name:
        assert "NON-COMMERCIAL" in note, "FaceID and InstantID are non-commercial through insightface"


def test_public_weights_workflows_need_no_hp3_weights():
    for name in NAMES:
        types = {n["type"] for n in json.loads((TEMPLATES / f"{name}.json").read_text())["nodes"]}
        assert "HP3HeadRetarget" in types
        has_hp3 = bool({"HP3ModelLoader", "HP3Apply"} & types)
        assert has_hp3 == ("apply_hp3" in name), name
    types = {n["type"] for n in json.loads((TEMPLATES / f"{NAMES[0]}.json").read_text())["nodes"]}
    assert {"HP3HeadCrop", "IPAdapterAdvanced", "IPAdapterFaceID", "ControlNetApplyAdvanced"} <= types


def _links_into(wf, dst_type, dst_input):
    nodes = {n["id"]: n for n in wf["nodes"]}
    out = []
    for dst in (n for n in nodes.values() if n["type"] == dst_type):
        for inp in dst.get("inputs", []):
            if inp["name"] == dst_input:
                _, src, slot, *_ = next(l for l in wf["links"] if l[0] == inp["link"])
                out.append((nodes[src]["type"], nodes[src]["outputs"][slot]["name"]))
    return out


def test_the_graphs_are_wired_as_described():
    ipa, iid, iid_hp3 = (json.loads((TEMPLATES / f"{n}.json").read_text()) for n in NAMES)
    assert _links_into(ipa, "IPAdapterAdvanced", "image") == [("HP3HeadCrop", "head")], "Plus sees the head crop"
    assert _links_into(ipa, "IPAdapterFaceID", "model") == [("IPAdapterAdvanced", "MODEL")]
    assert _links_into(ipa, "KSampler", "model") == [("IPAdapterFaceID", "MODEL")]
    for wf in (ipa, iid, iid_hp3):
        assert _links_into(wf, "ControlNetApplyAdvanced", "image") == [("HP3HeadRetarget", "depth")]
        assert _links_into(wf, "KSampler", "positive") == [("ControlNetApplyAdvanced", "positive")]
    for wf in (iid, iid_hp3):
        assert _links_into(wf, "ApplyInstantIDAdvanced", "image_kps")[0][0] == "LoadImage"
        assert _links_into(wf, "ControlNetApplyAdvanced", "positive") == [("ApplyInstantIDAdvanced", "positive")]
    assert _links_into(iid_hp3, "HP3Apply", "model") == [("ApplyInstantIDAdvanced", "MODEL")]
    assert _links_into(iid_hp3, "KSampler", "model") == [("HP3Apply", "model")]


# -- HP3 and IP-Adapter on one MODEL (in-process; before the browser tests: the 2025 host loads the
# pack with asyncio.run, which cannot run inside the browser's event loop) ------------------------
def _attn2_inner_dims(unet) -> dict[tuple, int]:
    """IP-Adapter's SD1.5 block keys -> the inner width of that block's cross-attention."""
    def width(block):
        for m in block.modules():
            if hasattr(m, "attn2"):
                return m.attn2.to_k.out_features
        return None
    dims = {("input", i): width(unet.input_blocks[i]) for i in (1, 2, 4, 5, 7, 8)}
    dims |= {("output", i): width(unet.output_blocks[i]) for i in range(3, 12)}
    dims[("middle", 1)] = width(unet.middle_block)
    return dims


def write_tiny_ipadapter_plus(path, ipa_module, unet, context_dim: int, clip_width: int, seed: int = 0):
    """A tiny IP-Adapter Plus file in the layout IPAdapterModelLoader reads (``image_proj.*`` a
    Resampler, ``ip_adapter.{2n+1}.to_k_ip/to_v_ip.weight`` per cross-attention in its order)."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    proj = ipa_module.Resampler(dim=context_dim, depth=4, dim_head=64, heads=12, num_queries=16,
                                embedding_dim=clip_width, output_dim=context_dim, ff_mult=4)
    tensors = {f"image_proj.{k}": v.detach().clone() for k, v in proj.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    for n, width in enumerate(_attn2_inner_dims(unet).values()):
        for kv in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{2 * n + 1}.{kv}.weight"] = torch.randn(width, context_dim, generator=gen) * 0.3
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture
def ipadapter_plus(comfy, comfy_host_name, peer_nodes, tmp_path):
    """IPAdapter_plus imported in this process (its nodes not registered), a tiny Plus file in a
    temporary 'ipadapter' folder, read by its own loader."""
    from harness.peers import import_peer
    needs_peer(IPADAPTER, comfy_host_name)
    pack = import_peer(peer_nodes / IPADAPTER)
    main = __import__(f"{pack.__name__}.IPAdapterPlus", fromlist=["IPAdapterPlus"])
    proj_mod = __import__(f"{pack.__name__}.image_proj_models", fromlist=["image_proj_models"])
    fp = comfy.folder_paths
    fp.add_model_folder_path("ipadapter", str(tmp_path))
    fp.filename_list_cache.clear()
    from harness.comfy_inprocess import TINY_CONTEXT_DIM, tiny_sd15_model
    unet = tiny_sd15_model(comfy).model.diffusion_model
    write_tiny_ipadapter_plus(tmp_path / "tiny-ip-adapter-plus_sd15.safetensors", proj_mod, unet, TINY_CONTEXT_DIM, 48)
    try:
        (model,) = main.IPAdapterModelLoader().load_ipadapter_model("tiny-ip-adapter-plus_sd15.safetensors")
        yield SimpleNamespace(main=main, model=model)
    finally:
        fp.folder_names_and_paths["ipadapter"][0].remove(str(tmp_path))
        fp.filename_list_cache.clear()


def predict(mp) -> torch.Tensor:
    """One model call through the MODEL's patches (CFG batch: 2 cond + 2 uncond rows), with the
    sigmas in transformer_options as the samplers put them (IP-Adapter reads them)."""
    from test_hp3_comfy import direct_inputs
    x, sigma, context = direct_inputs()
    to = dict(mp.model_options["transformer_options"])
    to.update(cond_or_uncond=[0, 1], sigmas=sigma)
    c = {"c_crossattn": context, "transformer_options": to}
    mp.patch_model()
    try:
        with torch.inference_mode():
            wrapper = mp.model_options.get("model_function_wrapper")
            args = {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": [0, 1]}
            return wrapper(mp.model.apply_model, args) if wrapper else mp.model.apply_model(x, sigma, **c)
    finally:
        mp.unpatch_model()


def test_hp3_and_ip_adapter_act_on_one_model_in_either_order(comfy, tiny_model, ipadapter_plus, tmp_path):
    """IP-Adapter replaces cross-attention (attn2), HP3 wraps the UNet and patches the output
    blocks: on one MODEL both act, in either order with the same result (the order in the
    workflows: IP-Adapter / InstantID first, then Apply HP3), each exactly itself when the other is
    off, and every MODEL they were made from keeps its own output."""
    from harness.tiny_clip import comfy_clip_vision, tiny_clip_model
    from harness.tiny_hp3 import tiny_hp3_config, tiny_hp3_model
    from test_hp3_comfy import make_head, make_head3d, sample
    patch_mod = comfy.pack_module("nodes.hp3_patch")
    clip_vision = comfy_clip_vision(tiny_clip_model(0), tmp_path)
    hp3 = tiny_hp3_model(tiny_hp3_config("sd15"), seed=0, trained=True)
    image = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(5))

    def with_ipa(mp, weight=1.0):
        node = ipadapter_plus.main.IPAdapterAdvanced()
        return node.apply_ipadapter(mp, ipadapter_plus.model, weight=weight, weight_type="linear",
                                    combine_embeds="concat", start_at=0.0, end_at=1.0,
                                    embeds_scaling="V only", image=image, clip_vision=clip_vision)[0]

    def with_hp3(mp, strength=1.0):
        return patch_mod.apply_hp3(mp, patch_mod.head_control_from_inputs(hp3, make_head(), make_head3d(),
                                                                 strength=strength))

    base = predict(tiny_model)
    ipa = with_ipa(tiny_model)
    hp3_only = with_hp3(tiny_model)
    ipa_out, hp3_out = predict(ipa), predict(hp3_only)
    ipa_then_hp3 = with_hp3(ipa)
    hp3_then_ipa = with_ipa(hp3_only)
    a, b = predict(ipa_then_hp3), predict(hp3_then_ipa)

    for both in (ipa_then_hp3, hp3_then_ipa):
        assert "attn2" in both.model_options["transformer_options"]["patches_replace"]
        assert "model_function_wrapper" in both.model_options
    for out in (ipa_out, hp3_out, a):
        assert out.isfinite().all() and (out - base).abs().max() > 1e-3
    assert (a - ipa_out).abs().max() > 1e-3, "HP3's change is present beside IP-Adapter"
    assert (a - hp3_out).abs().max() > 1e-3, "IP-Adapter's change is present beside HP3"
    assert torch.allclose(a, b, atol=1e-5), "the order does not matter"
    # each exactly itself when the other is off
    assert torch.equal(predict(with_hp3(ipa, strength=0.0)), ipa_out)
    assert torch.allclose(predict(with_ipa(hp3_only, weight=0.0)), hp3_out, atol=1e-6)
    # the MODELs they came from are untouched
    assert torch.equal(predict(tiny_model), base)
    assert torch.equal(predict(ipa), ipa_out)
    assert torch.equal(predict(hp3_only), hp3_out)
    assert "patches_replace" not in tiny_model.model_options["transformer_options"]
    assert "model_function_wrapper" not in tiny_model.model_options and not tiny_model.object_patches
    # and the pair samples (IP-Adapter's start/end window reads the sampler's sigmas)
    sampled = sample(ipa_then_hp3, steps=2)
    assert sampled.isfinite().all() and not torch.equal(sampled, sample(tiny_model, steps=2))


# -- on the host, with the peers installed ----------------------------------------------------------
def test_peers_load_where_they_can_and_failures_are_reported(comfy_host_name, peer_server):
    """The 2025 host lists both packs' nodes; the 2024 host lists InstantID's and logs why
    IPAdapter_plus failed (node_helpers), which the README states."""
    for name in PEER_TARBALLS:
        require(peer_tarball(name) is not None, f"peer pack {PEER_TARBALLS[name]} is missing from {peers_dir()}")
    info, log = peer_server.info, peer_server.log()
    assert {"InstantIDModelLoader", "ApplyInstantIDAdvanced", "InstantIDFaceAnalysis"} <= set(info)
    assert "HP3HeadCrop" in info and "HP3HeadRetarget" in info
    if comfy_host_name in PEER_HOSTS[IPADAPTER]:
        assert {"IPAdapterAdvanced", "IPAdapterFaceID", "IPAdapterModelLoader"} <= set(info)
    else:
        assert "IPAdapterAdvanced" not in info
        assert "No module named 'node_helpers'" in log, log[-3000:]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_matches_the_hosts_node_definitions(comfy_host_name, peer_server, name):
    """Rebuilt from this host's /object_info, the workflow is the shipped file (a peer or HP3 input
    renamed or reordered would show here)."""
    for peer in PEERS_NEEDED[name]:
        needs_peer(peer, comfy_host_name)
    shipped = json.loads((TEMPLATES / f"{name}.json").read_text())
    if comfy_host_name == "comfy2024":  # 2024: no ControlNetApplyAdvanced 'vae', older core widgets
        pytest.skip("the files are made from the 2025 host's /object_info; the 2024 host loads them in the editor")
    assert build_all(peer_server.info)[name] == shipped, "python tests/harness/peer_workflows.py rewrites them"


def _normalised(errors: list[str]) -> set[str]:
    return {re.sub(r"([?&])rand=[0-9.]+", r"\1rand=", e) for e in errors}


@pytest.fixture(scope="module")
def editor_noise(browser, peer_server) -> set[str]:
    """What the editor of this host reports with a one-Note workflow (the 2025 frontend asks for
    user files a fresh install lacks): the workflows are held to add nothing to it."""
    note = {"last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {},
            "version": 0.4, "nodes": [{"id": 1, "type": "Note", "pos": [0, 0], "size": [200, 60], "flags": {},
                                       "order": 0, "mode": 0, "properties": {}, "widgets_values": ["x"]}]}
    return _normalised(browser.load_workflow(peer_server.url, note).js_errors)


@pytest.mark.browser
@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_in_the_graph_editor_with_the_peers(comfy_host_name, browser, peer_server, editor_noise, name):
    for peer in PEERS_NEEDED[name]:
        needs_peer(peer, comfy_host_name)
    shot = SCREENSHOTS / (f"{name}.png" if comfy_host_name == "comfy2025" else f"{name}_{comfy_host_name}.png")
    report = browser.load_workflow(peer_server.url, TEMPLATES / f"{name}.json", screenshot=shot)
    assert report.missing_node_types == []
    assert _normalised(report.js_errors) - editor_noise == set(), "errors of this workflow's own"
    assert report.widget_mismatches == []
    assert report.node_count == len(json.loads((TEMPLATES / f"{name}.json").read_text())["nodes"])


def _model_file_inputs(prompt: dict, info: dict) -> set[tuple[str, str, str]]:
    """(node id, input, file) of every dropdown that lists model files (an empty list here)."""
    out = set()
    for key, node in prompt.items():
        for inp, spec in input_specs(info[node["class_type"]]):
            options = combo_options(spec)
            value = node["inputs"].get(inp)
            if options is not None and options == [] and isinstance(value, str):
                out.add((key, inp, value))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_through_prompt_up_to_the_missing_model_files(comfy_host_name, peer_server, name):
    """Converted as Queue Prompt sends it, /prompt refuses only what needs a model file (none are
    installed here): one 'value not in list' per file, naming it, nothing else. The part that needs
    none (HP3's 3D retarget and its depth preview) is queued and runs."""
    for peer in PEERS_NEEDED[name]:
        needs_peer(peer, comfy_host_name)
    info = peer_server.info
    prompt = ui_to_api(json.loads((TEMPLATES / f"{name}.json").read_text()), info)
    assert all(n["class_type"] in info for n in prompt.values())
    body = json.dumps({"prompt": prompt, "client_id": "hp3-peer-tests"}).encode()
    req = urllib.request.Request(peer_server.url + "/prompt", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:  # a 400 would mean nothing could run
        answer = json.loads(resp.read())
    errors = {(key, e["extra_info"]["input_name"], e["extra_info"]["received_value"]): e
              for key, node_err in answer["node_errors"].items() for e in node_err["errors"]}
    assert {e["type"] for e in errors.values()} == {"value_not_in_list"}, answer
    expected = _model_file_inputs(prompt, info)
    assert set(errors) == expected, answer
    files = {file for *_, file in expected}
    assert files == {f for f, *_ in MODEL_FILES[name] if "(" not in f}, "every model file and only those"
    for (_, _, file), e in errors.items():
        assert file in e["details"], e
    entry = peer_server.server.wait(answer["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (preview,) = [k for k, n in prompt.items() if n["class_type"] == "PreviewImage"]
    assert entry["outputs"][preview]["images"], "the 3D depth map ran"
    ran = {prompt[k]["class_type"] for k in entry["outputs"]}
    assert ran == {"PreviewImage", "HP3HeadRetarget"}, ran  # the retarget shows its renders too
