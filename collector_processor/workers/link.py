"""The channel between the supervisor and one worker process: messages over a socket pair.

The supervisor creates a socket pair per worker and hands one end to the worker process (its file
descriptor number is the worker's one argument); both ends speak ``multiprocessing.connection``
(length-prefixed pickles, between processes of the same sidecar only). Each message is a tuple whose
first item says what it is:

supervisor to worker
    ``("start", config, index)`` once, first; ``("snapshot", request)`` asks for the worker's
    counts; ``("alerts",)`` another worker fired alerts (wake WatchAlerts streams);
    ``("tokens",)`` a token was issued or revoked elsewhere (re-read them); ``("stop", grace_s)``
    drain and exit.
worker to supervisor
    ``("ready", pid, descriptions)`` serving; ``("failed", message)`` could not start;
    ``("snapshot", request, MetricsSnapshot)``; ``("alerts",)`` and ``("tokens",)`` as above, from
    this worker.

A closed channel is how each side learns that the other is gone: the supervisor notices a dead worker
at once, and a worker whose supervisor was killed stops instead of serving on unsupervised.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["Link", "pair"]


class Link:
    """One end of the channel; ``send`` may be called from any thread, ``recv`` from one."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._lock = threading.Lock()

    @classmethod
    def from_fd(cls, fd: int) -> Link:
        return cls(Connection(fd))

    def send(self, *message: Any) -> bool:
        """Send ``message``; ``False`` when the other end is gone."""
        try:
            with self._lock:
                self.connection.send(message)
        except (OSError, ValueError):  # closed, or the peer went away
            return False
        return True

    def recv(self) -> tuple[Any, ...]:
        """The next message; ``EOFError`` once the other end is gone."""
        try:
            message = self.connection.recv()
        except OSError as exc:
            raise EOFError(str(exc)) from None
        if not isinstance(message, tuple) or not message:
            raise EOFError(f"unexpected message {message!r}")
        return message

    def fileno(self) -> int:
        return self.connection.fileno()

    def stop_reading(self) -> None:
        """End a ``recv`` that is waiting, in this thread or another (it raises ``EOFError``); sending
        still works."""
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self.connection.fileno())) as sock:
            sock.shutdown(socket.SHUT_RD)

    def close(self) -> None:
        self.connection.close()


def pair() -> tuple[Link, socket.socket]:
    """The supervisor's end, and the socket whose descriptor the worker process inherits."""
    mine, theirs = socket.socketpair()
    return Link(Connection(mine.detach())), theirs
