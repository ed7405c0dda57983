"""What a log line may say about an error coming back from Redis.

(What a Redis error means for the cache, a replica that is not the master,
is ``velro_cache.exceptions.NotTheMaster``, with the other exceptions.)

redis-py puts command arguments into some error messages (a failed pipeline
command is reported as ``Command # 1 (SET key <value> ...) of pipeline caused
error``), so the text of an exception can hold a cached value. Log lines use
``describe`` instead, which keeps what an operator needs (the class, Redis's
error code, where it connects) and never the arguments.
"""

from __future__ import annotations

import re

import redis

# The text redis-py prefixes to a failed pipeline command, arguments included.
_PIPELINE_ANNOTATION = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)
# Redis's own error codes: an upper-case word first (WRONGTYPE, OOM, NOSCRIPT).
_ERROR_CODE = re.compile(r"^[A-Z][A-Z_-]{1,30}\b")


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
