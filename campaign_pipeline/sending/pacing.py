"""Pacing a campaign's sends to a rate cap: a token bucket counted in messages, free of Dagster.

The send loop asks the bucket before it hands out each batch (`Pacer.take`). Tokens are
messages and come in at the cap's rate; a batch takes all of its messages at once or waits
until it can, so batches of up to ten still go out whole. The bucket holds at most
`BURST_SECONDS` of the rate (at least one batch): after a stall (a chunk being read, outcome
writes catching up) the loop catches up by no more than that, so any 10-second window holds
at most 10.25 seconds' worth of messages (one batch more below 40 messages/s, where a batch
is more than a quarter of a second's worth). A smaller bucket would lose more of the rate to
every hiccup of the loop; a larger one would let a window run further over the cap.

A wait is cut into slices of at most `WAKE_SECONDS`, each followed by the caller's
`keep_going` check (the stop signal, the lease), so a paused run never sits out a long wait.
"""

import math
import time
from collections.abc import Callable

from campaign_pipeline.batching import MAX_BATCH_ENTRIES

# The bucket's capacity in seconds of the rate (a quarter of a second), never below a batch.
BURST_SECONDS = 0.25
# The longest a waiting batch sleeps before it checks again whether to keep going.
WAKE_SECONDS = 0.1
# Tokens short of a batch that count as there: a refill after sleeping exactly the time
# computed can fall short by a rounding error.
_ROUNDING = 1e-9


def check_rate(value: float, name: str) -> float:
    """`value` as a rate cap in messages per second.

    Raises:
        ValueError: it is not a positive, finite number (the message names `name`).
    """
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of messages per second, not {value}")
    return float(value)


def rate_per_step(cap: float | None, steps_at_once: int) -> float | None:
    """Each send step's share of a campaign's cap, with `steps_at_once` steps sending together.

    Equal shares keep the campaign under its cap whichever steps overlap; when fewer steps run
    at once than assumed (a shard finished early, steps waiting for a process), it sends below.
    """
    if cap is None:
        return None
    return cap / max(1, steps_at_once)


class Pacer:
    """A token bucket of messages: `rate` per second, holding at most `burst` of them.

    One per send loop (it is not thread-safe). It starts full. The clock (monotonic seconds)
    and the sleep are injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = check_rate(rate, "the rate")
        self.burst = max(MAX_BATCH_ENTRIES, rate * BURST_SECONDS) if burst is None else burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        return self._tokens

    def take(self, messages: int, keep_going: Callable[[], bool] = lambda: True) -> bool:
        """Wait until `messages` tokens are there and take them together.

        Returns False, taking nothing, as soon as `keep_going` says no (it is asked before
        every slice of the wait, at most `WAKE_SECONDS` apart).

        Raises:
            ValueError: more messages than the bucket can ever hold.
        """
        if messages > self.burst:
            raise ValueError(f"{messages} messages can never fit a bucket of {self.burst:g}")
        while self._refill() < messages - _ROUNDING:
            if not keep_going():
                return False
            self._sleep(min((messages - self._tokens) / self.rate, WAKE_SECONDS))
        self._tokens -= messages
        return True
