"""The import rules of cvae_ray/LAYERS.md, checked on every module of the package.

One test reads the rules from the one file that states them, walks every import
statement (module level and inside functions) of every module, and fails naming the
module, the import and the rule it breaks.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cvae_ray"
LAYERS_FILE = PACKAGE / "LAYERS.md"
LAZY_ONLY = {"matplotlib", "umap", "ctgan"}


def _rules() -> dict[str, tuple[set[str], set[str]]]:
    """layer -> (layers it may import, third-party packages it never imports)."""
    rules = {}
    for line in LAYERS_FILE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`\w+`", cells[0]):
            continue
        names = [set(re.findall(r"`(\w+)`", cell)) for cell in cells[2:]]
        rules[cells[0].strip("`")] = (names[0], names[1])
    return rules


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(tree: ast.AST, module: str) -> list[tuple[str, bool, int]]:
    """(imported module, at module level, line) for every import in a module."""
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the package
                anchor = module.split(".")[:-node.level]
                base = ".".join(anchor + ([base] if base else []))
            if base == "cvae_ray":  # `from cvae_ray import x`: x is a layer or __version__
                found += [(f"cvae_ray.{a.name}", id(node) in top, node.lineno) for a in node.names]
            else:
                found.append((base, id(node) in top, node.lineno))
    return found


def test_every_import_follows_the_layer_rules():
    rules = _rules()
    assert {"data", "metrics", "model", "apps", "evaluation", "tools"} <= set(rules)
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        layer = _layer(path)
        assert layer in rules, f"{path.relative_to(PACKAGE)}: layer {layer!r} is not in LAYERS.md"
        allowed, never = rules[layer]
        module = ".".join(("cvae_ray",) + path.relative_to(PACKAGE).with_suffix("").parts)
        for name, top_level, line in _imports(ast.parse(path.read_text()), module):
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
            root = name.split(".")[0]
            if name.startswith("ray._private"):
                broken.append(f"{where}: ray._private is not a public API")
            if root == "cvae_ray":
                target = name.split(".")[1] if name.count(".") else ""
                if target and target != "__version__" and target not in allowed:
                    broken.append(f"{where}: {layer} may import only {sorted(allowed)}")
            elif root in never:
                broken.append(f"{where}: {layer} never imports {root}")
            elif root in LAZY_ONLY and top_level:
                broken.append(f"{where}: {root} is imported inside the function that uses it")
    assert not broken, "\n".join(broken)


def test_layers_without_ray_do_not_load_it_at_run_time():
    """The static check above, confirmed by importing every Ray-free module in a fresh
    interpreter (a dependency could pull Ray in)."""
    rules = _rules()
    modules = sorted(
        ".".join(("cvae_ray",) + p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and "ray" in rules[_layer(p)][1])
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert len(modules) > 20
