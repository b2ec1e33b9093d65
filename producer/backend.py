"""The interface each mode implements behind ``TaskRunner``."""

from __future__ import annotations

from abc import ABC, abstractmethod

from producer.batch import Batch
from shared.engine import TlsConfig

__all__ = ["Backend"]


class Backend(ABC):
    """Runs batches for a ``TaskRunner``; results go to ``Batch.deliver``."""

    @abstractmethod
    async def start(self, batch: Batch) -> None:
        """Begin running ``batch``; return once it is under way."""

    @abstractmethod
    async def cancel(self, batch: Batch) -> None:
        """Stop ``batch``; every task without a result ends ``cancelled``."""

    @abstractmethod
    async def close(self, batch: Batch) -> None:
        """Stop ``batch`` if it runs and free what it holds."""

    async def warm_up(self) -> None:
        """Get ready for the first batch, when the runner is entered; nothing to do by default."""
        return None

    @abstractmethod
    async def alive(self, timeout: float) -> bool:
        """Whether the backend can run tasks, answered within ``timeout`` seconds."""

    @abstractmethod
    def set_security(self, tls: TlsConfig) -> None:
        """Use ``tls`` for HTTPS targets of batches launched from now on."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release every resource."""
