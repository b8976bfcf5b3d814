"""Browser sessions of the control API: one-time login codes and the session cookies they buy.

A browser cannot send the bearer token, so ``meca-node status --open`` asks the node (with
the token) for a login code and prints ``http://127.0.0.1:PORT/login?code=...``. The code
works once and for :data:`CODE_TTL_S` seconds; using it sets a random session cookie that
the node holds in memory (a restart ends every session). A session may only read: the
control server lets it ``GET``, never ``POST``.

Everything is bounded: at most :data:`MAX_CODES` codes and :data:`MAX_SESSIONS` sessions
(the oldest go first), each session lives :data:`SESSION_TTL_S` at most. Codes and session
tokens are kept as SHA-256 digests, so a lookup compares no secret byte by byte.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

CODE_TTL_S = 60.0
SESSION_TTL_S = 12 * 3600.0
MAX_CODES = 16
MAX_SESSIONS = 32
COOKIE = "meca_session"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


class Sessions:
    """Login codes (single use, short-lived) and the sessions they open."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 code_ttl_s: float = CODE_TTL_S, session_ttl_s: float = SESSION_TTL_S,
                 max_codes: int = MAX_CODES, max_sessions: int = MAX_SESSIONS) -> None:
        self.clock = clock
        self.code_ttl_s = code_ttl_s
        self.session_ttl_s = session_ttl_s
        self.max_codes = max_codes
        self.max_sessions = max_sessions
        self._codes: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry, oldest first
        self._sessions: OrderedDict[bytes, float] = OrderedDict()

    def new_code(self) -> str:
        """A fresh login code, valid once within ``code_ttl_s``."""
        self._expire(self._codes)
        code = secrets.token_urlsafe(24)
        self._codes[_digest(code)] = self.clock() + self.code_ttl_s
        while len(self._codes) > self.max_codes:
            self._codes.popitem(last=False)
        return code

    def redeem(self, code: str) -> str | None:
        """A new session token for a valid unused ``code`` (which is then spent); None for
        an unknown, spent or expired one."""
        self._expire(self._codes)
        if not code or self._codes.pop(_digest(code), None) is None:
            return None
        self._expire(self._sessions)
        token = secrets.token_urlsafe(32)
        self._sessions[_digest(token)] = self.clock() + self.session_ttl_s
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return token

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` is a live session."""
        if not token:
            return False
        expiry = self._sessions.get(_digest(token))
        if expiry is None:
            return False
        if expiry <= self.clock():
            del self._sessions[_digest(token)]
            return False
        return True

    def end(self, token: str | None) -> None:
        """Forget the session ``token`` (logging out)."""
        if token:
            self._sessions.pop(_digest(token), None)

    def counts(self) -> dict[str, int]:
        """Live codes and sessions now."""
        self._expire(self._codes)
        self._expire(self._sessions)
        return {"codes": len(self._codes), "sessions": len(self._sessions)}

    def _expire(self, book: OrderedDict[bytes, float]) -> None:
        now = self.clock()
        for key in [k for k, expiry in book.items() if expiry <= now]:
            del book[key]


def cookie_value(header: str, name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` in a ``Cookie:`` header, or None."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None
