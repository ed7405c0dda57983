"""A TCP proxy the tests control: put it between a cache and Redis, then make the sockets silent.

``silence()`` stops forwarding in both directions while every socket stays
open: the client sees no error and no reply, as with a network partition that
drops packets, or a Redis whose pub/sub socket stalls. When ``silence()``
returns no byte is in flight through the proxy any more (the pumps forward
under the same lock), so what a test does next is certainly not heard.
"""

from __future__ import annotations

import select
import socket
import threading

from tests.redis_server import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>, one pump thread per direction and connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._flowing = True
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def silence(self) -> None:
        with self._lock:
            self._flowing = False

    def resume(self) -> None:
        with self._lock:
            self._flowing = True

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in list(self._sockets):
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([source], [], [], 0.01)
                if not ready:
                    continue
                with self._lock:
                    flowing = self._flowing
                    data = source.recv(65536) if flowing else None
                    if data:
                        sink.sendall(data)
                if not flowing:
                    self._closed.wait(0.005)  # the bytes stay in the kernel: nothing gets through
                elif not data:
                    break
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
