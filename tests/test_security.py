"""No code from data: scan the package's source for eval/exec, unrestricted unpickling and unsafe YAML."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "archselect"
FILES = sorted(SRC.rglob("*.py"))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            bare = isinstance(f, ast.Name) or owner == "builtins"  # eval(...) / builtins.eval(...), not model.eval()
            yield node, owner, name, bare


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_code_from_data(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node, owner, name, bare in calls(tree):
        where = f"{path.relative_to(SRC)}:{node.lineno}"
        assert not (bare and name in ("eval", "exec", "compile", "__import__")), f"{name} at {where}"
        assert not (owner == "pickle" and name in ("load", "loads")), f"unrestricted unpickling at {where}"
        assert not (owner == "yaml" and name in ("load", "unsafe_load", "full_load")), f"unsafe YAML at {where}"
        if owner == "torch" and name == "load":
            kw = {k.arg: k.value for k in node.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            assert ok, f"torch.load without weights_only=True at {where}"


def test_the_scan_sees_the_package():
    assert len(FILES) > 20 and any(p.name == "safe_pickle.py" for p in FILES)
