"""librdkafka's own log lines, through Python logging: WARNING and above, repeats folded.

Left alone, librdkafka prints its lines straight to stderr: about twenty a second while a broker
refuses connections. Given confluent-kafka's ``logger`` property, a client hands each line to
``logger.log(level, "%s [%s] %s", facility, client_name, message)`` instead, from the thread that
polls it (``poll``, ``consume``, ``flush``), so they take the application's handlers and format.
``log_level`` 4 (syslog's warning) drops the lines below WARNING inside librdkafka already.

A broker that doesn't answer makes librdkafka repeat the same line on every reconnect.
``RepeatFolder`` lets the first line of each facility and message shape through, then at most one
every ``FOLD_INTERVAL`` seconds, carrying the count of the lines held back since the last one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FOLD_INTERVAL",
    "LIBRDKAFKA_LOGGER",
    "MAX_SHAPES",
    "RepeatFolder",
    "kafka_logger",
    "message_shape",
    "with_kafka_logging",
]

#: The logger every TRS Kafka client logs through.
LIBRDKAFKA_LOGGER = "librdkafka"
#: Seconds between two lines of the same shape.
FOLD_INTERVAL = 60.0
#: Shapes remembered at once; the least recently seen is forgotten first.
MAX_SHAPES = 256
#: librdkafka's syslog level for warnings: it doesn't even format the lines below.
_LOG_WARNING = 4

# A line opens with the thread and the broker handle that saw it ("[thrd:kafka-0:9092/0]: kafka-0:9092/0: ",
# "[thrd:GroupCoordinator]: GroupCoordinator: kafka-0:9092: "). One refused broker is seen by its bootstrap,
# node and coordinator handles alike, and what follows names the address where it matters ("Connect to ipv4#...").
_ADDRESS = r"[^\s:]+(?::\d+)?"
_HANDLE_RE = re.compile(
    rf"^(?:\[thrd:[^\]]*\]:\s*)?(?:(?:{_ADDRESS}/(?:-?\d+|bootstrap)|GroupCoordinator(?:: {_ADDRESS})?): )?"
)
# Counts, durations and ids vary from one repeat to the next, numbers in addresses don't: a number
# next to a dot, colon, hash, slash or dash ("127.0.0.1:9092", "ipv4#", "kafka-0") is kept.
_VARYING_NUMBER_RE = re.compile(r"(?<![\w.:#/-])\d+(?![\d.:])")
# librdkafka's own count of lines it held back differs between otherwise equal lines.
_SUPPRESSED_RE = re.compile(r", \d+ identical error\(s\) suppressed")


def message_shape(message: str) -> str:
    """``message`` without its thread and broker handle, and with what changes between repeats replaced by ``#``."""
    return _VARYING_NUMBER_RE.sub("#", _SUPPRESSED_RE.sub("", _HANDLE_RE.sub("", message, count=1)))


def _shape_key(record: logging.LogRecord) -> tuple[str, str]:
    args = record.args
    if isinstance(args, tuple) and len(args) == 3:
        # confluent-kafka's arguments: facility, client name, message. The client name is left out
        # of the key, so that the same failure seen by a process's several clients folds into one.
        facility, _, message = args
        return str(facility), message_shape(str(message))
    return record.name, message_shape(record.getMessage())


@dataclass
class _Fold:
    emitted_at: float
    held: int = 0


class RepeatFolder(logging.Filter):
    """Lets through the first record of each shape, then one per ``interval``, with the count held back.

    The held-back count rides on the next record let through, in its message and as its
    ``repeats`` attribute; records of one shape that stop coming leave their last count unsaid.
    Thread-safe: each Kafka client logs from the thread that polls it.
    """

    def __init__(self, interval: float = FOLD_INTERVAL, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._folds: OrderedDict[tuple[str, str], _Fold] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        key = _shape_key(record)
        now = self._clock()
        with self._lock:
            fold = self._folds.get(key)
            if fold is None:
                self._folds[key] = _Fold(emitted_at=now)
                if len(self._folds) > MAX_SHAPES:
                    self._folds.popitem(last=False)
                return True
            self._folds.move_to_end(key)
            if now - fold.emitted_at < self._interval:
                fold.held += 1
                return False
            held, since = fold.held, now - fold.emitted_at
            fold.held, fold.emitted_at = 0, now
        if held:
            record.msg = f"{record.getMessage()} ({held} more like this in the last {since:.0f} s)"
            record.args = None
            record.repeats = held
        return True


_setup_lock = threading.Lock()


def kafka_logger() -> logging.Logger:
    """The ``librdkafka`` logger, with its ``RepeatFolder`` (installed once per process)."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    with _setup_lock:
        if not any(isinstance(f, RepeatFolder) for f in logger.filters):
            logger.addFilter(RepeatFolder())
    return logger


def with_kafka_logging(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` plus what routes the client's librdkafka lines through ``kafka_logger``.

    A ``log_level`` in ``config`` (set through ``TRS_KAFKA_EXTRA``, for one) is kept.
    """
    return {"log_level": _LOG_WARNING, **config, "logger": kafka_logger()}
