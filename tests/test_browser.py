"""Every workflow in example_workflows/ loads in the web UI (each --host) in headless Chromium."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.peer_workflows import NAMES as PEER_WORKFLOWS

pytestmark = [pytest.mark.server, pytest.mark.browser]
REPO = Path(__file__).resolve().parent.parent
# The public-weights workflows need the peer packs: tests/test_peer_interop.py loads and validates them.
WORKFLOWS = sorted(p for p in (REPO / "example_workflows").glob("*.json") if p.stem not in PEER_WORKFLOWS)
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"


def test_there_are_workflows():
    assert WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_in_the_graph_editor(browser, comfy_server, path):
    report = browser.load_workflow(comfy_server.url, path, screenshot=SCREENSHOTS / f"{path.stem}.png")
    assert report.missing_node_types == []
    assert report.js_errors == []
    assert report.widget_mismatches == []
    assert report.node_count > 0
    assert report.screenshot.stat().st_size > 10_000


def test_harness_reports_missing_node_types(browser, comfy_server):
    wf = {"last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {},
          "version": 0.4, "nodes": [{"id": 1, "type": "NoSuchNodeHP3", "pos": [0, 0], "size": [200, 50],
                                     "flags": {}, "order": 0, "mode": 0, "properties": {}}]}
    report = browser.load_workflow(comfy_server.url, wf)
    assert report.missing_node_types == ["NoSuchNodeHP3"]


# Zoom the canvas so the whole graph fits the page (the docs' screenshots show every node).
_FIT_JS = """
async (wf) => {
  await app.loadGraphData(wf);
  const xs = [], ys = [];
  for (const n of app.graph._nodes) {
    xs.push(n.pos[0], n.pos[0] + n.size[0]); ys.push(n.pos[1] - 30, n.pos[1] + n.size[1]);
  }
  for (const g of app.graph._groups || []) {
    xs.push(g.pos[0], g.pos[0] + g.size[0]); ys.push(g.pos[1], g.pos[1] + g.size[1]);
  }
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const c = app.canvas, w = c.canvas.width, h = c.canvas.height;
  const scale = Math.min(1, 0.97 * w / (x1 - x0), 0.97 * h / (y1 - y0));
  c.ds.scale = scale;
  c.ds.offset = [(w / scale - (x1 - x0)) / 2 - x0, (h / scale - (y1 - y0)) / 2 - y0];
  c.setDirty(true, true); c.draw(true, true);
  return scale;
}
"""


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_overview_screenshot(browser, comfy_server, path):
    """The whole graph in one screenshot (test-artifacts/screenshots/<name>_overview.png), as the
    README's docs/screenshots/ show it."""
    page = browser.new_page()
    try:
        page.goto(comfy_server.url, wait_until="load", timeout=60_000)
        page.wait_for_function("() => window.app && window.app.graph && "
                               "Object.keys(LiteGraph.registered_node_types).length > 50", timeout=60_000)
        page.evaluate("() => { const m = document.querySelector('.comfy-menu'); if (m) m.style.display = 'none'; }")
        scale = page.evaluate(_FIT_JS, json.loads(path.read_text()))
        page.wait_for_timeout(500)
        shot = SCREENSHOTS / f"{path.stem}_overview.png"
        page.screenshot(path=str(shot))
    finally:
        page.close()
    assert 0 < scale <= 1 and shot.stat().st_size > 10_000


# Load a workflow, pick the tiny HP3 file in its loader (if it has one) and queue it, as a user does.
_RUN_WORKFLOW_JS = """
async ([wf, name]) => {
  await app.loadGraphData(wf);
  const loader = app.graph._nodes.find(n => n.type === "HP3ModelLoader");
  if (loader) loader.widgets.find(w => w.name === "hp3_name").value = name;
  await app.queuePrompt(0, 1);
}
"""
_REPORT_TEXT_JS = "() => [...document.querySelectorAll('textarea.hp3-report')].map(t => t.value).join('\\n')"


@pytest.mark.parametrize("stem, node_type, expected", [
    ("hp3_model_info", "HP3ModelInfo", "base family: SD1.5 (sd15)"),
    ("hp3_retarget", "HP3HeadRetarget", "3D backend:"),
], ids=["model_info", "retarget"])
def test_text_reports_are_shown_on_the_node_after_a_run(browser, comfy_server, stem, node_type, expected):
    """web/hp3_text.js: HP3 Model Info's text and the retarget report appear on the node (read off
    the page, and the same as the node's widget)."""
    wf = json.loads((REPO / "example_workflows" / f"{stem}.json").read_text())
    page = browser.new_page()
    try:
        page.goto(comfy_server.url, wait_until="load", timeout=60_000)
        page.wait_for_function("() => window.app && window.app.graph && "
                               "Object.keys(LiteGraph.registered_node_types).length > 50", timeout=60_000)
        page.evaluate(_RUN_WORKFLOW_JS, [wf, "tiny_sd15.safetensors"])
        page.wait_for_function(f"() => ({_REPORT_TEXT_JS})().includes({json.dumps(expected)})", timeout=300_000)
        text = page.evaluate(_REPORT_TEXT_JS)
        on_node = page.evaluate(f"() => app.graph._nodes.find(n => n.type === {json.dumps(node_type)})"
                                ".widgets.find(w => w.name === 'hp3_report').value")
        page.screenshot(path=str(SCREENSHOTS / f"{stem}_text.png"))
    finally:
        page.close()
    assert expected in on_node and on_node in text
