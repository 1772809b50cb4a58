"""What the API remembers for a second: the queue's status and each campaign's runs.

Both answer many callers polling at once with one request to SQS or Dagster a second, and keep
nothing that is not in those services: any number of servers can stand behind one load balancer.
"""

import threading
import time
from collections import OrderedDict

from campaign_pipeline.errors import DagsterError
from campaign_pipeline.services.dagster_client import DagsterWebserver
from campaign_pipeline.services.sqs_health import SqsStatus, sqs_status_from_environment
from campaign_pipeline.services.status import RunSummary

# sqs-status and health ask SQS at most this often, however many callers poll them.
SQS_STATUS_MAX_AGE_SECONDS = 1.0
# A campaign's runs, likewise, for this many campaigns.
RUNS_MAX_AGE_SECONDS = 1.0
RUNS_REMEMBERED = 1_000


class RecentSqsStatus:
    """The queue's status, asked of SQS at most once per `max_age` seconds.

    A check builds its own short-lived boto3 client (costly in CPU: docs/benchmarks.md), and SQS
    bills and throttles GetQueueAttributes: fifty monitors polling at once cost one call a
    second. Callers arriving while a check runs wait for its answer.
    """

    def __init__(self, max_age: float = SQS_STATUS_MAX_AGE_SECONDS) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._status: SqsStatus | None = None
        self._checked_at = 0.0

    def get(self) -> SqsStatus:
        """The latest status, checked again if it is older than `max_age`."""
        with self._lock:
            if self._status is None or time.monotonic() - self._checked_at > self.max_age:
                self._status = sqs_status_from_environment()
                self._checked_at = time.monotonic()
            return self._status


class RecentRuns:
    """Each campaign's runs, asked of Dagster at most once per `max_age` seconds.

    The webserver's GraphQL costs it tens of milliseconds of CPU a query; many callers polling
    one campaign cost one query a second. A run launched here is seen at once (`forget`).
    """

    def __init__(self, webserver: DagsterWebserver, max_age: float = RUNS_MAX_AGE_SECONDS) -> None:
        self.webserver = webserver
        self.max_age = max_age
        self._lock = threading.Lock()
        self._latest: OrderedDict[str, tuple[float, list[RunSummary], str | None]] = OrderedDict()
        self._fetching: dict[str, threading.Lock] = {}

    def get(self, campaign_id: str) -> tuple[list[RunSummary], str | None]:
        """The campaign's latest runs, and why they are missing when Dagster did not answer."""
        with self._lock:
            fetching = self._fetching.setdefault(campaign_id, threading.Lock())
        with fetching:
            with self._lock:
                latest = self._latest.get(campaign_id)
            if latest and time.monotonic() - latest[0] <= self.max_age:
                return latest[1], latest[2]
            try:
                runs, error = self.webserver.campaign_runs(campaign_id), None
            except DagsterError as problem:
                runs, error = [], str(problem)
            with self._lock:
                self._latest[campaign_id] = (time.monotonic(), runs, error)
                self._latest.move_to_end(campaign_id)
                while len(self._latest) > RUNS_REMEMBERED:
                    forgotten, _ = self._latest.popitem(last=False)
                    self._fetching.pop(forgotten, None)
            return runs, error

    def forget(self, campaign_id: str) -> None:
        """The next `get` asks Dagster (a run was just launched)."""
        with self._lock:
            self._latest.pop(campaign_id, None)
