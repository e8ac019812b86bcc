"""Another Nightscout site as a source: copy its entries, treatments, devicestatus and profiles.

Reads use Nightscout's REST API v1 (protocols/05-nightscout-api.md). Two server behaviours
shape the design:

* A query without a date constraint only sees the last four days (the implicit window), and
  a server may cap ``count``. So every read names an explicit range — ``find[date]`` in epoch
  ms for entries, ``find[created_at]`` in ISO for treatments and devicestatus — and walks
  forward from the checkpoint in windows of at most a day. Results come newest first, so a
  full page means older documents are still missing: the read pages *down* inside the window
  (``$lte`` the oldest date seen) until a page comes back short, and shrinks the window when a
  day is too dense to page through. A short page is trusted only when it is shorter than a page
  the site has already returned (or than one proven complete); otherwise one more read below it
  tells a complete window from a silent count cap, whose size then becomes the page size.
* Uploaders post late (phones offline, batched uploads), so the lower bound never starts later
  than :data:`LATE_UPLOAD_MS` before now. Re-read documents keep their identifiers, so the
  store treats them as no-ops.

A frame walks as many windows as its budget allows (so a 30-day backfill is one frame), sets
``Batch.covered`` to the end of the last complete window, and says ``more`` while that is
still before now. If a request fails after some windows completed, the frame keeps them and
the next frame meets the error again.

Credentials: ``CONNECT_SOURCE_API_SECRET`` goes out as ``api-secret: <sha1 hex>``; an access
token may ride in the endpoint URL (``https://site/?token=reader-0123456789abcdef`` or
``https://reader-0123456789abcdef@site``) and is sent as ``?token=``. The "session" is a check
of the credentials against ``/api/v1/verifyauth``: a wrong secret is then refused once, at
login, and the runtime waits long before trying it again (Nightscout slows down an address
for every failed attempt) instead of each loop hammering the site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

import attrs
import httpx
import structlog
from pydantic import Field, SecretStr, field_validator

from connect import httpkit
from connect.contract import BuilderLike, LastKnown, SourceInfo
from connect.errors import (
    AuthRejected,
    ConfigError,
    ConnectError,
    ProtocolError,
    RequestRejected,
)
from connect.fields import HTTP_SCHEMES, ConnectSettings, check_url
from connect.records import Batch, Collection, Record, from_nightscout, iso_from_ms
from connect.redact import describe_error, register_secret

log = structlog.get_logger("sources.nightscout")

NAME: Final = "nightscout"
MINUTE_MS: Final = 60_000
DAY_MS: Final = 86_400_000
#: the widest window one request covers: one day of 5-minute readings is 288 documents
WINDOW_MS: Final = DAY_MS
#: the narrowest window; a site with more documents than pages allow in it is broken
MIN_WINDOW_MS: Final = 5 * MINUTE_MS
#: how far behind the checkpoint a read starts again when it is close to now (late uploads)
LATE_UPLOAD_MS: Final = 30 * MINUTE_MS
LOOPS: Final[dict[str, str]] = {
    "entries": "NightscoutEntries",
    "treatments": "NightscoutTreatments",
    "devicestatus": "NightscoutDeviceStatus",
    "profile": "NightscoutProfile",
}


@attrs.frozen(kw_only=True)
class CollectionSpec:
    """How one collection is read: its path, the date field it is queried and sorted by."""

    name: Collection
    path: str
    field: str
    page_size: int

    @property
    def numeric(self) -> bool:
        """Entries are queried by epoch ms; the others by ISO strings (compared as strings)."""
        return self.field == "date"

    def bound(self, ms: int) -> str:
        return str(ms) if self.numeric else iso_from_ms(ms)

    def key(self, doc: Any) -> int | str | None:
        """The value the server filtered and sorted this document by, when it has one."""
        if not isinstance(doc, Mapping):
            return None
        value = doc.get(self.field)
        if self.numeric:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return int(value)
            return None
        return value if isinstance(value, str) else None


SPECS: Final[dict[str, CollectionSpec]] = {
    "entries": CollectionSpec(name="entries", path="/api/v1/entries.json", field="date", page_size=1000),
    "treatments": CollectionSpec(
        name="treatments", path="/api/v1/treatments.json", field="created_at", page_size=1000
    ),
    # devicestatus documents are large (a Loop one is several kB): smaller pages
    "devicestatus": CollectionSpec(
        name="devicestatus", path="/api/v1/devicestatus.json", field="created_at", page_size=500
    ),
}


class NightscoutSettings(ConnectSettings):
    """The ``nightscout`` source: the site to read and how to authenticate to it (the endpoint
    may carry an access token: validation errors never quote a value)."""

    source_endpoint: str = Field(
        description="URL of the Nightscout site to read (may carry ?token=<access token>)",
        repr=False,  # it may carry a token
    )
    source_api_secret: SecretStr | None = Field(
        default=None, description="API_SECRET of the site to read (sent as its SHA-1)"
    )
    source_collections: str = Field(
        default="entries,treatments,devicestatus,profile",
        description="which collections to copy, comma-separated",
    )

    @field_validator("source_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        parse_endpoint(value)  # raises ValueError without echoing the value (it may hold a token)
        return value.strip()

    @field_validator("source_collections")
    @classmethod
    def _check_collections(cls, value: str) -> str:
        parse_collections(value)
        return value


@attrs.frozen(kw_only=True, repr=False)
class Endpoint:
    """The site's base URL (no credentials in it) and an access token, if the URL carried one."""

    base: str
    token: str | None = None

    def __repr__(self) -> str:
        return f"Endpoint(base={self.base!r}, token={'[redacted]' if self.token else None})"


def parse_endpoint(text: str) -> Endpoint:
    """``site.example``, ``https://site.example/ns/``, ``http://127.0.0.1:1337?token=…``,
    ``https://token@site.example`` → base URL and token. A trailing ``/api/v1`` is dropped."""
    raw = text.strip()
    if not raw:
        raise ValueError("the Nightscout URL is empty")
    check_url(raw, schemes=HTTP_SCHEMES, what="the Nightscout URL", default_scheme="https")
    if "://" not in raw:
        raw = "https://" + raw
    url = httpx.URL(raw)
    token = url.params.get("token") or None
    if url.username:
        if url.password:
            raise ValueError("user:password in the Nightscout URL is not supported; use ?token=")
        token = token or url.username
    host = url.host if ":" not in url.host else f"[{url.host}]"
    port = f":{url.port}" if url.port is not None else ""
    path = url.path.rstrip("/")
    for suffix in ("/api/v1", "/api/v3"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return Endpoint(base=f"{url.scheme}://{host}{port}{path}", token=token)


def parse_collections(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in LOOPS]
    if unknown or not names:
        raise ValueError(f"collections must be some of {', '.join(LOOPS)}")
    return names


@attrs.frozen(kw_only=True)
class WindowRead:
    """What a fetch of entries/treatments/devicestatus hands to transform.

    ``docs`` are the documents of every complete window in ``(lower, upper]``; ``requests``
    counts the HTTP requests it took; ``interrupted`` describes the error that ended the frame
    early (the windows before it are complete and kept).
    """

    collection: Collection
    lower: int
    upper: int
    docs: tuple[Any, ...]
    requests: int = 0
    interrupted: str | None = None


@attrs.frozen(kw_only=True)
class ProfileRead:
    docs: tuple[Any, ...]


class _TooDense(Exception):
    """A window held more documents than the page budget reaches: shrink it and try again."""

    def __init__(self, requests: int) -> None:
        super().__init__("window too dense")
        self.requests = requests


_RECORD_ERRORS: Final = (ValueError, TypeError, KeyError, AttributeError, ArithmeticError)


class NightscoutSource:
    """The source bound to one site and one HTTP client."""

    #: budgets of one frame; the first window is always completed (shrinking if needed)
    max_requests_per_frame: int = 60
    max_docs_per_frame: int = 20_000
    max_pages_per_window: int = 10
    window_ms: int = WINDOW_MS
    profile_count: int = 10

    def __init__(self, settings: NightscoutSettings, client: httpx.AsyncClient) -> None:
        try:
            self.endpoint = parse_endpoint(settings.source_endpoint)
            self.collections = parse_collections(settings.source_collections)
        except ValueError as error:
            raise ConfigError(f"CONNECT_SOURCE_ENDPOINT / CONNECT_SOURCE_COLLECTIONS: {error}") from None
        self.client = client
        secret = settings.source_api_secret.get_secret_value() if settings.source_api_secret else ""
        register_secret(secret or None, self.endpoint.token)
        self._headers: dict[str, str] = {"accept": "application/json", "user-agent": httpkit.USER_AGENT}
        if secret:
            self._headers["api-secret"] = httpkit.sha1_hex(secret)
        self._auth_params: list[tuple[str, str]] = []
        if self.endpoint.token:
            self._auth_params.append(("token", self.endpoint.token))
        self.page_sizes: dict[str, int] = {name: spec.page_size for name, spec in SPECS.items()}
        #: the longest page the site ever returned, per collection: its count cap is at least that
        self._largest_page: dict[str, int] = {}
        #: the longest short page that a read below it proved complete
        self._short_confirmed: dict[str, int] = {}

    @property
    def has_credentials(self) -> bool:
        return "api-secret" in self._headers or bool(self._auth_params)

    # --- wiring ------------------------------------------------------------------------------

    def generate_driver(self, builder: BuilderLike) -> None:
        builder.support_session(authenticate=self.authenticate, authorize=self.authorize)
        fetchers = {
            "entries": self.fetch_entries,
            "treatments": self.fetch_treatments,
            "devicestatus": self.fetch_devicestatus,
        }
        for collection in self.collections:
            if collection == "profile":
                builder.register_loop(
                    LOOPS[collection], fetch=self.fetch_profile, transform=self.transform,
                    collections=("profile",), expected_interval=timedelta(hours=1),
                )  # fmt: skip
            else:
                builder.register_loop(
                    LOOPS[collection], fetch=fetchers[collection], transform=self.transform,
                    collections=(collection,), expected_interval=timedelta(minutes=5),
                )  # fmt: skip

    # --- session: a credentials check ----------------------------------------------------------

    async def authenticate(self) -> dict[str, Any]:
        """Ask the site what our credentials allow; refused credentials are :class:`AuthRejected`."""
        what = "Nightscout verifyauth"
        response = await self._get("/api/v1/verifyauth", [], what=what)
        if response.status_code == 404:
            # a site too old for verifyauth: a status read tells as much (401 when refused)
            response = await self._get("/api/v1/status.json", [], what="Nightscout status")
            self._check(response, what="Nightscout status")
            return {"canRead": True, "message": "OK", "checked": "status"}
        self._check(response, what=what)
        body = httpkit.json_body(response, what=what)
        info = body.get("message") if isinstance(body, Mapping) else None
        if not isinstance(info, Mapping):
            raise ProtocolError(f"{what}: unexpected answer")
        if self.has_credentials:
            if info.get("message") != "OK" and info.get("rolefound") != "FOUND":
                raise AuthRejected(
                    "Nightscout refused the credentials: check CONNECT_SOURCE_API_SECRET "
                    "or the token in CONNECT_SOURCE_ENDPOINT"
                )
        elif not info.get("canRead"):
            raise AuthRejected(
                "the Nightscout site does not allow anonymous reads: set CONNECT_SOURCE_API_SECRET "
                "or add ?token=<access token> to CONNECT_SOURCE_ENDPOINT"
            )
        return dict(info)

    async def authorize(self, authn: dict[str, Any]) -> dict[str, Any]:
        # nothing to exchange: every request carries the secret or token itself
        return authn

    # --- HTTP ----------------------------------------------------------------------------------

    async def _get(self, path: str, params: Sequence[tuple[str, str]], *, what: str) -> httpx.Response:
        request = self.client.build_request(
            "GET", self.endpoint.base + path, params=[*params, *self._auth_params], headers=self._headers
        )
        return await httpkit.send(self.client, request, what=what)

    @staticmethod
    def _check(response: httpx.Response, *, what: str) -> None:
        status = response.status_code
        if status in (401, 403):
            raise AuthRejected(
                f"{what}: HTTP {status}, Nightscout refused the credentials or they lack read permission"
            )
        if status == 404:
            raise RequestRejected(f"{what}: HTTP 404, is CONNECT_SOURCE_ENDPOINT a Nightscout site?")
        httpkit.check_status(response, what=what)

    async def _get_list(self, path: str, params: Sequence[tuple[str, str]], *, what: str) -> list[Any]:
        response = await self._get(path, params, what=what)
        self._check(response, what=what)
        body = httpkit.json_body(response, what=what)
        if not isinstance(body, list):
            raise ProtocolError(f"{what}: expected a JSON array, got a JSON {type(body).__name__}")
        return body

    # --- windows -------------------------------------------------------------------------------

    async def fetch_entries(self, session: Any, last_known: LastKnown) -> WindowRead:
        return await self._fetch_windows(SPECS["entries"], last_known)

    async def fetch_treatments(self, session: Any, last_known: LastKnown) -> WindowRead:
        return await self._fetch_windows(SPECS["treatments"], last_known)

    async def fetch_devicestatus(self, session: Any, last_known: LastKnown) -> WindowRead:
        return await self._fetch_windows(SPECS["devicestatus"], last_known)

    async def _fetch_windows(self, spec: CollectionSpec, last_known: LastKnown) -> WindowRead:
        """Walk windows forward from the checkpoint until now or the frame's budget is spent."""
        now = last_known.now
        lower = min(last_known.get(spec.name), now - LATE_UPLOAD_MS)
        covered = lower
        window = self.window_ms
        docs: list[Any] = []
        requests = 0
        interrupted: str | None = None
        while covered < now and (
            covered == lower
            or (requests < self.max_requests_per_frame and len(docs) < self.max_docs_per_frame)
        ):
            upper = min(covered + window, now)
            try:
                found, used = await self._read_window(spec, covered, upper)
            except _TooDense as dense:
                requests += dense.requests
                if window <= MIN_WINDOW_MS:
                    raise ProtocolError(
                        f"Nightscout {spec.name}: more documents in {window // MINUTE_MS} minutes "
                        "than paging can reach"
                    ) from None
                window = max(MIN_WINDOW_MS, window // 4)
                continue
            except ConnectError as error:
                if covered == lower:
                    raise
                interrupted = describe_error(error)
                log.info(
                    "nightscout read interrupted; keeping the complete windows",
                    collection=spec.name, error=interrupted,
                )  # fmt: skip
                break
            requests += used
            docs.extend(found)
            covered = upper
        return WindowRead(
            collection=spec.name, lower=lower, upper=covered, docs=tuple(docs), requests=requests,
            interrupted=interrupted,
        )  # fmt: skip

    async def _read_window(self, spec: CollectionSpec, lower: int, upper: int) -> tuple[list[Any], int]:
        """Every document with ``lower < field <= upper``: page down from the newest."""
        what = f"Nightscout {spec.name}"
        size = self.page_sizes[spec.name]
        low = spec.bound(lower)
        high: int | str = upper if spec.numeric else spec.bound(upper)
        high_op = "$lte"
        found: list[Any] = []
        pages = 0
        confirming: int | None = None
        seen: set[str] = set()
        while True:
            if pages >= self.max_pages_per_window:
                raise _TooDense(pages)
            params = [
                (f"find[{spec.field}][$gt]", low),
                (f"find[{spec.field}][{high_op}]", str(high)),
                ("count", str(size)),
            ]
            page = await self._get_list(spec.path, params, what=what)
            pages += 1
            # the page below starts at the last page's oldest instant ($lte), so it repeats the
            # documents at that boundary: only documents not seen yet say the window goes on
            fresh = [doc for doc in page if _doc_id(doc) is None or _doc_id(doc) not in seen]
            seen.update(i for i in map(_doc_id, page) if i is not None)
            found.extend(page)
            n = len(page)
            if confirming is not None:
                if not fresh:
                    self._short_confirmed[spec.name] = max(
                        self._short_confirmed.get(spec.name, 0), confirming
                    )
                    return self._within(spec, found, lower, upper), pages
                # documents below a short page: the site caps count there; page at its size
                log.info("the site caps count; paging at its size", collection=spec.name, count=confirming)
                size = self.page_sizes[spec.name] = confirming
                confirming = None
            largest = self._largest_page[spec.name] = max(self._largest_page.get(spec.name, 0), n)
            if n < size:
                if n == 0 or n < largest or n <= self._short_confirmed.get(spec.name, 0):
                    return self._within(spec, found, lower, upper), pages
                # as long as a page this long was never seen, a short page may be a silent
                # count cap (a proxy, a patched site): read on below it once to be sure
                confirming = n
            keys = [k for k in (spec.key(doc) for doc in page) if k is not None]
            if not keys:
                raise ProtocolError(f"{what}: a full page without {spec.field} values")
            oldest = min(keys)  # type: ignore[type-var]
            if oldest < high:  # type: ignore[operator]
                high, high_op = oldest, "$lte"
            else:
                # a whole page at one instant: step below it (more than a page of documents
                # sharing one millisecond is not something an uploader produces)
                high_op = "$lt"

    @staticmethod
    def _within(spec: CollectionSpec, docs: list[Any], lower: int, upper: int) -> list[Any]:
        """The documents inside the window, by the server's own comparison; overlapping pages
        repeat the documents at the page boundary, so each is kept once (by ``_id``)."""
        low: int | str = lower if spec.numeric else spec.bound(lower)
        high: int | str = upper if spec.numeric else spec.bound(upper)
        seen: set[str] = set()
        out: list[Any] = []
        for doc in docs:
            key = spec.key(doc)
            if key is not None and not (low < key <= high):  # type: ignore[operator]
                continue
            doc_id = doc.get("_id") if isinstance(doc, Mapping) else None
            if isinstance(doc_id, str):
                if doc_id in seen:
                    continue
                seen.add(doc_id)
            out.append(doc)
        return out

    # --- profile -------------------------------------------------------------------------------

    async def fetch_profile(self, session: Any, last_known: LastKnown) -> ProfileRead:
        body = await self._get_list(
            "/api/v1/profile.json", [("count", str(self.profile_count))], what="Nightscout profile"
        )
        return ProfileRead(docs=tuple(body))

    # --- transform (pure) ------------------------------------------------------------------------

    def transform(self, raw: Any, last_known: LastKnown) -> Batch:
        """Documents → records. Unusable documents are skipped; a body that is not a list of
        JSON objects is a :class:`ProtocolError`."""
        if isinstance(raw, ProfileRead):
            return self._transform_profile(raw, last_known)
        if not isinstance(raw, WindowRead):
            raise ProtocolError(f"nightscout: unexpected fetch result {type(raw).__name__}")
        records = _records(raw.collection, raw.docs)
        covered = min(raw.upper, last_known.now)
        return Batch.of(records, covered={raw.collection: covered}, more=covered < last_known.now)

    def _transform_profile(self, raw: ProfileRead, last_known: LastKnown) -> Batch:
        records = _records("profile", raw.docs)
        if not records:
            return Batch.of([])
        since = last_known.get("profile")
        keep = [r for r in records if r.date > since]
        newest = max(records, key=lambda r: r.date)
        if newest not in keep:
            # the profile in effect may be years old: always carry it (unchanged, it is a no-op)
            keep.append(newest)
        return Batch.of(keep)


def _doc_id(doc: Any) -> str | None:
    value = doc.get("_id") if isinstance(doc, Mapping) else None
    return value if isinstance(value, str) else None


def _records(collection: Collection, docs: Sequence[Any]) -> list[Record]:
    records: list[Record] = []
    for doc in docs:
        if not isinstance(doc, Mapping):
            raise ProtocolError(
                f"Nightscout {collection}: the array holds a {type(doc).__name__}, not objects"
            )
        try:
            records.append(from_nightscout(collection, doc))
        except _RECORD_ERRORS:
            continue  # a document our model cannot hold (unknown entry type, no time …)
    return records


def make(settings: NightscoutSettings, client: httpx.AsyncClient) -> NightscoutSource:
    return NightscoutSource(settings, client)


SOURCE = SourceInfo(
    name=NAME,
    description="another Nightscout site (entries, treatments, devicestatus, profile)",
    settings=NightscoutSettings,
    factory=make,
    legacy_env={},
)
