"""Cross-process L1 coherence over Redis pub/sub.

Every worker process has its own L1. Each write the backend sends to Redis
carries, in the same pipeline, a message naming the keys it changed; every
process subscribes and drops those keys from its L1. A message carries its
sender's origin id, and a process ignores only messages with its own id: it
never uses timing or "keys I wrote recently" to skip a message, which is how
other libraries let their own echo swallow another process's write.

The channel can be lost (Redis restart, network cut, a paused server), and
pub/sub does not replay what was missed. So the listener heartbeats (PING on
the subscription, answered in order with every message before it) and checks
an epoch key that a FLUSHDB/FLUSHALL or an emptied restart removes. When the
channel is lost or the epoch changes, the process drops its whole L1 and keeps
it off until the subscription is back and confirmed; only then is L1 filled
again. Redis 7.0 on our machines has no RESP3 client tracking in redis-py,
which would need 7.4+.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import msgpack
import redis

logger = logging.getLogger("velro_cache.coherence")

DROP, CLEAR = "d", "c"
EPOCH_KEY = "velro_cache:epoch"


def channel_for(url: str) -> str:
    """One channel per Redis database (pub/sub itself ignores database numbers)."""
    db = redis.connection.parse_url(url).get("db", 0)
    return f"velro_cache:coherence:{db}"


def new_origin() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def drop_message(origin: str, keys: Sequence[str]) -> bytes:
    return msgpack.packb([origin, DROP, list(keys)])


def clear_message(origin: str) -> bytes:
    return msgpack.packb([origin, CLEAR, []])


class CoherenceListener:
    """The subscriber thread of one process for one Redis database."""

    def __init__(
        self,
        url: str,
        origin: str,
        *,
        on_drop: Callable[[list[str]], None],
        on_lost: Callable[[str], None],
        on_ready: Callable[[], None],
        on_tick: Callable[[], None] = lambda: None,
        heartbeat: float = 0.5,
    ) -> None:
        self.url = url
        self.channel = channel_for(url)
        self.origin = origin
        self.heartbeat = heartbeat
        self._on_drop = on_drop
        self._on_lost = on_lost
        self._on_ready = on_ready
        self._on_tick = on_tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.connected = False
        # Not ready until a subscription is confirmed: before that, messages
        # may have been missed, so L1 must stay off.
        self.ready = False
        self.ready_event = threading.Event()
        self.messages_applied = 0
        self.losses = 0
        self._epoch: bytes | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"velro-coherence-{self.channel}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def alive_in_this_process(self) -> bool:
        """False in a forked child: threads do not survive fork."""
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self._session()
                backoff = 0.05
            except Exception as exc:  # any failure means the channel may have missed messages
                self._lose(f"{type(exc).__name__}: {exc}")
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 0.5)

    def _session(self) -> None:
        client = redis.Redis.from_url(
            self.url, socket_timeout=self.heartbeat * 2, socket_connect_timeout=self.heartbeat * 2, health_check_interval=0
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            self._confirm(pubsub)
            self._epoch = self._read_epoch(client)
            self.connected = True
            self._become_ready()
            self._listen(pubsub, client)
        finally:
            self.connected = False
            try:
                pubsub.close()
                client.close()
            except Exception:  # closing a broken connection may fail; nothing to do
                pass

    def _confirm(self, pubsub: redis.client.PubSub) -> None:
        """Wait for a PONG: Redis answers in order, so the subscription is live."""
        pubsub.ping()
        deadline = time.monotonic() + self.heartbeat * 4
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=self.heartbeat)
            if message and message["type"] == "pong":
                return
            if message:
                self._apply(message)
        raise TimeoutError("no answer to the subscription's first PING")

    def _listen(self, pubsub: redis.client.PubSub, client: redis.Redis) -> None:
        last_pong = last_ping = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=self.heartbeat / 2)
            now = time.monotonic()
            if message is not None:
                if message["type"] == "pong":
                    last_pong = now
                else:
                    self._apply(message)
            if now - last_ping >= self.heartbeat:
                pubsub.ping()
                last_ping = now
                self._check_epoch(client)
                self._on_tick()
            if now - last_pong > self.heartbeat * 3:
                raise TimeoutError("missed heartbeats")

    def _read_epoch(self, client: redis.Redis) -> bytes:
        client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
        return client.get(EPOCH_KEY)

    def _check_epoch(self, client: redis.Redis) -> None:
        """A flushed or emptied Redis loses the epoch key: drop L1, adopt a new epoch."""
        current = client.get(EPOCH_KEY)
        if current != self._epoch:
            self._lose("Redis was flushed or restarted empty")
            self._epoch = self._read_epoch(client)
            self._become_ready()

    def _apply(self, message: dict) -> None:
        try:
            origin, op, keys = msgpack.unpackb(message["data"])
        except Exception:
            logger.warning("velro_cache: ignoring a malformed coherence message on %s", self.channel)
            return
        if origin == self.origin:
            return
        self.messages_applied += 1
        self._on_drop(None if op == CLEAR else keys)

    def _lose(self, reason: str) -> None:
        """Report a loss once per outage; retries while it lasts stay quiet."""
        was_ready, self.ready = self.ready, False
        self.connected = False
        if not was_ready:
            return
        self.losses += 1
        logger.warning("velro_cache: coherence channel lost (%s); L1 is off until it is back", reason)
        self._on_lost(reason)

    def _become_ready(self) -> None:
        self.ready = True
        self._on_ready()
        self.ready_event.set()
