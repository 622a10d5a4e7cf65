"""The linters agree with the code: ruff and mypy, with pyproject.toml's settings.

They run here so that CI's one command checks them too (``.ci/run``), at
the versions ``.ci/constraints.txt`` pins: a newer mypy or ruff may judge
the same code differently, and that should be a deliberate upgrade.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def require(module: str) -> None:
    """Skip without ``module`` (it comes with the test extra); under CI=true, fail."""
    if importlib.util.find_spec(module) is not None:
        return
    reason = f"{module} is not installed (it comes with the test extra)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the linters", pytrace=False)
    pytest.skip(reason)


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing() -> None:
    require("ruff")
    result = run_tool("ruff", "check", "cachedvec", "tests", "bench", "examples", "migrations")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted() -> None:
    require("ruff")
    result = run_tool(
        "ruff", "format", "--check", "cachedvec", "tests", "bench", "examples", "migrations"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    require("mypy")
    result = run_tool("mypy", "cachedvec")
    assert result.returncode == 0, result.stdout + result.stderr
