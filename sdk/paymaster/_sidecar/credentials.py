"""What a client presents to the sidecar: a bearer token on every call, and TLS for the channel.

The token travels as call metadata (``authorization: Bearer <token>``) on each call rather than as
gRPC call credentials, because gRPC refuses call credentials on a plaintext channel and plaintext
loopback is the zero-config default. It is looked up for every call: a string, a callable that
returns the current token, or a file read again whenever it changes (a Kubernetes Secret mounted
as a volume is swapped in place when it is rotated), so a long-running process follows a rotation
without a restart. With a CA file the channel is TLS and verifies the sidecar's certificate; with a
client certificate and key it is mutual TLS. The certificate files are looked at again at most once
a second and a changed set opens a fresh channel for the calls that follow.

The defaults come from the environment: ``PAYMASTER_TOKEN``, ``PAYMASTER_TOKEN_FILE``,
``PAYMASTER_SIDECAR_CA``, ``PAYMASTER_SIDECAR_CERT``, ``PAYMASTER_SIDECAR_KEY``. No token ever appears
in ``repr()``, an error or a log line: they say where the token came from, never what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from paymaster.exceptions import ConfigError

__all__ = ["ENV", "Connection", "Credentials", "TokenSource"]

log = logging.getLogger("paymaster")

ENV: Final = {
    "token": "PAYMASTER_TOKEN",
    "token_file": "PAYMASTER_TOKEN_FILE",
    "ca_file": "PAYMASTER_SIDECAR_CA",
    "cert_file": "PAYMASTER_SIDECAR_CERT",
    "key_file": "PAYMASTER_SIDECAR_KEY",
}
"""The environment variable behind each setting."""

TokenSource = str | Callable[[], str | None]
"""A token, or a callable that returns the current one (``None`` or ``""``: send none)."""

_MAX_TOKEN = 4096
_CHECK_FILES_EVERY_S = 1.0


def _token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent as a bearer token, or ``None``; never quotes it."""
    if len(token) > _MAX_TOKEN:
        return f"is longer than {_MAX_TOKEN} characters"
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        return "must be printable ASCII without spaces (check what was pasted)"
    return None


class _FixedToken:
    def __init__(self, token: str, origin: str) -> None:
        self._token = token
        self.origin = origin

    def __call__(self) -> str | None:
        return self._token

    def __repr__(self) -> str:
        return f"<token given by {self.origin}>"


class _TokenFile:
    """A token file, read again when it changes; a rotation caught half-written keeps the last token."""

    def __init__(self, path: Path, origin: str) -> None:
        self.path = path
        self.origin = f"{origin} {path}"
        self._lock = threading.Lock()
        self._stamp = self._stat()
        token, problem = self._read()
        if token is None:
            raise ConfigError(f"{origin}: {problem}")
        self._token = token

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (-1, -1, -1)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> tuple[str | None, str]:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"cannot read {self.path} ({getattr(exc, 'strerror', None) or exc})"
        if not text:
            return None, f"{self.path} is empty"
        problem = _token_problem(text)
        if problem is not None:
            return None, f"the token in {self.path} {problem}"
        return text, ""

    def __call__(self) -> str | None:
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    token, problem = self._read()
                    self._stamp = stamp
                    if token is None:
                        # Mid-rotation or removed: keep sending the last token until the file changes again.
                        log.warning("paymaster: %s; still sending the token read before", problem)
                    else:
                        self._token = token
        return self._token

    def __repr__(self) -> str:
        return f"<token given by {self.origin}>"


class _CallableToken:
    def __init__(self, source: Callable[[], str | None], origin: str) -> None:
        self._source = source
        self.origin = origin

    def __call__(self) -> str | None:
        try:
            token = self._source()
        except Exception as exc:  # the application's callable: never let it break a call
            log.warning("paymaster: the token callable raised %s; the call is sent without a token",
                        type(exc).__name__)  # fmt: skip
            return None
        if not token:
            return None
        problem = _token_problem(token) if isinstance(token, str) else "is not a string"
        if problem is not None:
            log.warning("paymaster: the token the callable returned %s; the call is sent without it", problem)
            return None
        return token

    def __repr__(self) -> str:
        return f"<token given by {self.origin}>"


@dataclass(frozen=True, slots=True)
class _Files:
    """The TLS files of a channel (``tls`` is off when none is given)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    def paths(self) -> list[Path]:
        return [p for p in (self.ca, self.cert, self.key) if p is not None]

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self.paths():
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((-1, -1, -1))
        return tuple(out)

    def read(self, labels: Mapping[str, str]) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The PEM bytes of the CA, the key and the certificate; ``ConfigError`` naming the setting."""
        out: list[bytes | None] = []
        for name, path, marker in (
            ("ca_file", self.ca, b"-----BEGIN CERTIFICATE-----"),
            ("key_file", self.key, b"PRIVATE KEY-----"),
            ("cert_file", self.cert, b"-----BEGIN CERTIFICATE-----"),
        ):
            if path is None:
                out.append(None)
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{labels[name]}: cannot read {path} ({exc.strerror or exc})") from None
            if marker not in data:
                what = "a PEM private key" if name == "key_file" else "a PEM certificate"
                raise ConfigError(f"{labels[name]}: {path} does not hold {what}")
            out.append(data)
        return out[0], out[1], out[2]


class Credentials:
    """A token source and TLS files; see the module docstring. Build with ``Credentials.resolve``."""

    def __init__(
        self, token: Callable[[], str | None] | None, files: _Files, labels: Mapping[str, str]
    ) -> None:
        self._token = token
        self.files = files
        self._labels = dict(labels)

    @classmethod
    def resolve(
        cls,
        *,
        token: TokenSource | None = None,
        token_file: str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        label: Callable[[str], str] = lambda name: name,
        environ: Mapping[str, str] | None = None,
    ) -> Credentials:
        """The credentials the arguments give, each unset one taken from its environment variable.
        ``label(name)`` is how an argument is named in errors (``token_file``, ``--token-file``); one
        taken from the environment is named by its variable (``$PAYMASTER_TOKEN_FILE``)."""
        env = os.environ if environ is None else environ
        given = {"token": token, "token_file": token_file, "ca_file": ca_file,
                 "cert_file": cert_file, "key_file": key_file}  # fmt: skip
        labels = {name: label(name) for name in given}
        values: dict[str, Any] = {}
        if token is not None or token_file is not None:
            if token is not None and token_file is not None:
                raise ConfigError(f"{labels['token']}: give a token or a token file, not both")
            values = {"token": token, "token_file": token_file}
        else:
            values = _from_env(env, ("token", "token_file"), labels)
        for name in ("ca_file", "cert_file", "key_file"):
            if given[name] is not None:
                values[name] = given[name]
            elif env.get(ENV[name]):
                values[name] = env[ENV[name]]
                labels[name] = f"${ENV[name]}"
        return cls(_token_source(values, labels), _files(values, labels), labels)

    @classmethod
    def none(cls) -> Credentials:
        """No token, no TLS: plaintext loopback, the zero-config default."""
        return cls(None, _Files(), {})

    # ------------------------------------------------------------------ per call
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The call metadata that carries the current token (``None`` without one)."""
        if self._token is None:
            return None
        token = self._token()
        return (("authorization", f"Bearer {token}"),) if token else None

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def describe_token(self) -> str:
        """Where the token comes from, for an error message (never the token)."""
        if self._token is None:
            return "no token was sent"
        return f"the token given by {getattr(self._token, 'origin', 'a callable')}"

    # ------------------------------------------------------------------ channel
    def connect(
        self, target: str, options: Sequence[tuple[str, Any]] = (), *, aio: bool = False
    ) -> Connection:
        """A channel to ``target`` that follows changes of the TLS files (``aio``: a ``grpc.aio``
        channel of the running event loop)."""
        return Connection(target, self, options, aio=aio)

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = (), *, aio: bool = False) -> Any:
        """A ``grpc.Channel`` (``aio``: a ``grpc.aio.Channel`` of the running event loop): TLS when a CA
        or a client certificate is given, plaintext otherwise."""
        import grpc
        import grpc.aio

        kind: Any = grpc.aio if aio else grpc
        if not self.files.tls:
            return kind.insecure_channel(target, options=list(options))
        ca, key, cert = self.files.read(self._labels)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        return kind.secure_channel(target, credentials, options=list(options))

    def __repr__(self) -> str:
        parts = [f"token={self._token!r}" if self._token is not None else "token=None"]
        for name, path in (("ca_file", self.files.ca), ("cert_file", self.files.cert),
                           ("key_file", self.files.key)):  # fmt: skip
            if path is not None:
                parts.append(f"{name}={str(path)!r}")
        return f"Credentials({', '.join(parts)})"


def _from_env(env: Mapping[str, str], names: Sequence[str], labels: dict[str, str]) -> dict[str, Any]:
    found = {name: env.get(ENV[name]) or None for name in names}
    for name in names:
        if found[name] is not None:
            labels[name] = f"${ENV[name]}"
    if found.get("token") and found.get("token_file"):
        raise ConfigError(f"set only one of {ENV['token']} and {ENV['token_file']}")
    return found


def _token_source(values: Mapping[str, Any], labels: Mapping[str, str]) -> Callable[[], str | None] | None:
    token, token_file = values.get("token"), values.get("token_file")
    if token_file is not None:
        return _TokenFile(Path(token_file), labels["token_file"])
    if token is None:
        return None
    if callable(token):
        return _CallableToken(token, f"{labels['token']} (a callable)")
    if not isinstance(token, str):
        raise ConfigError(
            f"{labels['token']}: expected a string or a callable returning one, got {type(token).__name__}"
        )
    if not token:
        raise ConfigError(f"{labels['token']}: is empty")
    problem = _token_problem(token)
    if problem is not None:
        raise ConfigError(f"{labels['token']}: the token {problem}")
    return _FixedToken(token, labels["token"])


def _files(values: Mapping[str, Any], labels: Mapping[str, str]) -> _Files:
    paths = {n: Path(values[n]) if values.get(n) else None for n in ("ca_file", "cert_file", "key_file")}
    if (paths["cert_file"] is None) != (paths["key_file"] is None):
        given, missing = ("cert_file", "key_file") if paths["cert_file"] else ("key_file", "cert_file")
        raise ConfigError(
            f"{labels[given]}: a client certificate needs both its certificate and its key "
            f"({labels[missing]} is missing)"
        )
    for name, path in paths.items():
        if path is not None and not path.is_file():
            raise ConfigError(f"{labels[name]}: no such file: {path}")
    files = _Files(ca=paths["ca_file"], cert=paths["cert_file"], key=paths["key_file"])
    files.read(labels)  # refuse unreadable or non-PEM files now, not at the first call
    return files


class Connection:
    """A channel and its stub, opened again (for the calls that follow) when the TLS files change.

    A channel that is replaced stays open for the calls already on it and is closed with the
    connection. With ``aio`` the channels are ``grpc.aio`` channels of the event loop running when the
    connection is made, and only calls from that loop may use them."""

    def __init__(
        self, target: str, credentials: Credentials, options: Sequence[tuple[str, Any]], *, aio: bool = False
    ) -> None:
        from paymaster.v1 import budget_pb2_grpc

        self._new_stub = budget_pb2_grpc.BudgetServiceStub
        self.target = target
        self.credentials = credentials
        self._options = tuple(options)
        self._aio = aio
        self.loop = asyncio.get_running_loop() if aio else None
        """The event loop whose calls use this connection (``aio``), else ``None``."""
        self._lock = threading.Lock()
        self._stamp = credentials.files.stamp()
        self._checked = time.monotonic()
        self._channel = credentials.channel(target, self._options, aio=aio)
        self._stub = self._new_stub(self._channel)
        self._retired: list[Any] = []

    def stub(self) -> Any:
        """The stub of the current channel."""
        if self.credentials.files.tls and time.monotonic() - self._checked >= _CHECK_FILES_EVERY_S:
            self._follow_files()
        return self._stub

    def channel(self) -> Any:
        """The current ``grpc.Channel`` (for other services on the same port, such as health)."""
        self.stub()
        return self._channel

    def _follow_files(self) -> None:
        with self._lock:
            self._checked = time.monotonic()
            stamp = self.credentials.files.stamp()
            if stamp == self._stamp:
                return
            try:
                channel = self.credentials.channel(self.target, self._options, aio=self._aio)
            except ConfigError as exc:
                # Caught half-way through a rotation: keep the channel until the files change again.
                self._stamp = stamp
                log.warning(
                    "paymaster: the changed TLS files cannot be used yet (%s); keeping the channel", exc
                )
                return
            self._retired.append(self._channel)
            self._channel, self._stub, self._stamp = channel, self._new_stub(channel), stamp
            log.info("paymaster: TLS files for %s changed; new calls use a new channel", self.target)

    def close(self) -> None:
        with self._lock:
            channels = [*self._retired, self._channel]
            self._retired.clear()
        for channel in channels:
            if self.loop is None:
                channel.close()
            else:
                _close_aio(channel, self.loop)


_CLOSING: set[Any] = set()
"""Tasks closing ``grpc.aio`` channels, kept until they are done."""


def _close_aio(channel: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Close a ``grpc.aio`` channel from any thread: in its loop when that loop still runs (a
    ``grpc.aio`` channel is closed by awaiting it, in its own loop); a channel whose loop has ended is
    closed by gRPC when it is collected."""
    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task = loop.create_task(channel.close())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)
    elif loop.is_running():
        with contextlib.suppress(RuntimeError):  # it closed meanwhile
            asyncio.run_coroutine_threadsafe(channel.close(), loop)
