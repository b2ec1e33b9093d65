"""The README's example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.http_target import HttpTarget

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_runs(target: HttpTarget, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Using it\n\n```python\n(.*?)```", readme, re.DOTALL)
    assert example is not None
    script = tmp_path / "example.py"
    script.write_text(example.group(1))

    completed = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "TRS_EXAMPLE_URL": f"{target.http}/ok", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 3
    assert all(line.endswith(" 200 2") for line in lines)
