"""Every workflow in workflows/ loads in the 2024 web UI in headless Chromium."""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.server, pytest.mark.browser]
REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
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
