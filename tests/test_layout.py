"""The layout shows the architecture: imports flow one way, files stay small, scripts stay thin.

Layers, lowest first: errors; attention, devices, viz; model, data; sampling, checkpoint, config; training,
analysis; bench; cli. A module may import its own layer's package and anything below it, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import attention_lab

PACKAGE = Path(attention_lab.__file__).parent
ROOT = PACKAGE.parents[1]
MAX_LINES = 400

RANK = {
    "errors": 0,
    "attention": 1,
    "devices": 1,
    "viz": 1,
    "model": 2,
    "data": 2,
    "sampling": 3,
    "checkpoint": 3,
    "config": 3,
    "flops": 3,
    "training": 4,
    "analysis": 4,
    "bench": 5,
    "cli": 6,
    "conf": 0,
    "__init__": 7,
}
SOURCES = sorted(PACKAGE.rglob("*.py"))


def layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def internal_imports(path: Path) -> set[str]:
    """Top-level attention_lab parts that `path` imports (relative or absolute)."""
    tree = ast.parse(path.read_text())
    package_parts = path.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
                if not parts:  # `from .. import x` at the top: x is the part
                    parts = [alias.name for alias in node.names]
                    found.update(parts)
                    continue
                found.add(parts[0])
            elif node.module and node.module.startswith("attention_lab."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("attention_lab."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_down_the_layers(path: Path) -> None:
    layer = layer_of(path)
    for imported in internal_imports(path):
        assert imported in RANK, f"{path.name} imports attention_lab.{imported}, which has no layer here"
        assert imported == layer or RANK[imported] < RANK[layer], (
            f"{path.relative_to(PACKAGE)} ({layer}) imports {imported}: imports must flow "
            "cli -> bench -> training/analysis -> config/checkpoint/sampling -> model/data -> attention"
        )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_source_file_is_over_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_a_layer_violation_would_be_caught(tmp_path: Path) -> None:
    """Negative control: the checker sees a relative import that climbs a layer."""
    fake = PACKAGE / "data" / "_layout_probe.py"
    fake.write_text("from ..training import task\n")
    try:
        assert "training" in internal_imports(fake)
        with pytest.raises(AssertionError, match="imports training"):
            test_imports_flow_down_the_layers(fake)
    finally:
        fake.unlink()


@pytest.mark.parametrize("path", sorted((ROOT / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_scripts_are_thin_and_use_no_path_tricks(path: Path) -> None:
    text = path.read_text()
    assert "sys.path" not in text
    assert "from attention_lab.cli" in text
    assert len(text.splitlines()) <= 40


def test_nothing_imports_a_script_or_conftest() -> None:
    for path in [*SOURCES, *sorted((ROOT / "tests").rglob("*.py"))]:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        assert "from conftest import" not in text, path
        assert "spec_from_file_location" not in text, path
        assert "sys.path.insert" not in text, path
