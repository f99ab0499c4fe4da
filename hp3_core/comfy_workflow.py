"""Convert a UI-format workflow (what users share, version 0.4) to the API format of /prompt.

Used by ``demo`` (which runs a workflow on the host) and by the tests. Host-independent: the
node definitions come from a server's ``/object_info``, never from importing ComfyUI.

Widget values are matched to a node's inputs in INPUT_TYPES order, read from the server's
``/object_info``, as the 2024 web UI's "Save (API Format)" does: a seed-like INT is followed by
its ``control_after_generate`` value, an ``image_upload`` combo by its upload button's value.
UI-only nodes (Note, PrimitiveNode, Reroute) are resolved away.
"""
from __future__ import annotations

from typing import Any

UI_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_after(name: str, spec: list) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {l[0]: l for l in workflow.get("links", [])}

    def source_of(link_id: int) -> list:
        """[node id, slot] feeding a link, following Reroutes and Primitives."""
        _, src, slot, *_ = links[link_id]
        node = nodes[src]
        if node["type"] == "Reroute":
            return source_of(node["inputs"][0]["link"])
        return [str(src), slot]

    def primitive_value(link_id: int):
        node = nodes[links[link_id][1]]
        return node["widgets_values"][0] if node["type"] == "PrimitiveNode" else None

    api: dict[str, Any] = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY or node.get("mode", 0) in (2, 4):  # muted/bypassed
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type '{node['type']}' (node {node['id']}) is not installed")
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if is_widget(spec):
                    value = values.pop(0) if values else None
                    if _has_control_after(name, spec) and values:
                        values.pop(0)
                    if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("image_upload") and values:
                        values.pop(0)
                    if name in linked:
                        prim = primitive_value(linked[name])
                        inputs[name] = prim if prim is not None else source_of(linked[name])
                    elif value is not None:
                        inputs[name] = value
                elif name in linked:
                    inputs[name] = source_of(linked[name])
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api
