"""Every exception velro-cache raises, in one place.

Each keeps the built-in or Django base class that callers would already catch
for that kind of failure (``TypeError`` for a value that cannot be stored,
``LookupError`` for an unknown registration, Django's ``NotSupportedError`` and
``DatabaseError`` for view problems, ``redis.ConnectionError`` for a Redis
that cannot take this cache's writes), so ``except`` clauses written against
Django's own backends keep working.
"""

from __future__ import annotations

from typing import Any

import redis
from django.db.utils import DatabaseError, NotSupportedError


class AlreadyRegistered(Exception):
    """A model, policy or view was registered twice (invalidation, authorization, L3 registries)."""


class NotRegistered(LookupError):
    """A model, policy or view that was never registered was looked up or unregistered."""


class CorruptEntry(Exception):
    """Stored bytes that this serializer did not write, or that were damaged: read as a miss."""


class UnverifiedEntry(CorruptEntry):
    """Stored bytes whose MAC does not verify with any of this deployment's keys.

    A miss that is never deleted for that reason: the bytes may be another
    deployment's, or the other side of a key rotation's, and deleting them
    would make the two delete each other's entries.
    """


class UnserializableValue(TypeError):
    """A value that cannot be stored with the configured encodings."""


class L2Unavailable(Exception):
    """L2 was skipped (breaker open) or failed; callers fall back, never raise to a view."""


# A server that answers as a replica (a READONLY reply, or the role seen when
# a connection opens; NOREPLICAS for TooFewReplicas) is not where this cache's
# writes can go. These are ``redis.ConnectionError`` on purpose, so every
# caller that already treats an unreachable Redis as an outage (the breaker,
# held invalidations, the coherence listener's reconnect, Sentinel's
# rediscovery of the master) does the same here, instead of taking the answer
# for a refusal of one command and carrying on against the wrong server.
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


class L2Required(NotImplementedError):
    """A django-redis style call that only Redis can answer (``lock``, ``get_client``) on an L1-only cache."""


class NotPlannable(Exception):
    """A value whose L1 copy cannot be planned ahead; L1 keeps its encoded bytes instead."""


class UnsupportedDatabase(NotSupportedError):
    """A database that has neither materialized views nor velro-cache's emulation of them."""


class ReadOnlyViewError(NotSupportedError):
    """A write was attempted on a model over a materialized view."""


class ViewNotFound(DatabaseError):
    """The named materialized view does not exist in that database (migrations not applied?)."""


class RefreshFailed(RuntimeError):
    """A view refresh failed; it was recorded, and ``result`` (a ``RefreshResult``) carries the error."""

    def __init__(self, result: Any) -> None:
        super().__init__(result.describe())
        self.result = result
