"""The Templates dialog of the 2025 host: ``GET /workflow_templates`` lists each HP3 workflow once,
and the host serves each template and its ``<name>.jpg`` thumbnail. The 2024 host has no
templates (its test skips, saying so)."""
from __future__ import annotations

import json
import urllib.error

import pytest

from conftest import REPO
from hp3_core.comfy_server import PACK_LINK_NAME

pytestmark = pytest.mark.server
NAMES = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def templates(comfy_server) -> dict:
    try:
        return comfy_server.get_json("/workflow_templates")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            pytest.skip("this host has no custom-node templates (GET /workflow_templates is 2025+)")
        raise


def test_each_workflow_is_listed_once(templates):
    listed = templates.get(PACK_LINK_NAME)
    assert listed is not None, f"the host lists no templates of {PACK_LINK_NAME}: {sorted(templates)}"
    assert sorted(listed) == NAMES, "each template exactly once (no second folder the host reads)"


def test_each_template_and_its_thumbnail_are_served(templates, comfy_server):
    base = f"/api/workflow_templates/{PACK_LINK_NAME}"
    for name in NAMES:
        workflow = json.loads(comfy_server._request(f"{base}/{name}.json"))
        assert workflow["version"] == 0.4 and workflow["nodes"], name
        thumb = comfy_server._request(f"{base}/{name}.jpg")
        assert thumb[:3] == b"\xff\xd8\xff" and len(thumb) > 2000, f"{name}.jpg is not a JPEG"
