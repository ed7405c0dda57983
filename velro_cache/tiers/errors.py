"""What a Redis error means for the cache, and what a log line may say about it.

Two jobs, both about errors coming back from Redis:

* ``NotTheMaster`` (and ``TooFewReplicas``, its NOREPLICAS cousin): a server that answers as a replica (a READONLY reply, or
  the role seen when a connection opens) is not where this cache's writes can
  go. It is a ``redis.ConnectionError`` on purpose, so every caller that
  already treats an unreachable Redis as an outage (the breaker, held
  invalidations, the coherence listener's reconnect, Sentinel's rediscovery
  of the master) does the same here, instead of taking the answer for a
  refusal of one command and carrying on against the wrong server.
* ``describe``: redis-py puts command arguments into some error messages (a
  failed pipeline command is reported as ``Command # 1 (SET key <value> ...)
  of pipeline caused error``), so the text of an exception can hold a cached
  value. Log lines use this description instead, which keeps what an operator
  needs (the class, Redis's error code, where it connects) and never the
  arguments.
"""

from __future__ import annotations

import re

import redis

# The text redis-py prefixes to a failed pipeline command, arguments included.
_PIPELINE_ANNOTATION = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)
# Redis's own error codes: an upper-case word first (WRONGTYPE, OOM, NOSCRIPT).
_ERROR_CODE = re.compile(r"^[A-Z][A-Z_-]{1,30}\b")


class CannotWrite(redis.ConnectionError):
    """The server refused a write for what it is now, not for the write: an outage to this cache."""

    def __init__(self, address: str, why: str) -> None:
        super().__init__(f"Redis at {address} {why}")
        self.address = address


class NotTheMaster(CannotWrite):
    """The server answered as a replica: writes cannot go there, so this cache counts it as down."""

    def __init__(self, address: str) -> None:
        super().__init__(address, "is a replica, not the master")


class TooFewReplicas(CannotWrite):
    """NOREPLICAS: the master lost the replicas ``min-replicas-to-write`` asks for, as in a failover.

    That setting is what keeps a master that a failover is leaving from
    taking writes the new master will never see (docs/consistency.md).
    """

    def __init__(self, address: str) -> None:
        super().__init__(address, "refuses writes: fewer replicas than min-replicas-to-write (a failover?)")


def describe(exc: BaseException) -> str:
    """A loggable account of ``exc``: never the arguments of the command that failed.

    Connection-level errors (refused, reset, timed out, not the master) are
    raised by redis-py and the OS about sockets, never about data, so their
    text is kept: it names the address. Anything Redis answered is reduced to
    its class and error code; any other exception to its class.
    """
    name = type(exc).__name__
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)) and not isinstance(exc, redis.ResponseError):
        return f"{name}: {_PIPELINE_ANNOTATION.sub('', str(exc))}"
    if isinstance(exc, redis.RedisError):
        text = _PIPELINE_ANNOTATION.sub("", str(exc.args[0]) if exc.args else "")
        code = _ERROR_CODE.match(text)
        return f"{name} {code.group(0)}" if code else name
    return name
