"""The CareLink token file: reading it, rotating it and writing it back safely.

CareLink's login needs a person at a browser (a captcha), so the daemon never logs in with a
password: it lives on the refresh token that ``nightscout-connect login carelink`` saved.
Refresh tokens rotate, so every refresh must reach the file before the old token is
forgotten, and the file must never be readable by anyone else: it is written to a
temporary file created with mode 0600 and renamed over the old one.

The format is the ``logindata.json`` other CareLink tools write (carelink-python-client,
carelink-bridge, nightscout-connect), so a file made by any of them can be used as is.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from connect.errors import ProtocolError, StepRequired
from connect.redact import register_secret
from sources.carelink.const import REQUIRED_TOKEN_FIELDS

FILE_MODE = 0o600
LOGIN_HINT = "run `nightscout-connect login carelink` to log in again"

#: keys of ours; every other key of a file is kept as it was
_KNOWN = frozenset(
    {"access_token", "refresh_token", "client_id", "client_secret", "token_url", "scope", "audience",
     "mag-identifier"}
)  # fmt: skip


@attrs.frozen(kw_only=True)
class TokenData:
    """What the token file holds. ``repr`` shows no secret."""

    access_token: str = attrs.field(repr=False)
    refresh_token: str = attrs.field(repr=False)
    client_id: str
    client_secret: str | None = attrs.field(default=None, repr=False)
    #: where refreshes go; files from older tools lack it (the SSO configuration tells it)
    token_url: str | None = None
    scope: str | None = None
    audience: str | None = None
    #: the older app login's device id, sent as the ``mag-identifier`` header
    mag_identifier: str | None = attrs.field(default=None, repr=False)
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_json(cls, doc: Any, *, what: str) -> TokenData:
        """Read a token document; :class:`StepRequired` names what is missing (never a value)."""
        if not isinstance(doc, Mapping):
            raise StepRequired(f"{what} does not hold a JSON object; {LOGIN_HINT}")
        for name in REQUIRED_TOKEN_FIELDS:
            value = doc.get(name)
            if not isinstance(value, str) or not value.strip():
                raise StepRequired(f"{what} has no {name}; {LOGIN_HINT}")

        def optional(name: str) -> str | None:
            value = doc.get(name)
            return value if isinstance(value, str) and value.strip() else None

        data = cls(
            access_token=doc["access_token"].strip(),
            refresh_token=doc["refresh_token"].strip(),
            client_id=doc["client_id"].strip(),
            client_secret=optional("client_secret"),
            token_url=optional("token_url"),
            scope=optional("scope"),
            audience=optional("audience"),
            mag_identifier=optional("mag-identifier"),
            extra={k: v for k, v in doc.items() if k not in _KNOWN},
        )
        data.register()
        return data

    def register(self) -> None:
        """Tell the redactor every secret this holds, so no log line can carry one."""
        register_secret(self.access_token, self.refresh_token, self.client_secret, self.mag_identifier)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "client_id": self.client_id,
            }
        )
        for key, value in (
            ("client_secret", self.client_secret),
            ("token_url", self.token_url),
            ("scope", self.scope),
            ("audience", self.audience),
            ("mag-identifier", self.mag_identifier),
        ):
            if value is not None:
                doc[key] = value
        return doc

    def rotated(self, response: Mapping[str, Any]) -> TokenData:
        """The data after a token response: a new access token, and a new refresh token if sent."""
        access = response.get("access_token")
        if not isinstance(access, str) or not access.strip():
            raise ProtocolError("CareLink token response has no access_token")
        refresh = response.get("refresh_token")
        scope = response.get("scope")
        new = attrs.evolve(
            self,
            access_token=access.strip(),
            refresh_token=refresh.strip()
            if isinstance(refresh, str) and refresh.strip()
            else self.refresh_token,
            scope=scope if isinstance(scope, str) and scope.strip() else self.scope,
        )
        new.register()
        return new


def read_token_file(path: Path) -> TokenData:
    """The token file's content, or :class:`StepRequired` saying what a person must do."""
    what = f"CareLink token file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StepRequired(f"{what} does not exist; run `nightscout-connect login carelink`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StepRequired(f"{what} cannot be read ({type(exc).__name__})") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise StepRequired(f"{what} is not JSON; {LOGIN_HINT}") from None
    data = TokenData.from_json(doc, what=what)
    _tighten(path)
    return data


def _tighten(path: Path) -> None:
    """A token file others can read (copied in by hand) is made private to its owner."""
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(FILE_MODE)


def write_token_file(path: Path, data: TokenData) -> None:
    """Replace the token file atomically; the content is never readable by anyone else.

    The temporary file is created 0600 in the same directory (so the rename is atomic),
    flushed to disk, then renamed over the old file; a crash leaves either file whole.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(data.to_json(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp already creates 0600; fchmod makes it explicit whatever the platform does
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (only to read its expiry, country and user name)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(body.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def claim_str(claims: Mapping[str, Any], *path: str) -> str | None:
    """A string claim at ``path`` (e.g. ``token_details``, ``country``), if there is one."""
    node: Any = claims
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node if isinstance(node, str) and node.strip() else None


def claim_number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
