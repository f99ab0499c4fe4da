"""The node surface users depend on: type names never change; every node is documented."""
from __future__ import annotations

import pytest

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
