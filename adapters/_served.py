"""The app that ``errands serve`` hands to its server, built from the environment.

Servers that run several worker processes import the application by path in
each process; the CLI puts its settings in ``ERRANDS_SERVE`` (JSON) and points
the server at ``errands.adapters._served:app``.  Importing this module builds
the app, so only the CLI (after setting the variable) and servers import it.
"""

from __future__ import annotations

import json
import logging
import os
import signal

import errands

from ._security import read_token
from ._target import load_service
from .asgi import ErrandsApp, create_app

__all__ = ["app", "build_app", "engine_died"]

log = logging.getLogger("errands.cli")
_died: list[str] = []


def engine_died() -> bool:
    """Whether an engine bug ended this process's engine (exit non-zero)."""
    return bool(_died)


def _on_engine_death(reason: str) -> None:
    # The engine is gone: stop serving (a drain, as on SIGTERM) so that the
    # process exits, non-zero, and a supervisor restarts it.
    _died.append(reason)
    log.critical("stopping the server: its engine died (%s)", reason)
    os.kill(os.getpid(), signal.SIGTERM)


def build_app() -> ErrandsApp:
    """The app described by ``ERRANDS_SERVE``."""
    settings = json.loads(os.environ["ERRANDS_SERVE"])
    token_file = settings.get("token_file")
    token = read_token(token_file) if token_file else os.environ.get("ERRANDS_TOKEN") or None
    app = create_app(
        load_service(settings["target"]),
        backend=settings["backend"],
        auth=token,
        options=errands.EngineOptions(**settings.get("engine", {})),
        **settings.get("http", {}),
    )
    app.on_engine_death = _on_engine_death
    # --workers N: process i says so on its samples, and --metrics-port P
    # gives it port P+i, where it answers metrics only.
    index = int(os.environ.get("ERRANDS_PROCESS", "0"))
    if settings.get("processes", 1) > 1:
        app.metrics.process = str(index)
    metrics_port = settings.get("metrics_port")
    if metrics_port is not None:
        app.metrics.only_port = metrics_port + index
    return app


#: A plain module attribute: hypercorn looks it up with ``eval`` in the
#: module's namespace, which a module ``__getattr__`` would not serve.
app = build_app()
