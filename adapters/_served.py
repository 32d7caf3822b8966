"""The app that ``errands serve`` hands to its server, built from the environment.

Servers that run several worker processes import the application by path in
each process; the CLI puts its settings in ``ERRANDS_SERVE`` (JSON) and points
the server at ``errands.adapters._served:app``.  Importing this module builds
the app, so only the CLI (after setting the variable) and servers import it.
"""

from __future__ import annotations

import json
import os

from ._target import load_service
from .asgi import ErrandsApp, create_app

__all__ = ["app", "build_app"]


def build_app() -> ErrandsApp:
    """The app described by ``ERRANDS_SERVE``."""
    settings = json.loads(os.environ["ERRANDS_SERVE"])
    return create_app(
        load_service(settings["target"]),
        backend=settings["backend"],
        bentoml_compat=settings["bentoml_compat"],
        max_body_size=settings["max_body_size"],
        max_pending=settings.get("max_pending"),
        max_wait=settings.get("max_wait", 60.0),
    )


#: A plain module attribute: hypercorn looks it up with ``eval`` in the
#: module's namespace, which a module ``__getattr__`` would not serve.
app = build_app()
