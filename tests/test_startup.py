"""Start-up: what needs no model imports no torch, Lightning or scvi-tools (checked in fresh processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "scvi", "scanpy")


def imported_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter and report which heavy modules it imported."""
    report = f"import json, sys; print('MODULES', json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    return json.loads(line.removeprefix("MODULES "))


def cli(*args: str) -> str:
    """Run the command line in-process inside the fresh interpreter (typer exits through SystemExit)."""
    call = f"main({list(args)!r})"
    return f"from scgeneformer.cli import main\ntry:\n    {call}\nexcept SystemExit as e:\n    assert not e.code, e"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("import + list_models()", "import scgeneformer as sgf\nsgf.list_models()"),
        ("settings and Execution", "import scgeneformer as sgf\nsgf.settings.precision = 'bf16'\nsgf.Execution()"),
        ("scgeneformer models", cli("models")),
        ("scgeneformer --help", cli("--help")),
        ("scgeneformer embed --help", cli("embed", "--help")),
    ],
)
def test_no_model_no_torch(name, code):
    loaded = imported_after(code)
    assert not any(loaded.values()), f"{name} imported {[m for m, yes in loaded.items() if yes]}"
