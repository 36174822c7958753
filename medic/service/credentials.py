"""Who may call medic serve's intake, and over what: credentials, the bind check, TLS options.

Alertmanager's webhook receiver sends what its `http_config` says, and medic checks exactly that:

    authorization: {type: Bearer, credentials_file: F}  →  `Authorization: Bearer <token>`
    basic_auth: {username: U, password: P}              →  `Authorization: Basic base64(U:P)`

medic serve accepts MEDIC_INTAKE_TOKEN (or the file MEDIC_INTAKE_TOKEN_FILE, as Alertmanager's
`credentials_file`), MEDIC_INTAKE_BASIC_AUTH ("user:password") and per-client tokens
MEDIC_INTAKE_TOKENS (`{"name": "token"}`: the name shows in logs and keys the rate limit). Every
comparison is constant-time and tries every configured credential. With none configured, the
protected endpoints refuse every request and `medic serve` will not listen beyond loopback.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Any

from medic.errors import ConfigError
from medic.settings import Settings

__all__ = ["Credentials", "NOT_CONFIGURED", "check_serving", "client_headers", "refuse_open_bind", "tls_options"]

NOT_CONFIGURED = ("medic serve has no intake credential configured: set MEDIC_INTAKE_TOKEN (or "
                  "MEDIC_INTAKE_TOKEN_FILE) or MEDIC_INTAKE_BASIC_AUTH ('user:password'), and give Alertmanager "
                  "the same in its webhook receiver's http_config")


def _token_from_file(settings: Settings) -> str | None:
    path = settings.intake_token_file
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read MEDIC_INTAKE_TOKEN_FILE {path}: {exc.strerror}; "
                          f"point it at a readable file holding the intake token") from None
    if not token:
        raise ConfigError(f"MEDIC_INTAKE_TOKEN_FILE {path} is empty; write the intake token into it")
    return token


@dataclass(frozen=True)
class Credentials:
    """The credentials medic serve accepts, each with the client name it stands for."""

    tokens: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)  # secrets: never in a repr
    basic: tuple[str, bytes] | None = field(default=None, repr=False)  # ("basic:<user>", b"user:password")

    @classmethod
    def from_settings(cls, settings: Settings) -> "Credentials":
        tokens: list[tuple[str, bytes]] = []
        if settings.intake_token is not None and settings.intake_token.get_secret_value():
            tokens.append(("token", settings.intake_token.get_secret_value().encode()))
        from_file = _token_from_file(settings)
        if from_file:
            tokens.append(("token-file", from_file.encode()))
        for name, secret in sorted(settings.intake_tokens.items()):
            if not secret.get_secret_value():
                raise ConfigError(f"MEDIC_INTAKE_TOKENS gives client {name!r} an empty token; give it one")
            tokens.append((f"client:{name}", secret.get_secret_value().encode()))
        basic = None
        if settings.intake_basic_auth is not None:
            pair = settings.intake_basic_auth.get_secret_value()
            user, colon, password = pair.partition(":")
            if not colon or not user or not password:
                raise ConfigError("MEDIC_INTAKE_BASIC_AUTH must be 'user:password' with neither part empty")
            basic = (f"basic:{user}", pair.encode())
        return cls(tokens=tuple(tokens), basic=basic)

    @property
    def configured(self) -> bool:
        return bool(self.tokens) or self.basic is not None

    def identify(self, authorization: str | None) -> tuple[str | None, str]:
        """(the client's name, "") when the header carries a configured credential, else (None, why)."""
        if not authorization:
            return None, "no Authorization header"
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            offered = value.encode()
            found = None
            for name, token in self.tokens:  # every one compared: the time does not say which matched
                if hmac.compare_digest(offered, token) and found is None:
                    found = name
            return (found, "") if found else (None, "wrong bearer token")
        if scheme.lower() == "basic":
            try:
                offered = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return None, "malformed basic auth"
            if self.basic is not None and hmac.compare_digest(offered, self.basic[1]):
                return self.basic[0], ""
            return None, "wrong basic auth"
        return None, f"unsupported Authorization scheme {scheme[:20]!r}"


def client_headers(settings: Settings) -> dict[str, str]:
    """The Authorization header a medic client (`medic run`, tests, benches) sends to medic serve."""
    if settings.intake_token is not None and settings.intake_token.get_secret_value():
        return {"authorization": f"Bearer {settings.intake_token.get_secret_value()}"}
    from_file = _token_from_file(settings)
    if from_file:
        return {"authorization": f"Bearer {from_file}"}
    if settings.intake_basic_auth is not None:
        encoded = base64.b64encode(settings.intake_basic_auth.get_secret_value().encode()).decode()
        return {"authorization": f"Basic {encoded}"}
    return {}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def refuse_open_bind(settings: Settings, host: str) -> None:
    """Safe by default: without an intake credential, listen on loopback only (raise ConfigError)."""
    if not _is_loopback(host) and not Credentials.from_settings(settings).configured:
        raise ConfigError(f"refusing to listen on {host} without an intake credential: anyone who reaches it "
                          f"could start runbooks. {NOT_CONFIGURED}; or listen on 127.0.0.1")


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config's ssl_* options from MEDIC_TLS_CERT / _KEY / _CLIENT_CA ({} without a cert)."""
    if settings.tls_cert is None:
        if settings.tls_key is not None or settings.tls_client_ca is not None:
            raise ConfigError("MEDIC_TLS_KEY / MEDIC_TLS_CLIENT_CA are set but MEDIC_TLS_CERT is not; "
                              "set the server certificate too")
        return {}
    for what, path in (("MEDIC_TLS_CERT", settings.tls_cert), ("MEDIC_TLS_KEY", settings.tls_key),
                       ("MEDIC_TLS_CLIENT_CA", settings.tls_client_ca)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{what} {path} is not a readable file")
    options: dict[str, Any] = {"ssl_certfile": str(settings.tls_cert)}
    if settings.tls_key is not None:
        options["ssl_keyfile"] = str(settings.tls_key)
    if settings.tls_client_ca is not None:
        options.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def check_serving(settings: Settings, host: str) -> None:
    """Before medic serve starts anything: credentials readable, bind allowed, TLS files there (ConfigError)."""
    refuse_open_bind(settings, host)
    tls_options(settings)
