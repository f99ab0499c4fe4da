"""Headless Chromium (Debian's) driving the ComfyUI web UI through Playwright.

Playwright's Python wheel carries its driver; the browser is the system's ``chromium`` (Playwright
never downloads one here). The flags keep Chromium off the network, which this machine closes.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class LoadReport:
    """What happened when a workflow was loaded into the graph editor."""

    missing_node_types: list[str]
    js_errors: list[str]
    node_count: int
    widget_mismatches: list[str] = field(default_factory=list)
    screenshot: Path | None = None


# Runs in the page: load the workflow as the UI's drag-and-drop does, then compare what the graph
# holds against the file (node types known to LiteGraph, widget values kept).
_LOAD_JS = """
async (wf) => {
  const missing = [...new Set(wf.nodes.map(n => n.type)
      .filter(t => !(t in LiteGraph.registered_node_types)))];
  await app.loadGraphData(wf);
  const mismatches = [];
  for (const n of wf.nodes) {
    const node = app.graph.getNodeById(n.id);
    if (!node) { mismatches.push(`node ${n.id} (${n.type}) was not created`); continue; }
    const want = n.widgets_values || [];
    const have = (node.widgets || []).map(w => w.value);
    want.forEach((v, i) => {
      if (Array.isArray(want) && JSON.stringify(have[i]) !== JSON.stringify(v))
        mismatches.push(`node ${n.id} (${n.type}) widget ${i}: file ${JSON.stringify(v)}, editor ${JSON.stringify(have[i])}`);
    });
  }
  return {missing, count: app.graph._nodes.length, mismatches};
}
"""


# Requests the UIs make on every start whose 404 is normal (files a user may add): the 2024 UI's
# favicon; the 2025 frontend's user files and folders (/user.css, /api/userdata/user.css,
# comfy.templates.json, the listings of userdata workflows/ and subgraphs/), absent for a new user.
_EXPECTED_MISSES = ("/favicon.ico", "/user.css")
_EXPECTED_MISS_PREFIXES = ("/api/userdata",)


def _known_host_error(exc: Any) -> bool:
    """The 2025 frontend's (1.27.10) own start-up error for a new user, whatever the workflow:
    a setting's onChange (the canvas navigation mode) sets settings not yet registered
    (``TypeError: ... reading 'id'`` in ``onChange`` under ``addSetting``). Not the pack's."""
    stack = str(getattr(exc, "stack", "") or "")
    return "reading 'id'" in str(exc) and "addSetting" in stack


def _expected_miss(url: str) -> bool:
    from urllib.parse import urlsplit
    path = urlsplit(url).path
    return path.endswith(_EXPECTED_MISSES) or path.startswith(_EXPECTED_MISS_PREFIXES)


class ComfyBrowser:
    """One headless Chromium; :meth:`load_workflow` opens a fresh page per workflow."""

    def __init__(self, executable: str) -> None:
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS,
                                                 headless=True)

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()

    def new_page(self, width: int = 1600, height: int = 1000):
        """A fresh Playwright page of this browser (the caller closes it)."""
        return self._browser.new_page(viewport={"width": width, "height": height})

    def load_workflow(self, url: str, workflow: dict[str, Any] | str | Path,
                      screenshot: Path | None = None, timeout_ms: int = 60_000) -> LoadReport:
        if isinstance(workflow, (str, Path)):
            workflow = json.loads(Path(workflow).read_text())
        page = self.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: None if _known_host_error(exc) else errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: errors.append(f"console.error: {msg.text}")
                if msg.type == "error" and "Failed to load resource" not in msg.text else None)
        # A failed request is reported with its address (the console line above omits it).
        page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}")
                if r.status >= 400 and not _expected_miss(r.url) else None)
        try:
            page.goto(url, wait_until="load", timeout=timeout_ms)
            page.wait_for_function("() => window.app && window.app.graph && "
                                   "Object.keys(LiteGraph.registered_node_types).length > 50",
                                   timeout=timeout_ms)
            result = page.evaluate(_LOAD_JS, workflow)
            page.wait_for_timeout(300)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
        finally:
            page.close()
        return LoadReport(missing_node_types=result["missing"], js_errors=errors,
                          node_count=result["count"], widget_mismatches=result["mismatches"],
                          screenshot=screenshot)
