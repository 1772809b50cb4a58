"""A run's lease on its campaign: taking it (or over), keeping it while sending, letting it go.

The lease is a run id and an expiry on the campaign's row. A run claims it, renews it every
third of its length while sending, and releases it when done; a crashed run's lease runs out,
and a run Dagster knows has finished can be taken over at once. Pausing the campaign of a
terminated run is one rule here, used by the send op and by both sensors that notice.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa

from campaign_pipeline.clock import as_utc
from campaign_pipeline.errors import CampaignBusy
from campaign_pipeline.lifecycle import PAUSABLE_STATUSES, STOPPED_STATUSES
from campaign_pipeline.sending.stop import StopSignal
from campaign_pipeline.store.database import CampaignDatabase
from campaign_pipeline.store.records import Claim
from campaign_pipeline.text import database_reason

# How often a sending run reads its campaign's status: a pause stops it within about this
# long plus the batches in flight.
STATUS_POLL_SECONDS = 1.0


class LeaseStore(Protocol):
    """The claims a lease needs (`store.claims.Claims`)."""

    def claim(
        self,
        campaign_id: str,
        run_id: str,
        lease_seconds: float,
        take_over_from: str | None = None,
        send_now: bool = False,
    ) -> Claim:
        """Take the campaign for the run."""
        ...

    def renew(self, campaign_id: str, run_id: str, lease_seconds: float) -> bool:
        """Extend the run's lease; False if it no longer holds it."""
        ...

    def status(self, campaign_id: str) -> str | None:
        """The campaign's status now."""
        ...

    def release(self, campaign_id: str, run_id: str) -> None:
        """Give up the run's lease."""
        ...

    def hold_back(self, campaign_id: str, run_id: str, reason: str, actor: str) -> bool:
        """Pause the campaign the run holds, with why."""
        ...


def acquire(
    claims: LeaseStore,
    campaign_id: str,
    run_id: str,
    lease_seconds: float,
    *,
    send_now: bool = False,
    finished_status: Callable[[str], str | None] = lambda run_id: None,
) -> tuple[Claim, str | None]:
    """Claim the campaign, taking over the lease of a run known to have finished.

    `finished_status(run_id)` names the status of a run that has finished, None for one still
    going or unknown: a run killed outright (SIGKILL, a lost machine) never releases its lease,
    but once Dagster has marked it finished nobody can be sending for it. A holder this
    instance does not know may well be alive: its lease is respected until it expires.
    Returns the claim and, after a takeover, one line saying from whom.

    Raises:
        CampaignNotFound, CampaignNotProcessable (CampaignStopped, CampaignScheduled,
        CampaignBusy): the campaign cannot be taken now.
    """
    try:
        return claims.claim(campaign_id, run_id, lease_seconds, send_now=send_now), None
    except CampaignBusy as busy:
        status = finished_status(busy.lease_run_id)
        if status is None:
            raise
        claim = claims.claim(
            campaign_id, run_id, lease_seconds, take_over_from=busy.lease_run_id, send_now=send_now
        )
        return claim, (
            f"Took campaign {campaign_id} over from run {busy.lease_run_id}, which is "
            f"{status}, before its lease expired"
        )


@dataclass(frozen=True)
class Lease:
    """The lease `run_id` holds on a campaign, `seconds` long from its last renewal."""

    claims: LeaseStore
    campaign_id: str
    run_id: str
    seconds: float

    def renew(self) -> bool:
        """Extend the lease by `seconds` from now; False if the run no longer holds it."""
        return self.claims.renew(self.campaign_id, self.run_id, self.seconds)

    def campaign_status(self) -> str | None:
        """The campaign's status now (a pause or cancel stops the send)."""
        return self.claims.status(self.campaign_id)

    def release(self) -> None:
        """Give up the lease, so a rerun need not wait for it to expire."""
        self.claims.release(self.campaign_id, self.run_id)

    def release_if_reachable(self) -> str | None:
        """Release; when the database is what failed, say so: the lease runs out instead."""
        try:
            self.release()
        except sa.exc.SQLAlchemyError as error:
            return (
                f"could not release campaign {self.campaign_id}'s lease "
                f"({database_reason(error)}); it runs out within {self.seconds:.0f} s"
            )
        return None

    def hold_back(self, reason: str, actor: str) -> bool:
        """Pause the campaign with `reason` as its last error, and let go (see `Claims`)."""
        return self.claims.hold_back(self.campaign_id, self.run_id, reason, actor)

    def watch(self, stop: StopSignal) -> "LeaseWatch":
        """Renew the lease and read the campaign's status while sending (a context manager)."""
        return LeaseWatch(self, stop)


class LeaseWatch:
    """Reads the campaign's status every second and renews the run's lease on a timer.

    A status of `paused` or `cancelled` sets the stop signal. Outcome writes renew the lease
    too, but a send stuck in SQS retries can go minutes without one. Renewing every third of
    the lease keeps a live run's claim however slow SQS is, so the lease can be short and a
    crashed run's campaign is free again soon: within SQS's five-minute FIFO deduplication
    window, which then drops whatever the crashed run sent but never recorded. The run stops
    sending once its last confirmed renewal is two thirds of a lease old (the database
    unreachable, say): another run could take over when the lease runs out.
    """

    def __init__(self, lease: "Lease", stop: StopSignal) -> None:
        self._renew = lease.renew
        self._status = lease.campaign_status
        self._lease_seconds = lease.seconds
        self._stop_signal = stop
        self._lost = False
        self._confirmed_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="campaign-watch", daemon=True)

    def __enter__(self) -> "LeaseWatch":
        # At once: the claim may be a while ago (another step, another process), and a pause
        # may have come since.
        self._confirm()
        self._check_status()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def held(self) -> bool:
        """The lease is ours, confirmed recently enough to send on."""
        age = time.monotonic() - self._confirmed_at
        return not self._lost and age < self._lease_seconds * 2 / 3

    def lost(self) -> None:
        """An outcome write found the lease gone."""
        self._lost = True

    def _confirm(self) -> None:
        started = time.monotonic()
        try:
            renewed = self._renew()
        except Exception:  # the database unreachable: retried next time; `held` turns False
            return
        if renewed:
            self._confirmed_at = started
        else:
            self._lost = True

    def _check_status(self) -> None:
        try:
            status = self._status()
        except Exception:  # unreachable: the lease renewal notices if it lasts
            return
        if status in STOPPED_STATUSES:
            self._stop_signal.stop(status)

    def _loop(self) -> None:
        renew_every = self._lease_seconds / 3
        poll_every = min(STATUS_POLL_SECONDS, renew_every)
        renewed_at = time.monotonic()
        while not self._stop.wait(poll_every) and not self._lost:
            self._check_status()
            if time.monotonic() - renewed_at >= renew_every:
                renewed_at = time.monotonic()
                self._confirm()


def pause_for_termination(
    store: CampaignDatabase, campaign_id: str, run_id: str, ended_at: datetime | None
) -> tuple[bool, str]:
    """Pause the campaign of a terminated run, so nothing starts it again; say what was done.

    Left alone: a campaign resumed after the run ended (an operator wants it to go on), one
    already stopped or finished. Returns whether it was paused, and one line.
    """
    campaign = store.campaigns.get(campaign_id)
    if campaign is None:
        return False, f"campaign {campaign_id} of run {run_id} does not exist"
    resumed_at = as_utc(campaign["resumed_at"])
    if resumed_at is not None and (ended_at is None or resumed_at > ended_at):
        return False, f"campaign {campaign_id} was resumed after run {run_id} ended; left running"
    if campaign["status"] not in PAUSABLE_STATUSES:
        return False, f"campaign {campaign_id} is {campaign['status']!r}; nothing to pause"
    result = store.control.apply(campaign_id, "pause", f"Dagster: run {run_id} was terminated")
    return result.changed, result.message
