"""Who may call the HTTP API, and through which host name.

* **Auth.** A bearer token (compared in constant time, never logged), or a
  deployer's own async callable that is given the request's ASGI scope and
  answers whether it may pass.  ``/livez`` and ``/readyz`` are always open
  (load balancers and BentoML's clients poll them before they have a token).
* **Host allow-list.** A browser on the user's machine can be pointed at a
  server on ``127.0.0.1`` through a name it controls (DNS rebinding); the
  ``Host`` header gives it away.  A server bound to loopback answers only to
  loopback names unless told otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LOOPBACK_HOSTS",
    "OPEN_PATHS",
    "AuthCheck",
    "Authenticator",
    "HostAllowList",
    "header",
    "is_loopback",
    "read_token",
]

#: The routes that answer without a token.
OPEN_PATHS = frozenset({"/livez", "/readyz"})
#: The host names a loopback-bound server answers to by default.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

#: A deployer's own check: given the request's ASGI scope, may it pass?
AuthCheck = Callable[[Mapping[str, Any]], Awaitable[bool]]


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in a file (its first line, stripped); ValueError when empty."""
    text = Path(path).read_text(encoding="utf-8").strip()
    token = text.splitlines()[0].strip() if text else ""
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


class Authenticator:
    """Checks a request's credentials (see the module docstring).

    Args:
        auth: a bearer token, an async callable (:data:`AuthCheck`), or None
            (no auth).
    """

    def __init__(self, auth: str | AuthCheck | None) -> None:
        if isinstance(auth, str):
            if not auth or auth != auth.strip():
                raise ValueError("the token must be a non-empty string without spaces around it")
            self._expected: bytes | None = f"Bearer {auth}".encode()
            self._check: AuthCheck | None = None
        elif auth is None:
            self._expected = None
            self._check = None
        elif callable(auth):
            self._expected = None
            self._check = auth
        else:
            raise TypeError("auth must be a token (str), an async callable, or None")

    @property
    def enabled(self) -> bool:
        return self._expected is not None or self._check is not None

    async def allows(self, scope: Mapping[str, Any]) -> bool:
        """Whether the request may pass (always True when auth is off)."""
        if self._check is not None:
            return bool(await self._check(scope))
        if self._expected is None:
            return True
        given = header(scope, b"authorization")
        # Compared in constant time, whatever the lengths.
        return hmac.compare_digest(given or b"", self._expected)


class HostAllowList:
    """The ``Host`` names a server answers to (``"*"``: any).

    Names are compared without their port, case-insensitively; IPv6
    literals may be given with or without brackets.
    """

    def __init__(self, hosts: Iterable[str]) -> None:
        names = {_bare(h) for h in hosts if h.strip()}
        self.any = "*" in names
        self.names = frozenset(names - {"*"})

    def allows(self, scope: Mapping[str, Any]) -> bool:
        if self.any:
            return True
        host = header(scope, b"host")
        if host is None:
            return False
        return _bare(host.decode("latin-1"), strip_port=True) in self.names


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bare(host: str, *, strip_port: bool = False) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1] or [::1]:3000
        return host[1 : host.index("]")] if "]" in host else host[1:]
    if strip_port and host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    """The value of request header ``name`` (lower case), or None."""
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value)
    return None
