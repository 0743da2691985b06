"""The layers of issue 13 stay layered, and the environment-variable contract stays documented.

``sd_energy_contract`` (standard library, PyYAML lazily) <- ``profiling`` <- ``app`` | ``power_modeling``.
An upward import is easy to add (one line inside a function) and only hurts later: a
``power_modeling`` install that drags in torch, a ``profiling`` that cannot run without the app.
The contracts live in ``.importlinter`` at the repo root; ``lint-imports`` there checks the same.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONTRACTS = REPO / ".importlinter"
LAYERED = ("sd_energy_contract", "profiling", "app", "power_modeling")
# Source and text files where an environment variable name can stand.
TEXT_SUFFIXES = {".py", ".sh", ".md", ".yaml", ".yml", ".cfg", ".toml", ".ipynb"}


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the contracts file in ``cwd``, in a fresh interpreter.

    A fresh interpreter, so the packages are found from ``cwd`` first (sys.path[0] of ``-c``),
    not from modules this test session already imported; no cache, so nothing is written.
    """
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept() -> None:
    pytest.importorskip("importlinter", reason="pip install -e .[test] (import-linter)")
    p = _lint_imports(REPO)
    broken = [line for line in p.stdout.splitlines() if "BROKEN" in line]
    assert p.returncode == 0, "import contracts broken: " + "; ".join(broken) + "\n" + p.stdout + p.stderr
    assert "0 broken" in p.stdout and " kept" in p.stdout, p.stdout  # it read our contracts, not none


def test_contracts_catch_upward_imports_inside_functions(tmp_path: Path) -> None:
    """The contracts file itself: each contract breaks on a function-level import it forbids.

    Without this a contracts file that checks nothing (a typo in a package name, a lost
    ``include_external_packages``) would pass the test above forever.
    """
    pytest.importorskip("importlinter", reason="pip install -e .[test] (import-linter)")
    shutil.copy(CONTRACTS, tmp_path / ".importlinter")
    for pkg in LAYERED:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    plants = {"profiling/planning.py": "power_modeling.guided", "power_modeling/guided.py": "torch",
              "app/cli.py": "power_modeling", "sd_energy_contract/tables.py": "numpy"}
    for rel, target in plants.items():
        (tmp_path / rel).write_text(f"def later():\n    import {target}\n")
    p = _lint_imports(tmp_path)
    assert p.returncode != 0, p.stdout
    contracts = CONTRACTS.read_text().count("[importlinter:contract:")
    assert contracts >= 5 and p.stdout.count(" BROKEN") == contracts, p.stdout
    assert "profiling.planning -> power_modeling.guided" in p.stdout, p.stdout


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported inside a function or class) for each absolute import in a file."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], nested) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                found.append((child.module.split(".")[0], nested))
            visit(child, nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def test_contract_layer_needs_only_the_standard_library() -> None:
    """The bottom layer must import on a bare Python: the standard library, and PyYAML only where read.

    A forbidden list can only name the packages someone thought of; this checks what is allowed.
    """
    allowed = set(sys.stdlib_module_names) | {"__future__", "sd_energy_contract"}
    bad = []
    for path in sorted((REPO / "sd_energy_contract").rglob("*.py")):
        for module, nested in _imports(path):
            lazy_yaml = module == "yaml" and nested and path.name == "gpus.py"
            if module not in allowed and not lazy_yaml:
                bad.append(f"{path.relative_to(REPO)}: {module}{'' if nested else ' (module level)'}")
    assert not bad, "sd_energy_contract imports beyond the standard library: " + ", ".join(bad)


def test_power_modeling_modules_import_without_torch() -> None:
    """Importing the analysis (its CLI, report and guided planner) must not load torch.

    Checked at run time too, because a dependency of ours could pull torch in where no import
    statement of ours names it. Only module import: loading a skops model makes scikit-learn
    import torch's array-API shim when torch is installed, which is not an import of ours.
    """
    code = ("import sys, power_modeling, power_modeling.cli, power_modeling.report, power_modeling.guided\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", f"importing power_modeling loaded {p.stdout.strip()}"


def _repo_text_files() -> list[Path]:
    """The repo's own text files: tracked or untracked-but-not-ignored (so not .venv or results)."""
    p = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip(f"git ls-files failed: {p.stderr.strip()}")
    paths = (REPO / name for name in p.stdout.split("\0") if name)
    return [path for path in paths if (path.suffix in TEXT_SUFFIXES or path.name == "Makefile") and path.is_file()]


def test_environment_variables_are_in_the_readme() -> None:
    """Every variable of ``sd_energy_contract.env.DOCUMENTED`` is named in README.md, where users look."""
    from sd_energy_contract import env

    readme = (REPO / "README.md").read_text()
    missing = [name for name in env.DOCUMENTED if not re.search(rf"\b{name}\b", readme)]
    assert not missing, f"README.md does not document {missing}"


def test_environment_variables_are_renamed_and_declared() -> None:
    """No old prefix is left, and every ``SD_ENERGY_*`` name the code uses is declared in the contract.

    The variables were renamed from the old ``PROFILING`` prefix to ``SD_ENERGY_``: a leftover old
    name is a setting that silently does nothing. A variable the code (outside tests) uses but
    ``DOCUMENTED`` lacks is one a user cannot find.
    """
    from sd_energy_contract import env

    old = re.compile(r"\bPROFILING" r"_[A-Z0-9]")  # split so this file does not match itself
    ours = re.compile(r"\b" + env.PREFIX + r"[A-Z0-9_]*[A-Z0-9]")
    leftovers, undocumented = [], set()
    for path in _repo_text_files():
        text = path.read_text(errors="replace")
        rel = path.relative_to(REPO)
        leftovers.extend(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}" for m in old.finditer(text))
        if rel.parts[0] != "tests":
            undocumented.update(f"{name} ({rel})" for name in ours.findall(text) if name not in env.DOCUMENTED)
    assert not leftovers, f"old PROFILING-prefixed variable names at {leftovers}"
    assert not undocumented, f"used but not in sd_energy_contract.env.DOCUMENTED: {sorted(undocumented)}"
