"""Commands run as subprocesses by the tests: output captured as text, never a shell."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(
    argv: list[str], env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``argv`` run from the repository root; ``env`` is its whole environment (None: this
    process's). Never raises on a non-zero exit: the test checks ``returncode``."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=dict(env) if env is not None else None,
        check=False,
    )


def rayfly_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m rayfly.cli *args``; ``env`` as for :func:`run`, by default this process's
    with ``RAY_ADDRESS`` cleared (the CLI finds the local cluster itself)."""
    env = env if env is not None else {**os.environ, "RAY_ADDRESS": ""}
    return run([sys.executable, "-m", "rayfly.cli", *args], env, timeout)
