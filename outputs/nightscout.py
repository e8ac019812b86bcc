"""Nightscout output: the store's records uploaded through Nightscout's REST API v1.

* ``POST /api/v1/{entries,treatments,devicestatus,profile}`` with a JSON array of up to
  ``chunk_size`` documents; HTTP 200 moves the cursor past them.
* Credentials go in the ``api-secret`` header only, never in a URL (URLs end up in proxy and
  access logs): the SHA-1 hex of ``API_SECRET``, or of an access token. Nightscout matches an
  ``api-secret`` value against its subjects' token digests too, so a token needs no JWT exchange
  and no ``?token=`` query. A ``?token=`` found in the configured endpoint is moved there.
* 401/403: :class:`OutputAuthError`, retried on a slow ladder (5 min → 1 h). 404/405 and
  redirects mean the endpoint is wrong: same slow ladder, nothing set aside. 408/425/429/5xx,
  timeouts and connection errors: retried with capped backoff. Any other 4xx: the chunk is
  halved until the refused record is alone, and that record is set aside (kept in the store,
  counted, shown in status) so one bad record never holds back the ones after it. Ten refused
  one after another look like a site that refuses everything: the pass ends there and backs off
  on the slow ladder, instead of sending one request per record.

Duplicates. Entries (upsert on sysTime + type) and treatments (upsert on identifier, or
created_at + eventType) are idempotent on the server, so a resend is harmless. Devicestatus
and profile are plain inserts: a resend makes a duplicate. For those two collections an
*attempt cursor* (the cursor of ``<name>.attempted``) is advanced in the store before every
POST. When it is ahead of the delivery cursor, an earlier POST may have reached the site
without us seeing the answer (a timeout, a 5xx after a partial insert, a crash or SIGKILL
between the POST and the cursor update); before sending those records again, the site is asked
which of them it already holds (by ``identifier``, or device + ``created_at``), and only the
missing ones are posted. The only window left is a site that stored a record but does not yet
return it on the very next read.

Profiles are always compared with the site's before they are posted, since a fresh store (or
another uploader) cannot know what the site holds: a profile whose start and settings the site
already has is never posted again; the same start (or identifier) with other settings is the
profile changed at the source, and is posted: Nightscout's newest profile is the one with the
newest ``startDate``, then the newest ``_id``, so it becomes the site's current profile.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import httpx
import structlog

from connect.clock import wall_ms
from connect.errors import (
    ConfigError,
    ConnectError,
    OutputAuthError,
    ProtocolError,
    RateLimited,
    RequestRejected,
    TransientError,
)
from connect.httpkit import json_body, retry_after_seconds, send, sha1_hex
from connect.pushed import push_origin
from connect.records import COLLECTIONS, Collection, iso_from_ms, ms_from_iso
from connect.redact import describe_error, redact_text, register_secret
from machines.delivery import DeliveryPolicy
from outputs.delivery import Clock, Output
from outputs.settings import nightscout_target
from store.abc import StoredRow

if TYPE_CHECKING:
    from store.abc import WriterStore
    from store.aio import AsyncStore

log = structlog.get_logger("outputs.nightscout")

API: Final = "/api/v1"
#: collections Nightscout v1 inserts without dedupe: a resend is a duplicate
NON_IDEMPOTENT: Final[frozenset[str]] = frozenset({"devicestatus", "profile"})
#: epoch ms of 2000-01-01: an explicit lower bound, so the site adds no implicit 4-day window
EPOCH_2000_MS: Final = 946_684_800_000

#: collection → (path, query, time fields in order of preference) for "your newest record"
NEWEST_QUERIES: Final[dict[str, tuple[str, dict[str, str], tuple[str, ...]]]] = {
    "entries": (
        f"{API}/entries.json",
        {"count": "1", "find[date][$gte]": str(EPOCH_2000_MS)},
        ("date", "dateString", "sysTime", "mills"),
    ),
    "treatments": (
        f"{API}/treatments.json",
        {"count": "1", "find[created_at][$gte]": iso_from_ms(EPOCH_2000_MS)},
        ("created_at", "date", "mills", "timestamp"),
    ),
    "devicestatus": (
        f"{API}/devicestatus.json",
        {"count": "1", "find[created_at][$gte]": iso_from_ms(EPOCH_2000_MS)},
        ("created_at", "date", "mills"),
    ),
    "profile": (f"{API}/profile.json", {"count": "1"}, ("startDate", "created_at", "mills", "date")),
}


#: a record waiting for upload: its ``seq``, its Nightscout JSON as the store keeps it, its source
Row = StoredRow


def pending_rows(store: WriterStore, output: str, collection: Collection, limit: int) -> list[Row]:
    """Records past ``output``'s cursor, oldest change first (runs on the store's worker thread)."""
    return store.pending_rows(output, collection, limit)


def advance_and_read(
    store: WriterStore, output: str, collection: Collection, seq: int, limit: int
) -> list[Row]:
    """The records after ``seq`` (the next chunk), then ``output``'s cursor moved to ``seq``: one
    trip to the store's worker thread per chunk instead of two. Read first, so a failure of
    either leaves the cursor where it was."""
    chunk = store.rows_after(collection, seq, limit)
    store.advance(output, collection, seq)
    return chunk


def queued_rows(store: WriterStore, output: str, collection: Collection, limit: int) -> list[Row]:
    """Records ``output`` set aside that ``rejected retry`` queued for another try, oldest first."""
    return store.queued_rows(output, collection, limit)


def queued_collections(store: WriterStore, output: str) -> set[str]:
    """The collections in which ``rejected retry`` queued records of ``output``."""
    return store.queued_collections(output)


class ChunkRejected(RequestRejected):
    """The site refused a request for good (a 4xx other than auth, 404/405, 408, 425, 429)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def doc_ms(doc: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    """The first usable time among ``keys`` of a document the site returned (epoch ms)."""
    for key in keys:
        value = doc.get(key)
        try:
            if isinstance(value, bool) or value is None or value == "":
                continue
            if isinstance(value, (int, float)):
                return int(value)
            if isinstance(value, str):
                return int(value) if value.isdigit() else ms_from_iso(value)
        except (ValueError, OverflowError):
            continue
    return None


def identity_keys(collection: str, doc: Mapping[str, Any]) -> set[str]:
    """Keys under which a devicestatus/profile document is recognised at the site.

    A devicestatus is known by its identifier or its device and time. A profile is known by
    its start and its settings together (:func:`profile_key`): the same identifier or start
    with other settings is the profile changed at the source, which must be uploaded.
    """
    if collection == "profile":
        key = profile_key(doc)
        return set() if key is None else {key}
    keys: set[str] = set()
    identifier = doc.get("identifier")
    if isinstance(identifier, str) and identifier:
        keys.add(f"id:{identifier}")
    when = doc_ms(doc, ("created_at", "date", "mills"))
    if when is not None:
        keys.add(f"at:{doc.get('device')}|{when}")
    return keys


def _canonical(value: Any) -> Any:
    """A profile value compared by meaning: Nightscout keeps numbers as strings now and then
    (``"dia": "4"``), and mappings compare whatever their key order."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def profile_key(doc: Mapping[str, Any]) -> str | None:
    """What makes two profile documents the same profile: the moment it starts and its settings
    (``store`` and ``defaultProfile``); None without a start. The site's own fields (``_id``,
    ``created_at``) and who uploaded it do not count."""
    start = doc_ms(doc, ("startDate", "mills", "created_at"))
    if start is None:
        return None
    settings = {
        "defaultProfile": _canonical(doc.get("defaultProfile")),
        "store": _canonical(doc.get("store")),
    }
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return f"profile:{start}:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"


def _short_reason(response: httpx.Response) -> str:
    """Nightscout's one-line ``message`` for an error, when it sent one (never the request)."""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        return ""
    return ": " + redact_text(message[:120])


class NightscoutOutput(Output):
    """Uploads the store to one Nightscout site."""

    def __init__(
        self,
        endpoint: str,
        astore: AsyncStore,
        client: httpx.AsyncClient,
        *,
        api_secret: str | None = None,
        api_secret_sha1: str | None = None,
        token: str | None = None,
        chunk_size: int = 500,
        timeout: float = 30.0,
        name: str = "nightscout",
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        super().__init__(name, astore, clock=clock, rng=rng, policy=policy, chunk_size=chunk_size)
        site = nightscout_target(endpoint)
        token = token or site.token
        register_secret(api_secret, api_secret_sha1, token)
        # the API secret wins when both are set: it always grants write access; one given
        # already hashed is sent as it is
        credential = api_secret or token
        if not credential and not api_secret_sha1:
            raise ConfigError("the Nightscout output needs CONNECT_API_SECRET or a token")
        self.base_url = site.base_url
        #: rows pushed to this very site's address came from it: they are never sent back
        self.echo_source = push_origin(site.base_url)
        #: records passed over because they were pushed to this very site
        self._echoes = 0
        self.client = client
        self.timeout = timeout
        self.attempt_name = f"{name}.attempted"
        #: what ``check`` calls the credential
        self.credential_kind = "secret" if api_secret else "hashed secret" if api_secret_sha1 else "token"
        header = sha1_hex(api_secret) if api_secret else api_secret_sha1 or sha1_hex(credential or "")
        self._headers = {
            "api-secret": header.lower(),
            "accept": "application/json",
            "content-type": "application/json",
        }

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        astore: AsyncStore,
        client: httpx.AsyncClient,
        *,
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
    ) -> NightscoutOutput:
        secret = settings.api_secret.get_secret_value() if settings.api_secret is not None else None
        token = (
            settings.nightscout_token.get_secret_value() if settings.nightscout_token is not None else None
        )
        hashed = getattr(settings, "api_secret_sha1", None)
        return cls(
            settings.nightscout_endpoint,
            astore,
            client,
            api_secret=secret,
            api_secret_sha1=None if hashed is None else hashed.get_secret_value(),
            token=token,
            chunk_size=settings.nightscout_chunk_size,
            timeout=settings.nightscout_timeout,
            clock=clock,
            rng=rng,
        )

    def target(self) -> str:
        return self.base_url

    def status(self) -> dict[str, Any]:
        snapshot = super().status()
        snapshot["echoes"] = self._echoes
        return snapshot

    # --- HTTP -----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        answer: bool = True,
    ) -> Any:
        """One request; the parsed JSON answer of a 2xx, else the error the status maps to.

        ``answer=False`` (an upload, whose answer is only the site's copy of what was sent):
        a 2xx body is checked to be a JSON array or object, not parsed (parsing it cost as much
        as building the request), so an HTML page answered with 200 still fails the chunk."""
        what = f"{method} {path}"
        request = self.client.build_request(
            method, self.base_url + path, params=params, content=body, headers=self._headers,
            timeout=self.timeout,
        )  # fmt: skip
        response = await send(self.client, request, what=what)
        status = response.status_code
        if 200 <= status < 300:
            if not answer:
                if response.content.lstrip()[:1] not in (b"[", b"{"):
                    json_body(response, what=what)  # raises ProtocolError, saying what came
                return None
            return json_body(response, what=what)
        reason = _short_reason(response)
        if status in (401, 403):
            raise OutputAuthError(f"{what}: HTTP {status}{reason} (check CONNECT_API_SECRET or the token)")
        if status in (404, 405) or 300 <= status < 400:
            raise ConfigError(f"{what}: HTTP {status} (is CONNECT_NIGHTSCOUT_ENDPOINT the site's address?)")
        if status == 429:
            raise RateLimited(f"{what}: HTTP 429", retry_after=retry_after_seconds(response))
        if status in (408, 425) or status >= 500:
            raise TransientError(f"{what}: HTTP {status}{reason}", retry_after=retry_after_seconds(response))
        raise ChunkRejected(f"{what}: HTTP {status}{reason}", status=status)

    async def _get_list(self, path: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        body = await self._call("GET", path, params=params)
        if not isinstance(body, list):
            raise ProtocolError(f"GET {path}: expected a JSON array, got {type(body).__name__}")
        return [doc for doc in body if isinstance(doc, dict)]

    async def newest(self, collection: str, match: Mapping[str, str] | None = None) -> int | None:
        """Epoch ms of the site's newest record in ``collection`` whose fields equal ``match``
        (None: the site has none).

        Gap analysis on an empty store: the runtime starts from here instead of the backfill
        horizon, so an existing site is not uploaded again. ``match`` (``{"device": "share2"}``)
        keeps other uploaders' records out of the answer. Raises OutputAuthError,
        TransientError, ProtocolError… like any delivery, and shows the error in status.
        """
        path, params, keys = NEWEST_QUERIES[collection]
        params = {**params, **{f"find[{field}]": value for field, value in (match or {}).items()}}
        try:
            docs = await self._get_list(path, params)
        except ConnectError as exc:
            # the source's frame fails on this; the status must say it was the site
            self._noted(exc)
            raise
        times = [t for t in (doc_ms(doc, keys) for doc in docs) if t is not None]
        return max(times) if times else None

    async def probe(self) -> tuple[bool, str]:
        """Whether the site accepts the credential and lets it write, without writing anything.

        ``GET /api/v1/verifyauth`` says what the credential grants (``message`` "OK" when it is
        recognised, ``canWrite`` for write access). A credential it does not recognise is tried
        once more on the read gap analysis makes, for the status code the site answers.
        """
        who = self.credential_kind
        path = f"{API}/verifyauth"
        try:
            response = await self._probe_get(path)
            status = response.status_code
            if status in (401, 403):
                return False, f"refused the {who} (HTTP {status})"
            if status in (404, 405) or 300 <= status < 400:
                return False, (
                    f"no Nightscout API there (GET {path}: HTTP {status}); "
                    "is CONNECT_NIGHTSCOUT_ENDPOINT the site's address?"
                )
            if status != 200:
                return False, f"GET {path} answered HTTP {status}{_short_reason(response)}"
            body = json_body(response, what=f"GET {path}")
            grant = body.get("message") if isinstance(body, dict) else None
            if not isinstance(grant, dict):
                return False, f"GET {path} did not answer as Nightscout does"
            if grant.get("message") != "OK":
                entries, params, _ = NEWEST_QUERIES["entries"]
                read = await self._probe_get(entries, params)
                if read.status_code in (401, 403):
                    return False, f"refused the {who} (HTTP {read.status_code})"
                return False, f"refused the {who} (verifyauth: {str(grant.get('message'))[:40]})"
            if grant.get("canWrite") is not True:
                return False, (
                    f"accepted the {who}, but it may not write (verifyauth: canWrite false); "
                    "use the API secret or a token with the admin role"
                )
        except ConnectError as exc:
            return False, f"failed ({describe_error(exc)})"
        return True, "ok, can write"

    async def _probe_get(self, path: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        request = self.client.build_request(
            "GET", self.base_url + path, params=params, headers=self._headers, timeout=self.timeout
        )
        return await send(self.client, request, what=f"GET {path}")

    # --- delivery ---------------------------------------------------------------------------

    async def _deliver_pending(self) -> None:
        queued: set[str] = await self.astore.call_brief(queued_collections, self.astore.store, self.name)
        for collection in COLLECTIONS:
            await self._deliver_collection(collection, retry=collection in queued)

    async def _rows(self, collection: Collection, limit: int) -> list[Row]:
        rows: list[Row] = await self.astore.call_brief(
            pending_rows, self.astore.store, self.name, collection, limit
        )
        return rows

    async def _queued(self, collection: Collection, limit: int) -> list[Row]:
        rows: list[Row] = await self.astore.call(queued_rows, self.astore.store, self.name, collection, limit)
        return rows

    async def _deliver_collection(self, collection: Collection, *, retry: bool = False) -> None:
        # records set aside and queued again by `rejected retry` go first, then the new ones
        if retry:
            await self._deliver_rows(collection, self._queued, retry=True)
        await self._deliver_rows(collection, self._rows, retry=False)

    async def _deliver_rows(
        self, collection: Collection, read: Callable[[Collection, int], Awaitable[list[Row]]], *, retry: bool
    ) -> None:
        chunk = await read(collection, self.machine.limit)
        while True:
            if not chunk:
                if retry:  # queued entries whose records changed since: nothing left to send
                    await self.astore.retry_done(self.name, collection, [])
                return
            self._sending()
            try:
                echoes = await self._send_chunk(collection, chunk)
            except ChunkRejected as exc:
                # the machine halves the chunk until the refused record is alone, then sets
                # it aside so one bad record never holds back the ones after it (a queued
                # record refused again is set aside again)
                await self._refused(collection, chunk, exc.status, describe_error(exc) or "rejected")
                chunk = await read(collection, self.machine.limit)
                continue
            if retry:
                await self.astore.retry_done(self.name, collection, [r.seq for r in chunk])
                await self._accepted(collection, chunk)
                following = await read(collection, self.machine.limit)
            else:
                following = await self.astore.call_brief(
                    advance_and_read, self.astore.store, self.name, collection, chunk[-1].seq,
                    self.machine.limit_if_accepted,
                )  # fmt: skip
                await self._accepted(collection, chunk, advanced=True)
            # passed over, not delivered: they came from this site
            self._delivered -= echoes
            self._echoes += echoes
            chunk = following

    async def _send_chunk(self, collection: Collection, chunk: Sequence[Row]) -> int:
        """POST the chunk's records the site lacks; how many were passed over as its own."""
        rows = [r for r in chunk if r.source != self.echo_source]
        echoes = len(chunk) - len(rows)
        if not rows:
            return echoes
        if collection == "profile":
            # a profile is posted only when the site does not hold it yet: the site inserts
            # every profile it is sent, and a fresh store does not know what went up before
            rows = await self._not_at_site(collection, rows, rows)
        elif collection in NON_IDEMPOTENT:
            attempted = int(await self.astore.cursor(self.attempt_name, collection))
            if attempted >= chunk[0].seq:
                rows = await self._not_at_site(collection, rows, [r for r in rows if r.seq <= attempted])
        if collection in NON_IDEMPOTENT:
            if not rows:
                return echoes
            # written before the POST: after a crash, the records up to here may be at the site
            await self.astore.advance(self.attempt_name, collection, chunk[-1].seq)
        # the store keeps each document as compact JSON: the body is made without parsing them
        body = ("[" + ",".join(r.text for r in rows) + "]").encode("utf-8")
        await self._call("POST", f"{API}/{collection}", body=body, answer=False)
        return echoes

    async def _not_at_site(self, collection: Collection, rows: list[Row], uncertain: list[Row]) -> list[Row]:
        """``rows`` without those the site already holds (it is asked about ``uncertain``)."""
        try:
            present = await self._already_stored(collection, [r.doc() for r in uncertain])
        except ChunkRejected as exc:
            # a site that refuses the check would otherwise hold this collection back
            # forever; a possible duplicate is the lesser harm
            log.warning("cannot check for records already sent", output=self.name,
                        collection=collection, error=describe_error(exc))  # fmt: skip
            return rows
        kept = [r for r in rows if not (identity_keys(collection, r.doc()) & present)]
        if len(kept) < len(rows):
            log.info(
                "not sending records the site already holds", output=self.name,
                collection=collection, records=len(rows) - len(kept),
            )  # fmt: skip
        return kept

    async def _already_stored(self, collection: Collection, docs: Sequence[dict[str, Any]]) -> set[str]:
        """Identity keys of the site's copies of ``docs`` (devicestatus / profile)."""
        present: set[str] = set()
        if collection == "devicestatus":
            by_device: dict[str, list[int]] = {}
            for doc in docs:
                when = doc_ms(doc, ("created_at", "date"))
                if when is not None:
                    by_device.setdefault(str(doc.get("device")), []).append(when)
            for device, times in by_device.items():
                found = await self._get_list(
                    f"{API}/devicestatus.json",
                    {
                        "find[device]": device,
                        "find[created_at][$gte]": iso_from_ms(min(times)),
                        "find[created_at][$lte]": iso_from_ms(max(times)),
                        "count": str(2 * len(times) + 50),
                    },
                )
                for doc in found:
                    present |= identity_keys(collection, doc)
        else:
            # v1 lists profiles newest first and has no filter worth trusting: read enough of them
            found = await self._get_list(f"{API}/profile.json", {"count": str(len(docs) + 50)})
            for doc in found:
                present |= identity_keys(collection, doc)
        return present
