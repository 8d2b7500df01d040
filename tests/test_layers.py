"""DESIGN.md's layering: imports only go down, `modeling_memcomp` <- `trainers` <- `hub_cards`, `benchmarks`; a lower
layer never imports a higher one, nor names one in a string (a lazy `importlib` import is an import too)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {
    "modeling_memcomp": set(),
    "trainers": {"modeling_memcomp"},
    "hub_cards": {"modeling_memcomp", "trainers"},
    "benchmarks": {"modeling_memcomp", "trainers", "hub_cards"},  # its synthetic run orchestrates all of them
}
OURS = {*MAY_IMPORT, "examples"}


def imported_modules(tree: ast.AST):
    """(line, dotted name) of every absolute import and of every string that is one of our module paths."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.split(".")[0] in OURS:
            if node.value.replace(".", "").replace("_", "").replace(":", "").isalnum():  # a module path, not prose
                yield node.lineno, node.value.split(":")[0]


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_only_go_down(package):
    upward = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_modules(ast.parse(path.read_text(), str(path))):
            top = name.split(".")[0]
            if top in OURS and top != package and top not in MAY_IMPORT[package]:
                upward.append(f"{path.relative_to(ROOT)}:{line} {name}")
    assert not upward, f"{package} reaches up a layer: {upward}"


def test_the_console_script_finds_the_upper_layers_commands_as_entry_points():
    from modeling_memcomp.cli import delegated_commands

    commands = {name: entry.value for name, entry in delegated_commands().items()}
    assert commands == {"bench": "benchmarks.latency:main", "push": "hub_cards.push:main"}
