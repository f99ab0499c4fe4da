"""End to end on the 2024 ComfyUI server: the pack's nodes over HTTP, and graphs through /prompt."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hp3_core.comfy_workflow import ui_to_api
from hp3_core.comfy_server import ComfyServerError, execution_error

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parent.parent


def test_object_info_lists_the_pack_without_import_failure(comfy_server):
    info = comfy_server.object_info()
    assert info["HP3ModelLoader"]["category"] == "HP3/loaders"
    assert info["HP3ModelLoader"]["display_name"] == "Load HP3 Model"
    assert info["HP3ModelInfo"]["output_node"] is True
    # Files reached only through the user's extra_model_paths.yaml are offered.
    assert {"tiny_sd15.safetensors", "tiny_sdxl.safetensors"} <= set(
        info["HP3ModelLoader"]["input"]["required"]["hp3_name"][0])
    log = comfy_server.log_path.read_text()
    # The 2025 host logs "Cannot import" for its own audio nodes (no torchaudio): only HP3's count.
    assert not [line for line in log.splitlines() if "Cannot import" in line and "HP3" in line]
    assert "IMPORT FAILED" not in "\n".join(l for l in log.splitlines() if "HP3" in l) and "ComfyUI-HP3" in log


def _info_graph(comfy_server, name):
    wf = json.loads((REPO / "example_workflows" / "hp3_model_info.json").read_text())
    api = ui_to_api(wf, comfy_server.object_info())
    loader = next(k for k, v in api.items() if v["class_type"] == "HP3ModelLoader")
    api[loader]["inputs"]["hp3_name"] = name
    return api


def test_workflow_runs_through_prompt(comfy_server):
    entry = comfy_server.run(_info_graph(comfy_server, "tiny_sd15.safetensors"))
    (out,) = [o for o in entry["outputs"].values() if "text" in o]
    assert "base family: SD1.5 (sd15)" in out["text"][0] and "trained_steps: 0" in out["text"][0]


def test_bad_file_fails_its_prompt_clearly_and_the_queue_goes_on(comfy_server):
    entry = comfy_server.wait(comfy_server.queue_prompt(_info_graph(comfy_server, "not_hp3.safetensors")))
    error = execution_error(entry)
    assert error is not None and error["node_type"] == "HP3ModelLoader"
    assert "not_hp3.safetensors" in error["exception_message"] and "pickle" in error["exception_message"]
    assert "Fix:" in error["exception_message"]
    entry = comfy_server.run(_info_graph(comfy_server, "tiny_sdxl.safetensors"))
    assert any("SDXL" in o["text"][0] for o in entry["outputs"].values() if "text" in o)


def test_unknown_file_is_rejected_before_running(comfy_server):
    with pytest.raises(ComfyServerError, match="not in list|value_not_in_list"):
        comfy_server.queue_prompt(_info_graph(comfy_server, "absent.safetensors"))


def test_demo_check_starts_the_host_with_the_pack(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hp3_core", "demo", "--check", "--host-dir",
                          str(tmp_path / "host")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok: ") and "HP3 nodes loaded" in out.stdout
    assert (tmp_path / "host" / "models" / "hp3").is_dir()


def test_retarget_workflow_writes_the_four_maps(comfy_server):
    wf = json.loads((REPO / "example_workflows" / "hp3_retarget.json").read_text())
    entry = comfy_server.run(ui_to_api(wf, comfy_server.object_info()))
    images = [i for o in entry["outputs"].values() for i in o.get("images", []) if i["type"] == "output"]
    prefixes = sorted(i["filename"].split("_")[0] for i in images)
    assert prefixes == ["depth", "mask", "normal", "shaded"]
    from io import BytesIO

    from PIL import Image
    shaded = Image.open(BytesIO(comfy_server.view(next(i["filename"] for i in images if i["filename"].startswith("shaded")),
                                                  "hp3_retarget")))
    assert shaded.size == (720, 720)  # the driving image's full resolution
    texts = [t for o in entry["outputs"].values() for t in o.get("text", [])]
    assert any("3D backend: ict" in t and "face only" not in t for t in texts)
    previews = [i for o in entry["outputs"].values() for i in o.get("images", []) if i["type"] == "temp"]
    assert previews, "the retarget node shows a preview of its renders"


def test_demo_runs_the_retarget_workflow(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hp3_core", "demo", "--no-serve", "--host-dir",
                          str(tmp_path / "host"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    written = [l.split(" ", 1)[1] for l in out.stdout.splitlines() if l.startswith("wrote ")]
    assert sorted(Path(w).name.split("_")[0] for w in written) == ["depth", "mask", "normal", "shaded"]
    assert all(Path(w).is_file() for w in written)
    assert "3D backend: ict" in out.stderr
