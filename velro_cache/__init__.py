"""velro-cache: a multi-tier cache for Django (L1 in-process, L2 Redis, L3 materialized views)."""

__version__ = "0.1.0"
