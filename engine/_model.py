"""Values that describe a task: its stored record, its public info, its id."""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
import marshal
import operator
import os
import re
import secrets
import threading
import time
from typing import Any

import attrs
import cattrs.gen
import orjson

from ._convert import converter, dumps, dumps_arguments
from ._errors import BackendError
from ._status import TaskStatus

__all__ = [
    "Attempt",
    "AttemptError",
    "AttemptOutcome",
    "AttemptRecord",
    "Claim",
    "Packed",
    "StoredTask",
    "TaskError",
    "TaskInfo",
    "TaskRecord",
    "is_task_id",
    "new_task_id",
    "pack_record",
    "task_id_from_bytes",
    "unpack_record",
]

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")


def task_id_from_bytes(raw: bytes) -> str:
    """16 bytes as a task id: 22 url-safe characters, never starting with
    ``-`` (a command line would take such an id for an option)."""
    return _no_leading_dash(base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"))


def _no_leading_dash(text: str) -> str:
    """A task id's characters, its first one made ``x`` if it was ``-``."""
    return "x" + text[1:] if text.startswith("-") else text


#: The url-safe characters in byte order: a prefix written in them sorts as
#: its number does.
_ORDERED = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
#: Characters of a task id that tell its millisecond (42 bits: until 2109).
_TIME_CHARS = 7


def _time_prefix(ms: int) -> str:
    chars = []
    for _ in range(_TIME_CHARS):
        ms, digit = divmod(ms, 64)
        chars.append(_ORDERED[digit])
    return "".join(reversed(chars))


class _RandomIds:
    """Task ids: the millisecond they are made (:data:`_TIME_CHARS`
    characters that sort as the time does), then 90 random bits cut from
    ``os.urandom``, read 4 KiB at a time: the bytes are base64-encoded once
    and handed out 15 characters per id, so 363 ids cost one system call and
    one encoding, not one of each per id.  Ids made later sort after, to the
    millisecond: a durable backend's indexes take new ids on their last
    pages instead of a random page each (``docs/decisions.md``).
    Thread-safe; a forked child starts with a fresh buffer (never the
    parent's, so no id repeats)."""

    BYTES = 4092  # a multiple of 3: 5,456 characters without padding, 363 ids
    LENGTH = 22

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text = ""
        self._offset = 0
        self._ms, self._prefix = -1, ""

    def take(self) -> str:
        size = self.LENGTH - _TIME_CHARS
        now = time.time_ns() // 1_000_000
        with self._lock:
            if now != self._ms:
                self._ms, self._prefix = now, _time_prefix(now)
            offset = self._offset
            if offset + size > len(self._text):
                raw = secrets.token_bytes(self.BYTES)
                self._text, offset = base64.urlsafe_b64encode(raw).decode("ascii"), 0
            self._offset = offset + size
            text = self._prefix + self._text[offset : offset + size]
        return _no_leading_dash(text)  # (a clock before 1972)

    def forget(self) -> None:
        self._lock = threading.Lock()
        self._text, self._offset = "", 0


_random = _RandomIds()
os.register_at_fork(after_in_child=_random.forget)


def new_task_id() -> str:
    """A task id: the millisecond it was made, then 90 random bits, in 22
    url-safe characters, never starting with ``-`` (the shape
    :func:`task_id_from_bytes` gives)."""
    return _random.take()


def is_task_id(value: object) -> bool:
    """True when ``value`` has the shape of a task id (it may still be unknown)."""
    return isinstance(value, str) and _ID_PATTERN.fullmatch(value) is not None


@attrs.frozen(kw_only=True)
class TaskError:
    """Why a task failed: the exception's type name and its message (no traceback)."""

    type: str
    message: str

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@attrs.frozen(kw_only=True)
class AttemptError:
    """The error of an earlier attempt that did not end the task (its worker
    was lost, or it failed and was retried): ``TaskInfo.history``, the short
    form of :attr:`TaskInfo.attempts`."""

    attempt: int
    type: str
    message: str

    def __str__(self) -> str:
        text = f"{self.type}: {self.message}" if self.message else self.type
        return f"attempt {self.attempt}: {text}"


class AttemptOutcome(enum.StrEnum):
    """How one attempt of a task ended. ``.value`` is the name used on the wire.

    An outcome is the attempt's own, not the task's: a ``failure`` followed
    by a further attempt was retried.
    """

    #: Not ended yet (the task is ``in_progress``).
    RUNNING = "running"
    #: Returned its result.
    SUCCESS = "success"
    #: Raised, timed out, or returned a result that was refused; see ``error``.
    FAILURE = "failure"
    #: Cancelled while it ran.
    CANCELLED = "cancelled"
    #: Its worker stopped responding (a process died, a lease ran out) or the
    #: engine shut down while it still ran.  Its end time is when errands
    #: noticed, not when the work stopped (nobody saw that).
    LOST = "lost"


@attrs.frozen(kw_only=True, slots=False)  # a dict class builds twice as fast: two per task
class AttemptRecord:
    """One attempt as the task record keeps it (times in seconds since the epoch).

    ``started_at`` and ``finished_at`` are None in entries written by
    versions that kept only the errors of earlier attempts.
    """

    attempt: int
    started_at: float | None = None
    finished_at: float | None = None
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    error: TaskError | None = None


@attrs.frozen(kw_only=True)
class Attempt:
    """One attempt of a task (:attr:`TaskInfo.attempts`): when it ran, how it ended.

    ``finished_at`` is None while it runs; for a ``lost`` attempt it is when
    the loss was noticed.  Both times are None for attempts recorded by
    versions that kept no times.
    """

    attempt: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    outcome: AttemptOutcome
    error: TaskError | None = None

    @classmethod
    def from_record(cls, entry: AttemptRecord) -> Attempt:
        return cls(
            attempt=entry.attempt,
            started_at=_utc(entry.started_at),
            finished_at=_utc(entry.finished_at),
            outcome=entry.outcome,
            error=entry.error,
        )


@attrs.frozen(kw_only=True, slots=False)
class TaskRecord:
    """Everything errands keeps about one task, apart from its result.

    Times are seconds since the epoch (UTC), from the engine's wall clock.
    ``token`` is the fencing token of the latest claim (0 before any).
    """

    id: str
    name: str
    args: dict[str, Any]
    status: TaskStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    max_attempts: int = 3
    retries: int = 0
    priority: int = 0
    not_before: float | None = None
    retry_of: str | None = None
    ttl: float = 86400.0
    #: Seconds kept after ending that way, where the task set its own.
    ttl_success: float | None = None
    ttl_failure: float | None = None
    ttl_cancelled: float | None = None
    expires_at: float | None = None
    error: TaskError | None = None
    progress: float | None = None
    message: str | None = None
    token: int = 0
    result_type: str | None = None
    #: The formatted traceback of the error that failed the task (for logs
    #: and in-process callers; over HTTP only where the deployer allows).
    traceback: str | None = None
    #: Every attempt, oldest first; the last one is open while the task runs.
    attempts: tuple[AttemptRecord, ...] = ()

    def ttl_for(self, status: TaskStatus) -> float:
        """Seconds a task that ended in ``status`` is kept."""
        own = {
            TaskStatus.SUCCESS: self.ttl_success,
            TaskStatus.FAILURE: self.ttl_failure,
            TaskStatus.CANCELLED: self.ttl_cancelled,
        }.get(status)
        return self.ttl if own is None else own

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def replace(self, **changes: Any) -> TaskRecord:
        """``attrs.evolve`` without its per-call introspection (the hot path uses it)."""
        new = object.__new__(TaskRecord)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        return new


def _args_as_is(value: Any, _: Any = None) -> Any:
    if not isinstance(value, dict):
        raise TypeError("args must be an object")
    return value


# A record's args are JSON data already (validated at submit): they are
# copied as they are, never walked by cattrs (which would recurse as deep as
# the data is nested).
converter.register_unstructure_hook(
    TaskRecord,
    cattrs.gen.make_dict_unstructure_fn(
        TaskRecord, converter, args=cattrs.gen.override(unstruct_hook=_args_as_is)
    ),
)
_structure_record = cattrs.gen.make_dict_structure_fn(
    TaskRecord, converter, args=cattrs.gen.override(struct_hook=_args_as_is)
)


def _structure_stored_record(value: Any, _: Any = None) -> TaskRecord:
    # Records written before attempts were kept in full have "history": the
    # errors of earlier attempts, without times.  They read as attempts
    # with unknown times (a lost worker's entry as lost, others as failures).
    if isinstance(value, dict) and "history" in value:
        value = dict(value)
        legacy = value.pop("history")
        value.setdefault("attempts", [_legacy_attempt(entry) for entry in legacy])
    return _structure_record(value, TaskRecord)


def _legacy_attempt(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry  # refused by the structure hook, with its path
    kind = entry.get("type")
    return {
        "attempt": entry.get("attempt"),
        "outcome": AttemptOutcome.LOST if kind == "WorkerLost" else AttemptOutcome.FAILURE,
        "error": {"type": kind, "message": entry.get("message")},
    }


converter.register_structure_hook(TaskRecord, _structure_stored_record)


# The stored JSON of a record, read and written without cattrs.
#
# Every claim on a durable backend decodes the pending record and encodes
# the started one, and every end encodes one more: cattrs's generated
# functions, with a hook call per field, took 21-33 µs to decode a record
# and 11-17 µs to encode one (with the JSON), most of the database thread's
# Python per task on diskcache.  The functions below read and write the
# same JSON in one pass over the fields.  The reader takes only what it
# can check at a glance (the exact JSON types of the current format) and
# hands anything else to cattrs, which decodes older formats and names
# what is wrong with a bad record: both give equal records for what both
# read (tests/engine/test_record_json.py).

_REQUIRED = object()
#: The fields of a record other than ``args``, ``status``, ``error`` and
#: ``attempts``, as the reader checks them: name, exact type, whether None
#: is allowed, and the default (:data:`_REQUIRED` for none).
_SCALAR_TYPES = {
    str: (str, False),
    int: (int, False),
    float: (float, False),
    str | None: (str, True),
    float | None: (float, True),
}


def _scalar_field(field: attrs.Attribute[Any]) -> tuple[str, type, bool, Any]:
    for annotation, (tp, nullable) in _SCALAR_TYPES.items():
        if field.type == annotation:
            default = _REQUIRED if field.default is attrs.NOTHING else field.default
            return field.name, tp, nullable, default
    raise TypeError(f"TaskRecord.{field.name}: a new kind of field, teach _read_plain")


_SCALAR_FIELDS = tuple(
    _scalar_field(a)
    for a in attrs.fields(attrs.resolve_types(TaskRecord))
    if a.name not in ("args", "status", "error", "attempts")
)
#: The order cattrs writes a record's fields in (its attributes' order).
_FIELD_ORDER = tuple(a.name for a in attrs.fields(TaskRecord))
_RECORD_KEYS = frozenset(_FIELD_ORDER)
_ATTEMPT_KEYS = frozenset(a.name for a in attrs.fields(AttemptRecord))
_STATUSES = TaskStatus._value2member_map_
_OUTCOMES_BY_VALUE = AttemptOutcome._value2member_map_


def _plain_error(error: TaskError | None) -> dict[str, str] | None:
    return None if error is None else {"type": error.type, "message": error.message}


def record_plain(record: TaskRecord, *, args: bool = True) -> dict[str, Any]:
    """``converter.unstructure(record)`` (equal, in the same key order),
    without ``args`` unless asked."""
    values = record.__dict__
    plain = {name: values[name] for name in _FIELD_ORDER}
    if args:
        if not isinstance(plain["args"], dict):
            raise TypeError("args must be an object")
    else:
        del plain["args"]
    plain["status"] = record.status._value_
    plain["error"] = _plain_error(record.error)
    plain["attempts"] = [
        {
            "attempt": a.attempt,
            "started_at": a.started_at,
            "finished_at": a.finished_at,
            "outcome": a.outcome._value_,
            "error": _plain_error(a.error),
        }
        for a in record.attempts
    ]
    return plain


def _read_error(value: Any) -> TaskError | bool | None:
    """A stored error read at a glance; False when it needs cattrs."""
    if value is None:
        return None
    if type(value) is dict and len(value) == 2:
        kind, message = value.get("type"), value.get("message")
        if type(kind) is str and type(message) is str:
            return TaskError(type=kind, message=message)
    return False


def _read_attempt(value: Any) -> AttemptRecord | None:
    """A stored attempt read at a glance; None when it needs cattrs."""
    if type(value) is not dict or not _ATTEMPT_KEYS.issuperset(value):
        return None
    number = value.get("attempt")
    if type(number) is not int:
        return None
    times = []
    for key in ("started_at", "finished_at"):
        time = value.get(key)
        if time is not None and type(time) is not float:
            if type(time) is not int:
                return None
            time = float(time)
        times.append(time)
    outcome = value.get("outcome", "running")
    outcome = _OUTCOMES_BY_VALUE.get(outcome) if type(outcome) is str else None
    error = _read_error(value.get("error"))
    if outcome is None or error is False:
        return None
    return AttemptRecord(
        attempt=number,
        started_at=times[0],
        finished_at=times[1],
        outcome=outcome,  # type: ignore[arg-type]
        error=error,  # type: ignore[arg-type]
    )


def record_json(plain: dict[str, Any]) -> bytes:
    """:func:`record_plain`'s output as UTF-8 JSON: by orjson (a tenth of
    the ``json`` module's time), or by :func:`dumps` for what orjson
    refuses (a lone surrogate in a message, an integer past 64 bits).  A
    record holds no NaN (progress, times and ttls are checked), which
    orjson would write as null."""
    try:
        return orjson.dumps(plain)
    except orjson.JSONEncodeError:
        return dumps(plain).encode("utf-8")


def loads(data: bytes) -> Any:
    """JSON bytes as Python data: by orjson, or by the ``json`` module for
    what orjson refuses and it reads (an escaped lone surrogate)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def record_from_plain(plain: Any) -> TaskRecord:
    """``converter.structure(plain, TaskRecord)``: read at a glance when
    ``plain`` is in the current format with nothing wrong, else by cattrs
    (which also raises what it raises)."""
    record = _read_plain(plain)
    return converter.structure(plain, TaskRecord) if record is None else record


def _read_plain(plain: Any) -> TaskRecord | None:
    if type(plain) is not dict or not _RECORD_KEYS.issuperset(plain):
        return None  # cattrs refuses the unknown keys, or reads "history"
    record = object.__new__(TaskRecord)
    values = record.__dict__
    get = plain.get
    for name, tp, nullable, default in _SCALAR_FIELDS:
        value = get(name, default)
        if type(value) is not tp:
            if tp is float and type(value) is int:
                value = float(value)
            elif value is not None or not nullable:
                return None  # also a required field that is missing
        values[name] = value
    args = get("args")
    status = _STATUSES.get(get("status")) if type(get("status")) is str else None
    error = _read_error(get("error"))
    stored = get("attempts", [])
    if type(args) is not dict or status is None or error is False or type(stored) is not list:
        return None
    attempts = tuple(map(_read_attempt, stored))
    if None in attempts:
        return None
    values["args"] = args
    values["status"] = status
    values["error"] = error
    values["attempts"] = attempts
    return record


def _utc(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)


@attrs.frozen(kw_only=True)
class TaskInfo:
    """What a caller may know about a task (``Task.get_info()``)."""

    id: str
    name: str
    status: TaskStatus
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    attempt: int
    max_attempts: int
    progress: float | None
    message: str | None
    error: TaskError | None
    retry_of: str | None
    expires_at: dt.datetime | None
    #: While pending: how many waiting tasks of its name go before it.  Far
    #: back in a deep queue whose positions are asked often, the diskcache
    #: backend answers from the queue's order of up to a second before.
    position: int | None = None
    #: The traceback of the error that failed the task, when it raised one.
    traceback: str | None = None
    #: Every attempt so far, oldest first (the last one is running while
    #: the task is ``in_progress``).
    attempts: tuple[Attempt, ...] = ()

    @property
    def history(self) -> tuple[AttemptError, ...]:
        """The errors of earlier attempts that did not end the task (its
        worker was lost, or it failed and was retried), oldest first."""
        last = self.attempt if self.status is TaskStatus.FAILURE else None
        return tuple(
            AttemptError(attempt=a.attempt, type=a.error.type, message=a.error.message)
            for a in self.attempts
            if a.error is not None and a.attempt != last
        )

    @classmethod
    def from_record(cls, record: TaskRecord, *, position: int | None = None) -> TaskInfo:
        return cls(
            id=record.id,
            name=record.name,
            status=record.status,
            created_at=_utc(record.created_at),  # type: ignore[arg-type]
            started_at=_utc(record.started_at),
            finished_at=_utc(record.finished_at),
            attempt=record.attempt,
            max_attempts=record.max_attempts,
            progress=record.progress,
            message=record.message,
            error=record.error,
            retry_of=record.retry_of,
            expires_at=_utc(record.expires_at),
            position=position,
            traceback=record.traceback,
            attempts=tuple(Attempt.from_record(a) for a in record.attempts),
        )


def _packed_error(error: TaskError | None) -> tuple[str, str] | None:
    return None if error is None else (error.type, error.message)


def _unpacked_error(error: tuple[str, str] | None) -> TaskError | None:
    return None if error is None else TaskError(type=error[0], message=error[1])


#: A record as :func:`pack_record` packs it: bytes, or, for large flat
#: arguments, the bytes of the rest beside the arguments' items.
Packed = bytes | tuple[bytes, tuple[tuple[str, Any], ...]]

#: Arguments holding a string this long are kept apart by :func:`pack_record`.
_KEEP_APART = 64 * 1024
_SCALARS = (int, float, bool, type(None))


def _kept_apart(args: dict[str, Any]) -> bool:
    """Whether ``args`` are flat (strings and scalars) and hold a long string."""
    large = False
    for value in args.values():
        kind = type(value)
        if kind is str:
            large = large or len(value) >= _KEEP_APART
        elif kind not in _SCALARS:
            return False
    return large


def pack_record(record: TaskRecord) -> Packed:
    """The record as compact bytes of this Python (``marshal``, not a storage
    format: never written anywhere), for a store that keeps many records in
    memory; :func:`unpack_record` gives it back.

    Bytes are what Python's garbage collector never walks: a dict of them
    is not walked either, where a history of record objects (a day of it
    is kept by default) made every full collection longer (measured: 120 ms
    per full collection at 30,000 kept tasks, about a quarter of the thread
    path's time at 50,000).  Raises ValueError when the arguments are not
    plain JSON data.

    The arguments are packed last, after the length of the rest, so that
    what reads a status (:meth:`StoredTask.info`) unpacks the rest alone:
    they may be megabytes.  Arguments that are flat (strings and scalars,
    which the collector does not track either) and hold a long string, the
    base64 of a ``bytes`` argument, are not copied at all: the result is
    then the rest's bytes beside a tuple of the arguments' items (copying 5
    MB of base64 into the bytes took 6-12 ms, most of such a task's time;
    tuples of strings and scalars are untracked at their first collection).
    """
    attempts = record.attempts
    rest = marshal.dumps(
        (
            _plain_values(record),
            record.status._value_,
            _packed_error(record.error),
            tuple(
                (a.attempt, a.started_at, a.finished_at, a.outcome._value_, _packed_error(a.error))
                for a in attempts
            )
            if attempts
            else (),
        )
    )
    args = record.args
    if _kept_apart(args):
        return len(rest).to_bytes(4, "little") + rest, tuple(args.items())
    return len(rest).to_bytes(4, "little") + rest + marshal.dumps(args)


def unpack_record(packed: Packed, *, args: bool = True) -> TaskRecord:
    """The record :func:`pack_record` packed (equal to it, a new object);
    without ``args``, its arguments are left out (empty)."""
    arguments: dict[str, Any] | None = None
    if isinstance(packed, tuple):
        head, kept = packed
        view = memoryview(head)
        arguments = dict(kept) if args else {}  # a new object, as marshal gives
    else:
        view = memoryview(packed)
    end = 4 + int.from_bytes(view[:4], "little")
    plain, status, error, attempts = marshal.loads(view[4:end])
    record = object.__new__(TaskRecord)
    fields = record.__dict__
    fields.update(zip(_PLAIN_FIELDS, plain, strict=True))
    if arguments is None:
        arguments = marshal.loads(view[end:]) if args else {}
    fields["args"] = arguments
    fields["status"] = TaskStatus(status)
    fields["error"] = _unpacked_error(error)
    fields["attempts"] = tuple(
        AttemptRecord(
            attempt=a[0],
            started_at=a[1],
            finished_at=a[2],
            outcome=AttemptOutcome(a[3]),
            error=_unpacked_error(a[4]),
        )
        for a in attempts
    )
    return record


_PLAIN_FIELDS = tuple(
    a.name
    for a in attrs.fields(TaskRecord)
    if a.name not in ("args", "status", "error", "attempts")
)
_plain_values = operator.attrgetter(*_PLAIN_FIELDS)


class StoredTask:
    """A task record as a backend holds it: the scalars it indexes, and JSON bytes.

    Backends read ``id``, ``name``, ``status``, ``token``, ``created_at`` and
    ``expires_at`` (to index, fence and purge) and persist ``data``; they never
    look inside ``data``.  A backend that rebuilds a ``StoredTask`` from storage
    calls the constructor with the bytes it saved.  Built by the engine from a
    record, ``data`` is encoded only when first read, so a backend that keeps
    objects in memory never pays for JSON.  A backend that keeps records
    packed (:func:`pack_record`) builds one with :meth:`from_packed`: the
    record is unpacked only when first read, so what reads the scalars alone
    (a batch's counts, a wait, a purge) never unpacks it.

    A backend may instead keep a task's arguments apart from the rest of its
    record (:attr:`args_data` once, when the task is created; then
    :attr:`state_data` at each change, which never holds them: a task's
    arguments never change, and may be large) and rebuild it with
    :meth:`from_parts`.
    """

    __slots__ = (
        "_args",
        "_data",
        "_packed",
        "_record",
        "_state",
        "created_at",
        "expires_at",
        "id",
        "name",
        "status",
        "token",
    )

    def __init__(
        self,
        *,
        id: str,
        name: str,
        status: TaskStatus,
        token: int,
        created_at: float,
        expires_at: float | None,
        data: bytes,
    ) -> None:
        self._fill(id, name, TaskStatus(status), token, created_at, expires_at, data, None, None)

    def _fill(
        self,
        id: str,
        name: str,
        status: TaskStatus,
        token: int,
        created_at: float,
        expires_at: float | None,
        data: bytes | None,
        packed: Packed | None,
        record: TaskRecord | None,
    ) -> None:
        self.id = id
        self.name = name
        self.status = status
        self.token = token
        self.created_at = created_at
        self.expires_at = expires_at
        self._data = data
        self._packed = packed
        self._record = record
        self._state: bytes | None = None
        self._args: bytes | None = None

    @classmethod
    def from_record(cls, record: TaskRecord) -> StoredTask:
        # Three times per task on the hot path: the fields are set here, not
        # through _fill (a call more each).
        self = cls.__new__(cls)
        self.id = record.id
        self.name = record.name
        self.status = record.status
        self.token = record.token
        self.created_at = record.created_at
        self.expires_at = record.expires_at
        self._data = None
        self._packed = None
        self._record = record
        self._state = self._args = None
        return self

    @classmethod
    def from_packed(
        cls,
        *,
        id: str,
        name: str,
        status: TaskStatus,
        token: int,
        created_at: float,
        expires_at: float | None,
        packed: Packed,
    ) -> StoredTask:
        """A task whose record is ``packed`` (:func:`pack_record`), with the
        scalars given beside it; the record is unpacked when first read."""
        self = cls.__new__(cls)
        self._fill(id, name, status, token, created_at, expires_at, None, packed, None)
        return self

    @classmethod
    def from_parts(
        cls,
        *,
        id: str,
        name: str,
        status: TaskStatus,
        token: int,
        created_at: float,
        expires_at: float | None,
        state: bytes,
        args: bytes | None,
    ) -> StoredTask:
        """A task stored as two parts (:attr:`state_data` and :attr:`args_data`),
        with the scalars given beside them; decoded when first read.  With
        ``args`` None (not read: a listing), :meth:`info` reads it and
        :attr:`record` raises."""
        self = cls.__new__(cls)
        self._fill(id, name, status, token, created_at, expires_at, None, None, None)
        self._state, self._args = state, args
        return self

    @property
    def version_data(self) -> bytes:
        """Stored bytes that change whenever the record does (its arguments
        never do): what a poll for changes compares, never encoded anew."""
        return self._state if self._state is not None else self.data

    @property
    def state_data(self) -> bytes:
        """The record as UTF-8 JSON without its ``args`` (see the class)."""
        if self._state is None:
            # never with the arguments: they may be large
            self._state = record_json(record_plain(self.record, args=False))
        return self._state

    @property
    def args_data(self) -> bytes:
        """The record's ``args`` as UTF-8 JSON (see the class)."""
        if self._args is None:
            self._args = dumps_arguments(self.record.args).encode("utf-8")
        return self._args

    def is_expired(self, now: float) -> bool:
        """Whether the task's retention ended by ``now`` (its record not read)."""
        expires_at = self.expires_at
        return expires_at is not None and expires_at <= now

    def packed(self) -> Packed | None:
        """The record packed (:func:`pack_record`) when this task holds it as
        an object or packed; None for one built from stored bytes, or whose
        arguments do not pack."""
        if self._packed is not None:
            return self._packed
        if self._record is None or self._data is not None:
            return None
        try:
            return pack_record(self._record)
        except ValueError:
            return None

    @property
    def data(self) -> bytes:
        """The whole record as UTF-8 JSON."""
        if self._data is None:
            self._data = dumps(record_plain(self.record)).encode("utf-8")
        return self._data

    @property
    def record(self) -> TaskRecord:
        """The record decoded (the engine's view); raises BackendError when unreadable."""
        if self._record is None:
            if self._packed is not None:
                self._record = unpack_record(self._packed)
                return self._record
            if self._state is not None:
                if self._args is None:
                    raise RuntimeError(f"the arguments of task {self.id} were not read")
                self._record = self._decoded(self._state, self._args)
            else:
                assert self._data is not None
                self._record = self._decoded(self._data, None)
        return self._record

    def info(self, *, position: int | None = None) -> TaskInfo:
        """The task's :class:`TaskInfo` (see :meth:`without_args`)."""
        return TaskInfo.from_record(self.without_args(), position=position)

    def without_args(self) -> TaskRecord:
        """The record, with its ``args`` left out (empty) unless decoded
        already: what a status, a listing or a summary reads (a status has no
        arguments, and they may be megabytes: a listing of 50 tasks of 1 MB
        each decoded 65 MB of JSON).  Never to be stored or run."""
        if self._record is not None:
            return self._record
        if self._packed is not None:
            return unpack_record(self._packed, args=False)
        if self._state is not None:
            return self._decoded(self._state, b"{}")
        return self.record

    def _decoded(self, data: bytes, args: bytes | None) -> TaskRecord:
        """``data`` (with ``args`` apart, or whole when None) as a record."""
        try:
            plain = loads(data)
            if args is not None:
                plain["args"] = loads(args)
            return record_from_plain(plain)
        except Exception as exc:
            raise BackendError(f"stored record of task {self.id} is unreadable: {exc}") from exc

    def __repr__(self) -> str:
        return f"StoredTask(id={self.id!r}, name={self.name!r}, status={self.status.value})"


@attrs.frozen(kw_only=True)
class Claim:
    """A worker's hold on a queued task id, valid until ``lease_until``.

    ``token`` is the fencing token: it grows with every claim of the queue, so a
    newer claim of the same task always carries a larger token.
    """

    task_id: str
    name: str
    token: int
    owner: str
    lease_until: float
