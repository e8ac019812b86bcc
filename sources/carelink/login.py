"""The first CareLink login, which needs a person at a browser (CareLink shows a captcha).

``nightscout-connect login carelink`` walks through it:

1. discovery names the region's Auth0 login; we build an authorize URL with PKCE and a
   random ``state``, and print it;
2. the person opens it, logs in and solves the captcha. The browser then tries to open the
   app's address (``com.medtronic.carepartner:/sso?code=…&state=…``), which fails; the person
   copies that address (from the address bar or the developer tools' network tab) and
   pastes it back — or just the code;
3. we exchange the code (with the PKCE verifier) for tokens and write the token file,
   mode 0600, atomically. The daemon lives on that file from then on.

A token file made by another CareLink tool (``logindata.json`` of carelink-python-client,
carelink-bridge or nightscout-connect) can be imported instead.

Nothing here prints or logs a token; errors name the step and the HTTP status only.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx

from connect.errors import AuthRejected, ConfigError, ConnectError, ProtocolError
from connect.httpkit import check_status, json_body, send, tls_context
from connect.redact import describe_error
from sources.carelink.client import discover, named_sso_config, oauth_error, rebased_sso
from sources.carelink.const import USER_AGENT
from sources.carelink.discovery import SsoConfig
from sources.carelink.settings import CareLinkSettings
from sources.carelink.tokens import TokenData, read_token_file, write_token_file


@attrs.frozen(kw_only=True)
class LoginStart:
    """One login attempt: the URL to open and what the exchange needs later."""

    authorize_url: str
    state: str
    code_verifier: str = attrs.field(repr=False)
    sso: SsoConfig
    #: the token URL as CareLink names it (saved in the file; an override is applied on use)
    token_url: str


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) as RFC 7636 defines them."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


async def start_login(settings: CareLinkSettings, client: httpx.AsyncClient) -> LoginStart:
    """Discover the region's Auth0 login and build the authorize URL for the person to open."""
    region = await discover(client, settings)
    named = await named_sso_config(client, region)
    sso = rebased_sso(named, settings.carelink_server)
    if sso.kind != "auth0":
        raise ConfigError(
            "this CareLink region still uses the app's older device-registration login, which needs "
            "a client certificate; make logindata.json with carelink-python-client's login script and "
            "import it with `nightscout-connect login carelink --import logindata.json`"
        )
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    params = {
        "client_id": sso.client_id,
        "response_type": "code",
        "scope": sso.scope or "openid profile offline_access",
        "redirect_uri": sso.redirect_uri or "",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
    }
    if sso.audience:
        params["audience"] = sso.audience
    return LoginStart(
        authorize_url=f"{sso.authorize_url}?{urllib.parse.urlencode(params)}",
        state=state,
        code_verifier=verifier,
        sso=sso,
        # the file keeps the token URL as CareLink names it, as other CareLink tools do
        token_url=named.token_url,
    )


def code_from_redirect(text: str, *, state: str) -> str:
    """The authorization code in what the person pasted: the app address, or the code alone."""
    pasted = text.strip().strip('"').strip("'")
    if not pasted:
        raise ConfigError("nothing was pasted")
    if "code=" in pasted:
        query = pasted.split("?", 1)[1] if "?" in pasted else pasted
        fields = urllib.parse.parse_qs(query.split("#", 1)[0])
        codes = fields.get("code") or []
        if not codes or not codes[0].strip():
            raise ConfigError("the pasted address has an empty code")
        states = fields.get("state") or []
        if states and states[0] != state:
            raise ConfigError(
                "the pasted address belongs to another login attempt (its state differs); start again"
            )
        error = fields.get("error") or []
        if error:
            raise AuthRejected("CareLink reported a login error in the pasted address; start again")
        return codes[0].strip()
    if "error=" in pasted:
        raise AuthRejected("CareLink reported a login error in the pasted address; start again")
    if any(ch.isspace() for ch in pasted) or "://" in pasted or len(pasted) < 8:
        raise ConfigError("no authorization code in what was pasted (expected …/sso?code=…&state=…)")
    return pasted


async def finish_login(
    start: LoginStart, code: str, settings: CareLinkSettings, client: httpx.AsyncClient
) -> TokenData:
    """Exchange the code for tokens and save them to ``CONNECT_CARELINK_TOKEN_FILE`` (0600)."""
    form = {
        "grant_type": "authorization_code",
        "client_id": start.sso.client_id,
        "code": code,
        "redirect_uri": start.sso.redirect_uri or "",
        "code_verifier": start.code_verifier,
    }
    request = client.build_request(
        "POST",
        start.sso.token_url,
        data=form,
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
    )
    what = "carelink code exchange"
    response = await send(client, request, what=what)
    if response.status_code in (400, 401, 403):
        raise AuthRejected(
            f"CareLink refused the authorization code ({oauth_error(response)}); a code works once and "
            "only for a few minutes: start again"
        )
    check_status(response, what=what)
    body = json_body(response, what=what)
    if not isinstance(body, Mapping):
        raise ProtocolError(f"{what}: the answer is not a JSON object")
    doc: dict[str, Any] = {
        "access_token": body.get("access_token"),
        "refresh_token": body.get("refresh_token"),
        "client_id": start.sso.client_id,
        "token_url": start.token_url,
        "scope": body.get("scope") if isinstance(body.get("scope"), str) else start.sso.scope,
        "audience": start.sso.audience,
    }
    if not isinstance(doc["refresh_token"], str) or not doc["refresh_token"]:
        raise ProtocolError(f"{what}: no refresh token came back (the offline_access scope is needed)")
    tokens = TokenData.from_json({k: v for k, v in doc.items() if v is not None}, what=what)
    write_token_file(settings.carelink_token_file, tokens)
    return tokens


def import_token_file(source: Path, settings: CareLinkSettings) -> TokenData:
    """Adopt a ``logindata.json`` made by another CareLink tool as our token file (0600)."""
    tokens = read_token_file(Path(source))
    write_token_file(settings.carelink_token_file, tokens)
    return tokens


INSTRUCTIONS = """\
CareLink needs a person at a browser for the first login (it shows a captcha).

1. Open this address in a browser (a desktop browser with its developer tools is easiest):

   {url}

2. Log in with the CareLink account the data should be read with (a care partner or patient
   account) and solve the captcha.
3. The browser then tries to open an address starting with
   {redirect}?code=…
   and fails: that is expected. Copy that address — from the address bar, or in the developer
   tools' Network tab from the last request's Location header — and paste it below.
   The code is valid for a few minutes only.
"""


def run_login(
    settings: CareLinkSettings,
    *,
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
    import_from: Path | None = None,
    client_factory: Callable[[], httpx.AsyncClient] | None = None,
) -> int:
    """The ``login carelink`` command: 0 when the token file was written, 1 otherwise."""
    import trio  # the command runs its own event loop; the daemon's code never needs this

    path = settings.carelink_token_file
    try:
        if import_from is not None:
            import_token_file(import_from, settings)
            say(f"Imported the CareLink tokens into {path} (readable by this user only).")
            return 0

        def make_client() -> httpx.AsyncClient:
            if client_factory is not None:
                return client_factory()
            return httpx.AsyncClient(
                verify=tls_context(), timeout=httpx.Timeout(30.0, connect=15.0), follow_redirects=False
            )

        async def begin() -> LoginStart:
            async with make_client() as client:
                return await start_login(settings, client)

        start = trio.run(begin)
        say(INSTRUCTIONS.format(url=start.authorize_url, redirect=start.sso.redirect_uri or "the app"))
        code = code_from_redirect(ask("Paste the address (or the code) here: "), state=start.state)

        async def end() -> TokenData:
            async with make_client() as client:
                return await finish_login(start, code, settings, client)

        trio.run(end)
    except ConnectError as exc:
        say(f"CareLink login failed: {describe_error(exc)}")
        return 1
    except (EOFError, KeyboardInterrupt):
        say("CareLink login cancelled.")
        return 1
    except OSError as exc:
        say(f"CareLink login failed: cannot write {path} ({type(exc).__name__})")
        return 1
    say(f"Logged in. The tokens are in {path} (readable by this user only); the daemon keeps them fresh.")
    say("Keep one copy of that file per running daemon: the refresh token changes on every use.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sources.carelink.login [--import FILE]`` with settings from the environment."""
    args = list(sys.argv[1:] if argv is None else argv)
    import_from: Path | None = None
    if args[:1] == ["--import"] and len(args) == 2:
        import_from = Path(args[1])
    elif args:
        print("usage: login carelink [--import logindata.json]")
        return 2
    try:
        settings = CareLinkSettings()  # type: ignore[call-arg]
    except ValueError as exc:
        print(
            f"CareLink settings: {type(exc).__name__}: set CONNECT_CARELINK_TOKEN_FILE and check the others"
        )
        return 2
    return run_login(settings, import_from=import_from)


if __name__ == "__main__":
    raise SystemExit(main())
