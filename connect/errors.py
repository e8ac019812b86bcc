"""One error tree for everything the daemon can meet.

Vendor drivers map every vendor error code to exactly one of these classes, so the machines
and the runtime decide what to do from the type alone: log in again, wait, give up on the
frame, or keep retrying. Messages never carry secrets; :func:`connect.redact.redact` is
applied again before anything reaches a log or the status.
"""

from __future__ import annotations


class ConnectError(Exception):
    """Base of every error the daemon raises on purpose."""

    #: a retry of the same frame may succeed
    retryable: bool = True
    #: short machine-readable kind shown in status
    kind: str = "error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: seconds the remote side asked us to wait, when it said so
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class ConfigError(ConnectError):
    """Settings are missing or contradictory; nothing will work until a person fixes them."""

    retryable = False
    kind = "config"


class AuthRejected(ConnectError):
    """The vendor refused the credentials. Retrying soon risks an account lockout."""

    retryable = False
    kind = "auth_rejected"


class AccountLocked(AuthRejected):
    """The vendor locked the account (too many attempts); wait `retry_after` seconds."""

    kind = "account_locked"


class SessionExpired(ConnectError):
    """The session the request used is no longer valid: drop it and log in again."""

    kind = "session_expired"


class RateLimited(ConnectError):
    """The remote side asked us to slow down (429, ban page)."""

    kind = "rate_limited"


class TransientError(ConnectError):
    """5xx, timeouts, connection failures: worth retrying with backoff."""

    kind = "transient"


class Unreachable(TransientError):
    """The request never reached the remote side (no route, DNS, refused connection, no answer
    to the connect). Nobody counted it as a login attempt, so logins after it need not wait as
    long as after an attempt the vendor saw."""

    kind = "unreachable"


class StoreError(TransientError):
    """The local store failed a read or a write while running (a full disk, an I/O error). The
    transaction was rolled back, so nothing is half written: the frame or the delivery pass is
    retried with the backoff its machine decides, and the daemon keeps running."""

    kind = "store"


class StoreUnusable(ConfigError):
    """The store cannot be used at all (not a database, a newer schema, read-only, a directory,
    a missing directory, held by another daemon): found at start, before anything is written,
    and said in one line naming the store."""

    kind = "store_unusable"


class ProtocolError(ConnectError):
    """The remote side answered something we cannot understand (bad JSON, missing fields)."""

    kind = "protocol"


class RequestRejected(ConnectError):
    """A 4xx other than 401/403/408/429: the same request will fail again."""

    retryable = False
    kind = "rejected"


class GapUnknown(ConnectError):
    """The Nightscout site has not said where it stands for a collection it never deduplicates
    (devicestatus, profile), so the frame cannot start without risking duplicates there. The
    frame ends; the site is asked again on a later frame."""

    retryable = False
    kind = "gap_unknown"


class OutputAuthError(ConnectError):
    """An output (Nightscout, MQTT) refused our credentials; retried slowly."""

    kind = "output_auth"


class StepRequired(AuthRejected):
    """The vendor wants a person to act (accept terms, verify e-mail) before data flows."""

    kind = "step_required"
