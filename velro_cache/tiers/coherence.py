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

On a Redis Cluster a PUBLISH on any node reaches the subscribers of every
node, so the listener subscribes through one node (the first startup node that
answers) and moves to the next when that one fails; the epoch key lives in one
slot, read through a cluster client, so every process reads the same one.
Writers publish through the node they subscribe through (``tiers.cluster``),
so messages and PONGs are ordered there, and announce the writes they could
not deliver as held (``HOLD``, ``HOLD_PREFIX``): the PONGs of a live node say
nothing about a stopped one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import redis

from ..exceptions import NotTheMaster
from ..options import TieredOptions
from .cluster import build_cluster_client, node_url
from .errors import describe
from .incarnation import checked_client
from .redis import shared_pool
from .sentinel import master_pool

logger = logging.getLogger("velro_cache.coherence")

DROP, CLEAR = "d", "c"
# Another process holds these writes back (its cluster node did not take them):
# keys, or for HOLD_PREFIX the key prefix of a clear. A CLEAR carries its prefix.
HOLD, HOLD_PREFIX = "h", "hp"
# Heartbeats without a PONG before the channel counts as lost. Generous on
# purpose: under CPU load this thread can wait long for the GIL while the
# messages still queue, in order, on its socket - nothing is lost, and turning
# L1 off then would hurt exactly when the server is busiest. A dead or paused
# Redis is noticed sooner anyway: socket errors end the session at once, and
# the breaker's short socket timeouts open it on the request path.
PONG_GRACE = 10
EPOCH_KEY = "velro_cache:epoch"


def channel_for(url: str) -> str:
    """One channel per Redis database (pub/sub itself ignores database numbers)."""
    db = redis.connection.parse_url(url).get("db", 0)
    return f"velro_cache:coherence:{db}"


def new_origin() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


class SingleRedis:
    """Where a listener on one Redis subscribes and reads the epoch: that Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.node = url

    def connect(self, timeout: float) -> tuple[redis.Redis, redis.Redis]:
        client = checked_client(self.url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0)
        return client, client

    def failed(self) -> None:
        """Nowhere else to go: retry the same Redis."""

    def current_epoch(self, client: Any) -> bytes | None:
        """The epoch key, and in the same round trip the server's role: it must still be the master.

        A master demoted under this session keeps answering PINGs, and its
        replication stream brings other processes' messages late, so its
        PONGs must not keep L1 trusted: a replica ends the session
        (``NotTheMaster``) within a heartbeat.
        """
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("ROLE")
        pipe.get(EPOCH_KEY)
        role, current = pipe.execute()
        if role[0] != b"master":
            raise NotTheMaster(self.node)
        return current


class SentinelMaster(SingleRedis):
    """A listener that follows the master Sentinel names: each session subscribes wherever it is now.

    A failover ends the session (Sentinel kills the clients of the servers it
    reconfigures, the old master's death closes the socket, and the epoch
    check sees a replica's role), and the next session asks the
    sentinels again, so the listener never keeps hearing a demoted master.
    """

    def __init__(self, url: str, options: TieredOptions) -> None:
        super().__init__(url)
        self.options = options

    def connect(self, timeout: float) -> tuple[redis.Redis, redis.Redis]:
        self._pool = master_pool(self.url, self.options, blocking=False, socket_timeout=timeout, socket_connect_timeout=timeout)
        client = redis.Redis(connection_pool=self._pool)
        return client, client

    def current_epoch(self, client: Any) -> bytes | None:
        """The epoch and role check, then: do the sentinels still name the server this session is on?

        Asked every heartbeat because a failover that Sentinel started by
        itself leaves the old master answering as a master until Sentinel
        reconfigures it, seconds later; when the answer changes, the session
        ends and the data path's pool drops its idle connections to the old
        master, so neither keeps using it.
        """
        current = super().current_epoch(client)
        on = self._pool.master_address
        now = self._pool.get_master_address()
        # The data path's pool asks too: its connections may be older than this
        # session, and it drops its idle ones when the answer changed for it.
        shared_pool(self.url, self.options).get_master_address()  # type: ignore[attr-defined]
        if on is not None and now != on:
            raise NotTheMaster(f"{on[0]}:{on[1]}")
        return current

    def failed(self) -> None:
        """The next session asks the sentinels again (a new pool, a new discovery)."""


def endpoints_for(options: TieredOptions) -> SingleRedis | ClusterNodes | SentinelMaster:
    """Where the listener of a cache with these options subscribes."""
    if options.cluster:
        return ClusterNodes(options.redis_urls)
    if options.sentinels:
        return SentinelMaster(options.redis_urls[0], options)
    return SingleRedis(options.redis_urls[0])


class ClusterNodes:
    """A listener on a Redis Cluster: subscribe through one node, read the epoch through the cluster.

    Starts with the first startup node (so the order of LOCATION decides) and
    moves to the next after a failed session, including the nodes the cluster
    reported, so a single startup URL does not tie the listener to one node.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        self.startup = list(urls)
        self.candidates = list(urls)
        self._index = 0

    @property
    def node(self) -> str:
        return self.candidates[self._index % len(self.candidates)]

    def connect(self, timeout: float) -> tuple[redis.Redis, Any]:
        data = build_cluster_client(self.startup, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            self._learn(data)
            subscriber = redis.Redis.from_url(self.node, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0)
        except Exception:
            data.close()
            raise
        return subscriber, data

    def _learn(self, data: Any) -> None:
        for node in data.get_nodes():
            url = node_url(self.startup[0], node.host, node.port)
            if url not in self.candidates:
                self.candidates.append(url)

    def failed(self) -> None:
        self._index = (self._index + 1) % len(self.candidates)

    def current_epoch(self, client: Any) -> bytes | None:
        """The epoch key, read through the cluster client (its slot's primary answers)."""
        return client.get(EPOCH_KEY)


def drop_message(origin: str, keys: Sequence[str]) -> bytes:
    return msgpack.packb([origin, DROP, list(keys)])


def clear_message(origin: str, key_prefix: str = "") -> bytes:
    """A clear of ``key_prefix`` (listeners before holds existed ignore the prefix: they drop all of L1)."""
    return msgpack.packb([origin, CLEAR, [key_prefix]])


def hold_message(origin: str, keys: Sequence[str], *, prefix: bool = False) -> bytes:
    """Writes of ``keys`` (key prefixes with ``prefix``) held back; an older listener takes it as a drop."""
    return msgpack.packb([origin, HOLD_PREFIX if prefix else HOLD, list(keys)])


class CoherenceListener:
    """The subscriber thread of one process for one Redis database."""

    def __init__(
        self,
        url: str,
        origin: str,
        *,
        on_drop: Callable[[list[str] | None], None],  # None: the whole cache was cleared
        on_lost: Callable[[str], None],
        on_ready: Callable[[bool], None],  # True: a new session after a lost one (see _become_ready)
        on_confirm: Callable[[float, float], None] = lambda sent, overdue: None,
        on_held: Callable[[str, list[str]], None] | None = None,  # HOLD, HOLD_PREFIX, CLEAR and their keys
        hurry: Callable[[], bool] = lambda: False,
        heartbeat: float = 0.5,
        ping_every: float = 0.025,
        endpoints: SingleRedis | ClusterNodes | SentinelMaster | None = None,
    ) -> None:
        self.url = url
        self.endpoints = endpoints or SingleRedis(url)
        self.channel = channel_for(url)
        self.origin = origin
        # How every message this process publishes begins (a 3-array, then the
        # origin): its own echoes are recognised without decoding their keys.
        self._own_prefix = b"\x93" + msgpack.packb(origin)
        self.heartbeat = heartbeat
        self._on_drop = on_drop
        self._on_lost = on_lost
        self._on_ready = on_ready
        self._on_confirm = on_confirm
        self._on_held = on_held or self._hold_as_drop
        self._hurry = hurry
        self.ping_every = ping_every
        # Pings go out from this thread and from request threads (``sync``);
        # one lock keeps their bytes from interleaving on the socket.
        self._send_lock = threading.Lock()
        self._pubsub: redis.client.PubSub | None = None
        self._last_sent = 0.0  # monotonic send time of the latest PING
        self._confirmed = 0.0  # send time of the latest PING whose PONG was handled
        self._confirmed_changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        # Not ready until a subscription is confirmed: before that, messages
        # may have been missed, so L1 must stay off.
        self.ready = False
        self.ready_event = threading.Event()
        self.messages_applied = 0
        self.losses = 0
        self.sessions = 0  # subscriptions confirmed, counting reconnects
        self._epoch: bytes | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"velro-coherence-{self.channel}", daemon=True)
        self._thread.start()

    def is_own_thread(self) -> bool:
        """Whether the caller is this listener's thread (which handles the PONGs others wait for)."""
        return self._thread is threading.current_thread()

    def stop(self) -> None:
        self._stop.set()
        self.ready = False
        if self._thread:
            self._thread.join(timeout=5)

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self._session()
                backoff = 0.05
            except Exception as exc:  # any failure means the channel may have missed messages
                self._lose(describe(exc))
                self.endpoints.failed()
            self._back_off(backoff)
            backoff = min(backoff * 2, 0.5)

    def _back_off(self, seconds: float) -> None:
        """Wait before reconnecting, but only a ping interval once this process holds undelivered invalidations.

        Checked every ping interval, so a write dropped during the wait cuts
        it short: until the reconnect delivers it, other processes read from
        Redis the value it replaced.
        """
        deadline = time.monotonic() + seconds
        while not self._stop.wait(min(self.ping_every, max(0.0, deadline - time.monotonic()))):
            if self._hurry() or time.monotonic() >= deadline:
                return

    def _session(self) -> None:
        client, data = self.endpoints.connect(self.heartbeat * 2)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            self._pubsub = pubsub
            self._confirm(pubsub)
            self._epoch = self._read_epoch(data)
            self.connected = True
            self.sessions += 1
            self._become_ready(resumed=self.sessions > 1)
            self._listen(pubsub, data)
        finally:
            self.connected = False
            self._pubsub = None
            for closable in (pubsub, client, data):
                try:
                    closable.close()
                except Exception:  # closing a broken connection may fail; nothing to do
                    pass

    def _confirm(self, pubsub: redis.client.PubSub) -> None:
        """Wait for a PONG: Redis answers in order, so the subscription is live."""
        self._ping(pubsub)
        deadline = time.monotonic() + self.heartbeat * 4
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=self.heartbeat)
            if message and message["type"] == "pong":
                self._pong(message)
                return
            if message:
                self._apply(message)
        raise TimeoutError("no answer to the subscription's first PING")

    def _listen(self, pubsub: redis.client.PubSub, client: Any) -> None:
        """Apply messages; PING every ``ping_every`` (each PONG renews L1's trust), check the epoch every heartbeat."""
        last_pong = last_tick = next_ping = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_ping:
                self._ping(pubsub)
                next_ping = now + self.ping_every
            message = pubsub.get_message(timeout=max(0.0, next_ping - time.monotonic()))
            now = time.monotonic()
            if message is not None:
                if message["type"] == "pong":
                    last_pong = now
                    self._pong(message)
                else:
                    self._apply(message)
            if now - last_tick >= self.heartbeat:
                last_tick = now
                self._check_epoch(client)
            if now - last_pong > self.heartbeat * PONG_GRACE:
                raise TimeoutError("missed heartbeats")

    # -- confirmations ------------------------------------------------------------------
    def _ping(self, pubsub: redis.client.PubSub) -> float:
        """Send a PING carrying its send time; its PONG comes after every message published before it."""
        with self._send_lock:
            sent = time.monotonic()
            connection: Any = pubsub.connection
            connection.send_command("PING", repr(sent))
            self._last_sent = sent
        return sent

    def _pong(self, message: dict) -> None:
        try:
            sent = float(message["data"])
        except (TypeError, ValueError):
            return  # a PONG of redis-py's own health check: confirms nothing we can date
        # The owner's trust first, then the waiters: one woken by this PONG finds its L1 already trusted.
        self._on_confirm(sent, self._last_sent - sent)
        with self._confirmed_changed:
            if sent > self._confirmed:
                self._confirmed = sent
            self._confirmed_changed.notify_all()

    def request_sync(self) -> float | None:
        """Start confirming that everything published before now is applied; the time to wait for.

        Sends one PING unless one sent after this moment is already on its way
        (concurrent requests share it). None when there is no live subscription.
        """
        start = time.monotonic()
        pubsub = self._pubsub
        if not self.ready or pubsub is None:
            return None
        if self._last_sent < start:
            try:
                self._ping(pubsub)
            except Exception:  # a broken socket: the listener thread will notice and reconnect
                return None
        return start

    def wait_synced(self, start: float, timeout: float) -> bool:
        """Whether a PONG for a PING sent at or after ``start`` was handled within ``timeout``."""
        with self._confirmed_changed:
            return self._confirmed_changed.wait_for(lambda: self._confirmed >= start, timeout)

    def _read_epoch(self, client: Any) -> bytes:
        client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
        return client.get(EPOCH_KEY)

    def _check_epoch(self, client: Any) -> None:
        """A flushed or emptied Redis loses the epoch key: drop L1, adopt a new epoch."""
        current = self.endpoints.current_epoch(client)
        if current != self._epoch:
            self._lose("Redis was flushed or restarted empty")
            self._epoch = self._read_epoch(client)
            self._become_ready(resumed=False)

    def _apply(self, message: dict) -> None:
        data = message["data"]
        if isinstance(data, bytes) and data.startswith(self._own_prefix):
            return  # our own write's echo: nothing to apply
        try:
            origin, op, keys = msgpack.unpackb(data)
        except Exception:
            logger.warning("velro_cache: ignoring a malformed coherence message on %s", self.channel)
            return
        if origin == self.origin:
            return
        self.messages_applied += 1
        if op in (HOLD, HOLD_PREFIX, CLEAR):
            self._on_held(op, keys)  # drops the L1 copies of what is held
        if op not in (HOLD, HOLD_PREFIX):
            self._on_drop(None if op == CLEAR else keys)

    def _hold_as_drop(self, op: str, keys: list[str]) -> None:
        """Without a handler a hold is just a drop (of all of L1 for a held clear); a clear drops after it anyway."""
        if op != CLEAR:
            self._on_drop(None if op == HOLD_PREFIX else keys)

    @property
    def subscribed_node(self) -> str | None:
        """Where the live session subscribes (a URL), None between sessions."""
        return self.endpoints.node if self.connected else None

    def _lose(self, reason: str) -> None:
        """Report a loss once per outage; retries while it lasts stay quiet."""
        was_ready, self.ready = self.ready, False
        self.connected = False
        if not was_ready:
            return
        self.losses += 1
        logger.warning("velro_cache: coherence channel lost (%s); L1 is off until it is back", reason)
        self._on_lost(reason)

    def _become_ready(self, *, resumed: bool) -> None:
        """``resumed``: a subscription confirmed after a lost one (an outage may have dropped writes).

        False for the first subscription and after a flush noticed through the
        epoch: a flush drops values, not writes, so nothing is held elsewhere.
        """
        self.ready = True
        self._on_ready(resumed)
        self.ready_event.set()
