"""Imports run one way, as docs/INTERFACES.md draws the layers (read statically, nested imports too).

Why a test: a lazy import inside a function is as much a dependency as one at the top, and an upward
one (the file-format layer reaching into the trainer, the data pipeline into the loop) is how seams
erode without anyone deciding it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

# each layer may import only what lies below it (docs/INTERFACES.md, "Layers"); a layer's banned set is
# everything above it
_ABOVE_EXPORT = ("torchsae.convert", "torchsae.merge", "torchsae.modular", "torchsae.demo", "torchsae.cli")
_ABOVE_TRAIN = ("torchsae.export", *_ABOVE_EXPORT)
_ABOVE_PIPELINES = ("torchsae.train", *_ABOVE_TRAIN)
_ABOVE_MODELS = ("torchsae.optim", "torchsae.losses", "pipelines", *_ABOVE_PIPELINES)

# package (folder under the repository) -> module prefixes it must never import
RULES = {
    "torchsae/dfl": ("torch", "torchsae.models", *_ABOVE_MODELS),
    "torchsae/models": _ABOVE_MODELS,
    "pipelines": _ABOVE_PIPELINES,
    "torchsae/train": _ABOVE_TRAIN,
    "torchsae/export": _ABOVE_EXPORT,
}


def _imported(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


@pytest.mark.parametrize("package", sorted(RULES))
def test_a_layer_imports_nothing_above_it(package: str) -> None:
    banned = RULES[package]
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imported(path)
        if any(name == b or name.startswith(b + ".") for b in banned)
    ]
    assert not offenders, offenders
