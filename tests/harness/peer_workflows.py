"""The public-weights workflows (issue 16): HP3's head crop and 3D head beside IP-Adapter and
InstantID, whose weights anyone can download today.

``build_all(object_info)`` makes the three UI-format (0.4) workflows from a host's
``/object_info`` with both peer packs installed (sockets and widget order come from there, never
from the peers' code); ``python tests/harness/peer_workflows.py`` starts the 2025 host with the
peers (tests/harness/peers.py), builds them and writes ``example_workflows/<name>.json``. The
tests (tests/test_peer_interop.py) load them in the graph editor and run them through /prompt.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "example_workflows"

IPADAPTER_SD15 = "hp3_ipadapter_faceid_depth_sd15"
INSTANTID_SDXL = "hp3_instantid_depth_sdxl"
INSTANTID_HP3_SDXL = "hp3_instantid_apply_hp3_sdxl"
NAMES = (IPADAPTER_SD15, INSTANTID_SDXL, INSTANTID_HP3_SDXL)

# Every model file the workflows select: (file, models folder, where to get it, licence).
SD15 = ("v1-5-pruned-emaonly.safetensors", "models/checkpoints",
        "huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5", "CreativeML OpenRAIL-M")
SDXL = ("sd_xl_base_1.0.safetensors", "models/checkpoints",
        "huggingface.co/stabilityai/stable-diffusion-xl-base-1.0", "CreativeML OpenRAIL++-M")
CLIP_H = ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "models/clip_vision",
          "huggingface.co/h94/IP-Adapter models/image_encoder/model.safetensors (rename it)",
          "MIT (LAION OpenCLIP ViT-H/14)")
IPA_PLUS = ("ip-adapter-plus_sd15.safetensors", "models/ipadapter",
            "huggingface.co/h94/IP-Adapter models/", "Apache-2.0")
FACEID_V2 = ("ip-adapter-faceid-plusv2_sd15.bin", "models/ipadapter",
             "huggingface.co/h94/IP-Adapter-FaceID",
             "non-commercial research only (trained on insightface embeddings)")
FACEID_V2_LORA = ("ip-adapter-faceid-plusv2_sd15_lora.safetensors", "models/loras",
                  "huggingface.co/h94/IP-Adapter-FaceID", "as the FaceID model: non-commercial")
BUFFALO_L = ("buffalo_l (det_10g.onnx, w600k_r50.onnx, ...)", "models/insightface/models/buffalo_l",
             "insightface model zoo (github.com/deepinsight/insightface)", "non-commercial research only")
ANTELOPEV2 = ("antelopev2 (scrfd_10g_bnkps.onnx, glintr100.onnx, ...)", "models/insightface/models/antelopev2",
              "insightface model zoo (github.com/deepinsight/insightface; the InstantID README links a copy)",
              "non-commercial research only")
DEPTH_SD15 = ("control_v11f1p_sd15_depth.pth", "models/controlnet",
              "huggingface.co/lllyasviel/ControlNet-v1-1", "CreativeML OpenRAIL-M")
INSTANTID_IPA = ("ip-adapter.bin", "models/instantid", "huggingface.co/InstantX/InstantID",
                 "Apache-2.0, but it needs insightface antelopev2 (non-commercial)")
INSTANTID_CN = ("instantid/diffusion_pytorch_model.safetensors", "models/controlnet",
                "huggingface.co/InstantX/InstantID ControlNetModel/ (put it in models/controlnet/instantid/)",
                "Apache-2.0, but it needs insightface antelopev2 (non-commercial)")
DEPTH_SDXL = ("controlnet-depth-sdxl-1.0.safetensors", "models/controlnet",
              "huggingface.co/diffusers/controlnet-depth-sdxl-1.0 diffusion_pytorch_model.safetensors (rename it)",
              "CreativeML OpenRAIL++-M")
HP3_SDXL = ("hp3_sdxl.safetensors", "models/hp3", "none published yet: train them (README: Training)",
            "yours; depends on the base model and training data")

MODEL_FILES = {
    IPADAPTER_SD15: [SD15, CLIP_H, IPA_PLUS, FACEID_V2, FACEID_V2_LORA, BUFFALO_L, DEPTH_SD15],
    INSTANTID_SDXL: [SDXL, INSTANTID_IPA, INSTANTID_CN, ANTELOPEV2, DEPTH_SDXL],
    INSTANTID_HP3_SDXL: [SDXL, INSTANTID_IPA, INSTANTID_CN, ANTELOPEV2, DEPTH_SDXL, HP3_SDXL, CLIP_H],
}
PEERS_NEEDED = {IPADAPTER_SD15: ("ComfyUI_IPAdapter_plus",),
                INSTANTID_SDXL: ("ComfyUI_InstantID",), INSTANTID_HP3_SDXL: ("ComfyUI_InstantID",)}

SOURCE, DRIVING = "source_s42.jpg", "driving_d9.jpg"
NEGATIVE = "blurry, lowres, deformed, watermark, text"
PROMPT = "a portrait photo of a person in a sunlit garden, detailed skin, soft light, 85mm"


def _models_note(files) -> str:
    return "\n".join(f"- {f} ({folder}): {where}; licence: {lic}" for f, folder, where, lic in files)


class Graph:
    """A UI-format 0.4 workflow built node by node; sockets and widget order from /object_info."""

    def __init__(self, info: dict[str, Any]):
        self.info, self.nodes, self.links = info, [], []

    def node(self, kind: str, pos, size=(320, 100), widgets=None, title=None, note_text=None) -> int:
        nid = len(self.nodes) + 1
        node: dict[str, Any] = {"id": nid, "type": kind, "pos": list(pos), "size": {"0": size[0], "1": size[1]},
                                "flags": {}, "order": 0, "mode": 0}
        if title:
            node["title"] = title
        if kind == "Note":
            node.update(properties={"text": ""}, widgets_values=[note_text], color="#432", bgcolor="#653")
        else:
            spec = self.info[kind]
            names = spec.get("output_name") or spec["output"]
            node["outputs"] = [{"name": n, "type": t, "links": None, "shape": 3}
                               for n, t in zip(names, spec["output"])]
            node["properties"] = {"Node name for S&R": kind}
            if widgets is not None:
                node["widgets_values"] = list(widgets)
            self._check_widgets(kind, node.get("widgets_values", []))
        self.nodes.append(node)
        return nid

    def _check_widgets(self, kind: str, values: list) -> None:
        from hp3_core.comfy_workflow import input_specs, is_widget
        count = 0
        for name, spec in input_specs(self.info[kind]):
            if is_widget(spec):
                count += 1 + (spec[0] == "INT" and name in ("seed", "noise_seed"))
                count += bool(isinstance(spec[0], list) and (spec[1] if len(spec) > 1 else {}).get("image_upload"))
        if len(values) != count:
            raise ValueError(f"{kind}: {len(values)} widget values, the host shows {count}")

    def link(self, src: int, out: str | int, dst: int, inp: str) -> None:
        snode, dnode = self.nodes[src - 1], self.nodes[dst - 1]
        slot = out if isinstance(out, int) else [o["name"] for o in snode["outputs"]].index(out)
        kind = snode["outputs"][slot]["type"]
        spec = dict((n, s) for sec in ("required", "optional")
                    for n, s in self.info[dnode["type"]]["input"].get(sec, {}).items())[inp]
        if spec[0] != kind:
            raise ValueError(f"{snode['type']}.{snode['outputs'][slot]['name']} ({kind}) -> "
                             f"{dnode['type']}.{inp} ({spec[0]})")
        lid = len(self.links) + 1
        self.links.append([lid, src, slot, dst, None, kind])
        snode["outputs"][slot]["links"] = (snode["outputs"][slot]["links"] or []) + [lid]
        snode["outputs"][slot]["slot_index"] = slot
        dnode.setdefault("inputs", []).append({"name": inp, "type": kind, "link": lid})

    def done(self, groups=()) -> dict[str, Any]:
        from hp3_core.comfy_workflow import input_specs
        by_id = {n["id"]: n for n in self.nodes}
        for node in self.nodes:  # inputs in INPUT_TYPES order; links point at their slots
            if "inputs" in node:
                order = [n for n, _ in input_specs(self.info[node["type"]])]
                node["inputs"].sort(key=lambda i: order.index(i["name"]))
        for link in self.links:
            dst = by_id[link[3]]
            link[4] = next(i for i, inp in enumerate(dst["inputs"]) if inp["link"] == link[0])
        # execution order: a topological order of the links
        deps = {n["id"]: {l[1] for l in self.links if l[3] == n["id"]} for n in self.nodes}
        order, seen = [], set()

        def visit(nid):
            if nid not in seen:
                seen.add(nid)
                for d in sorted(deps[nid]):
                    visit(d)
                order.append(nid)
        for nid in sorted(deps):
            visit(nid)
        for i, nid in enumerate(order):
            by_id[nid]["order"] = i
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [dict(g) for g in groups], "config": {}, "extra": {},
                "version": 0.4}


def _group(title: str, bounding, color: str) -> dict[str, Any]:
    return {"title": title, "bounding": list(bounding), "color": color, "font_size": 24}


def _prompts(g: Graph, ckpt: int, y: int) -> tuple[int, int]:
    """(positive, negative) CLIPTextEncode nodes of PROMPT and NEGATIVE, one above the other at ``y``."""
    pos = g.node("CLIPTextEncode", (20, y), (400, 160), [PROMPT], title="Prompt (the scene)")
    neg = g.node("CLIPTextEncode", (20, y + 200), (400, 130), [NEGATIVE], title="Negative prompt")
    g.link(ckpt, "CLIP", pos, "clip")
    g.link(ckpt, "CLIP", neg, "clip")
    return pos, neg


def _source_and_driving(g: Graph, source_title: str) -> tuple[int, int]:
    """The two LoadImage nodes of the sample inputs: (source, driving)."""
    src = g.node("LoadImage", (520, 20), (320, 320), [SOURCE, "image"], title=source_title)
    drv = g.node("LoadImage", (520, 380), (320, 320), [DRIVING, "image"], title="Driving (pose + expression)")
    return src, drv


def _head_retarget(g: Graph, src: int, drv: int) -> int:
    """HP3's 3D head (the source's shape in the driver's pose and expression) and a preview of its
    depth map, the ControlNet's image; returns the retarget node."""
    rec = g.node("HP3ReconstructorLoader", (520, 760), (320, 82), ["auto", "cpu"])
    ret = g.node("HP3HeadRetarget", (520, 880), (340, 300), ["full", "head", 0, "error", 0, 0.0])
    g.link(rec, "reconstructor", ret, "reconstructor")
    g.link(src, "IMAGE", ret, "source")
    g.link(drv, "IMAGE", ret, "driving")
    prev = g.node("PreviewImage", (880, 760), (320, 300), title="3D depth (the ControlNet's image)")
    g.link(ret, "depth", prev, "images")
    return ret


def _sample_and_save(g: Graph, model: int, conditioning: int, ckpt: int, latent_y: int, side: int,
                     cfg: float, name: str) -> None:
    """KSampler (seed 42, 30 steps) of ``model``'s first output with ``conditioning``'s positive and
    negative on an empty ``side`` x ``side`` latent, decoded with the checkpoint's VAE and saved as ``name``."""
    lat = g.node("EmptyLatentImage", (1240, latent_y), (320, 106), [side, side, 1])
    ks = g.node("KSampler", (1600, 20), (320, 262), [42, "fixed", 30, cfg, "dpmpp_2m", "karras", 1.0])
    g.link(model, 0, ks, "model")
    g.link(conditioning, "positive", ks, "positive")
    g.link(conditioning, "negative", ks, "negative")
    g.link(lat, "LATENT", ks, "latent_image")
    dec = g.node("VAEDecode", (1600, 320), (210, 46))
    g.link(ks, "LATENT", dec, "samples")
    g.link(ckpt, "VAE", dec, "vae")
    save = g.node("SaveImage", (1600, 420), (400, 420), [name])
    g.link(dec, "IMAGE", save, "images")


def ipadapter_sd15(info: dict[str, Any]) -> dict[str, Any]:
    g = Graph(info)
    g.node("Note", (20, 20), (460, 560), note_text=(
        "Head-preserving, 3D-driven portrait with public weights (no HP3 weights), SD1.5\n\n"
        "SOURCE -> HP3 Head Crop (2.2x the face box, hair and head shape inside) -> IP-Adapter Plus "
        "(appearance, hair); SOURCE -> IP-Adapter FaceID Plus v2 (identity; its LoRA at 0.6). "
        "DRIVING -> HP3 3D Head Retarget (built-in full head: the source's head shape with the "
        "driver's pose and expression) -> depth map -> depth ControlNet (pose, expression). "
        "Prompt -> KSampler.\n\n"
        "Needs (README: Before HP3 weights exist), file (folder): where to get it; licence:\n"
        + _models_note(MODEL_FILES[IPADAPTER_SD15]) +
        "\n- the ComfyUI_IPAdapter_plus node pack (github.com/cubiq/ComfyUI_IPAdapter_plus, GPL-3.0; "
        "needs ComfyUI from mid-2024 on) and insightface for FaceID\n\n"
        "FaceID is NON-COMMERCIAL (insightface). For the normal map: control_v11p_sd15_normalbae.pth "
        "(models/controlnet) with 'normal' instead of 'depth'. Sample inputs: workflows/inputs/ "
        "(copy them to ComfyUI/input). Score the results: python -m hp3_core evaluate --generated ..."))
    ckpt = g.node("CheckpointLoaderSimple", (20, 620), (320, 100), [SD15[0]])
    lora = g.node("LoraLoaderModelOnly", (20, 760), (320, 82), [FACEID_V2_LORA[0], 0.6],
                  title="FaceID Plus v2 LoRA")
    g.link(ckpt, "MODEL", lora, "model")
    pos, neg = _prompts(g, ckpt, 880)
    src, drv = _source_and_driving(g, "Source (head to keep)")
    crop = g.node("HP3HeadCrop", (880, 20), (320, 180), [512, 2.2, 0.2, 0, "error"])
    g.link(src, "IMAGE", crop, "image")
    cv = g.node("CLIPVisionLoader", (880, 240), (320, 60), [CLIP_H[0]])
    ipa = g.node("IPAdapterModelLoader", (880, 340), (320, 60), [IPA_PLUS[0]], title="IP-Adapter Plus")
    plus = g.node("IPAdapterAdvanced", (1240, 20), (320, 280), [0.6, "linear", "concat", 0.0, 1.0, "V only"],
                  title="IP-Adapter Plus: head crop (appearance, hair)")
    g.link(lora, "MODEL", plus, "model")
    g.link(ipa, "IPADAPTER", plus, "ipadapter")
    g.link(crop, "head", plus, "image")
    g.link(cv, "CLIP_VISION", plus, "clip_vision")
    fid = g.node("IPAdapterModelLoader", (880, 440), (320, 60), [FACEID_V2[0]], title="IP-Adapter FaceID Plus v2")
    insf = g.node("IPAdapterInsightFaceLoader", (880, 540), (320, 82), ["CPU", "buffalo_l"])
    face = g.node("IPAdapterFaceID", (1240, 340), (320, 330), [0.8, 1.5, "linear", "concat", 0.0, 1.0, "V only"],
                  title="IP-Adapter FaceID Plus v2: identity")
    g.link(plus, "MODEL", face, "model")
    g.link(fid, "IPADAPTER", face, "ipadapter")
    g.link(src, "IMAGE", face, "image")
    g.link(cv, "CLIP_VISION", face, "clip_vision")
    g.link(insf, "INSIGHTFACE", face, "insightface")
    ret = _head_retarget(g, src, drv)
    cn = g.node("ControlNetLoader", (1240, 720), (320, 60), [DEPTH_SD15[0]])
    apply = g.node("ControlNetApplyAdvanced", (1240, 820), (320, 170), [0.8, 0.0, 1.0])
    g.link(pos, "CONDITIONING", apply, "positive")
    g.link(neg, "CONDITIONING", apply, "negative")
    g.link(cn, "CONTROL_NET", apply, "control_net")
    g.link(ret, "depth", apply, "image")
    _sample_and_save(g, face, apply, ckpt, latent_y=1030, side=512, cfg=6.0, name=IPADAPTER_SD15)
    return g.done([_group("IP-Adapter Plus (head crop) + FaceID Plus v2 (identity)", (860, -40, 720, 720), "#3f789e"),
                   _group("HP3 3D head -> depth ControlNet (pose, expression)", (500, 700, 1080, 520), "#88A")])


def _instantid(info: dict[str, Any], name: str, with_hp3: bool) -> dict[str, Any]:
    g = Graph(info)
    files = MODEL_FILES[name]
    head = ("InstantID + HP3 weights, SDXL: Apply HP3 beside InstantID" if with_hp3 else
            "InstantID with HP3's 3D depth map, SDXL (public weights, no HP3 weights)")
    what = ("Identity from the SOURCE (InstantID: its face embedding and IdentityNet, keypoints from the "
            "DRIVING image), pose and expression from the DRIVING image through HP3's 3D head: the "
            "source's head shape in the driver's pose and expression, as a depth map for an SDXL depth "
            "ControlNet, in place of InstantID's usual depth preprocessor. ")
    if with_hp3:
        what += ("Apply HP3 adds HP3's head controller and connector (head tokens of the source, the "
                 "same 3D head) to the MODEL InstantID patched: both act (InstantID replaces "
                 "cross-attention, HP3 wraps the UNet and patches the output blocks), in either order. "
                 "For when HP3 weights exist: none are published yet; an untrained file changes nothing. ")
    g.node("Note", (20, 20), (460, 600), note_text=(
        f"{head}\n\n{what}\n\nNeeds (README: Before HP3 weights exist), file (folder): where to get it; licence:\n"
        + _models_note(files) +
        "\n- the ComfyUI_InstantID node pack (github.com/cubiq/ComfyUI_InstantID, Apache-2.0) and insightface\n\n"
        "InstantID is NON-COMMERCIAL through insightface antelopev2. Sample inputs: workflows/inputs/ "
        "(copy them to ComfyUI/input). Score the results: python -m hp3_core evaluate --generated ..."))
    ckpt = g.node("CheckpointLoaderSimple", (20, 660), (320, 100), [SDXL[0]])
    pos, neg = _prompts(g, ckpt, 800)
    src, drv = _source_and_driving(g, "Source (identity, head to keep)")
    iid = g.node("InstantIDModelLoader", (880, 20), (320, 60), [INSTANTID_IPA[0]])
    fa = g.node("InstantIDFaceAnalysis", (880, 120), (320, 60), ["CPU"])
    icn = g.node("ControlNetLoader", (880, 220), (320, 60), [INSTANTID_CN[0]], title="InstantID IdentityNet")
    app = g.node("ApplyInstantIDAdvanced", (1240, 20), (320, 330), [0.8, 0.8, 0.0, 1.0, 0.35, "average"])
    g.link(iid, "INSTANTID", app, "instantid")
    g.link(fa, "FACEANALYSIS", app, "insightface")
    g.link(icn, "CONTROL_NET", app, "control_net")
    g.link(src, "IMAGE", app, "image")
    g.link(ckpt, "MODEL", app, "model")
    g.link(pos, "CONDITIONING", app, "positive")
    g.link(neg, "CONDITIONING", app, "negative")
    g.link(drv, "IMAGE", app, "image_kps")
    ret = _head_retarget(g, src, drv)
    dcn = g.node("ControlNetLoader", (1240, 400), (320, 60), [DEPTH_SDXL[0]], title="SDXL depth ControlNet")
    dapp = g.node("ControlNetApplyAdvanced", (1240, 500), (320, 170), [0.6, 0.0, 1.0])
    g.link(app, "positive", dapp, "positive")
    g.link(app, "negative", dapp, "negative")
    g.link(dcn, "CONTROL_NET", dapp, "control_net")
    g.link(ret, "depth", dapp, "image")
    model = app
    if with_hp3:
        hp3 = g.node("HP3ModelLoader", (880, 1280), (320, 60), [HP3_SDXL[0]])
        hfa = g.node("HP3FaceAnalysisLoader", (520, 1280), (320, 130), ["auto", "cpu", "insightface", "auto"])
        cv = g.node("CLIPVisionLoader", (520, 1450), (320, 60), [CLIP_H[0]])
        enc = g.node("HP3HeadEncode", (880, 1380), (320, 150), [0, 2.2])
        g.link(hfa, "face_analysis", enc, "face_analysis")
        g.link(cv, "CLIP_VISION", enc, "clip_vision")
        g.link(src, "IMAGE", enc, "image")
        hp3_apply = g.node("HP3Apply", (1240, 1280), (320, 170), [1.0, 0.0, 1.0], title="Apply HP3 (beside InstantID)")
        g.link(app, "MODEL", hp3_apply, "model")
        g.link(hp3, "hp3_model", hp3_apply, "hp3_model")
        g.link(enc, "head", hp3_apply, "head")
        g.link(ret, "head3d", hp3_apply, "head3d")
        model = hp3_apply
    _sample_and_save(g, model, dapp, ckpt, latent_y=710, side=1024, cfg=4.5, name=name)
    groups = [_group("InstantID (identity; keypoints of the driver)", (860, -40, 720, 400), "#3f789e"),
              _group("HP3 3D head -> SDXL depth ControlNet (pose, expression)", (500, 700, 1080, 520), "#88A")]
    if with_hp3:
        groups.append(_group("Apply HP3 (needs HP3 weights)", (500, 1240, 1080, 320), "#a1309b"))
    return g.done(groups)


def build_all(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {IPADAPTER_SD15: ipadapter_sd15(info),
            INSTANTID_SDXL: _instantid(info, INSTANTID_SDXL, with_hp3=False),
            INSTANTID_HP3_SDXL: _instantid(info, INSTANTID_HP3_SDXL, with_hp3=True)}


def _object_info_with_peers(work: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from harness.hosts import prepare
    from harness.peers import PEER_TARBALLS, unpack_peer
    from hp3_core.comfy_server import ComfyServer
    host = prepare("comfy2025", work / "ComfyUI")
    (work / "peers").mkdir(exist_ok=True)
    for name in PEER_TARBALLS:
        unpack_peer(name, work / "peers")
    yaml_path = work / "extra_model_paths.yaml"
    yaml_path.write_text(f"peers:\n  base_path: {work}\n  custom_nodes: peers\n")
    with ComfyServer(host, extra_model_paths=[yaml_path], log_path=work / "server.log").start() as server:
        return server.object_info()


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        info = _object_info_with_peers(Path(tmp))
    for name, wf in build_all(info).items():
        (TEMPLATES / f"{name}.json").write_text(json.dumps(wf, indent=1) + "\n")
        print("wrote", TEMPLATES / f"{name}.json")
