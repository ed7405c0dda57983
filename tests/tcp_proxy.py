"""Loopback TCP proxies a test controls: stall (a silent socket) or cut chosen connections, or silence them all.

Some faults cannot be made with signals to redis-server: a *silent* socket
(the peer is alive, the TCP connection stays open, nothing arrives) on one
connection only, for instance the pub/sub subscription while every other
connection keeps working. Point the cache at ``proxy.url(db)`` and every
connection passes through here, where the test can pick connections by what
their client sent (``subscribers``: connections that sent SUBSCRIBE) and

- ``stall(match)``: stop forwarding in both directions; bytes wait (in this
  process and in the kernel's buffers) until ``release``. A rule, not a
  snapshot: a matching connection opened while the stall holds (a reconnect)
  is stalled too, before its first matching bytes are forwarded;
- ``cut(match)``: close matching connections at once (the client sees a reset);
- ``release()``: end every stall; the held bytes flow on, in order.

One thread per connection moves bytes with ``select``; no asyncio, so the
test thread can call every method directly. A connection whose other side
closes is closed on both sides, as a real network would show it.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable

from tests.redis_server import free_port

Match = Callable[["Connection"], bool]

_TAIL = 16  # bytes kept from the previous read, so a marker split across two reads is still seen
_POLL = 0.02  # how often a pump thread looks at its stall flag while nothing arrives


class Connection:
    """One proxied client connection: what its client sent (markers seen) and whether it is held."""

    def __init__(self, client: socket.socket, upstream: socket.socket, number: int) -> None:
        self.client = client
        self.upstream = upstream
        self.number = number
        self.stalled = False
        self.closed = False
        self.markers: set[bytes] = set()
        self._tail = b""
        self._held: list[bytes] = []  # client bytes read while stalled, forwarded on release

    def saw(self, marker: bytes) -> bool:
        """Whether the client has sent ``marker`` (upper case, e.g. b"SUBSCRIBE") on this connection."""
        return marker in self.markers

    def note(self, data: bytes, watched: tuple[bytes, ...]) -> None:
        window = (self._tail + data).upper()
        self.markers.update(marker for marker in watched if marker in window)
        self._tail = window[-_TAIL:]

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()
            except OSError:
                pass


def subscribers(connection: Connection) -> bool:
    """The match for a Redis pub/sub subscription: the client sent (P)SUBSCRIBE on it."""
    return connection.saw(b"SUBSCRIBE")


def every(connection: Connection) -> bool:
    return True


class TcpProxy:
    """Listens on a free loopback port and forwards each connection to ``target``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", watched: tuple[bytes, ...] = (b"SUBSCRIBE",)) -> None:
        self.target = (target_host, target_port)
        self.watched = watched
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: list[Connection] = []
        self._stall_rules: list[Match] = []
        self._numbers = 0
        self._running = True
        self._acceptor = threading.Thread(target=self._accept, name=f"tcp-proxy-{self.port}", daemon=True)
        self._acceptor.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    # -- control, from the test ------------------------------------------------------------

    def connections(self, match: Match = every) -> list[Connection]:
        with self._lock:
            return [conn for conn in self._connections if not conn.closed and match(conn)]

    def stall(self, match: Match) -> int:
        """Hold every connection that matches now or later, until ``release``; how many match now."""
        with self._lock:
            self._stall_rules.append(match)
            held = [conn for conn in self._connections if not conn.closed and match(conn)]
            for conn in held:
                conn.stalled = True
        return len(held)

    def release(self) -> None:
        """End every stall: held connections forward what waited, in order."""
        with self._lock:
            self._stall_rules.clear()
            for conn in self._connections:
                conn.stalled = False

    def cut(self, match: Match = every) -> int:
        """Close matching connections now (the client sees a reset); how many were cut."""
        victims = self.connections(match)
        for conn in victims:
            conn.close()
        return len(victims)

    def stop(self) -> None:
        self._running = False
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone does not)
            self._listener.close()
        except OSError:
            pass
        self.cut()
        self._acceptor.join(5)

    # -- forwarding ----------------------------------------------------------------------

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=1)
                upstream.settimeout(None)
            except OSError:  # the server behind is down: the client sees its connection refused-like close
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._numbers += 1
                conn = Connection(client, upstream, self._numbers)
                self._connections = [c for c in self._connections if not c.closed] + [conn]
            threading.Thread(target=self._pump, args=(conn,), name=f"tcp-proxy-conn-{conn.number}", daemon=True).start()

    def _matches_stall(self, conn: Connection) -> bool:
        with self._lock:
            if not conn.stalled and any(rule(conn) for rule in self._stall_rules):
                conn.stalled = True
            return conn.stalled

    def _pump(self, conn: Connection) -> None:
        try:
            while not conn.closed:
                if conn.stalled:
                    threading.Event().wait(_POLL)
                    continue
                if conn._held:
                    conn.upstream.sendall(b"".join(conn._held))
                    conn._held.clear()
                ready, _, _ = select.select([conn.client, conn.upstream], [], [], _POLL)
                for sock in ready:
                    if not self._forward(conn, sock):
                        return
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _forward(self, conn: Connection, sock: socket.socket) -> bool:
        """Move one read's bytes across; False when a side closed. Client bytes may start a stall."""
        if conn.stalled:
            return True
        data = sock.recv(65536)
        if not data:
            return False
        if sock is conn.client:
            conn.note(data, self.watched)
            if self._matches_stall(conn):
                conn._held.append(data)
                return True
            conn.upstream.sendall(data)
        else:
            conn.client.sendall(data)
        return True


class SilencingProxy:
    """Silences every connection at once, with nothing in flight once ``silence()`` returns.

    The staleness-bound tests need that last property (what the test writes
    next is certainly not heard), which the per-connection ``TcpProxy`` above
    does not promise; ``TcpProxy`` picks connections by what they sent, which
    this one cannot. Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>, one pump thread per direction and connection."""

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
