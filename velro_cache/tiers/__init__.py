"""The storage tiers: `memory` (L1, in-process) and `redis` (L2)."""
