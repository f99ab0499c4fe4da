"""The node surface users depend on: type names never change; every node is documented."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Saved workflows refer to these names: removing or renaming one breaks users' files.
STABLE_NODE_TYPES = {
    "HP3ModelLoader",
    "HP3ModelInfo",
    "HP3ReconstructorLoader",
    "HP3HeadRetarget",
    "HP3FaceAnalysisLoader",
    "HP3HeadEncode",
    "HP3HeadController",
    "HP3ApplyConnector",
    "HP3Apply",
    "HP3HeadCrop",
}


def test_node_type_names_are_kept(comfy):
    assert STABLE_NODE_TYPES <= set(comfy.pack.NODE_CLASS_MAPPINGS)
    assert set(comfy.pack.NODE_CLASS_MAPPINGS) <= set(comfy.pack.NODE_DISPLAY_NAME_MAPPINGS)


@pytest.fixture(params=sorted(STABLE_NODE_TYPES))
def node_class(request, comfy):
    return comfy.pack.NODE_CLASS_MAPPINGS[request.param]


def test_nodes_are_documented(node_class):
    assert node_class.CATEGORY.startswith("HP3/")
    assert len(node_class.DESCRIPTION) > 40
    assert len(node_class.OUTPUT_TOOLTIPS) == len(node_class.RETURN_TYPES)
    for section in node_class.INPUT_TYPES().values():
        for name, spec in section.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"input '{name}' has no tooltip"


def test_every_node_has_a_description_and_an_hp3_category(comfy):
    for name, cls in comfy.pack.NODE_CLASS_MAPPINGS.items():
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40, name
        assert cls.CATEGORY.startswith("HP3"), name
        assert "HP3" in comfy.pack.NODE_DISPLAY_NAME_MAPPINGS[name], name


def test_every_input_has_a_tooltip(comfy):
    for name, cls in comfy.pack.NODE_CLASS_MAPPINGS.items():
        for section in ("required", "optional"):
            for arg, spec in cls.INPUT_TYPES().get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert isinstance(opts.get("tooltip"), str) and len(opts["tooltip"]) > 10, f"{name}.{arg}"


def test_every_output_is_named_and_explained(comfy):
    for name, cls in comfy.pack.NODE_CLASS_MAPPINGS.items():
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS), name
        assert all(n and n.islower() for n in cls.RETURN_NAMES), name


def test_pack_types_connect_only_between_hp3_nodes(comfy):
    """HP3_* sockets: every one produced is consumed by some HP3 input and the other way round,
    so they connect only where they make sense (never to a core socket)."""
    produced, consumed = set(), set()
    for cls in comfy.pack.NODE_CLASS_MAPPINGS.values():
        produced |= {t for t in cls.RETURN_TYPES if t.startswith("HP3_")}
        for section in cls.INPUT_TYPES().values():
            consumed |= {s[0] for s in section.values() if isinstance(s[0], str) and s[0].startswith("HP3_")}
    assert produced == consumed == {"HP3_MODEL", "HP3_RECONSTRUCTOR", "HP3_HEAD3D", "HP3_FACE_ANALYSIS",
                                    "HP3_HEAD", "HP3_CONDITIONS"}
    core = set(comfy.nodes.NODE_CLASS_MAPPINGS) - set(comfy.pack.NODE_CLASS_MAPPINGS)
    for name in core:
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[name]
        assert not {t for t in getattr(cls, "RETURN_TYPES", ()) if isinstance(t, str)} & produced, name


def test_is_changed_is_stable_for_the_same_inputs(comfy):
    """Pure nodes have no IS_CHANGED (nothing re-runs when inputs did not change); the loaders that
    have one answer the same for the same files (never random or NaN)."""
    with_is_changed = {n for n, c in comfy.pack.NODE_CLASS_MAPPINGS.items() if hasattr(c, "IS_CHANGED")}
    assert with_is_changed <= {"HP3ModelLoader", "HP3ReconstructorLoader"}
    cls = comfy.pack.NODE_CLASS_MAPPINGS
    first = cls["HP3ReconstructorLoader"].IS_CHANGED("auto", "cpu")
    assert first == cls["HP3ReconstructorLoader"].IS_CHANGED("auto", "cpu") and first == first
    assert cls["HP3ModelLoader"].IS_CHANGED("absent.safetensors") == "absent.safetensors"


def test_per_frame_nodes_report_progress_and_stop_on_cancel(comfy, monkeypatch):
    """nodes/progress.frame_callback: one progress step per frame; Cancel raises the host's
    interrupt exception (the retarget and encode loops call it after every frame)."""
    progress = comfy.pack_module("nodes.progress")
    mm = comfy.module("comfy.model_management")
    updates = []
    monkeypatch.setattr(comfy.module("comfy.utils"), "PROGRESS_BAR_HOOK", lambda value, total, preview, **kw: updates.append((value, total)))
    on_frame = progress.frame_callback(3)
    on_frame(0)
    on_frame(1)
    assert updates == [(1, 3), (2, 3)]
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            on_frame(2)
    finally:
        mm.interrupt_current_processing(False)
    for module in ("nodes.head3d_nodes", "nodes.head_encoder_nodes"):
        assert "frame_callback(len(" in Path(comfy.pack_module(module).__file__).read_text(), module


def test_nodes_md_documents_every_node_and_input(comfy):
    """NODES.md (written by hand) names every node type, its display name and every input."""
    text = (REPO / "NODES.md").read_text()
    for name, cls in comfy.pack.NODE_CLASS_MAPPINGS.items():
        assert f"`{name}`" in text, name
        assert comfy.pack.NODE_DISPLAY_NAME_MAPPINGS[name] in text, name
        section = text.split(f"`{name}`", 1)[1].split("\n## ", 1)[0]
        for inputs in cls.INPUT_TYPES().values():
            for arg in inputs:
                assert f"`{arg}`" in section, f"NODES.md: input '{arg}' of {name}"
        for out in cls.RETURN_NAMES:
            assert f"`{out}`" in section, f"NODES.md: output '{out}' of {name}"
