"""A TCP proxy between a client and a server, for tests that cut the network: `stop()`
closes the listener and every live connection (the endpoint is down), `start()` listens
again on the same port, `cut_after` drops each connection once it has carried that
many bytes back to the client (a connection lost mid-answer), and `hold_after` stalls
everything sent to the server once that many bytes have gone (a link that hangs, until
`stop`)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.cut_after: int | None = None  # bytes back to the client before a connection is dropped
        self.connections = 0  # accepted so far
        self.hold_after: int | None = None  # bytes to the server before the link stalls
        self.bytes_up = 0  # client → server, so far
        self._stopped = threading.Event()
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and reset the live ones, as a server that went away."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.drop_connections()
        self._stopped.set()  # after the drop: a held connection must not forward a byte more

    def drop_connections(self) -> None:
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was closed: stop() or the test ended
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self.connections += 1
                self._live.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        carried = 0
        try:
            while data := source.recv(CHUNK):
                if up and self.hold_after is not None and self.bytes_up >= self.hold_after:
                    self._stopped.wait()
                    break
                limit = None if up else self.cut_after
                if limit is not None and carried + len(data) > limit:
                    sink.sendall(data[: max(0, limit - carried)])
                    break
                sink.sendall(data)
                carried += len(data)
                if up:
                    with self._lock:
                        self.bytes_up += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with self._lock:
                self._live.discard(sock)
            _close(sock)


def _close(sock: socket.socket) -> None:
    # SO_LINGER 0: the peer sees a reset at once, as when a server or a link dies.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
