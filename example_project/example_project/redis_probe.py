"""Print ``on`` when ``REDIS_URL`` answers a PING, else ``off``: the demo's one decision about L2.

``make demo`` runs this once, before migrating, seeding and serving, and
passes the answer to every command as ``VELRO_EXAMPLE_L2``; the settings
themselves never probe, so no worker decides on its own.
"""

import os

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_answers(url: str, timeout: float = 0.3) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no usable Redis"
        return False


if __name__ == "__main__":
    print("on" if redis_answers(os.environ.get("REDIS_URL", DEFAULT_URL)) else "off")
