"""The app that ``errands serve`` hands to its server, built from the environment.

Servers that run several worker processes import the application by path in
each process; the CLI puts its settings in ``ERRANDS_SERVE`` (JSON) and points
the server at ``errands.adapters._served:app``.
"""

from __future__ import annotations

import json
import os

from ._target import load_service
from .asgi import ErrandsApp, create_app

__all__ = ["build_app"]  # and ``app``, built on first access


def build_app() -> ErrandsApp:
    """The app described by ``ERRANDS_SERVE``."""
    settings = json.loads(os.environ["ERRANDS_SERVE"])
    return create_app(
        load_service(settings["target"]),
        backend=settings["backend"],
        bentoml_compat=settings["bentoml_compat"],
        max_body_size=settings["max_body_size"],
        max_pending=settings.get("max_pending"),
    )


def __getattr__(name: str) -> ErrandsApp:
    # Built when a server asks for it, not when the CLI imports build_app.
    if name == "app":
        return build_app()
    raise AttributeError(name)
