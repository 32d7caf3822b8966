"""errands: an embeddable async task queue for Python, built on trio.

Define tasks on a :class:`Service` (or an ``@errands.service`` class), run an
engine with :func:`open_engine` (trio code) or :func:`start` (scripts and
notebooks), and use the client it gives: ``client.<task>.submit(...)``
returns a task handle at once; check, wait for, cancel or retry it later.
"""

from __future__ import annotations

from typing import Any

from ._backend import Backend, Queue, Renewal, Store
from ._batches import BatchResult
from ._client import AsyncBatch, AsyncClient, AsyncEndpoint, AsyncTask
from ._context import TaskContext, current_task
from ._convert import MediaType, Payload
from ._define import Service, TaskDefinition, TaskOptions, service, task
from ._engine import Engine, EngineStatistics
from ._errors import (
    BackendError,
    BatchNotFound,
    CannotCancel,
    EngineClosed,
    EngineUnavailable,
    ErrandsError,
    FieldError,
    FinalError,
    InvalidArguments,
    InvalidTransition,
    LimitExceeded,
    RemoteError,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskNotReady,
)
from ._events import EventKind, Histogram, TaskEvent, TaskStats
from ._model import Attempt, AttemptError, AttemptOutcome, Claim, StoredTask, TaskError, TaskInfo
from ._open import open_engine
from ._options import EngineOptions
from ._status import TaskStatus
from ._sync import Batch, SyncClient, SyncEndpoint, Task, start
from ._waiting import AsCompleted, as_completed

__version__ = "0.1.0.dev0"

__all__ = [
    "AsCompleted",
    "AsyncBatch",
    "AsyncClient",
    "AsyncEndpoint",
    "AsyncTask",
    "Attempt",
    "AttemptError",
    "AttemptOutcome",
    "Backend",
    "BackendError",
    "Batch",
    "BatchNotFound",
    "BatchResult",
    "CannotCancel",
    "Claim",
    "Engine",
    "EngineClosed",
    "EngineOptions",
    "EngineStatistics",
    "EngineUnavailable",
    "ErrandsError",
    "EventKind",
    "FieldError",
    "FinalError",
    "Histogram",
    "InvalidArguments",
    "InvalidTransition",
    "LimitExceeded",
    "MediaType",
    "Payload",
    "Queue",
    "RemoteError",
    "Renewal",
    "Service",
    "Store",
    "StoredTask",
    "SyncClient",
    "SyncEndpoint",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskDefinition",
    "TaskError",
    "TaskEvent",
    "TaskFailed",
    "TaskInfo",
    "TaskNotFound",
    "TaskNotReady",
    "TaskOptions",
    "TaskStats",
    "TaskStatus",
    "as_completed",
    "current_task",
    "open_engine",
    "service",
    "start",
    "task",
]

_FROM_ADAPTERS = {"SyncHTTPClient", "AsyncHTTPClient"}


def __getattr__(name: str) -> Any:
    # The HTTP clients live in errands.adapters (they need httpx); they are the
    # only names the core hands on from there, and only when asked for.
    if name in _FROM_ADAPTERS:
        import importlib

        adapters = importlib.import_module("errands.adapters")
        return getattr(adapters, name)
    raise AttributeError(f"module 'errands' has no attribute {name!r}")
