"""ruff and mypy, configured in pyproject.toml, run clean: a new lint or type error fails the suite.

ruff covers every package; mypy covers the files that ``[tool.mypy] files`` lists (the typed core:
errors, protocols, value types, the evaluation package, the CLI); extend that list as modules are typed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINTED = ["layered", "connectors", "pipelines"]


def _run(tool: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    try:
        __import__(tool)
    except ImportError:
        pytest.fail(f"{tool} is not installed: install the dev extra (pip install -e '.[dev]')")
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def test_ruff_is_clean():
    proc = _run("ruff", "check", "--no-cache", *LINTED)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean():
    proc = _run("mypy")  # the files and options in pyproject.toml; the cache (.mypy_cache) makes reruns fast
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_the_checks_can_fail(tmp_path):
    # The same configuration, on a module with one lint error and one type error, reports both.
    package = tmp_path / "layered"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("import os\n\n\ndef half(n: int) -> int:\n    return n / 2\n")
    config = str(REPO / "pyproject.toml")
    ruff = _run("ruff", "check", "--no-cache", "--config", config, "layered", cwd=tmp_path)
    assert ruff.returncode == 1 and "F401" in ruff.stdout, ruff.stdout + ruff.stderr
    mypy = _run("mypy", "--config-file", config, "--cache-dir", str(tmp_path / "mypy-cache"), "layered/bad.py", cwd=tmp_path)
    assert mypy.returncode == 1 and "Incompatible return value type" in mypy.stdout, mypy.stdout + mypy.stderr
