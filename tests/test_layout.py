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
                # `from pipeline import distill` imports pipeline.distill: each name counts as module.name too
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
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


def stacking_imports(package: str) -> dict[str, set[str]]:
    """What each file of ``package`` outside pipeline/stacking/ takes from the stacking package: the package's
    own names (``from pipeline.stacking import x``) or its modules (``pipeline.stacking.stack``)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        if (REPO / "pipeline" / "stacking") in path.parents:
            continue
        taken = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                if node.module == "pipeline":
                    taken |= {f"pipeline.{a.name}" for a in node.names if a.name == "stacking"}
                elif node.module == "pipeline.stacking":
                    taken |= {f"pipeline.stacking:{a.name}" for a in node.names}
                elif (node.module or "").startswith("pipeline.stacking."):
                    taken.add(node.module)
            elif isinstance(node, ast.Import):
                taken |= {a.name for a in node.names if a.name.split(".")[:2] == ["pipeline", "stacking"]}
        if taken:
            found[str(path.relative_to(REPO))] = taken
    return found


def test_the_stacking_engine_is_reached_through_its_entry_point_alone():
    import pipeline.stacking

    public = {"pipeline.stacking"} | {f"pipeline.stacking:{name}" for name in pipeline.stacking.__all__}
    users = {path: taken for package in ("pipeline", "flows", "experiments")
             for path, taken in stacking_imports(package).items()}
    assert {path: taken - public for path, taken in users.items() if taken - public} == {}
    # The plain loop and the teacher's stage never import it; the student group does (the scan sees it).
    assert "pipeline/train.py" not in users and "pipeline/teacher.py" not in users
    assert users["pipeline/student_group.py"] == {"pipeline.stacking"}


STAGES = {"pipeline.teacher", "pipeline.distill", "pipeline.runs", "pipeline.student_group", "pipeline.train",
          "pipeline.stacking", "pipeline.view_fidelity", "pipeline.sequential"}


def _stage_imports(package: str) -> dict[str, set[str]]:
    """The stage modules each file of ``package`` imports, at its top or inside a function."""
    hits = {path: {n for n in names if any(n == s or n.startswith(s + ".") for s in STAGES)}
            for path, names in imported_modules(package).items()}
    return {path: hit for path, hit in hits.items() if hit}


@pytest.mark.parametrize("layer", ["pipeline/data", "pipeline/store"])
def test_the_data_and_store_layers_import_no_stage(layer):
    assert _stage_imports(layer) == {}


def test_the_stage_scan_sees_stage_imports():
    assert "pipeline.distill" in _stage_imports("flows")["flows/distill_flow.py"]
