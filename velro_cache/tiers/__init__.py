"""The storage tiers behind ``TieredCache``, one concern a module.

- L1, in-process: ``memory`` (the byte-bounded store), ``eviction`` (its
  W-TinyLFU admission and eviction), ``sketch`` (the frequency sketch),
  ``copying`` (an independent copy per hit, planned once at ``set``).
- L2, Redis: ``redis`` (one Redis), ``cluster`` (Redis Cluster), ``breaker``
  (the circuit breaker), ``coherence`` (dropping other processes' L1 copies).
- ``process``: what one cache shares across the threads of a process.
"""
