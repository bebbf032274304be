"""Configuration of authentication and TLS: the ``[auth]`` section and the ``tls`` block of every listener.

One ``[auth]`` section says who may call: bearer tokens issued by ``paymaster tokens create`` (kept
in the store), bootstrap tokens from a file or an environment variable (a Kubernetes Secret; never
plaintext in this file), and client certificates mapped to principals (``[[auth.clients]]``). Every
listener (``[server]``, ``[receivers.otlp]``, ``[metrics]``) takes the same ``tls`` block and the same
``allow_unauthenticated`` switch; none has a scheme of its own.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from collector_processor.auth.grants import parse_grants
from collector_processor.auth.principal import Principal, parse_roles
from collector_processor.auth.tokens import BootstrapToken, hash_token
from collector_processor.errors import InvalidRequestError

__all__ = ["AuthSection", "ClientCertificate", "TlsSection", "load_bootstrap_tokens"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
MIN_TOKEN_LENGTH = 32


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSection(_Section):
    """TLS for one listener. With ``client_ca_file``, clients must present a certificate it signed (mTLS).
    The files are read again when they change, so a rotated certificate needs no restart."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def check(self, key: str, base: Path | None) -> None:
        """Refuse half a block or unreadable files, naming ``key``."""
        if not self.cert_file and not self.key_file and not self.client_ca_file:
            return
        if not self.cert_file or not self.key_file:
            missing = "cert_file" if not self.cert_file else "key_file"
            raise InvalidRequestError(
                f"{key}.{missing}", "is required when TLS is configured (cert_file and key_file)"
            )
        for name in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(self, name)
            if value and not resolve(value, base).is_file():
                raise InvalidRequestError(f"{key}.{name}", f"no such file: {value}")

    def paths(self, base: Path | None) -> tuple[Path, Path, Path | None]:
        """The certificate, key and client CA files, relative paths resolved against ``base``."""
        ca = resolve(self.client_ca_file, base) if self.client_ca_file else None
        return resolve(self.cert_file, base), resolve(self.key_file, base), ca


class _PrincipalEntry(_Section):
    """Who a credential stands for: its name, roles and grants (as in a token)."""

    name: str = Field(min_length=1, max_length=128)
    roles: list[str]
    grants: list[str]
    trust_reported_cost: bool = False


class ClientCertificate(_PrincipalEntry):
    """A client certificate mapped to a principal: by a URI SAN (a SPIFFE id) or by its common name."""

    uri: str = ""
    common_name: str = ""


class AuthSection(_Section):
    """Who may call the sidecar. Off by default: then only loopback listeners (or those that say
    ``allow_unauthenticated = true``) start, and every caller may do everything."""

    enabled: bool = False
    tokens_file: str = ""
    admin_token_env: str = ""
    refresh_seconds: float = Field(default=2.0, ge=0.05, le=60)
    clients: list[ClientCertificate] = Field(default_factory=list)

    def check(self, base: Path | None) -> None:
        """Validate the client mappings and that the bootstrap sources can be read, naming the key."""
        seen: dict[str, int] = {}
        for i, client in enumerate(self.clients):
            key = f"auth.clients[{i}]"
            if bool(client.uri) == bool(client.common_name):
                raise InvalidRequestError(
                    key, "set exactly one of uri (a URI SAN such as a SPIFFE id) or common_name"
                )
            try:
                parse_roles(client.roles, f"{key}.roles")
            except ValueError as exc:
                raise InvalidRequestError(f"{key}.roles", str(exc).split(": ", 1)[-1]) from None
            parse_grants(client.grants, f"{key}.grants")
            match = client.uri or client.common_name
            if match in seen:
                raise InvalidRequestError(key, f"{match!r} is mapped already at auth.clients[{seen[match]}]")
            seen[match] = i
        if self.tokens_file:
            load_bootstrap_tokens(resolve(self.tokens_file, base), "auth.tokens_file")
        if self.admin_token_env:
            env_token(self.admin_token_env)

    def principals(self) -> dict[str, Principal]:
        """Client certificate identities (``uri:<san>`` or ``cn:<name>``) mapped to their principals."""
        return {
            (f"uri:{c.uri}" if c.uri else f"cn:{c.common_name}"): Principal(
                name=c.name,
                roles=parse_roles(c.roles),
                grants=parse_grants(c.grants),
                trust_reported_cost=c.trust_reported_cost,
                kind="certificate",
            )
            for c in self.clients
        }

    def bootstrap(self, base: Path | None) -> list[BootstrapToken]:
        """The tokens of ``tokens_file`` and ``admin_token_env`` (read now)."""
        tokens = (
            load_bootstrap_tokens(resolve(self.tokens_file, base), "auth.tokens_file")
            if self.tokens_file
            else []
        )
        if self.admin_token_env:
            token = env_token(self.admin_token_env)
            tokens.append(
                BootstrapToken(
                    secret_sha256=hash_token(token),
                    principal=Principal(
                        name=f"env:{self.admin_token_env}",
                        roles=parse_roles(["admin", "reader"]),
                        grants=parse_grants(["*"]),
                        kind="token",
                    ),
                )
            )
        return tokens


class _BootstrapEntry(_PrincipalEntry):
    token: str = ""
    sha256: str = ""


class _BootstrapFile(_Section):
    tokens: list[_BootstrapEntry] = Field(default_factory=list)


def env_token(name: str) -> str:
    """The token in environment variable ``name``; refused (without showing it) when unusable."""
    value = os.environ.get(name, "")
    if not value:
        raise InvalidRequestError(
            "auth.admin_token_env", f"the environment variable {name} is not set or empty"
        )
    if len(value) < MIN_TOKEN_LENGTH or not value.isprintable() or value.strip() != value:
        raise InvalidRequestError(
            "auth.admin_token_env",
            f"the token in {name} must be at least {MIN_TOKEN_LENGTH} printable characters without spaces "
            "(make one with `paymaster tokens new`)",
        )
    return value


def load_bootstrap_tokens(path: Path, key: str) -> list[BootstrapToken]:
    """Read a tokens file: ``[[tokens]]`` tables with ``name``, ``token`` (or its ``sha256``), ``roles``,
    ``grants`` and ``trust_reported_cost``. Errors name the file and entry, never a token."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequestError(key, f"cannot read {path} ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequestError(key, f"{path} is not valid TOML: {exc}") from None
    try:
        parsed = _BootstrapFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequestError(key, f"{path}: {where}: {first['msg']}") from None
    out: list[BootstrapToken] = []
    for i, entry in enumerate(parsed.tokens):
        where = f"{path}: tokens[{i}]"
        if bool(entry.token) == bool(entry.sha256):
            raise InvalidRequestError(key, f"{where}: set exactly one of token or sha256")
        if entry.token and (len(entry.token) < MIN_TOKEN_LENGTH or not entry.token.isprintable()):
            raise InvalidRequestError(
                key, f"{where}: the token must be at least {MIN_TOKEN_LENGTH} printable characters"
            )
        if entry.sha256 and not _SHA256.fullmatch(entry.sha256):
            raise InvalidRequestError(key, f"{where}.sha256: must be 64 lowercase hex digits")
        try:
            roles = parse_roles(entry.roles, "roles")
            grants = parse_grants(entry.grants, "grants")
        except (ValueError, InvalidRequestError) as exc:
            raise InvalidRequestError(key, f"{where}.{exc}") from None
        principal = Principal(
            name=entry.name, roles=roles, grants=grants, trust_reported_cost=entry.trust_reported_cost
        )
        out.append(BootstrapToken(secret_sha256=entry.sha256 or hash_token(entry.token), principal=principal))
    return out


def resolve(path: str, base: Path | None) -> Path:
    """``path``, relative to ``base`` (the config file's folder) when it is relative."""
    p = Path(path)
    return p if p.is_absolute() or base is None else base / p
