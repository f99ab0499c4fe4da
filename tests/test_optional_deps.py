"""The pack imports in ComfyUI without its optional packages; the feature reports the absence."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hp3_core.errors import MissingDependencyError
from hp3_core.optional import require

OPTIONAL = ["insightface", "mediapipe", "onnxruntime", "onnx", "cv2"]


def test_pack_loads_in_comfyui_without_optional_packages(comfy_host_dir):
    code = textwrap.dedent(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # as if not installed: import raises, find_spec gives None
        sys.path.insert(0, {str(comfy_host_dir)!r})
        import comfy.cli_args; comfy.cli_args.args.cpu = True
        import nodes
        assert nodes.load_custom_node({str(comfy_host_dir / 'custom_nodes' / 'ComfyUI-HP3')!r})
        assert 'HP3ModelLoader' in nodes.NODE_CLASS_MAPPINGS
        assert all(sys.modules[m] is None for m in {OPTIONAL!r})
        print('loaded')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert out.returncode == 0 and "loaded" in out.stdout, out.stderr[-3000:]


def test_require_names_package_feature_and_install_command():
    with pytest.raises(MissingDependencyError) as err:
        require("surely_not_installed_pkg_hp3", "Face analysis")
    msg = str(err.value)
    assert "Face analysis" in msg and "'surely_not_installed_pkg_hp3'" in msg and "pip install" in msg
    assert require("json", "anything").dumps([]) == "[]"


def test_broken_package_is_not_reported_as_missing(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg_hp3").mkdir()
    (tmp_path / "brokenpkg_hp3" / "__init__.py").write_text("import missing_inner_dependency_hp3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependencyError, match="failed to import: .*missing_inner_dependency_hp3"):
        require("brokenpkg_hp3", "Something")
