"""A worker's JSON log, read back: the lines that would page someone."""

from __future__ import annotations

import json

#: Levels an operator is told about.
LOUD = frozenset({"WARNING", "ERROR", "CRITICAL"})


def loud_lines(log: str) -> list[str]:
    """The messages of ``log`` at WARNING and above; librdkafka's own lines (``%N|...``) included from level 4 down."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("level") in LOUD:
                found.append(f"{record['level']} {record.get('logger')}: {record.get('message')}")
        elif line.startswith("%") and line[1:2].isdigit() and int(line[1]) <= 4:
            found.append(line)
    return found
