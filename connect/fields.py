"""What every settings model checks the same way: lengths, blank values, URLs, hosts and paths.

Every built-in settings model derives from :class:`ConnectSettings`, and the model of a run is
composed with the core settings, so its checks cover every field, a third-party source's too:

* a value longer than :data:`MAX_VALUE_LENGTH` (a secret: :data:`MAX_SECRET_LENGTH`) is refused
  before anything else looks at it, so no later check spends time on it or passes it to the
  operating system (a 100 kB file name is "File name too long" at best);
* an empty or blank value is the same as no value: the setting keeps its default (a required
  one is reported as not set);
* messages say what is wrong and never quote the value (it may be a secret, or carry one).

The URL, host and path checks here are used by the sources' and outputs' own validators,
which know what else their settings may be (a region alias, a bare host name).
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Final, Union, get_args, get_origin
from urllib.parse import SplitResult, urlsplit

import httpx
import idna
import pydantic
from pydantic import AfterValidator, AnyUrl, SecretStr, TypeAdapter, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the longest value any setting takes (PATH_MAX on Linux; far beyond any URL a server accepts)
MAX_VALUE_LENGTH: Final = 4096
#: the longest secret (passwords, tokens, API secrets, a broker URL with its password)
MAX_SECRET_LENGTH: Final = 1024
#: DNS: a name of at most 253 characters, in labels of 1 to 63
MAX_HOST_LENGTH: Final = 253
MAX_LABEL_LENGTH: Final = 63
#: the longest file name (one path component) the usual file systems take, in bytes
MAX_NAME_BYTES: Final = 255
HTTP_SCHEMES: Final = ("http", "https")
MQTT_SCHEMES: Final = ("mqtt", "mqtts")

_ANY_URL: Final = TypeAdapter(AnyUrl)
#: "word:" that is not "host:port": a scheme without "//" (javascript:…, mailto:…)
_SCHEME_ONLY = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(?!\d*(?:[/?#]|$))")
_ASCII_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")


class ConnectSettings(BaseSettings):
    """The base of every settings model: ``CONNECT_*`` variables, values bounded, blank is unset."""

    model_config = SettingsConfigDict(
        env_prefix="CONNECT_",
        extra="ignore",
        # an empty variable is no setting (CONNECT_MQTT_CA_FILE= is not the path ".")
        env_ignore_empty=True,
        # a rejected value (possibly a secret) is never quoted in a validation error
        hide_input_in_errors=True,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _bounded_and_blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        field = cls.model_fields.get(info.field_name or "")
        if not value.strip():
            # a flag given as "" or a variable of spaces: the setting keeps its default (settings
            # validate their defaults too, so a blank default comes through here as well)
            if field is None or field.is_required():
                raise PydanticCustomError("missing", "Field required")
            return field.get_default(call_default_factory=True)
        secret = field is not None and holds_secret(field.annotation)
        limit = MAX_SECRET_LENGTH if secret else MAX_VALUE_LENGTH
        if len(value) > limit:
            raise ValueError(f"longer than {limit} characters")
        if "\0" in value:
            raise ValueError("contains a NUL character")
        return value


def holds_secret(annotation: Any) -> bool:
    """Whether a field's type is a :class:`SecretStr` (optional or not)."""
    if annotation is SecretStr:
        return True
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType or origin is Annotated:
        return any(holds_secret(arg) for arg in get_args(annotation))
    return False


# --- hosts and URLs ----------------------------------------------------------------------------


def check_host(host: str) -> str:
    """The host as the network sees it (ASCII, IDNA-encoded), or ValueError saying what is wrong.

    An IP address passes as it is. A name must pass the encodings the requests will put it
    through: ``idna`` (what httpx applies to a non-ASCII name) and Python's ``idna`` codec (what
    the socket layer applies to every name), so that a name like ``x..y`` or one with a
    64-character label is refused here and not as a ``UnicodeError`` at the first connect.
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    name = host
    if not name.isascii():
        try:
            name = idna.encode(name.lower()).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise ValueError("the host is not a valid international domain name") from None
    if not _ASCII_HOST.match(name):
        raise ValueError("the host has characters a host name cannot have")
    bare = name.removesuffix(".")
    if len(bare) > MAX_HOST_LENGTH:
        raise ValueError(f"the host name is longer than {MAX_HOST_LENGTH} characters")
    if any(not 0 < len(label) <= MAX_LABEL_LENGTH for label in bare.split(".")):
        raise ValueError(f"the host name has an empty label or one longer than {MAX_LABEL_LENGTH} characters")
    try:
        name.encode("idna")
    except UnicodeError:
        raise ValueError("the host is not a valid domain name") from None
    return name


def check_url(
    text: str, *, schemes: Collection[str], what: str, default_scheme: str | None = None
) -> SplitResult:
    """``text`` split into its parts once it is a URL the daemon can use, else ValueError.

    ``default_scheme`` is put before a value without ``://`` (a bare host name). The scheme must
    be one of ``schemes``; the host must pass :func:`check_host`; an explicit port is 1–65535.
    Credentials, a query or a fragment are left for the caller to allow or refuse.

    pydantic's URL type parses first (it refuses a bad port or characters no URL has, and says
    which); :func:`urllib.parse.urlsplit` then gives the host as written, for the IDNA checks
    the URL type does not make (it accepts ``x..y``); for http(s) the HTTP client's own parser
    has the last word, so a URL that passes here is one the requests can be made to.
    """
    schemes_text = " or ".join(f"{s}://" for s in schemes)
    candidate = text.strip()
    if "://" not in candidate:
        if default_scheme is None:
            raise ValueError(f"{what} must be a URL starting with {schemes_text}")
        if _SCHEME_ONLY.match(candidate):
            raise ValueError(f"{what} must be a host name or a URL starting with {schemes_text}")
        candidate = f"{default_scheme}://{candidate}"
    try:
        _ANY_URL.validate_python(candidate)
    except pydantic.ValidationError as exc:
        reason = str(exc.errors(include_input=False)[0]["msg"]).removeprefix("Input should be a valid URL, ")
        raise ValueError(f"{what} is not a valid URL ({reason})") from None
    try:
        parts = urlsplit(candidate)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ValueError(f"{what} is not a valid URL") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"{what} must start with {schemes_text}")
    if not host:
        raise ValueError(f"{what} has no host")
    try:
        check_host(host)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if port is not None and not 0 < port <= 65535:
        raise ValueError(f"{what} has a port outside 1-65535")
    if parts.scheme.lower() in HTTP_SCHEMES:
        try:
            httpx.URL(candidate)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise ValueError(f"{what} is not a URL the HTTP client accepts") from None
    return parts


# --- paths -------------------------------------------------------------------------------------


def check_path(path: str | os.PathLike[str], what: str = "the path") -> Path:
    """A path the operating system can be asked about: no NUL, no name over 255 bytes.

    Checked before any file system call, so a mistaken value is one line naming the setting
    rather than an ``OSError`` (``File name too long``) where the file is first opened.
    """
    text = os.fspath(path)
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character")
    if len(text) > MAX_VALUE_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_VALUE_LENGTH} characters")
    try:
        names = [os.fsencode(part) for part in Path(text).parts]
    except UnicodeError:
        raise ValueError(f"{what} has characters this system cannot use in a file name") from None
    if any(len(name) > MAX_NAME_BYTES for name in names):
        raise ValueError(f"{what} has a name longer than {MAX_NAME_BYTES} bytes")
    return Path(text)


def readable_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """A regular file this process can read, else ValueError (the path is not quoted)."""
    checked = check_path(path, f"the {what} path")
    try:
        if not checked.is_file():
            raise ValueError(
                f"no {what} at that path" if not checked.exists() else f"the {what} path is not a file"
            )
        with checked.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"the {what} cannot be read ({type(exc).__name__})") from None
    return checked


def usable_path(path: Path) -> Path:
    """A path that may not exist yet (a file the daemon writes), but is no directory."""
    checked = check_path(path)
    try:
        if checked.is_dir():
            raise ValueError("the path is a directory; name a file")
    except OSError as exc:
        raise ValueError(f"the path cannot be checked ({type(exc).__name__})") from None
    return checked


def _store_path(value: str) -> str:
    if value != ":memory:":
        check_path(value)
    return value


#: a file that must exist and be readable (a CA bundle)
ReadableFile = Annotated[Path, AfterValidator(readable_file)]
#: a file the daemon reads and writes, created when missing (a token file)
FilePath = Annotated[Path, AfterValidator(usable_path)]
#: the SQLite store: a sane path, or ``:memory:``
StorePath = Annotated[str, AfterValidator(_store_path)]
