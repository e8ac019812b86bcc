"""The LibreLinkUp HTTP conversation: login (redirects, steps), connections and the graph.

Every answer goes through :func:`classify`, the one place that maps LibreLinkUp's answers —
HTTP codes, the JSON ``status`` field, lock bodies, Cloudflare pages — to the error tree.
Messages name the call and the code, never a URL, token, account id or body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs
import httpx
import structlog

from connect import httpkit
from connect.errors import (
    AccountLocked,
    AuthRejected,
    ConfigError,
    ProtocolError,
    RateLimited,
    RequestRejected,
    StepRequired,
)
from connect.redact import register_secret
from sources.linkup.const import (
    ACCEPTABLE_STEPS,
    BASE_HEADERS,
    CONNECTIONS_PATH,
    DEFAULT_BAN_S,
    DEFAULT_RATE_LIMIT_S,
    GRAPH_PATH,
    LOGIN_PATH,
    MAX_STEPS,
    STATUS_BAD_CREDENTIALS,
    STATUS_LOCKED,
    STATUS_MINIMUM_VERSION,
    STATUS_OK,
    STATUS_STEP,
    STEP_ACCEPT_PATH,
    STEP_TYPES,
    VERSION_RETRY_S,
)
from sources.linkup.settings import Endpoint, LinkUpSettings, endpoint_for, redirect_endpoint

log = structlog.get_logger("sources.linkup")

_NOT_JSON: Final = object()
#: what a patient id may look like before it goes into a URL path (UUIDs in practice)
_PATH_SAFE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


#: what a graph error message is known to mean, said before the general hint
_PATIENT_HINTS: Final[dict[str, str]] = {
    "MissingCachedUser": "this is reported when a follower or connection id is used where the "
    "patient's id belongs; ",
}


@attrs.frozen
class Login:
    """A successful login: the bearer token, the account-id header and where the account lives."""

    token: str = attrs.field(repr=False)
    account_id: str = attrs.field(repr=False)
    endpoint: Endpoint
    #: seconds the token lasts (``authTicket.duration``), when the service says
    lifetime_s: float | None


@attrs.frozen
class Session:
    """What a fetch needs: the login and the patient whose graph it reads."""

    login: Login
    patient_id: str = attrs.field(repr=False)
    #: how many patients the account follows (shown in status; 1 is the usual case)
    patients: int = 1


def _short(value: object, limit: int = 40) -> str:
    """A vendor-supplied word fit for a message: printable, short, no surprises."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "", str(value))[:limit]
    return text or "?"


def _lock_seconds(body: Mapping[str, Any]) -> float | None:
    data = body.get("data")
    inner = data.get("data") if isinstance(data, Mapping) else None
    lockout = inner.get("lockout") if isinstance(inner, Mapping) else None
    if isinstance(lockout, (int, float)) and not isinstance(lockout, bool) and 0 < lockout < 10**7:
        return float(lockout)
    return None


def classify(response: httpx.Response, *, what: str, login: bool = False) -> Any:
    """The JSON body of a usable answer, or the error the answer means."""
    status = response.status_code
    try:
        body: Any = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = _NOT_JSON
    if isinstance(body, Mapping):
        code = body.get("status")
        if code == STATUS_MINIMUM_VERSION:
            data = body.get("data")
            minimum = data.get("minimumVersion") if isinstance(data, Mapping) else None
            needed = f" {_short(minimum, 20)} or newer" if minimum else " a newer app version"
            raise ConfigError(
                f"{what}: the service requires app version{needed} (status 920); set "
                f"CONNECT_LINK_UP_VERSION{'=' + _short(minimum, 20) if minimum else ''}",
                retry_after=VERSION_RETRY_S,
            )
        if code == STATUS_LOCKED:
            # the body's lockout seconds are the service's own word; a lock body without them
            # may still come with a Retry-After header, which beats any guess of ours
            seconds = _lock_seconds(body)
            header = httpkit.retry_after_seconds(response)
            wait = seconds or header or (DEFAULT_BAN_S if login else DEFAULT_RATE_LIMIT_S)
            if login:
                raise AccountLocked(
                    f"{what}: the account is locked after failed logins"
                    + (f" for {wait:.0f} s" if seconds or header else ""),
                    retry_after=wait,
                )
            raise RateLimited(f"{what}: throttled (status 429)", retry_after=wait)
        if body.get("message") == "RequiredHeaderMissing":
            raise RequestRejected(
                f"{what}: refused (RequiredHeaderMissing, HTTP {status}); "
                "the service may expect a newer CONNECT_LINK_UP_VERSION"
            )
    if status == 429:
        raise RateLimited(
            f"{what}: HTTP 429", retry_after=httpkit.retry_after_seconds(response) or DEFAULT_RATE_LIMIT_S
        )
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if body is _NOT_JSON and (status in (403, 430) or (kind == "text/html" and status < 500)):
        # Cloudflare's "Attention Required" / "banned you temporarily" pages: back off for a while
        raise RateLimited(
            f"{what}: HTTP {status} blocked by the service's firewall ({kind or 'no type'})",
            retry_after=httpkit.retry_after_seconds(response) or DEFAULT_BAN_S,
        )
    if login and status in (401, 403):
        raise AuthRejected(f"{what}: HTTP {status}")
    if status >= 400:
        httpkit.check_status(response, what=what)  # 401/403 → expired, 5xx → transient, …
        raise RequestRejected(f"{what}: HTTP {status}")
    if body is _NOT_JSON:
        raise ProtocolError(
            f"{what}: HTTP {status} body is not JSON ({kind or 'no type'}, {len(response.content)} bytes)"
        )
    return body


def _step_message(step: str, *, auto: bool, why: str = "") -> str:
    action = STEP_TYPES.get(step, "complete an action in the app")
    text = f'the account holder must {action} (step "{step}") before data flows: '
    if step == "verifyEmail":
        return text + "open the link LibreLinkUp sent by e-mail, then sign in to the LibreLinkUp app once"
    if step in ACCEPTABLE_STEPS and not auto:
        return text + (
            "sign in to the LibreLinkUp app and accept it, or set CONNECT_LINK_UP_AUTO_ACCEPT_TERMS=true "
            "to accept it automatically"
        )
    return text + "sign in to the LibreLinkUp app and follow its prompts" + (f" ({why})" if why else "")


class LinkUpClient:
    """One account's conversation with LibreLinkUp over the daemon's httpx client."""

    def __init__(self, settings: LinkUpSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        #: where the next login goes; a redirect moves it to the account's region for good
        self.endpoint = endpoint_for(settings.link_up_server, settings.link_up_region)
        register_secret(settings.link_up_password.get_secret_value())

    def _headers(self, token: str | None = None, account_id: str | None = None) -> dict[str, str]:
        headers = dict(BASE_HEADERS)
        headers["version"] = self.settings.link_up_version
        headers["product"] = self.settings.link_up_product
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        if account_id is not None:
            headers["account-id"] = account_id
        return headers

    async def _call(
        self,
        method: str,
        endpoint: Endpoint,
        path: str,
        *,
        what: str,
        login: bool = False,
        body: Any = None,
        token: str | None = None,
        account_id: str | None = None,
    ) -> Any:
        request = self.http.build_request(
            method,
            endpoint.base_url + path,
            headers=self._headers(token, account_id),
            content=None if body is None else json.dumps(body).encode("utf-8"),
        )
        response = await httpkit.send(self.http, request, what=what)
        return classify(response, what=what, login=login)

    # --- login ---------------------------------------------------------------------------

    async def login(self) -> Login:
        """Log in, following one region redirect and (when allowed) accepting terms steps."""
        what = "LibreLinkUp login"
        credentials = {
            "email": self.settings.link_up_username,
            "password": self.settings.link_up_password.get_secret_value(),
        }
        endpoint = self.endpoint
        answer = await self._call("POST", endpoint, LOGIN_PATH, what=what, login=True, body=credentials)
        redirected = False
        steps = 0
        while True:
            if not isinstance(answer, Mapping):
                raise ProtocolError(f"{what}: the answer is not an object")
            code = answer.get("status")
            data = answer.get("data")
            data = data if isinstance(data, Mapping) else {}
            if code == STATUS_OK and data.get("redirect") is True:
                if redirected:
                    raise ProtocolError(f"{what}: redirected a second time; giving up on this login")
                target = redirect_endpoint(endpoint, data.get("region"))
                if target.base_url == endpoint.base_url:
                    raise ProtocolError(f"{what}: redirected to the region it was already sent to")
                redirected = True
                endpoint = self.endpoint = target
                log.warning(
                    "LibreLinkUp account lives in another region; following the redirect",
                    region=target.region,
                    hint=f"set CONNECT_LINK_UP_REGION={target.region} to start there",
                )
                answer = await self._call(
                    "POST", endpoint, LOGIN_PATH, what=what, login=True, body=credentials
                )
                continue
            if code == STATUS_STEP:
                step_obj = data.get("step")
                step = _short(step_obj.get("type")) if isinstance(step_obj, Mapping) else "?"
                auto = self.settings.link_up_auto_accept_terms
                ticket = data.get("authTicket")
                token = ticket.get("token") if isinstance(ticket, Mapping) else None
                if not (auto and step in ACCEPTABLE_STEPS):
                    raise StepRequired(f"{what}: " + _step_message(step, auto=auto))
                if not isinstance(token, str) or not token:
                    raise StepRequired(
                        f"{what}: " + _step_message(step, auto=True, why="the step came without a ticket")
                    )
                steps += 1
                if steps > MAX_STEPS:
                    raise StepRequired(f"{what}: " + _step_message(step, auto=True, why="too many steps"))
                register_secret(token)
                log.info("LibreLinkUp step accepted on the user's behalf", step=step)
                answer = await self._call(
                    "POST", endpoint, STEP_ACCEPT_PATH.format(step=step), what=f"{what} ({step})",
                    login=True, token=token,
                )  # fmt: skip
                continue
            if code == STATUS_BAD_CREDENTIALS:
                raise AuthRejected(
                    f"{what}: the e-mail or password was rejected (status 2); check "
                    "CONNECT_LINK_UP_USERNAME and CONNECT_LINK_UP_PASSWORD"
                )
            if code != STATUS_OK:
                raise ProtocolError(f"{what}: unexpected status {_short(code, 12)}")
            return self._logged_in(data, endpoint, what=what)

    @staticmethod
    def _logged_in(data: Mapping[str, Any], endpoint: Endpoint, *, what: str) -> Login:
        user = data.get("user")
        ticket = data.get("authTicket")
        user_id = user.get("id") if isinstance(user, Mapping) else None
        token = ticket.get("token") if isinstance(ticket, Mapping) else None
        if not isinstance(user_id, str) or not user_id or not isinstance(token, str) or not token:
            raise ProtocolError(f"{what}: success without a user id and an auth ticket")
        account_id = httpkit.sha256_hex(user_id)
        register_secret(token, user_id, account_id)
        duration = ticket.get("duration") if isinstance(ticket, Mapping) else None
        lifetime: float | None = None
        if isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration > 0:
            lifetime = float(duration) / 1000.0  # milliseconds, unlike ``expires`` (epoch seconds)
        return Login(token=token, account_id=account_id, endpoint=endpoint, lifetime_s=lifetime)

    # --- data ------------------------------------------------------------------------------

    async def session(self, login: Login) -> Session:
        """Read the connections and pick the patient to follow."""
        what = "LibreLinkUp connections"
        answer = await self._call(
            "GET", login.endpoint, CONNECTIONS_PATH, what=what, token=login.token, account_id=login.account_id
        )
        if not isinstance(answer, Mapping) or answer.get("status", STATUS_OK) != STATUS_OK:
            code = answer.get("status") if isinstance(answer, Mapping) else None
            raise ProtocolError(f"{what}: unexpected status {_short(code, 12)}")
        connections = answer.get("data")
        if not isinstance(connections, list) or not all(isinstance(c, Mapping) for c in connections):
            raise ProtocolError(f"{what}: data is not a list of connections")
        if not connections:
            raise StepRequired(
                f"{what}: this account follows no patient; accept the patient's invitation in the "
                "LibreLinkUp app, and log in with the follower account (not the patient's LibreView login)"
            )
        wanted = self.settings.link_up_patient_id
        chosen: Mapping[str, Any]
        if wanted:
            matches = [
                c for c in connections if str(c.get("patientId", "")).lower() == wanted.strip().lower()
            ]
            if not matches:
                raise ConfigError(
                    f"{what}: CONNECT_LINK_UP_PATIENT_ID matches none of the {len(connections)} "
                    "patient(s) this account follows",
                    retry_after=VERSION_RETRY_S,
                )
            chosen = matches[0]
        else:
            chosen = connections[0]
            if len(connections) > 1:
                log.warning(
                    "LibreLinkUp account follows several patients; using the first",
                    patients=len(connections),
                    hint="set CONNECT_LINK_UP_PATIENT_ID to choose",
                )
        patient_id = chosen.get("patientId")
        if not isinstance(patient_id, str) or not _PATH_SAFE.match(patient_id):
            raise ProtocolError(f"{what}: the connection has no usable patientId")
        return Session(login=login, patient_id=patient_id, patients=len(connections))

    async def graph(self, session: Session) -> Any:
        """The graph response (about 12 h of history plus the current reading)."""
        what = "LibreLinkUp graph"
        login = session.login
        answer = await self._call(
            "GET", login.endpoint, GRAPH_PATH.format(patient_id=session.patient_id), what=what,
            token=login.token, account_id=login.account_id,
        )  # fmt: skip
        if not isinstance(answer, Mapping):
            raise ProtocolError(f"{what}: the answer is not an object")
        code = answer.get("status", STATUS_OK)
        if code == STATUS_OK:
            return answer
        error = answer.get("error")
        message = error.get("message") if isinstance(error, Mapping) else None
        if code == STATUS_STEP or (isinstance(message, str) and message):
            # the service named why it will not serve this patient (couldNotLoadPatient with
            # status 4; MissingCachedUser and the like with other codes): asking again gets the
            # same answer, so this is for a person to fix, not for the frame to retry
            hint = _PATIENT_HINTS.get(str(message), "")
            raise RequestRejected(
                f"{what}: the service could not load the patient ({_short(message)}, status "
                f"{_short(code, 12)}); {hint}check CONNECT_LINK_UP_PATIENT_ID (a patientId from "
                "the connections list) and the invitation in the LibreLinkUp app"
            )
        raise ProtocolError(f"{what}: unexpected status {_short(code, 12)}")
