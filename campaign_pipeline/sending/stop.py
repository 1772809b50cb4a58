"""Stopping a send: why it must stop, and how a terminated run stops without losing outcomes.

A pause or cancel (the campaign's status), the rejection guard, a lost lease or a terminated
run all stop a send the same way: no new batch is sent, the batches in flight answer and are
recorded, the rest stay `pending`.
"""

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from campaign_pipeline.clock import as_utc

T = TypeVar("T")


class StopSignal:
    """Why sending must stop, set once by whoever notices first (thread-safe)."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        """Ask the loop to stop; the first reason given is kept."""
        with self._lock:
            self._reason = self._reason or reason

    @property
    def reason(self) -> str | None:
        """The reason given, or None while sending may go on."""
        return self._reason


def run_until_interrupted(
    send: Callable[[], T], stop: StopSignal, interrupts: tuple[type[BaseException], ...]
) -> T:
    """Run `send` on a thread; an interrupt of this (main) thread stops it the graceful way.

    Dagster stops a step by raising its interrupt wherever the step's main thread is. Sending
    elsewhere lets the interrupt land here: the send is told to stop, the batches in flight
    answer and are recorded, and only then is the interrupt raised again.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="campaign-send") as runner:
        sending: Future[T] = runner.submit(send)
        try:
            return _wait(sending)
        except interrupts:
            stop.stop("terminated")
            while True:
                try:
                    _wait(sending)
                    break
                except interrupts:  # a second interrupt: still let the batches in flight land
                    continue
                except Exception:  # the send's own error matters less than the interrupt
                    break
            raise


def _wait(sending: "Future[T]") -> T:
    """The send's result, waking twice a second so that a signal handler runs promptly.

    A handler installed with SA_RESTART (polars installs one for SIGINT) would otherwise not
    run until an untimed wait ended.
    """
    while True:
        try:
            return sending.result(timeout=0.5)
        except TimeoutError:
            continue


def describe_stop(campaign: Mapping[str, Any], status: str, pending: int) -> str:
    """Who stopped the campaign (`paused` or `cancelled`) and when, for metadata and tags."""
    actor = campaign.get(f"{status}_by") or "someone"
    moment = as_utc(campaign.get(f"{status}_at"))
    when = f" at {moment:%Y-%m-%d %H:%M:%S} UTC" if moment else ""
    now = "" if campaign.get("status") == status else f", {campaign.get('status')!r} since"
    return f"{status} by {actor}{when}{now}; {pending} recipients stay pending"
