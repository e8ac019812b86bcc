"""HTTP helpers every source and output shares: one place maps transport trouble to the error tree."""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import math
import ssl
import time
import uuid
from typing import Any

import httpx

from connect.errors import (
    ProtocolError,
    RateLimited,
    RequestRejected,
    SessionExpired,
    TransientError,
    Unreachable,
)
from connect.fields import HTTP_SCHEMES, check_url


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every HTTP client of the process (httpx's default:
    certifi's bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``). Loading the bundle takes ~50 ms
    and holds a few hundred kB, which ``--accounts-dir`` would otherwise pay once per account."""
    return httpx.create_ssl_context()


@functools.cache
def mqtt_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """One verifying TLS context per CA file for every MQTT connection of the process (what
    paho's ``tls_set`` would make for each connection: the system's CAs, or only ``ca_file``'s;
    the certificate and the host name checked). Read once: a changed CA file takes a restart."""
    return ssl.create_default_context(cafile=ca_file)


USER_AGENT = "nightscout-connect-py"
#: every webhook request carries this header with :data:`INSTANCE_ID`; an API of this process
#: refuses requests that carry its own (a webhook pointed back at ourselves)
LOOP_HEADER = "x-connect-origin"
#: this process, as its webhooks name it
INSTANCE_ID = uuid.uuid4().hex


def sha1_hex(secret: str) -> str:
    """Nightscout's ``api-secret`` header value for a secret."""
    return hashlib.sha1(secret.encode("utf-8")).hexdigest()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def retry_after_seconds(response: httpx.Response, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "nan" and "inf" parse as floats; a server saying either has said nothing usable
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def send(client: httpx.AsyncClient, request: httpx.Request, *, what: str) -> httpx.Response:
    """Send a request; connection problems and timeouts become :class:`TransientError`."""
    try:
        return await client.send(request)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        # before the request was sent: the remote side never saw it
        raise Unreachable(f"{what}: {type(exc).__name__}") from None
    except httpx.TimeoutException as exc:
        raise TransientError(f"{what}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise TransientError(f"{what}: {type(exc).__name__}") from None


def check_status(response: httpx.Response, *, what: str) -> None:
    """The generic mapping of HTTP status codes; vendors refine it before calling this."""
    status = response.status_code
    if status < 400:
        return
    if status == 429:
        raise RateLimited(f"{what}: HTTP 429", retry_after=retry_after_seconds(response))
    if status in (401, 403):
        raise SessionExpired(f"{what}: HTTP {status}")
    if status == 408 or status >= 500:
        raise TransientError(f"{what}: HTTP {status}", retry_after=retry_after_seconds(response))
    raise RequestRejected(f"{what}: HTTP {status}")


def json_body(response: httpx.Response, *, what: str) -> Any:
    """The parsed JSON body, or :class:`ProtocolError` (HTML ban pages, truncated bodies…)."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        kind = response.headers.get("content-type", "unknown type").split(";")[0]
        raise ProtocolError(
            f"{what}: HTTP {response.status_code} body is not JSON ({kind}, {len(response.content)} bytes)"
        ) from None


def server_base(text: str, what: str) -> tuple[str, str]:
    """``("scheme://host[:port]", "/path")`` of a configured server override.

    A bare host name means https. Raises ValueError naming the problem; the message never
    quotes the text (it may carry credentials, ``user:password@host``).
    """
    check_url(text, schemes=HTTP_SCHEMES, what=what, default_scheme="https")
    text = text.strip()
    url = httpx.URL(text if "://" in text else f"https://{text}")
    if url.userinfo or url.query or url.fragment:
        raise ValueError(f"{what} must not carry credentials, a query or a fragment")
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}", url.path.rstrip("/")
