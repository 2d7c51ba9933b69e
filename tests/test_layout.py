"""The layout's rules, read from the source: the library never imports Prefect, and nothing users call imports
the studies (experiments/)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every module each file of ``package`` imports (absolute names; relative imports are inside the package)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    assert found, f"no Python files under {package}/"
    return found


def offenders(package: str, top: str) -> dict[str, set[str]]:
    return {path: {n for n in names if n.split(".")[0] == top}
            for path, names in imported_modules(package).items() if any(n.split(".")[0] == top for n in names)}


def test_the_library_never_imports_prefect():
    assert offenders("pipeline", "prefect") == {}


@pytest.mark.parametrize("package", ["pipeline", "flows"])
def test_nothing_users_call_imports_the_studies(package):
    assert offenders(package, "experiments") == {}


def test_the_rules_see_real_imports():
    """The scan finds the imports that exist, so an empty result above means something."""
    assert offenders("flows", "prefect") and offenders("experiments", "flows")
    assert "pipeline.config" in imported_modules("experiments")["experiments/studies.py"]
