"""The house rules of docs/architecture.md, checked on the source: the floors of the package import only
downwards, no import circle anywhere (imports inside functions included), the plain-PyTorch floors never
import the training frameworks, and `import swtasks` stays cheap.

The oracle reads the source with `ast` (it does not import the modules it judges), so a rule broken behind a
function-local import is found as well as one at the top of a file.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "swtasks"

# floor of each top-level part of the package; an import may go to a lower floor or stay inside its own part
FLOORS = {
    "errors": 0,
    "ops": 1, "checkpoint": 1, "cliutil": 1,
    "layers": 2,
    "sparse": 3,
    "models": 4,
    "": 4.5,  # swtasks/__init__.py: the model API of the floors below, re-exported lazily
    "convert": 5, "export": 5, "quantize": 5, "timm": 5,
    "analysis": 5.5,  # the model benchmark times exported files (ONNX Runtime, INT8) too
    "cls": 6, "mm": 6,
}  # fmt: skip
PLAIN_PYTORCH = ("errors", "ops", "checkpoint", "layers", "sparse", "models")
FRAMEWORKS = ("lightning", "pytorch_lightning", "mmengine", "mmcv", "mmdet", "mmseg", "torchmetrics")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["swtasks", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in mods else base, node.lineno))
    return found


def _graph():
    mods = _modules()
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    external: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, path in mods.items():
        for target, line in _imports(name, path, mods):
            if target.split(".")[0] != "swtasks":
                external[name].append((target, line))
                continue
            while target not in mods:
                target = target.rsplit(".", 1)[0]
            if target != name:
                edges[name].setdefault(target, line)
    return mods, edges, external


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_part_of_the_package_has_a_floor():
    mods, _, _ = _graph()
    assert sorted({_part(m) for m in mods} - set(FLOORS)) == []


def test_imports_go_down_the_floors_only():
    mods, edges, _ = _graph()
    wrong = [
        f"{mods[a].relative_to(PACKAGE.parent)}:{line} imports {b}"
        for a, targets in edges.items()
        for b, line in targets.items()
        if _part(a) != _part(b) and FLOORS[_part(b)] >= FLOORS[_part(a)]
    ]
    assert wrong == []


def test_no_import_circle_anywhere():
    mods, edges, _ = _graph()
    # Tarjan's strongly connected components; any component of two or more modules is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(mods):
        if module not in index:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("part", PLAIN_PYTORCH)
def test_plain_pytorch_floors_never_import_the_frameworks(part):
    mods, _, external = _graph()
    wrong = [
        f"{mods[m].relative_to(PACKAGE.parent)}:{line} imports {target}"
        for m in mods
        if _part(m) == part
        for target, line in external[m]
        if target.split(".")[0] in FRAMEWORKS
    ]
    assert wrong == []


def test_import_swtasks_and_create_model_stay_cheap():
    code = (
        "import sys, swtasks\n"
        "swtasks.create_model('shiftwise_atto', num_classes=3)\n"
        "print(sorted(m for m in ('triton', 'lightning', 'mmengine', 'mmdet', 'mmseg', 'mmcv', 'matplotlib', 'onnx') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pointers_to_documentation_sections_name_headings_that_exist():
    """`docs/X.md, "Heading"` in code, configs, scripts and documents: the heading (or its beginning) exists."""
    repo = PACKAGE.parent
    headings = {
        f"docs/{doc.name}": [re.sub(r"^#+\s*", "", line).strip() for line in doc.read_text().splitlines()
                             if line.startswith("#")]
        for doc in (repo / "docs").glob("*.md")
    }
    pointer = re.compile(r"(docs/[a-z-]+\.md)[,:]?\s+[\"'`]([^\"'`\n]+)[\"'`]")
    sources = [p for pattern in ("swtasks/**/*.py", "tools/**/*.py", "benchmarks/*.py", "configs/**/*",
                                 "scripts/*.sh", "docs/*.md", "README.md") for p in repo.glob(pattern) if p.is_file()]
    wrong = []
    for path in sources:
        text = path.read_text(errors="replace")
        for m in pointer.finditer(text):
            doc, heading = m.groups()
            if not any(h.startswith(heading) for h in headings.get(doc, [])):
                wrong.append(f"{path.relative_to(repo)}:{text.count(chr(10), 0, m.start()) + 1}: {doc}, {heading!r}")
    assert wrong == []
