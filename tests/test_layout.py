"""The house rules that a reviewer would otherwise check by hand."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST_MODULES = {"comfy", "comfy_extras", "folder_paths", "nodes", "execution", "server"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_hp3_core_never_imports_the_host():
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & HOST_MODULES)
                 for p in (REPO / "hp3_core").rglob("*.py") if _imports(p) & HOST_MODULES}
    assert not offenders, f"hp3_core must stay host-independent: {offenders}"


def _absolute_imports(rel: str, source: str) -> set[str]:
    """Every module the file at ``rel`` (repo-relative) imports, relative imports made absolute."""
    parts = rel.removesuffix(".py").split("/")
    package = parts[:-1]  # a module's package; for __init__.py, the package itself
    found = set()
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from .. import commands`
    return found


def _layer_offenders(forbidden: str, allowed: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """hp3_core files outside ``allowed`` (path prefixes) that import ``forbidden`` or below it."""
    offenders = {}
    for path in (REPO / "hp3_core").rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if allowed and rel.startswith(allowed):
            continue
        bad = sorted(m for m in _absolute_imports(rel, path.read_text())
                     if m == forbidden or m.startswith(forbidden + "."))
        if bad:
            offenders[rel] = bad
    return offenders


COMMAND_LAYER = ("hp3_core/commands/", "hp3_core/cli.py")


def test_library_code_never_imports_the_command_layer():
    # Commands sit on top of the library; only the CLI that dispatches to them may import them.
    offenders = _layer_offenders("hp3_core.commands", COMMAND_LAYER)
    assert not offenders, f"only hp3_core/commands and hp3_core/cli.py may import hp3_core.commands: {offenders}"


def test_the_package_never_imports_the_tests():
    # Test fixtures (tiny models, synthetic FLAME files) live in tests/ and never ship.
    offenders = {**_layer_offenders("tests"), **_layer_offenders("harness")}
    assert not offenders, f"hp3_core must not import test code: {offenders}"


def test_import_resolution_sees_relative_imports_of_the_commands():
    # The checks above are only as good as this resolver.
    probe = "from ..commands.generate import run\nfrom .. import commands\nfrom .runner import x\n"
    found = _absolute_imports("hp3_core/evaluation/probe.py", probe)
    assert {"hp3_core.commands.generate", "hp3_core.commands", "hp3_core.evaluation.runner"} <= found
    assert "hp3_core.commands" in _absolute_imports("hp3_core/__init__.py", "from . import commands\n")
    assert "hp3_core.commands" in _absolute_imports("hp3_core/cli.py", "from .commands import COMMANDS\n")


def test_hp3_core_imports_and_runs_without_comfyui():
    # A finder that makes every host module unimportable, as on a machine without ComfyUI.
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({sorted(HOST_MODULES)!r}))\n"
        "import hp3_core, hp3_core.cli, hp3_core.weights, hp3_core.config, hp3_core.comfy_server\n"
        "from hp3_core.config import HP3Config\n"
        "assert HP3Config.for_family('sdxl').encoder.width == 2048\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_library_code_logs_instead_of_printing():
    offenders = [str(p.relative_to(REPO)) for d in ("hp3_core", "nodes") for p in (REPO / d).rglob("*.py")
                 if re.search(r"^\s*print\(", p.read_text(), re.M)]
    assert not offenders


def test_requirements_never_pin_torch():
    names = [re.split(r"[<>=!~\[; ]", line.strip())[0].lower()
             for line in (REPO / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert names, "requirements.txt lists nothing"
    assert not {"torch", "torchvision", "torchaudio"} & set(names)


def test_pyproject_has_project_and_registry_metadata():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["name"] and data["project"]["version"]
    assert {"PublisherId", "DisplayName"} <= set(data["tool"]["comfy"])


def test_pack_entry_only_reexports_the_mappings():
    tree = ast.parse((REPO / "__init__.py").read_text())
    stmts = [s for s in tree.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    assert isinstance(stmts[0], ast.ImportFrom) and stmts[0].level == 1
    assert {a.name for a in stmts[0].names} == {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"}
    assert all(isinstance(s, (ast.ImportFrom, ast.Assign)) for s in stmts)


def test_pack_uses_relative_imports_only():
    # An absolute `import hp3_core` from nodes/ would load a second copy (or none) in ComfyUI.
    bad = [str(p.relative_to(REPO)) for p in (REPO / "nodes").rglob("*.py") if "hp3_core" in _imports(p)]
    assert not bad


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make demo" in readme
