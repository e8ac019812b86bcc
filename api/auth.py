"""Who may read: the ``CONNECT_HTTP_SECRET`` in any of the forms Nightscout clients send.

* ``api-secret: <SHA-1 hex of the secret>`` (any case; the SHA-512 hex works too), as every
  Nightscout uploader and follower sends it;
* ``?token=<secret>`` or ``Authorization: Bearer <secret>``;
* ``?secret=<SHA-1 hex>``, Nightscout's query form of the header;
* a JWT from ``/api/v2/authorization/request/<secret>`` (:mod:`api.tokens`), as a Bearer or a
  ``?token=``, as Nightscout clients of API v3 send it.

Any one valid credential grants reading, whatever else the request carries (Nightscout's rule).

API v3 looks only at the token forms (``Authorization: Bearer`` and ``?token=``): Nightscout
never accepted ``API_SECRET`` there.

Without a secret nothing can be proven, so reading is open only when ``CONNECT_HTTP_READABLE``
says so (the bind rule then keeps the API on loopback); otherwise every protected route refuses,
with a body that says how to turn reading on.

Every comparison is constant-time over bytes. Nothing here logs or returns what a client sent.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic import SecretStr

from api.tokens import TokenSigner
from connect.redact import register_secret

UNAUTHORIZED_BODY = b'{"status":401,"message":"Unauthorized","description":"Invalid/Missing"}'
#: how to turn reading on, for a request to an API that has neither a secret nor anonymous reads
READS_OFF_HINT = (
    "reading is off: set CONNECT_HTTP_SECRET (12+ characters) and send it as api-secret "
    "(its SHA-1), ?token= or Authorization: Bearer; or set CONNECT_HTTP_READABLE=true "
    "to let anyone who can reach this address read"
)
READS_OFF_BODY = json.dumps({"status": 401, "message": "Unauthorized", "description": READS_OFF_HINT}).encode(
    "utf-8"
)
#: what a valid secret grants here (Nightscout's ``authorized`` shape, without a token: the API
#: issues none, and the credential itself must never come back)
READ_GRANT: Final[Mapping[str, Any]] = {"sub": "api-secret", "permissionGroups": [["*:*:read"]]}


def _same(given: str, expected: bytes) -> bool:
    # compare_digest on str refuses non-ASCII; bytes keep it constant-time for any input
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)


class Authenticator:
    """Decides whether a request's credentials grant reading."""

    def __init__(
        self, secret: SecretStr | None, *, readable: bool, clock: Callable[[], int] | None = None
    ) -> None:
        """``clock``: epoch milliseconds (the wall clock when not given), for tokens' lifetimes."""
        self.required = secret is not None
        self.readable = readable
        value = secret.get_secret_value() if secret is not None else ""
        encoded = value.encode("utf-8")
        self._raw = encoded
        self._sha1 = hashlib.sha1(encoded).hexdigest().encode("ascii")
        self._sha512 = hashlib.sha512(encoded).hexdigest().encode("ascii")
        if value:
            register_secret(value, hashlib.sha512(encoded).hexdigest())
        ms = clock if clock is not None else (lambda: int(time.time() * 1000))
        self.tokens = TokenSigner(encoded, lambda: ms() // 1000) if value else None

    def _token_valid(self, given: str) -> bool:
        """The secret itself, or a JWT issued for it."""
        raw = _same(given, self._raw)
        # both checks always run, so timing does not tell a near-secret from a near-token
        issued = self.tokens is not None and self.tokens.verify(given)
        return raw | issued

    def issue_token(self, given: str) -> dict[str, Any] | None:
        """Nightscout's answer to ``/api/v2/authorization/request/<given>``: a JWT when ``given``
        is the secret or a token of ours, else ``None``."""
        if self.tokens is None or not self._token_valid(given):
            return None
        issued = self.tokens.issue()
        return {**issued, "permissionGroups": copy.deepcopy(READ_GRANT["permissionGroups"])}

    def credentials_valid(
        self, headers: Mapping[str, str], query: Mapping[str, str], *, v3: bool = False
    ) -> bool | None:
        """True when any credential offered is the secret (or a token of ours), False when every
        one offered is wrong, None when none was offered (or no secret is configured).

        As Nightscout checks them: one valid credential among ``api-secret``, ``?secret=``,
        ``?token=`` and ``Authorization: Bearer`` is enough, and a wrong one beside it does not
        take the access away (a client with the secret in its header and a stale token in its
        URL reads Nightscout, and reads this API the same). Every offered form is still judged,
        so timing does not tell which one was right.

        ``v3``: only the token forms count (``Authorization: Bearer`` and ``?token=``), as API v3
        judges them; ``api-secret`` and ``?secret=`` are not looked at.
        """
        if not self.required:
            return None
        verdicts: list[bool] = []
        header = None if v3 else headers.get("api-secret")
        if header is not None:
            hashed = header.strip().lower()
            # both comparisons always run, so timing does not tell which form was close
            verdicts.append(_same(hashed, self._sha1) | _same(hashed, self._sha512))
        secret_param = None if v3 else query.get("secret")
        if secret_param is not None:
            verdicts.append(_same(secret_param.strip().lower(), self._sha1))
        token = query.get("token")
        if token is not None:
            verdicts.append(self._token_valid(token))
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            # other schemes (Basic from a reverse proxy in front) are not ours to judge
            if scheme.lower() == "bearer":
                verdicts.append(self._token_valid(credentials.strip()))
        if not verdicts:
            return None
        return any(verdicts)

    @property
    def reads_off(self) -> bool:
        """No secret and no anonymous reading: nobody may read, whatever they send."""
        return not self.required and not self.readable

    def may_read(self, headers: Mapping[str, str], query: Mapping[str, str], *, v3: bool = False) -> bool:
        """With a secret, reading needs it, unless anonymous reading is switched on and no wrong
        secret was offered. Without one, only ``CONNECT_HTTP_READABLE=true`` opens reading (the
        bind rule keeps such an API on loopback): being on loopback alone is not consent, since
        every local user and every local process could read the glucose history."""
        if not self.required:
            return self.readable
        valid = self.credentials_valid(headers, query, v3=v3)
        if valid is None:
            return self.readable
        return valid

    def grant(self, headers: Mapping[str, str], query: Mapping[str, str]) -> dict[str, Any] | None:
        """status.json's ``authorized``: what the request's credentials grant, ``None`` for an
        anonymous request (as Nightscout answers without a token)."""
        if self.credentials_valid(headers, query) is True:
            return copy.deepcopy(dict(READ_GRANT))
        return None

    def is_admin(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        if not self.required:
            return False
        return self.credentials_valid(headers, query) is True
