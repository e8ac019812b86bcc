"""Settings of the remote outputs (Nightscout REST, MQTT): enabled by their settings being present.

Field names are unique across every settings model of a run, because the CLI composes one
model from the core's, the source's and these fields.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlunsplit

import attrs
import pydantic
from pydantic import Field, SecretStr

from connect.fields import HTTP_SCHEMES, MQTT_SCHEMES, ConnectSettings, check_url, readable_file


class OutputSettings(ConnectSettings):
    """Where delivered data goes besides the local store."""

    nightscout_endpoint: str | None = Field(
        default=None,
        description="Nightscout site to upload to (host name or URL); enables the Nightscout output",
    )
    api_secret: SecretStr | None = Field(
        default=None, description="the Nightscout site's API_SECRET (sent as its SHA-1)"
    )
    api_secret_sha1: SecretStr | None = Field(
        default=None,
        description="the SHA-1 hex of the site's API_SECRET or of a token, sent as it is "
        "(for a secret kept only hashed, as nightscout-librelink-up's NIGHTSCOUT_API_TOKEN)",
    )
    nightscout_token: SecretStr | None = Field(
        default=None,
        description="a Nightscout access token instead of the API secret (also read from ?token= in the endpoint)",
    )
    nightscout_chunk_size: int = Field(default=500, ge=1, le=5000, description="records per upload request")
    nightscout_timeout: float = Field(default=30.0, gt=0, le=600, description="seconds per upload request")

    mqtt_url: SecretStr | None = Field(
        default=None, description="MQTT broker, mqtt://user:pass@host:1883 or mqtts://…; enables MQTT"
    )
    mqtt_topic_prefix: str = Field(
        default="nightscout", min_length=1, description="first level of every topic"
    )
    mqtt_qos: int = Field(default=1, ge=0, le=2, description="QoS of published messages")
    mqtt_retain_current: bool = Field(
        default=False, description="publish the newest sgv retained on {prefix}/current"
    )
    mqtt_discovery: bool = Field(
        default=False,
        description="Home Assistant MQTT discovery: glucose, delta, trend and last reading as sensors "
        "(retained configs under the discovery prefix; implies the retained current)",
    )
    mqtt_discovery_prefix: str = Field(
        default="homeassistant", min_length=1, description="Home Assistant's discovery prefix"
    )
    mqtt_ca_file: Path | None = Field(
        default=None, description="CA bundle for mqtts:// (the system CAs when unset)"
    )
    mqtt_client_id: str | None = Field(default=None, description="MQTT client id (random when unset)")

    @pydantic.field_validator("nightscout_endpoint")
    @classmethod
    def _endpoint_shape(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        # parse now so a bad value is reported with the other settings problems
        nightscout_target(value)
        return value.strip()

    @pydantic.field_validator("api_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < 12:
            # Nightscout refuses to start with a shorter API_SECRET, so this one cannot match
            raise ValueError("Nightscout's API_SECRET has at least 12 characters")
        return value

    @pydantic.field_validator("api_secret_sha1")
    @classmethod
    def _hashed_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        digest = value.get_secret_value().strip().lower()
        if len(digest) != 40 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("must be a SHA-1 in hex (40 characters 0-9, a-f)")
        return SecretStr(digest)

    @pydantic.field_validator("mqtt_ca_file")
    @classmethod
    def _ca_file_readable(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        # checked at start: a missing bundle found only at the first TLS connect would leave the
        # output retrying something no retry can fix
        readable_file(value, "CA bundle")
        try:
            ssl.create_default_context(cafile=str(value))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"the file is not a readable PEM CA bundle ({type(exc).__name__})") from None
        return value

    @pydantic.field_validator("mqtt_url")
    @classmethod
    def _mqtt_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        mqtt_target(value.get_secret_value())
        return value

    @pydantic.field_validator("mqtt_topic_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        value = value.strip("/")
        if not value or any(c in value for c in "+#\0"):
            raise ValueError("must be a topic without wildcards (+, #)")
        return value

    @pydantic.model_validator(mode="after")
    def _nightscout_needs_credentials(self) -> OutputSettings:
        if self.nightscout_endpoint is None:
            return self
        target = nightscout_target(self.nightscout_endpoint)
        if (
            self.api_secret is None
            and self.api_secret_sha1 is None
            and self.nightscout_token is None
            and target.token is None
        ):
            raise ValueError(
                "CONNECT_NIGHTSCOUT_ENDPOINT needs CONNECT_API_SECRET (or CONNECT_API_SECRET_SHA1) or a token "
                "(CONNECT_NIGHTSCOUT_TOKEN or ?token= in the endpoint)"
            )
        return self


@attrs.frozen
class NightscoutTarget:
    """A Nightscout site's base URL (no query, no credentials) and a token found in it."""

    base_url: str
    token: str | None = attrs.field(default=None, repr=False)


def nightscout_target(endpoint: str) -> NightscoutTarget:
    """Normalise an endpoint: scheme defaults to https, ``/api/v1`` and ``?token=`` are split off."""
    parts = check_url(endpoint, schemes=HTTP_SCHEMES, what="the endpoint", default_scheme="https")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; use CONNECT_API_SECRET")
    query = parse_qsl(parts.query, keep_blank_values=True)
    token = next((v for k, v in query if k == "token" and v), None)
    rest = [(k, v) for k, v in query if k != "token"]
    if rest:
        raise ValueError("takes no query parameters other than token")
    path = parts.path.rstrip("/")
    for suffix in ("/api/v1", "/api"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return NightscoutTarget(base_url=base, token=token)


@attrs.frozen
class MqttTarget:
    """A broker address parsed from ``CONNECT_MQTT_URL``."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    def display(self) -> str:
        """The address for status and logs: no credentials."""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"


def mqtt_target(url: str) -> MqttTarget:
    """Parse ``mqtt://user:pass@host:1883`` / ``mqtts://…`` (default ports 1883 and 8883)."""
    parts = check_url(url, schemes=MQTT_SCHEMES, what="the broker URL")
    tls = parts.scheme.lower() == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    return MqttTarget(
        host=parts.hostname or "",
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
