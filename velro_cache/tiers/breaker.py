"""A circuit breaker for L2, so a dead or slow Redis costs a view nothing.

Closed: calls go through; ``failure_threshold`` consecutive failures (errors
or timeouts) open it. Open: calls are refused at once (no socket wait) until
the reset timeout passes; the timeout doubles on every failed probe up to
``max_reset_timeout`` so a long outage is not hammered. Half-open: exactly one
caller probes; success closes the breaker, failure reopens it.

Listeners hear every transition; the backend uses that to drop L1 when L2 is
lost and to replay the invalidations it could not deliver when L2 returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 0.5,
        max_reset_timeout: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.max_reset_timeout = max_reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self._failures = 0
        self._current_timeout = reset_timeout
        self._open_until = 0.0
        self._probe_in_flight = False
        self.times_opened = 0
        self.rejected = 0
        self._listeners: list[Callable[[str, str], None]] = []

    def add_listener(self, listener: Callable[[str, str], None]) -> None:
        """``listener(old_state, new_state)``, called outside the breaker's lock."""
        self._listeners.append(listener)

    def allow(self) -> bool:
        """May a call go to L2 now? In half-open state only the probe may."""
        if self.state == CLOSED:  # the common case, read without the lock
            return True
        with self._lock:
            if self.state == OPEN and self._clock() >= self._open_until:
                self._probe_in_flight = False
                self.state = HALF_OPEN
            if self.state == HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            if self.state == CLOSED:
                return True
            self.rejected += 1
            return False

    def record_success(self) -> None:
        if self.state == CLOSED and not self._failures:
            return
        transition = None
        with self._lock:
            self._failures = 0
            if self.state != CLOSED:
                transition = (self.state, CLOSED)
                self.state = CLOSED
                self._probe_in_flight = False
                self._current_timeout = self.reset_timeout
        if transition:
            self._notify(*transition)

    def record_failure(self) -> None:
        transition = None
        with self._lock:
            self._failures += 1
            if self.state == HALF_OPEN:
                self._current_timeout = min(self._current_timeout * 2, self.max_reset_timeout)
                transition = self._open()
            elif self.state == CLOSED and self._failures >= self.failure_threshold:
                transition = self._open()
        if transition:
            self._notify(*transition)

    def force_open(self) -> None:
        """Open now (e.g. the coherence channel saw Redis go away)."""
        with self._lock:
            if self.state == HALF_OPEN:  # the probe failed after all: back off as for any failed probe
                self._current_timeout = min(self._current_timeout * 2, self.max_reset_timeout)
            transition = self._open() if self.state != OPEN else None
        if transition:
            self._notify(*transition)

    def _open(self) -> tuple[str, str]:
        old = self.state
        self.state = OPEN
        self._probe_in_flight = False
        self._open_until = self._clock() + self._current_timeout
        self.times_opened += 1
        return old, OPEN

    def _notify(self, old: str, new: str) -> None:
        for listener in self._listeners:
            listener(old, new)

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state,
            "consecutive_failures": self._failures,
            "times_opened": self.times_opened,
            "rejected_calls": self.rejected,
            "reset_timeout": self._current_timeout,
        }
