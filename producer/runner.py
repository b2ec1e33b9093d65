"""``TaskRunner``: the TRS API, the same in local and remote mode.

async with TaskRunner(mode="local", service_name="inventory") as runner:
    tasks = create_task_list(Task(service_name="inventory", request=...), 100)
    batch = await runner.launch(tasks)
    async for result in batch:
        ...
    await runner.close(batch)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Literal, Self, get_args

from producer.backend import Backend
from producer.batch import Batch, BatchState
from producer.remote import DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESULT_GRACE, PartitionKey, RemoteBackend
from producer.task_list import create_task_list
from shared.engine import DEFAULT_MAX_RESPONSE_BYTES, Engine, TargetAllowlist, TlsConfig, Transport, transport_factory
from shared.engine.engine import DEFAULT_TRANSPORT
from shared.engine.transport import TransportFactory
from shared.errors import UsageError
from shared.models import Task, TransportPolicy, normalize_service_name
from shared.settings import KafkaSettings
from shared.wire import new_batch_id

__all__ = ["DEFAULT_MAX_INFLIGHT", "Mode", "RunnerState", "TaskRunner"]

Mode = Literal["local", "remote"]
#: Tasks one runner keeps in flight at once, across its batches.
DEFAULT_MAX_INFLIGHT = 1000


def _only_in(mode: Mode, **options: object) -> None:
    """Refuse options that mean nothing in ``mode``, rather than ignore them."""
    given = next((name for name, value in options.items() if value is not None), None)
    if given is None:
        return
    if mode == "remote":
        raise UsageError(f"{given} is a worker setting in remote mode: set it on trs-worker (see trs-worker --help)")
    raise UsageError(f"{given} only applies in remote mode")


def _engine_transport(transport: str | Transport | TransportFactory | None) -> TransportFactory:
    """The engine's transport factory for what the caller passed as ``transport``."""
    if transport is None:
        return transport_factory(DEFAULT_TRANSPORT)
    if isinstance(transport, str):
        try:
            return transport_factory(transport)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if isinstance(transport, Transport):
        # One instance serves every pool, as an httpx client's transport does.
        instance = transport

        def shared(policy: TransportPolicy, tls: TlsConfig) -> Transport:
            return instance

        return shared
    if callable(transport):
        return transport
    raise UsageError(
        f"transport must be a name, a Transport or a callable that builds one, got {type(transport).__name__}"
    )


def _partition_key(key: object) -> None:
    if key is not None and key not in get_args(PartitionKey):
        raise UsageError(f"partition_key must be 'task' or 'host', got {key!r}")


class RunnerState(enum.Enum):
    UNOPENED = "unopened"  #: built, not yet entered or used
    OPENED = "opened"  #: in use
    CLOSED = "closed"  #: cleaned up; it can't be used again


class TaskRunner:
    """Runs batches of HTTP tasks and yields each result as its task completes.

    Keyword-only. ``mode="local"`` runs tasks in this process; ``mode="remote"`` sends them
    through Kafka to ``trs-worker`` processes. ``max_inflight`` bounds this runner's tasks in
    flight, across its batches, in both modes.

    Local mode only, since in remote mode they are the workers' settings: ``transport`` (the
    engine's HTTP transport: ``"pyreqwest"``, the default, or ``"httpx"``; or a ``Transport``,
    such as a ``MockTransport`` in tests; or a callable that builds one from a ``TransportPolicy``
    and a ``TlsConfig``), ``max_response_bytes``, ``tls`` and ``allowed_targets``.

    Remote mode only: ``bootstrap_servers`` (else ``TRS_KAFKA_BOOTSTRAP_SERVERS``), or a whole
    ``kafka`` settings object for security options; ``result_grace``, the seconds past a task's
    deadline its result may take before it ends ``no_result``; ``request_timeout``, the seconds
    any one call to the broker may take; and ``partition_key``, what task messages are keyed by
    (``"task"``, the default, or ``"host"``; see the README). An option of the other mode is
    refused with a ``UsageError``, never ignored.
    """

    def __init__(
        self,
        *,
        service_name: str,
        mode: Mode = "local",
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        transport: str | Transport | Callable[[TransportPolicy, TlsConfig], Transport] | None = None,
        max_response_bytes: int | None = None,
        tls: TlsConfig | None = None,
        allowed_targets: Sequence[str] | None = None,
        bootstrap_servers: str | None = None,
        kafka: KafkaSettings | None = None,
        result_grace: float | None = None,
        request_timeout: float | None = None,
        partition_key: PartitionKey | None = None,
    ) -> None:
        if mode not in ("local", "remote"):
            raise UsageError(f"mode must be 'local' or 'remote', got {mode!r}")
        if max_inflight < 1:
            raise UsageError(f"max_inflight must be at least 1, got {max_inflight}")
        try:
            self.service_name = normalize_service_name(service_name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        _partition_key(partition_key)
        self.mode: Mode = mode
        self._state = RunnerState.UNOPENED
        self._batches: dict[str, Batch] = {}
        self._grace = 0.0
        self._backend: Backend
        if mode == "local":
            _only_in(
                "local",
                bootstrap_servers=bootstrap_servers,
                kafka=kafka,
                result_grace=result_grace,
                request_timeout=request_timeout,
                partition_key=partition_key,
            )
            from producer.local import LocalBackend

            engine = Engine(
                transport=_engine_transport(transport),
                tls=tls,
                max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES if max_response_bytes is None else max_response_bytes,
                allowlist=TargetAllowlist(allowed_targets or ()),
            )
            self._backend = LocalBackend(engine, max_inflight=max_inflight)
        else:
            _only_in(
                "remote",
                transport=transport,
                max_response_bytes=max_response_bytes,
                tls=tls,
                allowed_targets=allowed_targets,
            )
            result_grace = DEFAULT_RESULT_GRACE if result_grace is None else result_grace
            request_timeout = DEFAULT_REQUEST_TIMEOUT if request_timeout is None else request_timeout
            if result_grace < 0 or request_timeout <= 0:
                raise UsageError("result_grace must be at least 0 and request_timeout above 0")
            if kafka is None:
                kafka = KafkaSettings(bootstrap_servers=bootstrap_servers) if bootstrap_servers else KafkaSettings()
            self._backend = RemoteBackend(
                service_name=self.service_name,
                kafka=kafka,
                max_inflight=max_inflight,
                result_grace=result_grace,
                request_timeout=request_timeout,
                partition_key=partition_key or "task",
            )
            self._grace = result_grace

    @property
    def state(self) -> RunnerState:
        return self._state

    def _use(self) -> None:
        if self._state is RunnerState.CLOSED:
            raise UsageError("this TaskRunner was cleaned up; create a new one")
        self._state = RunnerState.OPENED

    def create_task_list(self, source: Task, n: int) -> list[Task]:
        """``n`` deep copies of ``source``, each with a fresh id and this runner's service name."""
        return create_task_list(source, n, service_name=self.service_name)

    async def launch(self, tasks: Sequence[Task] | Batch) -> Batch:
        """Start the tasks and return their ``Batch``; ignored tasks are never sent.

        Each task is stamped with this runner's service name.
        """
        self._use()
        if isinstance(tasks, Batch):
            state = "closed" if tasks.state.value == "closed" else "already launched"
            raise UsageError(f"batch {tasks.id} is {state}; launch a new task list instead")
        if isinstance(tasks, str | bytes) or not isinstance(tasks, Sequence):
            raise UsageError(f"launch takes a list of Task, got {type(tasks).__name__}")
        # The clock of a caller's batch runs from here: the checks look at each task's type and id through
        # C-level calls, where a generator and UUID.__hash__ (a Python function) cost half a microsecond a task.
        if not all(issubclass(kind, Task) for kind in set(map(type, tasks))):
            bad = next(i for i, t in enumerate(tasks) if not isinstance(t, Task))
            raise UsageError(f"launch takes a list of Task; item {bad} is a {type(tasks[bad]).__name__}")
        if len({t.id.int for t in tasks}) != len(tasks):
            raise UsageError("task ids in one batch must be unique; use create_task_list for copies")
        self._refuse_running(tasks)
        for t in tasks:
            # As in Go TRS, the runner's service name is the one that counts: it names the topics.
            if t.service_name != self.service_name:
                t.service_name = self.service_name
        now = datetime.now(UTC)
        longest = max((t.timeout for t in tasks if not t.ignore), default=0.0)
        batch = Batch(tasks, batch_id=new_batch_id(now, now + timedelta(seconds=longest + self._grace)))
        self._batches[batch.id] = batch
        await self._backend.start(batch)
        return batch

    def _refuse_running(self, tasks: Sequence[Task]) -> None:
        """Refuse a task that still waits for its result in a batch of this runner."""
        running = [b for b in self._batches.values() if b.running]
        if not running:
            return
        for task in tasks:
            for batch in running:
                if not task.ignore and batch.is_pending(task.id):
                    raise UsageError(
                        f"task {task.id} is still running in batch {batch.id}; "
                        "launch copies of it (create_task_list) instead"
                    )

    def _own(self, batch: Batch) -> Batch:
        """``batch``, if it is one of this runner's and still open."""
        if batch.state is BatchState.CLOSED:
            raise UsageError(f"batch {batch.id} is closed")
        if self._batches.get(batch.id) is not batch:
            raise UsageError(f"batch {batch.id} was not launched by this runner")
        return batch

    def check(self, batch: Batch) -> bool:
        """Whether ``batch`` still has tasks without a result; a closed batch raises ``UsageError``."""
        return self._own(batch).running

    async def cancel(self, batch: Batch) -> None:
        """Stop ``batch``: tasks in flight are cut and every open task ends ``cancelled``.

        A batch that is done is left as it is; a closed one raises ``UsageError``.
        """
        if self._own(batch).running:
            await self._backend.cancel(batch)

    async def close(self, batch: Batch) -> None:
        """Cancel ``batch`` if it runs and free everything it holds; a second close raises ``UsageError``."""
        del self._batches[self._own(batch).id]
        await self._backend.close(batch)
        batch.close()

    async def alive(self, timeout: float = 5.0) -> bool:
        """Whether this runner can run tasks (in remote mode: the broker answers within ``timeout``).

        A runner that has been cleaned up can't: ``False``, without asking the broker.
        """
        if self._state is RunnerState.CLOSED:
            return False
        return await self._backend.alive(timeout)

    def set_security(
        self,
        *,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        insecure: bool = False,
    ) -> None:
        """TLS for HTTPS targets of batches launched from now on. ``insecure`` is an explicit opt-in."""
        self._backend.set_security(
            TlsConfig(ca_bundle=ca_bundle, client_cert=client_cert, client_key=client_key, insecure=insecure)
        )

    async def cleanup(self) -> None:
        """Close every batch and release every resource. The runner can't be used afterwards."""
        if self._state is RunnerState.CLOSED:
            return
        for batch in list(self._batches.values()):
            await self.close(batch)
        await self._backend.aclose()
        self._state = RunnerState.CLOSED

    async def __aenter__(self) -> Self:
        if self._state is not RunnerState.UNOPENED:
            raise UsageError(f"a TaskRunner can be entered once; this one is {self._state.value}")
        self._use()
        await self._backend.warm_up()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cleanup()
