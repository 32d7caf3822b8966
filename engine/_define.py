"""Task definitions: ``@errands.service`` classes, ``errands.Service`` and ``@task``.

A definition is inert: it records the function, its signature and options.
Engines bind definitions to callables when they start (a service class is
instantiated once per engine start, so a model loads once).
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import attrs

from ._convert import (
    StrictTypeError,
    check_json,
    converter,
    field_errors,
    mentions_image,
    result_checker,
    type_name,
)
from ._errors import ErrandsError, FieldError, InvalidArguments

__all__ = ["Param", "Service", "TaskDefinition", "TaskOptions", "as_service", "service", "task"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

_MARK = "__errands_task__"
_SERVICE = "__errands_service__"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Attributes of clients; a task by one of these names would be hidden behind it.
RESERVED_NAMES = frozenset({"close", "endpoints", "engine", "get_task", "list", "statistics"})
_MISSING = inspect.Parameter.empty


def _check_positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _check_non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


@attrs.frozen(kw_only=True)
class TaskOptions:
    """Options of one task endpoint (``@errands.task(...)``).

    Attributes:
        name: the endpoint name (default: the function's name).
        route: the HTTP route (default: ``/<name>``).
        concurrency: how many may run at once in one engine (default: up to
            the engine's ``workers``; 1 for a sync method of a service class,
            whose one instance all calls share).
        timeout: seconds a run may take; then it fails with ``TimeoutError``.
        retries: automatic retries after an error (exponential backoff with
            jitter); errors raised as :class:`~errands.FinalError` never retry.
        retry_delay: the first backoff, in seconds; it doubles per retry.
        ttl: seconds a finished task is kept (default: the engine's ``ttl``).
        ttl_success, ttl_failure, ttl_cancelled: seconds a task that ended
            that way is kept (each defaults to the task's ``ttl``): keep
            failures a week and successes an hour, say.
        cancellable: a *sync* function that polls
            ``errands.current_task().cancelled`` and can be cancelled running.
        max_attempts: runs allowed when workers die (default: the engine's).
        batchable: adaptive batching: the function's first argument is a
            list and it returns a list of the same length; waiting tasks of
            this name are merged into one call (see ``_batching.py``).
        max_batch_size: most items in one call of a batchable task; a
            submit may pass at most this many.
        max_latency_ms: milliseconds a batch waits for more tasks after its
            first one, when it is not full.
    """

    name: str | None = None
    route: str | None = None
    concurrency: int | None = attrs.field(default=None, validator=_check_positive)
    timeout: float | None = attrs.field(default=None, validator=_check_positive)
    retries: int = attrs.field(default=0, validator=_check_non_negative)
    retry_delay: float = attrs.field(default=1.0, validator=_check_non_negative)
    ttl: float | None = attrs.field(default=None, validator=_check_positive)
    ttl_success: float | None = attrs.field(default=None, validator=_check_positive)
    ttl_failure: float | None = attrs.field(default=None, validator=_check_positive)
    ttl_cancelled: float | None = attrs.field(default=None, validator=_check_positive)
    cancellable: bool = False
    max_attempts: int | None = attrs.field(default=None, validator=_check_positive)
    batchable: bool = False
    max_batch_size: int = attrs.field(default=32, validator=_check_positive)
    max_latency_ms: float = attrs.field(default=10.0, validator=_check_non_negative)


#: Options that only batchable tasks take.
_BATCH_OPTIONS = ("max_batch_size", "max_latency_ms")


def task_options(given: Mapping[str, Any]) -> TaskOptions:
    """:class:`TaskOptions` from decorator keywords; an unknown one is named,
    with the closest valid one when there is one."""
    valid = [a.name for a in attrs.fields(TaskOptions)]
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"unknown task option {key!r}{hint}; the options are: {', '.join(valid)}"
            )
    if not given.get("batchable"):
        for key in _BATCH_OPTIONS:
            if key in given:
                raise TypeError(f"task option {key!r} is for batchable tasks: add batchable=True")
    return TaskOptions(**given)


def _no_engine(fn: Callable[..., Any], name: str, service: str | None) -> Callable[..., Any]:
    """What ``f.submit(...)`` on a task function does: say how to submit."""

    def submit(*args: Any, **kwargs: Any) -> Any:
        who = f"errands.start({service})" if service else "errands.start(YourService)"
        raise ErrandsError(
            f"{name}.submit() needs a running engine: tasks are submitted through an "
            f"engine's client, e.g. `with {who} as client: client.{name}.submit(...)` "
            f"(or `async with errands.open_engine(...) as client:` in trio code, or "
            f"errands.SyncHTTPClient(url) for a server)"
        )

    submit.__name__ = "submit"
    return submit


@attrs.frozen(kw_only=True)
class Param:
    """One argument of a task: its name, type and default."""

    name: str
    annotation: Any
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


_SIMPLE = {int, float, str, bool}


def _is_list_type(annotation: Any) -> bool:
    """Whether ``annotation`` is ``list``, ``list[...]`` or ``Any`` (unannotated)."""
    if annotation is Any or annotation is list:
        return True
    return typing.get_origin(annotation) is list


def _simple_ok(value: object, annotation: type) -> bool:
    if annotation is float:
        return type(value) is float or type(value) is int
    return type(value) is annotation


class TaskDefinition:
    """A task endpoint: the function, its signature, its options.

    Attributes:
        name: the endpoint name (also the attribute on clients).
        route: the HTTP route.
        func: the function (unbound, for a method of a service class).
        is_method: True for a method of a service class.
        is_async: True for an ``async def``.
        options: the :class:`TaskOptions`.
    """

    def __init__(self, func: Callable[..., Any], options: TaskOptions, *, is_method: bool) -> None:
        name = options.name or func.__name__
        if not _NAME.fullmatch(name) or name.startswith("_"):
            raise ValueError(f"task name {name!r} must be a Python identifier not starting with _")
        if name in RESERVED_NAMES:
            raise ValueError(
                f"task name {name!r} is taken by the client itself; pass name=... "
                f"(reserved: {', '.join(sorted(RESERVED_NAMES))})"
            )
        self.name = name
        self.route = options.route or f"/{name}"
        if not self.route.startswith("/"):
            self.route = "/" + self.route
        self.func = func
        self.is_method = is_method
        self.is_async = inspect.iscoroutinefunction(func)
        self.options = options
        if options.cancellable and self.is_async:
            raise ValueError(
                f"task {name!r}: cancellable=True is for sync functions; async tasks are "
                "always cancellable"
            )
        self._signature = inspect.signature(func)
        params = list(self._signature.parameters.values())
        if is_method:
            params = params[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise TypeError(
                    f"task {name!r}: argument {p.name!r} must be nameable "
                    "(no *args, **kwargs or positional-only arguments)"
                )
        self._raw_params = params
        self._params: tuple[Param, ...] | None = None
        self._return: Any = None
        self._by_name: dict[str, Param] = {}
        self._images: bool | None = None  # decodes_images, once known
        self._check_result: Callable[[Any], list[FieldError]] | None = None
        try:
            self._resolve()
        except NameError:
            pass  # a forward reference not defined yet; resolved on first use

    def _resolve(self) -> tuple[Param, ...]:
        if self._params is None:
            hints = typing.get_type_hints(self.func)
            # The return type keeps Annotated[...] extras (errands.MediaType).
            returns = typing.get_type_hints(self.func, include_extras=True).get("return", Any)
            self._return = returns
            self._params = tuple(
                Param(name=p.name, annotation=hints.get(p.name, Any), default=p.default)
                for p in self._raw_params
            )
            self._by_name = {p.name: p for p in self._params}
            if self.options.batchable:
                try:
                    self._check_batchable()
                except TypeError:
                    self._params = None  # not usable: every use says why
                    raise
        return self._params

    def _check_batchable(self) -> None:
        assert self._params is not None
        name = self.name
        if not self._params:
            raise TypeError(
                f"batchable task {name!r} needs an argument: the list of items of a call"
            )
        first = self._params[0]
        if not _is_list_type(first.annotation):
            raise TypeError(
                f"batchable task {name!r}: its first argument {first.name!r} must be "
                f"annotated list[...] (the items of a call), not {type_name(first.annotation)}"
            )
        if not _is_list_type(self._return):
            raise TypeError(
                f"batchable task {name!r} must return list[...] (one result per item), "
                f"not {type_name(self._return)}"
            )

    @property
    def batch_param(self) -> str | None:
        """The argument holding the items of a batchable task (None otherwise)."""
        if not self.options.batchable:
            return None
        return self._resolve()[0].name

    @property
    def params(self) -> tuple[Param, ...]:
        """The arguments, in signature order, with resolved annotations."""
        return self._resolve()

    @property
    def return_type(self) -> Any:
        """The annotated return type (``Any`` when not annotated)."""
        self._resolve()
        return self._return

    def check_result(self, value: Any) -> list[FieldError]:
        """Whether ``value`` matches the return type (see
        :func:`~errands._convert.check_result`): the bad fields, or ``[]``."""
        check = self._check_result
        if check is None:
            check = self._check_result = result_checker(self.return_type)
        return check(value)

    @property
    def decodes_images(self) -> bool:
        """Whether an argument is (or holds) a PIL image: slow to decode, so
        done in a worker thread."""
        if self._images is None:
            self._images = any(mentions_image(p.annotation) for p in self._resolve())
        return self._images

    @property
    def concurrency(self) -> int | None:
        """How many may run at once in one engine (None: up to its task slots).

        A sync method of a service class runs one call at a time unless it
        says otherwise: its instance (a model, a GPU handle) is shared by
        every call, and most are not thread-safe.
        """
        if self.options.concurrency is not None:
            return self.options.concurrency
        return 1 if self.is_method and not self.is_async else None

    @property
    def cancellable(self) -> bool:
        """Whether a running task can be cancelled (async, or sync opting in)."""
        return self.is_async or self.options.cancellable

    def validate(self, arguments: Mapping[str, Any], *, from_json: bool = False) -> dict[str, Any]:
        """Check arguments against the signature; return them as JSON-able data.

        Args:
            arguments: named arguments, as Python values or (``from_json``) as
                data decoded from JSON, where an argument of type ``bytes``
                may also be bytes (a file of a multipart form).

        Raises:
            InvalidArguments: naming every unknown, missing or ill-typed field.
        """
        params = self._resolve()
        out: dict[str, Any] = {}
        errors: list[FieldError] = []
        for p in params:
            if p.name not in arguments:
                if p.required:
                    errors.append(
                        FieldError(path=f"$.{p.name}", message="missing required argument")
                    )
                continue
            value = arguments[p.name]
            annotation = p.annotation
            if annotation in _SIMPLE:
                if not _simple_ok(value, annotation):
                    try:
                        converter.structure(value, annotation)
                    except StrictTypeError as exc:
                        errors.append(FieldError(path=f"$.{p.name}", message=str(exc)))
                        continue
                if annotation is float and not math.isfinite(value):
                    errors.append(
                        FieldError(
                            path=f"$.{p.name}", message="NaN and infinity are not valid JSON"
                        )
                    )
                    continue
                out[p.name] = value
                continue
            if annotation is bytes and type(value) is bytes:
                # Bytes given as bytes (by Python code, or a file of a
                # multipart form even ``from_json``): their base64 is valid by
                # construction (decoding it back to check it took twice as
                # long as encoding it: 14 ms a submit of 1 MB).
                out[p.name] = converter.unstructure(value)
                continue
            try:
                plain = value if from_json else converter.unstructure(value)
                converter.structure(plain, annotation)
                errors.extend(check_json(plain, f"$.{p.name}"))
            except RecursionError:
                errors.append(FieldError(path=f"$.{p.name}", message="nested too deeply"))
                continue
            except Exception as exc:
                errors.extend(field_errors(exc, f"$.{p.name}"))
                continue
            out[p.name] = plain
        for key in arguments:
            if key not in self._by_name:
                errors.append(FieldError(path=f"$.{key}", message="unknown argument"))
        batch = self.batch_param
        if batch is not None and batch in out and not errors:
            count = len(out[batch])
            limit = self.options.max_batch_size
            if not 1 <= count <= limit:
                errors.append(
                    FieldError(
                        path=f"$.{batch}",
                        message=f"has {count} items; a call of this batchable task takes "
                        f"1 to {limit} (max_batch_size)",
                    )
                )
        if errors:
            raise InvalidArguments(self.name, errors)
        return out

    def structure(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Turn stored JSON arguments back into the typed values the function takes."""
        self._resolve()
        out: dict[str, Any] = {}
        for key, value in arguments.items():
            param = self._by_name.get(key)
            if param is None:
                raise InvalidArguments(
                    self.name, [FieldError(path=f"$.{key}", message="unknown argument")]
                )
            if param.annotation in _SIMPLE and _simple_ok(value, param.annotation):
                out[key] = value
                continue
            try:
                out[key] = converter.structure(value, param.annotation)
            except Exception as exc:
                raise InvalidArguments(self.name, field_errors(exc, f"$.{key}")) from None
        return out

    def __repr__(self) -> str:
        return f"<TaskDefinition {self.name} {'async' if self.is_async else 'sync'}>"


class Service:
    """A named group of task endpoints.

    Use it directly for functions (scripts, notebooks)::

        svc = errands.Service("scratch")

        @svc.task
        async def add(a: int, b: int) -> int:
            return a + b

    or through ``@errands.service`` on a class whose ``@errands.task`` methods
    are the endpoints; the class is instantiated once per engine start.
    """

    def __init__(self, name: str, *, cls: type | None = None) -> None:
        self.name = name
        self.cls = cls
        self._tasks: dict[str, TaskDefinition] = {}
        #: Engines running this service now (set by the engines).
        self.engines_running = 0

    def __getattr__(self, name: str) -> Any:
        tasks = self.__dict__.get("_tasks", {})
        if name in tasks:
            raise AttributeError(
                f"{name!r} is a task of service {self.name!r}, not an attribute of it: "
                f"submit it through an engine's client, e.g. `with errands.start(svc) as "
                f"client: client.{name}.submit(...)`"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def tasks(self) -> Mapping[str, TaskDefinition]:
        """The endpoints by name."""
        return dict(self._tasks)

    def add(self, definition: TaskDefinition) -> None:
        old = self._tasks.get(definition.name)
        if old is not None and _same_place(old.func, definition.func):
            # The same function defined again (a notebook cell or a module run
            # again): the new definition replaces the old one.
            if self.engines_running:
                warnings.warn(
                    f"task {definition.name!r} of service {self.name!r} was redefined while "
                    "an engine runs the old definition; close that engine (client.close(), "
                    "or leave its block) and start it again to run the new one",
                    RuntimeWarning,
                    stacklevel=3,
                )
            del self._tasks[definition.name]
        elif old is not None:
            raise ValueError(f"service {self.name!r} already has a task named {definition.name!r}")
        routes = {d.route for d in self._tasks.values()}
        if definition.route in routes:
            raise ValueError(
                f"service {self.name!r} already has a task at route {definition.route!r}"
            )
        self._tasks[definition.name] = definition

    @overload
    def task(self, func: F, /) -> F: ...
    @overload
    def task(
        self,
        *,
        name: str | None = None,
        route: str | None = None,
        concurrency: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = 1.0,
        ttl: float | None = None,
        ttl_success: float | None = None,
        ttl_failure: float | None = None,
        ttl_cancelled: float | None = None,
        cancellable: bool = False,
        max_attempts: int | None = None,
        batchable: bool = False,
        max_batch_size: int = 32,
        max_latency_ms: float = 10.0,
    ) -> Callable[[F], F]: ...
    def task(  # type: ignore[misc]  # mypy cannot match **options to the overloads
        self, func: Any = None, /, **options: Any
    ) -> Any:
        """Register a function as a task endpoint (bare, or with options)."""
        if self.cls is not None:
            raise TypeError("use @errands.task on the methods of a service class")
        opts = task_options(options)

        def register(fn: F) -> F:
            definition = TaskDefinition(fn, opts, is_method=False)
            self.add(definition)
            _mark_submit(fn, definition.name, "svc")  # the Service's own variable
            return fn

        return register if func is None else register(func)

    def instantiate(self) -> object | None:
        """A new instance of the service class (None for a function service)."""
        return None if self.cls is None else self.cls()

    def bind(self, instance: object | None) -> dict[str, Callable[..., Any]]:
        """The callables to run, by task name."""
        bound: dict[str, Callable[..., Any]] = {}
        for name, definition in self._tasks.items():
            if definition.is_method:
                bound[name] = getattr(instance, definition.func.__name__)
            else:
                bound[name] = definition.func
        return bound

    def __repr__(self) -> str:
        return f"<Service {self.name} tasks={sorted(self._tasks)}>"


@overload
def task(func: F, /) -> F: ...
@overload
def task(
    *,
    name: str | None = None,
    route: str | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_delay: float = 1.0,
    ttl: float | None = None,
    ttl_success: float | None = None,
    ttl_failure: float | None = None,
    ttl_cancelled: float | None = None,
    cancellable: bool = False,
    max_attempts: int | None = None,
    batchable: bool = False,
    max_batch_size: int = 32,
    max_latency_ms: float = 10.0,
) -> Callable[[F], F]: ...
def task(func: Any = None, /, **options: Any) -> Any:
    """Mark a method of an ``@errands.service`` class as a task endpoint."""
    opts = task_options(options)

    def mark(fn: F) -> F:
        setattr(fn, _MARK, opts)
        _mark_submit(fn, str(opts.name or getattr(fn, "__name__", "task")), None)
        return fn

    return mark if func is None else mark(func)


@overload
def service(cls: C, /) -> C: ...
@overload
def service(*, name: str | None = None) -> Callable[[C], C]: ...
def service(cls: Any = None, /, *, name: str | None = None) -> Any:
    """Make a class a service: its ``@errands.task`` methods become endpoints."""

    def make(klass: C) -> C:
        svc = Service(name or klass.__name__, cls=klass)
        for attr, value in vars(klass).items():
            options = getattr(value, _MARK, None)
            if isinstance(options, TaskOptions):
                if isinstance(value, staticmethod | classmethod):
                    raise TypeError(f"task {attr!r} must be a plain method")
                svc.add(TaskDefinition(value, options, is_method=True))
                _mark_submit(value, options.name or attr, klass.__name__)
        if not svc.tasks:
            raise TypeError(f"service class {klass.__name__} has no @errands.task methods")
        setattr(klass, _SERVICE, svc)
        return klass

    return make if cls is None else make(cls)


def _same_place(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """Whether two functions are one definition run twice (same module and name)."""
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None),
        getattr(b, "__qualname__", None),
    )


def _mark_submit(fn: Any, name: str, service: str | None) -> None:
    """Give a task function a ``submit`` that explains how to submit."""
    try:
        fn.submit = _no_engine(fn, name, service)
    except (AttributeError, TypeError):
        pass  # a callable that takes no attributes: the plain AttributeError stays


def as_service(obj: object) -> Service:
    """The :class:`Service` behind a ``Service`` or an ``@errands.service`` class."""
    if isinstance(obj, Service):
        return obj
    svc = getattr(obj, _SERVICE, None)
    if isinstance(obj, type) and isinstance(svc, Service):
        return svc
    raise TypeError(
        f"expected an errands.Service or an @errands.service class, not {type(obj).__name__}"
    )
