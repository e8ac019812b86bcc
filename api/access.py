"""Who may read (and write), per request: the one dependency through which every route judges credentials.

Protected routes call :meth:`Access.require_read` first thing rather than declaring the check as
a route dependency: FastAPI runs dependencies before it validates path parameters, and a
malformed ``/entries/<spec>`` answers 400 before any credential is looked at.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from api.auth import Authenticator
from api.context import Context
from api.errors import ApiError, V3Error


class Access:
    """One request's credentials, as the app's :class:`~api.auth.Authenticator` sees them."""

    __slots__ = ("_auth", "_request")

    def __init__(self, auth: Authenticator, request: Request) -> None:
        self._auth = auth
        self._request = request

    @property
    def reads_off(self) -> bool:
        return self._auth.reads_off

    def may_read(self) -> bool:
        return self._auth.may_read(self._request.headers, self._request.query_params)

    def credentials_valid(self) -> bool | None:
        return self._auth.credentials_valid(self._request.headers, self._request.query_params)

    def grant(self) -> dict[str, Any] | None:
        return self._auth.grant(self._request.headers, self._request.query_params)

    def require_read(self) -> None:
        """Refuse with 401 (its body says how to read) unless the request may read."""
        if not self.may_read():
            raise ApiError(401, "Unauthorized", "Invalid/Missing")

    def require_read_v3(self) -> None:
        """API v3's check: only a token (``Authorization: Bearer`` or ``?token=``: the secret, or a
        JWT issued for it) counts; 401 with v3's messages otherwise."""
        headers, query = self._request.headers, self._request.query_params
        if self._auth.may_read(headers, query, v3=True):
            return
        offered = self._auth.credentials_valid(headers, query, v3=True) is not None
        raise V3Error(401, "Bad access token or JWT" if offered else "Missing or bad access token or JWT")

    def require_write_v3(self) -> None:
        """API v3's check for a write: a valid token, always (anonymous reading, when switched
        on, never opens writing); 401 with v3's messages otherwise."""
        headers, query = self._request.headers, self._request.query_params
        valid = self._auth.credentials_valid(headers, query, v3=True)
        if valid is True:
            return
        raise V3Error(
            401, "Bad access token or JWT" if valid is False else "Missing or bad access token or JWT"
        )

    def issue_token(self, given: str) -> dict[str, Any] | None:
        return self._auth.issue_token(given)


async def _request_access(request: Request, context: Context) -> Access:
    # async, like the context: judging is left to the route, so nothing here needs a thread
    return Access(context.auth, request)


RequestAccess = Annotated[Access, Depends(_request_access)]
