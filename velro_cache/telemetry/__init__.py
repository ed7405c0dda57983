"""Statistics across worker processes: publish each process's, combine them into one view.

Every worker process counts for itself (``velro_cache.stats``, lock-free on an
L1 hit). A background thread of each process (``publisher``) copies its
snapshot into Redis every ``TELEMETRY_INTERVAL`` seconds, and once per minute
into a per-minute sample kept ``TELEMETRY_RETENTION`` minutes, so history
survives a worker's restart. Readers (Prometheus, ``velro_stats``, the admin
dashboard) ask ``deployment()`` for the combined view and ``history()`` for the
time series; both fall back to this process alone when Redis does not answer.
"""

from .combine import combine, minute_series
from .snapshot import process_snapshot, worker_id
from .store import Deployment, deployment, history

__all__ = ["Deployment", "combine", "deployment", "history", "minute_series", "process_snapshot", "worker_id"]
