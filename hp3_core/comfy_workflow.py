"""Convert a UI-format workflow (what users share, version 0.4) to the API format of /prompt.

Used by ``demo`` (which runs a workflow on the host) and by the tests. Host-independent: the
node definitions come from a server's ``/object_info``, never from importing ComfyUI.

Widget values are matched to a node's inputs in INPUT_TYPES order (``input_order`` where the host
publishes it), read from the server's ``/object_info``, as the web UI's "Save (API Format)" does.
Both hosts' input forms are read:

* dropdowns as ``[[options...], {...}]`` (2024 and 2025) or ``["COMBO", {"options": [...]}]`` (2025);
* INT, FLOAT, STRING, BOOLEAN widgets; ``forceInput`` makes one a socket only (no widget value);
* a seed-like INT (``control_after_generate`` in its options, or named seed/noise_seed) is
  followed in ``widgets_values`` by its control value ("fixed", "randomize", ...);
* an upload combo (``image_upload``, ``video_upload``, ...) may be followed by its button's value;
* a widget converted to a socket (an input with a ``widget`` entry) takes its link when linked;
* ``widgets_values`` as a dict (name -> value, written by some frontends' nodes).

UI-only nodes (Note, PrimitiveNode, Reroute) are resolved away.
"""
from __future__ import annotations

from typing import Any

UI_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "file_upload")
# The value the upload button keeps in widgets_values ("image" in both hosts' LoadImage).
UPLOAD_VALUES = {"image", "video", "audio", "file", "upload"}


def _options(spec: list) -> dict[str, Any]:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: list) -> bool:
    """Whether an ``/object_info`` input spec is shown as a widget (holds a widgets_values entry)."""
    kind = spec[0]
    if _options(spec).get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def combo_options(spec: list) -> list | None:
    """A dropdown's choices in either form, or None for other inputs."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return list(_options(spec).get("options", []))
    return None


def _has_control_after(name: str, spec: list) -> bool:
    opts = _options(spec)
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def _is_marker(value: Any, markers: set[str]) -> bool:
    return isinstance(value, str) and value in markers


def input_specs(info: dict[str, Any]) -> list[tuple[str, list]]:
    """(name, spec) of a node's required then optional inputs, in the order widgets are laid out."""
    out = []
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        names = [n for n in order.get(section, []) if n in specs] or list(specs)
        names += [n for n in specs if n not in names]
        out += [(n, specs[n]) for n in names]
    return out


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
        raw = node.get("widgets_values") or []
        named = raw if isinstance(raw, dict) else None
        values = [] if named is not None else list(raw)
        inputs: dict[str, Any] = {}
        for name, spec in input_specs(info):
            if is_widget(spec):
                if named is not None:
                    value = named.get(name)
                else:
                    value = values.pop(0) if values else None
                    # The extra values the UI keeps after some widgets; popped only when they are
                    # there, so files saved by either frontend (and hand-written ones) convert.
                    if _has_control_after(name, spec) and values and _is_marker(values[0], CONTROL_VALUES):
                        values.pop(0)
                    if any(_options(spec).get(f) for f in UPLOAD_FLAGS) and values and _is_marker(values[0], UPLOAD_VALUES):
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
