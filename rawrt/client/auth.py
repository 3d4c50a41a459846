"""The application's token for a client: a fixed string, or a getter called for a fresh one.

A getter's token is replaced in band before it runs out: the server's `authenticated` answer
names the token's `exp`, and `refresh_delay` says when to send a new auth frame (at
ClientConfig.token_refresh_s before it, or halfway through a shorter life), so the socket is
never closed for an expired token. If the refresh fails, the server closes with 4401 at
expiry and the client reconnects, asking the getter again.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

__all__ = ["Token", "TokenSource", "refresh_delay"]

Token = str | Callable[[], str | Awaitable[str]]


class TokenSource:
    __slots__ = ("_token",)

    def __init__(self, token: Token | None) -> None:
        self._token = token

    @property
    def present(self) -> bool:
        return self._token is not None

    @property
    def refreshable(self) -> bool:
        """A getter: a refused or expiring token can be replaced."""
        return callable(self._token)

    async def get(self) -> str:
        token = self._token
        if token is None or isinstance(token, str):
            return token or ""
        value = token()
        return await value if inspect.isawaitable(value) else value


def refresh_delay(exp_s: float, now_s: float, before_s: float) -> float:
    """Seconds from `now_s` until a token expiring at `exp_s` (both Unix time) is replaced."""
    left = exp_s - now_s
    return max(left / 2, left - before_s, 0.0)
