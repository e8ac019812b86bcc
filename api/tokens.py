"""The JWTs ``/api/v2/authorization/request/<token>`` hands out, as Nightscout does for API v3.

HS256 (RFC 7519 with the stdlib's HMAC): the signing key is derived from ``CONNECT_HTTP_SECRET``
(an HMAC of a fixed label under the secret), so a token dies with the secret that earned it and
the key is never the secret itself. The payload names what it grants and nothing else, and
never the secret: ``{"sub": "api-secret", "iat", "exp"}``; a token lives 8 hours, as
Nightscout's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any, Final

#: Nightscout's ``expiresIn: '8h'``
LIFETIME_S: Final = 8 * 3600
SUBJECT: Final = "api-secret"
#: longer than any token issued here: refused before any decoding
MAX_TOKEN: Final = 1024
_LABEL: Final = b"nightscout-connect API token key"
_HEADER: Final = {"alg": "HS256", "typ": "JWT"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and checks the API's JWTs; ``clock`` gives epoch seconds."""

    def __init__(self, secret: bytes, clock: Callable[[], int]) -> None:
        self._key = hmac.new(secret, _LABEL, hashlib.sha256).digest()
        self._clock = clock

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(self._key, signing_input.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def issue(self) -> dict[str, Any]:
        """A new token with its subject and times (Nightscout's answer, less the permissions)."""
        now = int(self._clock())
        claims = {"sub": SUBJECT, "iat": now, "exp": now + LIFETIME_S}
        head = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        token = f"{head}.{body}.{_b64(self._sign(f'{head}.{body}'))}"
        return {"token": token, **claims}

    def verify(self, token: str) -> bool:
        """Whether ``token`` is one of ours, unaltered and not expired."""
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            return False
        head, body, signature = token.split(".")
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            return False
        if not hmac.compare_digest(given, self._sign(f"{head}.{body}")):
            return False
        try:
            header = json.loads(_unb64(head))
            claims = json.loads(_unb64(body))
        except (binascii.Error, ValueError):
            return False
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            return False
        expires, issued = claims.get("exp"), claims.get("iat")
        if not isinstance(expires, int) or not isinstance(issued, int):
            return False
        now = int(self._clock())
        # a minute of leeway for a clock that stepped back since the token was issued
        return claims.get("sub") == SUBJECT and issued <= now + 60 and now < expires
