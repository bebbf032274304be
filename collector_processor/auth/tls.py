"""TLS for every listener, with certificates re-read when their files change (cert-manager rotation).

``CertFiles`` watches a listener's certificate, key and client CA files (modification time and size,
looked at most once a second). The gRPC listeners use ``grpc.dynamic_ssl_server_credentials``, whose
fetcher runs before each new connection's handshake and hands gRPC the new files when they changed;
the HTTP listeners (OTLP/HTTP, ``/metrics``) ask ``ServerTls.context()`` for each new connection and get
a fresh ``ssl.SSLContext`` after a change. Connections already open keep the certificate they were
made with. With a client CA, clients must present a certificate it signed (mTLS), and what was
verified of it (URI SANs, common name) becomes a ``PeerCertificate`` for the gate.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from collector_processor.auth.config import TlsSection
from collector_processor.auth.edge import PeerCertificate

__all__ = ["CertFiles", "ServerTls", "grpc_peer_certificate", "ssl_peer_certificate"]

log = logging.getLogger("paymaster.sidecar.tls")
_CHECK_EVERY_S = 1.0


class CertFiles:
    """A listener's certificate, key and client CA, read again when any of them changes."""

    def __init__(self, tls: TlsSection, base: Path | None, key: str) -> None:
        self.key = key
        self.cert_path, self.key_path, self.ca_path = tls.paths(base)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self.cert, self.private_key, self.ca = self._read()

    @property
    def mutual(self) -> bool:
        return self.ca_path is not None

    def _paths(self) -> list[Path]:
        return [p for p in (self.cert_path, self.key_path, self.ca_path) if p is not None]

    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in self._paths():
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((-1, -1))
        return tuple(out)

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        try:
            cert = self.cert_path.read_bytes()
            key = self.key_path.read_bytes()
            ca = self.ca_path.read_bytes() if self.ca_path is not None else None
        except OSError as exc:
            raise OSError(f"{self.key}: cannot read {exc.filename}: {exc.strerror}") from None
        return cert, key, ca

    def changed(self) -> bool:
        """Whether the files changed since they were last read (reads them again if so)."""
        now = time.monotonic()
        if now - self._checked < _CHECK_EVERY_S:
            return False
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            try:
                files = self._read()
                _context_from(self)
            except (OSError, ssl.SSLError, ValueError) as exc:
                # Half-written during a rotation, or wrong: keep serving the old ones and look again.
                log.warning("%s: the new certificate files cannot be used yet: %s", self.key, exc)
                return False
            self._stamp = stamp
            self.cert, self.private_key, self.ca = files
            log.info("%s: certificate files changed; new connections use the new ones", self.key)
            return True


def _context_from(files: CertFiles) -> ssl.SSLContext:
    """A server SSL context from the files; fails if the pair does not load together."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(files.cert_path, files.key_path)
    except ssl.SSLError as exc:
        raise ValueError(
            f"{files.key}: the certificate and key do not load together ({exc.reason})"
        ) from None
    except OSError as exc:
        raise ValueError(f"{files.key}: cannot read {exc.filename}: {exc.strerror}") from None
    return ctx


class ServerTls:
    """TLS of one listener: gRPC credentials or, for HTTP listeners, an SSL context per connection."""

    def __init__(self, tls: TlsSection, base: Path | None, key: str) -> None:
        self.files = CertFiles(tls, base, key)
        _context_from(self.files)
        self._context: ssl.SSLContext | None = None
        self._context_lock = threading.Lock()

    @property
    def mutual(self) -> bool:
        return self.files.mutual

    def grpc_credentials(self) -> grpc.ServerCredentials:
        f = self.files

        def config() -> Any:
            return grpc.ssl_server_certificate_configuration(
                [(f.private_key, f.cert)], root_certificates=f.ca
            )

        def fetch() -> Any:
            return config() if f.changed() else None

        return grpc.dynamic_ssl_server_credentials(config(), fetch, require_client_authentication=f.mutual)

    def context(self) -> ssl.SSLContext:
        """The SSL context for a new HTTP connection (rebuilt after the files change)."""
        if self._context is None or self.files.changed():
            with self._context_lock:
                f = self.files
                ctx = _context_from(f)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                if f.ca is not None:
                    ctx.load_verify_locations(cadata=f.ca.decode("ascii", "replace"))
                    ctx.verify_mode = ssl.CERT_REQUIRED
                self._context = ctx
        return self._context


def grpc_peer_certificate(context: Any) -> PeerCertificate | None:
    """What gRPC verified of the caller's client certificate, or ``None`` without one."""
    auth = context.auth_context()
    if not auth or b"ssl" not in auth.get("transport_security_type", ()):
        return None
    uris = tuple(v.decode() for v in auth.get("peer_uri", ()))
    names = auth.get("x509_common_name", ())
    common_name = names[0].decode() if names else ""
    if not uris and not common_name:
        return None
    return PeerCertificate(uris=uris, common_name=common_name)


def ssl_peer_certificate(sock: Any) -> PeerCertificate | None:
    """What an ``ssl.SSLSocket`` verified of the client's certificate, or ``None`` without one."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    cert = getpeercert()
    if not cert:
        return None
    uris = tuple(value for kind, value in cert.get("subjectAltName", ()) if kind == "URI")
    common_name = ""
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                common_name = value
    return PeerCertificate(uris=uris, common_name=common_name)
