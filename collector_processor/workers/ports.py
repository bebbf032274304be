"""The ports a sidecar's workers share, held by the supervisor from start to stop.

Every worker binds each listener's port with ``SO_REUSEPORT`` and the kernel spreads connections over
them. ``SO_REUSEPORT`` would as gladly let a second sidecar of the same user join the group and
silently take part of the traffic, so before any worker starts the supervisor makes sure the port is
free: it binds it *without* ``SO_REUSEPORT``, which fails while anything else holds it. It then keeps
a socket of its own bound there, with ``SO_REUSEPORT`` and never listening (only listening sockets
take connections): the workers can join, a sidecar without ``SO_REUSEPORT`` (or a second
supervisor's check) cannot, and the port stays this sidecar's while a worker is being replaced, even
if none is left. It also turns a configured port 0 into the one port every worker binds.
"""

from __future__ import annotations

import socket

from paymaster.exceptions import ConfigError

__all__ = ["PortHold"]


class PortHold:
    """Holds one listener's port; see the module docstring. ``key`` names the listener in refusals."""

    def __init__(self, key: str, address: str) -> None:
        self.key = key
        host, _, port = address.rpartition(":")
        self.host = host
        bare = host.strip("[]")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # Fails while anything listens on the port or holds it as below; connections of an
                # earlier run waiting out TIME_WAIT do not count.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((bare, int(port)))
                self.port: int = probe.getsockname()[1]
            self._socket = socket.socket(family, socket.SOCK_STREAM)
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._socket.bind((bare, self.port))
        except OSError as exc:
            raise ConfigError(f"{key}: cannot serve on {address}: {exc}") from None

    @property
    def address(self) -> str:
        """``host:port`` with the port every worker binds."""
        return f"{self.host}:{self.port}"

    def release(self) -> None:
        self._socket.close()
