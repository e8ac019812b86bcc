"""Share answers to the error tree: every documented code maps to exactly one error class.

Messages name the step and the vendor ``Code`` only. The vendor's own ``Message`` is never
copied: for session errors it contains the session id.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, Literal

import httpx

from connect.errors import (
    AccountLocked,
    AuthRejected,
    ConnectError,
    ProtocolError,
    RateLimited,
    RequestRejected,
    SessionExpired,
    TransientError,
)
from connect.httpkit import check_status, json_body, retry_after_seconds
from sources.dexcomshare.const import (
    BAN_SECONDS,
    CREDENTIAL_CODES,
    INTERNAL_CODE,
    INTERNAL_CREDENTIAL_HINTS,
    INVALID_ARGUMENT_CODE,
    LOCKOUT_PREFIX,
    LOCKOUT_SECONDS,
    MAX_RETRY_AFTER_SECONDS,
    SESSION_CODES,
)

Step = Literal["authenticate", "login", "read"]


_SAFE_CODE: Final = re.compile(r"[A-Za-z0-9_.]{1,80}")


def _what(step: Step) -> str:
    return f"dexcomshare {step}"


def _fault_body(response: httpx.Response) -> tuple[str, str] | None:
    """``(Code, Message)`` of a vendor fault body, or ``None`` when the body is not one."""
    try:
        body: Any = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    code, message = body.get("Code"), body.get("Message")
    if not isinstance(code, str):
        return None
    return code, message if isinstance(message, str) else ""


def error_for_code(code: str, message: str, *, step: Step, retry_after: float | None = None) -> ConnectError:
    """The error for a vendor fault ``Code`` met at ``step``.

    ``retry_after`` (a Retry-After header beside the fault) is kept on the error; a lockout
    waits at least :data:`LOCKOUT_SECONDS` whatever the header says.
    """
    error = _error_for_code(code, message, step=step)
    if retry_after is not None:
        retry_after = min(retry_after, MAX_RETRY_AFTER_SECONDS)
    if isinstance(error, AccountLocked):
        error.retry_after = max(LOCKOUT_SECONDS, retry_after or 0.0)
    elif retry_after is not None:
        error.retry_after = retry_after
    return error


def _error_for_code(code: str, message: str, *, step: Step) -> ConnectError:
    what = _what(step)
    shown = code if _SAFE_CODE.fullmatch(code) else "unrecognised code"
    if code in SESSION_CODES:
        return SessionExpired(f"{what}: {shown}")
    if code.startswith(LOCKOUT_PREFIX):
        return AccountLocked(f"{what}: {shown} (account locked)", retry_after=LOCKOUT_SECONDS)
    if code in CREDENTIAL_CODES:
        return AuthRejected(f"{what}: {shown} (account name, password or region rejected)")
    if code == INTERNAL_CODE:
        if any(hint in message for hint in INTERNAL_CREDENTIAL_HINTS):
            return AuthRejected(f"{what}: {shown} (credentials rejected)")
        return TransientError(f"{what}: {shown}")
    if code == INVALID_ARGUMENT_CODE:
        if step == "read":
            # only the session id in a read is ours to be malformed: get a new one
            return SessionExpired(f"{what}: {shown}")
        # an empty or malformed account name, password or account id: sending it again
        # cannot help and counts against the account, so it waits like bad credentials
        return AuthRejected(f"{what}: {shown} (account name or password not accepted)")
    return TransientError(f"{what}: {shown}")


def raise_for_response(response: httpx.Response, *, step: Step) -> None:
    """Raise the mapped error for any answer that is not a 2xx."""
    status = response.status_code
    if status < 300:
        return
    what = _what(step)
    fault = _fault_body(response) if status >= 400 else None
    header = _retry_after(response)
    if status == 429:
        if fault is not None and fault[0].startswith(LOCKOUT_PREFIX):
            # a rate limit that says the account is locked: wait for the lock, not the limiter
            raise error_for_code(*fault, step=step, retry_after=header)
        raise RateLimited(f"{what}: HTTP 429", retry_after=header)
    if fault is not None:
        raise error_for_code(*fault, step=step, retry_after=header)
    if status in (401, 403):
        # Share never answers a bad session with 401/403; these come from the CDN in front
        # of it (a ban page). Logging in again would only make the ban longer.
        raise RateLimited(f"{what}: HTTP {status} (blocked)", retry_after=_ban_seconds(header))
    if status == 400 and step == "read":
        # a malformed session id: the only query value that is not a plain number
        raise SessionExpired(f"{what}: HTTP 400")
    try:
        check_status(response, what=what)
    except ConnectError as error:
        error.retry_after = header  # the bounded value, not the raw header
        raise
    raise RequestRejected(f"{what}: HTTP {status}")  # 3xx: not something Share does


def _retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds, bounded; a value that is not a finite number is ignored."""
    seconds = retry_after_seconds(response)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


def _ban_seconds(seconds: float | None) -> float:
    return BAN_SECONDS if seconds is None else max(seconds, 1.0)


def uuid_answer(response: httpx.Response, *, step: Step) -> str:
    """The UUID string a login step answers with, checked."""
    raise_for_response(response, step=step)
    body = _json(response, step=step)
    if not isinstance(body, str) or not _UUID.fullmatch(body):
        raise ProtocolError(f"{_what(step)}: answer is not a UUID string")
    return body


def list_answer(response: httpx.Response, *, step: Step) -> Any:
    raise_for_response(response, step=step)
    return _json(response, step=step)


def _json(response: httpx.Response, *, step: Step) -> Any:
    return json_body(response, what=_what(step))


_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
