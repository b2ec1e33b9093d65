"""Decoding a batch's copies of one task: validated once, then only their task ids are read.

A batch is mostly one task copied (``create_task_list``, ``trs run --url``), so its task messages
are the same bytes but for the 36 characters of the task id. Validating each one from JSON took a
worker a fifth of its CPU per task. ``TaskDecoder`` decodes what ``decode_consumed_task`` decodes,
and raises what it raises, but once two values in a row are proved to be such copies it reads a
third copy by comparing its bytes with theirs and reading its task id alone.

The proof. A value ``V`` is decoded in full, and its task id's text is found in it exactly once, at
``at``. A later value ``W`` of the same length with the same bytes outside ``[at, at + 36)`` is
decoded in full too; if its task id differs from ``V``'s and its envelope equals ``V``'s once the
ids are swapped, the 36 bytes at ``at`` are the task id and nothing else. They lie inside one
JSON string, since a JSON number holds two hyphens at most and no other token outside a string
holds one, and changing them changed the id and nothing else. So any value with those same
bytes around 36 bytes of a hyphenated UUID (no quote, no backslash) validates to that envelope
with that id, which is what a template returns for it, as a fresh ``TaskEnvelope`` and ``Task``
that share the template's validated request, policy and labels (models nothing changes once
decoded). Any other difference, however small, gets the full validation.

Bounded: at most ``MAX_TEMPLATES`` templates and as many values waiting for their second copy,
newest first, so hostile input costs a few byte comparisons per record on top of its validation.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Final, TypeVar

from pydantic import BaseModel

from shared.models import TaskEnvelope
from shared.wire import KafkaHeaders, check_consumed_task, decode_task_value

__all__ = ["MAX_TEMPLATES", "TaskDecoder"]

#: Most templates kept, and most values kept waiting for a second copy: a few batches interleaved.
MAX_TEMPLATES: Final = 4
#: A task id as a task message spells it (any case); its length.
_UUID_TEXT: Final = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ID_LENGTH: Final = 36

_Model = TypeVar("_Model", bound=BaseModel)
_new = object.__new__
_set = object.__setattr__
_UUID = uuid.UUID
_UNKNOWN = uuid.SafeUUID.unknown


def _uuid(text: bytes) -> uuid.UUID:
    """The UUID of text ``_UUID_TEXT`` matched, without ``uuid.UUID``'s parsing of every spelling (half its cost)."""
    value = _new(_UUID)
    _set(value, "int", int(text.replace(b"-", b""), 16))
    _set(value, "is_safe", _UNKNOWN)
    return value


def _copy(model: _Model, field: str, value: object) -> _Model:
    """``model`` with one field replaced and nothing validated, as ``model_copy`` makes it, at a third of its cost.

    Only for models with no extra fields and no private attributes, as a task and its envelope are.
    """
    copied = _new(type(model))
    fields = model.__dict__.copy()
    fields[field] = value
    _set(copied, "__dict__", fields)
    _set(copied, "__pydantic_fields_set__", set(model.__pydantic_fields_set__))
    _set(copied, "__pydantic_extra__", None)
    _set(copied, "__pydantic_private__", None)
    return copied


def _with_task_id(envelope: TaskEnvelope, task_id: uuid.UUID) -> TaskEnvelope:
    return _copy(envelope, "task", _copy(envelope.task, "id", task_id))


@dataclass(frozen=True, slots=True)
class _Seen:
    """A value decoded in full, whose task id's text it holds once, at ``at``."""

    value: bytes
    at: int
    envelope: TaskEnvelope

    def copied_by(self, value: bytes, at: int, envelope: TaskEnvelope) -> bool:
        """Whether ``value``, decoded in full to ``envelope`` with its id at ``at``, proves the template."""
        mine = self.value
        end = at + _ID_LENGTH
        return (
            at == self.at
            and len(value) == len(mine)
            and value[:at] == mine[:at]
            and value[end:] == mine[end:]
            and envelope.task.id != self.envelope.task.id
            and _with_task_id(self.envelope, envelope.task.id) == envelope
        )


@dataclass(frozen=True, slots=True)
class _Template:
    """A proved template: its values' length, the bytes before and after the task id, and their envelope."""

    size: int
    before: bytes
    after: bytes
    envelope: TaskEnvelope

    def decode(self, value: bytes) -> TaskEnvelope | None:
        """``value``'s envelope when it is a copy of the template's, else ``None``."""
        if len(value) != self.size or not value.startswith(self.before) or not value.endswith(self.after):
            return None
        at = len(self.before)
        text = value[at : at + _ID_LENGTH]
        if _UUID_TEXT.fullmatch(text) is None:
            return None
        return _with_task_id(self.envelope, _uuid(text))


class TaskDecoder:
    """``decode_consumed_task`` for one consumer, remembering the templates it proves; use it on one thread."""

    def __init__(self, *, max_message_bytes: int | None = None) -> None:
        self._max_message_bytes = max_message_bytes
        self._templates: list[_Template] = []
        self._seen: list[_Seen] = []

    def decode(self, value: bytes | None, headers: KafkaHeaders | None) -> TaskEnvelope:
        """What ``decode_consumed_task`` returns for this message; raises what it raises (``InvalidEnvelope``)."""
        check_consumed_task(value, headers, max_message_bytes=self._max_message_bytes)
        if value is not None:
            for template in self._templates:
                envelope = template.decode(value)
                if envelope is not None:
                    return envelope
        envelope = decode_task_value(value)
        assert value is not None  # decode_task_value refuses a missing value
        self._learn(value, envelope)
        return envelope

    def _learn(self, value: bytes, envelope: TaskEnvelope) -> None:
        text = str(envelope.task.id).encode()
        at = value.find(text)
        if at < 0 or value.find(text, at + 1) >= 0:
            # Spelt otherwise (upper case, braces), or found twice: no place to read it from.
            return
        for n, seen in enumerate(self._seen):
            if seen.copied_by(value, at, envelope):
                del self._seen[n]
                template = _Template(len(value), value[:at], value[at + _ID_LENGTH :], envelope)
                self._templates = [template, *self._templates][:MAX_TEMPLATES]
                return
        self._seen = [_Seen(value, at, envelope), *self._seen][:MAX_TEMPLATES]
