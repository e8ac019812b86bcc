"""The CareLink driver: a session living on the token file, and the recent-data loop.

* ``authenticate`` reads the token file (written by ``nightscout-connect login carelink``)
  and looks up the region's hosts once.
* ``authorize`` turns the refresh token into a fresh access token, writes the rotated
  refresh token back to the file, and learns once who is logged in and whom to follow.
  The session's lifetime is the access token's, less the 600 s margin the apps keep.
* ``fetch`` posts ``display/message``. A 401/403 there marks the access token as spoiled,
  so the next login refreshes it even if its ``exp`` says it is still good.

No password is ever used: CareLink's login needs a person at a browser (a captcha).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import attrs
import httpx
import structlog

from connect.contract import Backoff, BuilderLike, Grant, LastKnown
from connect.errors import (
    AuthRejected,
    ProtocolError,
    RequestRejected,
    SessionExpired,
    StepRequired,
)
from connect.httpkit import check_status, json_body, send, sha256_hex
from connect.records import Batch
from sources.carelink import transform as payload
from sources.carelink.const import (
    APP_VERSION,
    CARE_PARTNER_ROLES,
    CLOUD_HOSTS,
    DEFAULT_DISCOVERY_REGION,
    DISCOVERY_PATH,
    DISPLAY_MESSAGE_PATH,
    FALLBACK_TOKEN_LIFETIME_S,
    JSON_HEADERS,
    LINKED_PATIENTS_PATH,
    LOOP_NAME,
    READING_INTERVAL_MS,
    TOKEN_MIN_REMAINING_S,
    UPLOAD_BUFFER_MS,
    UPLOAD_LAG_MS,
    USER_AGENT,
    USERS_ME_PATH,
)
from sources.carelink.discovery import RegionConfig, SsoConfig, parse_discovery, parse_sso_config
from sources.carelink.settings import CareLinkSettings, rebase
from sources.carelink.tokens import (
    LOGIN_HINT,
    TokenData,
    claim_number,
    claim_str,
    jwt_claims,
    read_token_file,
    write_token_file,
)

log = structlog.get_logger("sources.carelink")

Clock = Callable[[], int]

#: OAuth error codes that mean "this refresh token (or client) is no good any more"
_OAUTH_REFUSALS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "invalid_request", "access_denied"}
)


def _wall_ms() -> int:
    return int(time.time() * 1000)


class TokenRefused(AuthRejected):
    """CareLink refused an access token while the session was being set up."""


@attrs.frozen(kw_only=True)
class Session:
    """What a fetch needs: the access token and who to ask about. ``repr`` shows no secret."""

    access_token: str = attrs.field(repr=False)
    mag_identifier: str | None = attrs.field(default=None, repr=False)
    username: str = attrs.field(repr=False)
    role: str
    patient_id: str | None = attrs.field(default=None, repr=False)
    cumulus: str


@attrs.frozen(kw_only=True)
class Identity:
    username: str
    role: str
    patient_id: str | None


def session_lifetime(seconds: float) -> float:
    """How long to use an access token valid ``seconds`` more: until 600 s remain (the margin
    the apps keep), or half of it for short-lived tokens."""
    if seconds > 2 * TOKEN_MIN_REMAINING_S:
        return seconds - TOKEN_MIN_REMAINING_S
    return max(1.0, seconds / 2)


def discovery_url(settings: CareLinkSettings) -> str:
    region = settings.carelink_region or DEFAULT_DISCOVERY_REGION
    return rebase(f"https://{CLOUD_HOSTS[region]}{DISCOVERY_PATH}", settings.carelink_server)


def region_hint(settings: CareLinkSettings, tokens: TokenData | None) -> tuple[str | None, str | None]:
    """(region, country) from the settings, else from the token's claims or its token URL."""
    region, country = settings.carelink_region, settings.country_code
    if region is None and country is None and tokens is not None:
        country = claim_str(jwt_claims(tokens.access_token), "token_details", "country")
        if country is None and tokens.token_url:
            host = httpx.URL(tokens.token_url).host
            region = "eu" if host.endswith(".eu") else "us" if host.endswith(".com") else None
    return region, country


async def get_json(
    client: httpx.AsyncClient, url: str, *, what: str, headers: Mapping[str, str] | None = None
) -> Any:
    request = client.build_request("GET", url, headers={**JSON_HEADERS, **(headers or {})})
    response = await send(client, request, what=what)
    check_status(response, what=what)
    return json_body(response, what=what)


async def discover(
    client: httpx.AsyncClient, settings: CareLinkSettings, tokens: TokenData | None = None
) -> RegionConfig:
    """The region's hosts (with the configured server override applied)."""
    doc = await get_json(client, discovery_url(settings), what="carelink discovery")
    region, country = region_hint(settings, tokens)
    config = parse_discovery(doc, region=region, country=country)
    server = settings.carelink_server
    return attrs.evolve(
        config,
        care_link=rebase(config.care_link, server),
        cumulus=rebase(config.cumulus, server),
        sso_url=rebase(config.sso_url, server),
    )


async def named_sso_config(client: httpx.AsyncClient, config: RegionConfig) -> SsoConfig:
    """The region's SSO configuration with its URLs as CareLink names them."""
    doc = await get_json(client, config.sso_url, what="carelink sso configuration")
    return parse_sso_config(doc)


def rebased_sso(sso: SsoConfig, server: str | None) -> SsoConfig:
    return attrs.evolve(
        sso, authorize_url=rebase(sso.authorize_url, server), token_url=rebase(sso.token_url, server)
    )


async def sso_config(
    client: httpx.AsyncClient, settings: CareLinkSettings, config: RegionConfig
) -> SsoConfig:
    """The region's SSO configuration, its URLs sent to the configured server if any."""
    return rebased_sso(await named_sso_config(client, config), settings.carelink_server)


def oauth_error(response: httpx.Response) -> str:
    """The OAuth ``error`` code of a refusal, if the body is JSON and names a short one."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    code = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(code, str) and code.replace("_", "").isalnum() and len(code) <= 40:
        return code
    return f"HTTP {response.status_code}"


def expires_in(body: Mapping[str, Any], access_token: str) -> float | None:
    """The access token's lifetime: ``expires_in``, else ``exp - iat`` of the JWT."""
    value = body.get("expires_in")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return float(value)
    claims = jwt_claims(access_token)
    exp, iat = claim_number(claims, "exp"), claim_number(claims, "iat")
    if exp is not None and iat is not None and exp > iat:
        return exp - iat
    return None


def align_to_uploads(last_known: LastKnown, now: int) -> int:
    """When to ask next: just after the pump's next upload should have reached CareLink.

    The device status carries the server time of the last upload; uploads follow every five
    minutes. Without one, a reading's time plus the usual upload lag stands in for it.
    """
    values = last_known.values
    anchor = values.get("devicestatus")
    if anchor is None and "entries" in values:
        anchor = values["entries"] + UPLOAD_LAG_MS
    if anchor is None:
        return now + READING_INTERVAL_MS
    steps = max(1, (now - UPLOAD_BUFFER_MS - anchor) // READING_INTERVAL_MS + 1)
    return anchor + steps * READING_INTERVAL_MS + UPLOAD_BUFFER_MS


def _bearer(access_token: str, mag_identifier: str | None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {access_token}"}
    if mag_identifier:
        headers["mag-identifier"] = mag_identifier
    return headers


class CareLink:
    """One CareLink login (patient or care partner) and the patient whose data it reads."""

    def __init__(
        self, settings: CareLinkSettings, client: httpx.AsyncClient, *, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.client = client
        self.clock: Clock = clock or _wall_ms
        self.token_file = settings.carelink_token_file
        #: the newest tokens known; newer than the file only if saving the file failed
        self._tokens: TokenData | None = None
        #: fingerprint of the refresh token the file holds as far as we know: a different one
        #: means a person logged in again, and the file wins over what is in memory. Only
        #: fingerprints are kept loose, so no stray attribute ever shows a token.
        self._file_fingerprint: str | None = None
        #: fingerprint of an access token CareLink refused: never reused, even if its exp says
        #: it is still valid
        self._spoiled: str | None = None
        self._region: RegionConfig | None = None
        self._token_url: str | None = None
        self._identity: Identity | None = None
        #: counters the tests and status read: token requests and their outcomes
        self.refreshes = 0

    # --- session ----------------------------------------------------------------------

    async def authenticate(self) -> TokenData:
        """The tokens of the file (or newer ones in memory) and the region's hosts."""
        on_disk = read_token_file(self.token_file)
        if self._tokens is None or sha256_hex(on_disk.refresh_token) != self._file_fingerprint:
            if self._tokens is not None:
                # a person logged in again (perhaps as someone else): learn everything anew
                self._token_url = None
                self._identity = None
            self._tokens = on_disk
            self._file_fingerprint = sha256_hex(on_disk.refresh_token)
        tokens = self._tokens
        if self._region is None:
            self._region = await discover(self.client, self.settings, tokens)
        if self._token_url is None:
            if tokens.token_url:
                self._token_url = rebase(tokens.token_url, self.settings.carelink_server)
            else:  # files from older tools do not say where to refresh
                self._token_url = (await sso_config(self.client, self.settings, self._region)).token_url
        return tokens

    async def authorize(self, tokens: TokenData) -> Grant:
        """A usable access token (refreshed unless the file's one is still good) and whom to read."""
        assert self._region is not None
        remaining = self._remaining_s(tokens)
        refreshed = remaining is None or remaining <= TOKEN_MIN_REMAINING_S + 60
        if refreshed:
            tokens, lifetime = await self.refresh(tokens)
        else:
            lifetime = remaining or 0.0
        identity = self._identity
        if identity is None:
            try:
                identity = await self._identify(tokens)
            except TokenRefused:
                if refreshed:
                    raise  # a token issued a moment ago: the account is the problem
                # the file's token looked valid but was revoked: refresh once and ask again
                self._spoiled = sha256_hex(tokens.access_token)
                tokens, lifetime = await self.refresh(tokens)
                identity = await self._identify(tokens)
        self._identity = identity
        session = Session(
            access_token=tokens.access_token,
            mag_identifier=tokens.mag_identifier,
            username=identity.username,
            role=identity.role,
            patient_id=identity.patient_id,
            cumulus=self._region.cumulus,
        )
        return Grant(value=session, expires_in=session_lifetime(lifetime))

    def _remaining_s(self, tokens: TokenData) -> float | None:
        """Seconds the access token stays valid, when it is one we may still use."""
        if sha256_hex(tokens.access_token) == self._spoiled:
            return None
        exp = claim_number(jwt_claims(tokens.access_token), "exp")
        if exp is None:
            return None
        return exp - self.clock() / 1000.0

    async def refresh(self, tokens: TokenData) -> tuple[TokenData, float]:
        """Trade the refresh token for new tokens; save the rotated refresh token at once."""
        assert self._token_url is not None
        form = {
            "grant_type": "refresh_token",
            "refresh_token": tokens.refresh_token,
            "client_id": tokens.client_id,
        }
        if tokens.client_secret:
            form["client_secret"] = tokens.client_secret
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if tokens.mag_identifier:
            headers["mag-identifier"] = tokens.mag_identifier
        request = self.client.build_request("POST", self._token_url, data=form, headers=headers)
        self.refreshes += 1
        response = await send(self.client, request, what="carelink token refresh")
        if response.status_code in (400, 401, 403):
            code = oauth_error(response)
            # invalid_grant: revoked, expired, or already rotated by another copy of this file
            raise StepRequired(f"CareLink refused the refresh token ({code}); {LOGIN_HINT}")
        check_status(response, what="carelink token refresh")
        body = json_body(response, what="carelink token refresh")
        if not isinstance(body, Mapping):
            raise ProtocolError("carelink token refresh: the answer is not a JSON object")
        new = tokens.rotated(body)
        self._tokens = new
        self._save(new)
        lifetime = expires_in(body, new.access_token) or float(FALLBACK_TOKEN_LIFETIME_S)
        return new, lifetime

    def _save(self, tokens: TokenData) -> None:
        try:
            write_token_file(self.token_file, tokens)
        except OSError as exc:
            # the new tokens stay in memory and keep the daemon going; a restart would find
            # the old, already rotated refresh token, so say so loudly
            log.error(
                "could not save the rotated CareLink token; after a restart a new login will be needed",
                file=str(self.token_file),
                error=type(exc).__name__,
            )
            return
        self._file_fingerprint = sha256_hex(tokens.refresh_token)

    async def _identify(self, tokens: TokenData) -> Identity:
        """Who is logged in (user name, role) and, for a care partner, which patient to read."""
        assert self._region is not None
        auth = _bearer(tokens.access_token, tokens.mag_identifier)
        me = await self._get_authorized(
            self._region.care_link + USERS_ME_PATH, auth, what="carelink users/me"
        )
        if not isinstance(me, Mapping) or not isinstance(me.get("role"), str):
            raise ProtocolError("carelink users/me: the answer has no role")
        role = me["role"].strip().upper()
        username = (
            self.settings.carelink_username
            or claim_str(jwt_claims(tokens.access_token), "token_details", "preferred_username")
            or (me.get("username") if isinstance(me.get("username"), str) else None)
        )
        if not username:
            raise StepRequired("CareLink did not tell the login's user name; set CONNECT_CARELINK_USERNAME")
        patient: str | None = None
        if role in CARE_PARTNER_ROLES:
            patient = await self._patient(auth)
        return Identity(username=username, role=role, patient_id=patient)

    async def _patient(self, auth: Mapping[str, str]) -> str:
        assert self._region is not None
        wanted = self.settings.carelink_patient_username
        linked = await self._get_authorized(
            self._region.care_link + LINKED_PATIENTS_PATH, auth, what="carelink links/patients"
        )
        if not isinstance(linked, list):
            raise ProtocolError("carelink links/patients: the answer is not a list")
        names: list[str] = [
            str(p["username"])
            for p in linked
            if isinstance(p, Mapping) and isinstance(p.get("username"), str)
        ]
        if wanted is not None:
            if wanted not in names:
                raise StepRequired(
                    "CONNECT_CARELINK_PATIENT_USERNAME: that patient is not linked to this login"
                )
            return wanted
        if not names:
            raise StepRequired("no patient is linked to this CareLink care partner login")
        return names[0]

    async def _get_authorized(self, url: str, auth: Mapping[str, str], *, what: str) -> Any:
        request = self.client.build_request("GET", url, headers={**JSON_HEADERS, **auth})
        response = await send(self.client, request, what=what)
        if response.status_code in (401, 403):
            raise TokenRefused(f"{what}: CareLink refused the access token (HTTP {response.status_code})")
        check_status(response, what=what)
        return json_body(response, what=what)

    # --- data -------------------------------------------------------------------------

    async def fetch(self, session: Session, last_known: LastKnown) -> Any:
        """The last 24 hours as ``display/message`` answers them (bare or in ``patientData``)."""
        body: dict[str, Any] = {"username": session.username, "appVersion": APP_VERSION}
        if session.role in CARE_PARTNER_ROLES:
            body.update(role="carepartner", patientId=session.patient_id)
        else:
            body["role"] = "patient"
        request = self.client.build_request(
            "POST",
            session.cumulus + DISPLAY_MESSAGE_PATH,
            json=body,
            headers={**JSON_HEADERS, **_bearer(session.access_token, session.mag_identifier)},
        )
        what = "carelink display/message"
        response = await send(self.client, request, what=what)
        status = response.status_code
        if status in (401, 403):
            self._spoiled = sha256_hex(session.access_token)
            raise SessionExpired(f"{what}: HTTP {status}")
        if status == 206:
            raise RequestRejected(f"{what}: HTTP 206, CareLink wants a newer app version than {APP_VERSION}")
        if status == 204:
            raise ProtocolError(f"{what}: HTTP 204, no data")
        check_status(response, what=what)
        return json_body(response, what=what)

    def transform(self, raw: Any, last_known: LastKnown) -> Batch:
        return payload.transform(raw, last_known)

    def generate_driver(self, builder: BuilderLike) -> None:
        builder.support_session(
            authenticate=self.authenticate,
            authorize=self.authorize,
            expire_after=timedelta(seconds=FALLBACK_TOKEN_LIFETIME_S),
        )
        builder.register_loop(
            LOOP_NAME,
            fetch=self.fetch,
            transform=self.transform,
            collections=("entries", "treatments", "devicestatus"),
            align_schedule=align_to_uploads,
            expected_interval=timedelta(milliseconds=READING_INTERVAL_MS),
            frame_retries=2,
            frame_backoff=Backoff(base=10.0, cap=120.0),
            cycle_backoff=Backoff(base=150.0, cap=1800.0),
        )


__all__ = ["CareLink", "Identity", "Session", "discover", "session_lifetime", "sso_config"]
