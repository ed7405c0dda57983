"""The TCP proxy the fault tests rely on: it must stall exactly the connections asked for, and cut them.

If it silently forwarded a "stalled" subscription, the silent-socket history
would pass for the wrong reason; these tests pin what it does against a real
redis-server.
"""

from __future__ import annotations

import socket

import redis

from tests.support import eventually
from tests.tcp_proxy import TcpProxy, subscribers


def _subscribed(proxy: TcpProxy) -> tuple[redis.Redis, redis.client.PubSub]:
    client = redis.Redis(port=proxy.port, socket_timeout=2)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("chan")
    assert eventually(lambda: proxy.connections(subscribers), 2)
    return client, pubsub


def _next_data(pubsub: redis.client.PubSub, timeout: float) -> bytes | None:
    message = eventually(lambda: pubsub.get_message(timeout=0.01), timeout)
    return message["data"] if message else None


def test_a_stalled_subscription_hears_nothing_while_other_connections_work(private_redis):
    proxy = TcpProxy(private_redis.port)
    try:
        client, pubsub = _subscribed(proxy)
        assert proxy.stall(subscribers) == 1
        assert client.publish("chan", b"while-stalled") == 1  # a separate connection: it still works
        assert _next_data(pubsub, 0.3) is None  # the subscriber's socket is silent
        proxy.release()
        assert _next_data(pubsub, 2) == b"while-stalled"  # held, not lost: delivered in order on release
        pubsub.close()
        client.close()
    finally:
        proxy.stop()


def test_a_stall_rule_also_holds_a_subscription_made_while_it_lasts(private_redis):
    proxy = TcpProxy(private_redis.port)
    try:
        assert proxy.stall(subscribers) == 0
        client = redis.Redis(port=proxy.port, socket_timeout=2)
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        pubsub.subscribe("chan")
        assert _next_data(pubsub, 0.3) is None  # not even the subscribe confirmation comes back
        assert client.ping()
        proxy.release()
        assert _next_data(pubsub, 2) == 1  # the confirmation, once released
        pubsub.close()
        client.close()
    finally:
        proxy.stop()


def test_cut_resets_the_chosen_connections(private_redis):
    """Raw sockets: redis-py would reconnect and resubscribe by itself and hide the cut."""
    proxy = TcpProxy(private_redis.port)
    try:
        subscriber = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        subscriber.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nchan\r\n")
        assert b"subscribe" in subscriber.recv(1024)
        other = redis.Redis(port=proxy.port, socket_timeout=2)
        assert other.ping()
        assert proxy.cut(subscribers) == 1
        try:
            ended = subscriber.recv(1024) == b""
        except ConnectionResetError:
            ended = True
        assert ended
        assert other.ping()  # untouched
        subscriber.close()
        other.close()
    finally:
        proxy.stop()
