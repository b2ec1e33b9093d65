"""The exit codes of ``trs run``, after httpie's: 0 when every task got a response, small codes for the rest.

When several apply, the first in this order wins: interrupted, a task error, a 5xx, a 4xx.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from shared.models import TaskResult

__all__ = ["ExitCode", "batch_exit_code"]


class ExitCode(enum.IntEnum):
    OK = 0  #: every task got a response (with ``--check-status``: none of them 4xx or 5xx)
    FAILED = 1  #: the batch could not run: a bad task file, a broker that doesn't answer
    USAGE = 2  #: a bad option or a missing file (click's own code)
    TASK_ERROR = 3  #: some task ended in an error, with no response (timeout, connect_error, ...)
    CLIENT_ERROR = 4  #: with ``--check-status``: some task got a 4xx
    SERVER_ERROR = 5  #: with ``--check-status``: some task got a 5xx
    INTERRUPTED = 130  #: Ctrl-C (SIGINT) cancelled the batch, as a shell reports a SIGINT death


def batch_exit_code(results: Iterable[TaskResult], *, check_status: bool) -> ExitCode:
    """The code for a batch that ran to its end with ``results``."""
    worst = ExitCode.OK
    for result in results:
        if result.response is None:
            return ExitCode.TASK_ERROR
        if check_status and result.response.status_code >= 500:
            worst = ExitCode.SERVER_ERROR
        elif check_status and result.response.status_code >= 400 and worst is ExitCode.OK:
            worst = ExitCode.CLIENT_ERROR
    return worst
