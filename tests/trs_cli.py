"""The ``trs`` command as tests run it: this checkout's code in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.worker_process import ROOT


def trs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "producer", *args]


def trs_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def trs(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``trs`` to its end, with ``input`` (or nothing) on its standard input; its output is captured as text."""
    return subprocess.run(
        trs_command(*args),
        cwd=ROOT,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=trs_env(**(env or {})),
        check=False,
    )
