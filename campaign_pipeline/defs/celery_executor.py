"""Dagster's Celery executor with a limit on a run's steps at once, and the workers' app.

Imported only under `CAMPAIGN_EXECUTOR=celery` (dagster-celery is the `celery` extra). The
run's process (the orchestrator) and every worker build the same Celery app from the same
environment, so the broker's URL, which may hold a password, never enters the run config:

    celery -A campaign_pipeline.defs.celery_executor worker --prefetch-multiplier=1 -n w1@%h
"""

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
from celery.exceptions import TaskRevokedError
from dagster_celery import celery_executor
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

# dagster-celery's own submission of one step (0.29.x, pinned with the family): the loop takes
# it as a parameter, which is how the limit below is added without copying the loop.
from dagster_celery.executor import _submit_task as submit_step_task
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task
from kombu.exceptions import OperationalError

from campaign_pipeline.errors import BrokerUnreachable
from campaign_pipeline.settings import celery_backend_url, celery_broker_url

# Settings of the app on both sides (Celery's lowercase names).
CELERY_SETTINGS: dict[str, Any] = {
    # A step's task is acknowledged when it ends, not when a worker takes it, so a worker that
    # dies mid-shard (SIGKILL, a lost machine) hands it back to the broker for another worker.
    # The send step picks up the shard's recipients still pending; a FIFO queue's
    # deduplication ids drop what the dead worker had sent but not recorded.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # One task at a time per worker process: a shard is seconds of work, never worth queueing
    # behind another on a busy worker while an idle one waits.
    "worker_prefetch_multiplier": 1,
}
# Connection attempts before a run gives up on the broker (Celery's own default is 100).
BROKER_CONNECT_ATTEMPTS = 3


def app_args(broker: str | None = None, backend: str | None = None) -> dict[str, Any]:
    """The Celery app's arguments: broker and backend from the environment unless given."""
    executor = CeleryExecutor.for_cli(
        broker=broker or celery_broker_url(),
        backend=backend or celery_backend_url(),
        config_source=CELERY_SETTINGS,
    )
    return executor.app_args()


class _HeldTask:
    """A step's Celery task, submitted once fewer than the run's limit are in flight.

    The loop polls `ready()` every second; a held step is submitted from there, and a step
    revoked (the run terminated) before it was submitted reports itself revoked.
    """

    def __init__(self, gate: "_StepGate", submit: Callable[[], Any]) -> None:
        self._gate = gate
        self._submit = submit
        self._result: Any = None
        self._finished = False
        self._revoked = False

    def start_if_room(self) -> None:
        if self._result is None and not self._revoked and self._gate.has_room():
            self._gate.in_flight += 1
            self._result = self._submit()

    def ready(self) -> bool:
        if self._result is None:
            if self._revoked:
                return True
            self.start_if_room()
            if self._result is None:
                return False
        if not self._result.ready():
            return False
        if not self._finished:
            self._finished = True
            self._gate.in_flight -= 1
        return True

    def get(self) -> Any:
        if self._result is None:
            raise TaskRevokedError("the run stopped before this step was submitted")
        return self._result.get()

    def revoke(self) -> None:
        self._revoked = True
        if self._result is not None:
            self._result.revoke()


class _StepGate:
    """Counts a run's tasks in flight against `limit` (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0

    def has_room(self) -> bool:
        return self.limit is None or self.in_flight < self.limit

    def submit(self, *args: Any) -> _HeldTask:
        held = _HeldTask(self, lambda: _submit_quietly(*args))
        held.start_if_room()
        return held


def _submit_quietly(*args: Any) -> Any:
    """Submit a step; dagster-celery registers its task again for each, which Celery notes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*The new callable was not registered")
        return submit_step_task(*args)


class LimitedCeleryExecutor(dg.Executor):
    """dagster-celery's executor, with at most `max_concurrent` of a run's steps at once."""

    def __init__(self, celery: CeleryExecutor, max_concurrent: int | None) -> None:
        self._celery = celery
        self.max_concurrent = max_concurrent

    @property
    def retries(self) -> Any:
        """The retry mode of dagster-celery's executor (the run's `retries` config)."""
        return self._celery.retries

    def app_args(self) -> dict[str, Any]:
        """The Celery app's arguments, which the execution loop reads from the executor."""
        return self._celery.app_args()

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[dg.DagsterEvent]:
        """Check the broker answers, then run the steps on the workers, `max_concurrent` at once.

        Raises:
            BrokerUnreachable: the broker refused or did not answer; nothing was submitted.
        """
        check_broker(self.app_args())
        gate = _StepGate(self.max_concurrent)
        return core_celery_execution_loop(
            plan_context, execution_plan, step_execution_fn=gate.submit
        )


def check_broker(args: dict[str, Any]) -> None:
    """Connect to the broker once, so that a broker that is down fails the run in one line.

    Raises:
        BrokerUnreachable: with the broker's URL, its password masked.
    """
    app = make_app(args)
    with app.connection_for_write() as connection:
        try:
            connection.ensure_connection(
                max_retries=BROKER_CONNECT_ATTEMPTS - 1, interval_start=0.5, interval_step=0.5
            )
        except OperationalError as error:
            raise BrokerUnreachable(
                f"cannot reach the Celery broker at {connection.as_uri()}: {error}; is RabbitMQ "
                "running there, and is CAMPAIGN_CELERY_BROKER right? Nothing was sent"
            ) from None


@dg.executor(
    name="celery",
    config_schema={
        **CELERY_CONFIG,
        "max_concurrent": dg.Field(
            dg.Noneable(int),
            is_required=False,
            default_value=None,
            description="Steps of one run on the workers at once (CAMPAIGN_SEND_PROCESSES); "
            "unset: as many as the workers take.",
        ),
    },
    requirements=dg.multiple_process_executor_requirements(),
)
def campaign_celery_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Run each step as a Celery task on the workers; broker and backend from the environment.

    `broker` and `backend` in the run config win over CAMPAIGN_CELERY_BROKER and
    CAMPAIGN_CELERY_BACKEND (keep a password out of it: the run config is shown in the UI).
    """
    config = dict(init_context.executor_config)
    limit = config.pop("max_concurrent", None)
    max_concurrent = int(str(limit)) if limit is not None else None
    config["broker"] = config.get("broker") or celery_broker_url()
    config["backend"] = config.get("backend") or celery_backend_url()
    overrides: Any = config.get("config_source") or {}
    config["config_source"] = {**CELERY_SETTINGS, **overrides}
    celery: Any = celery_executor.executor_creation_fn(  # type: ignore[misc]
        init_context._replace(executor_config=config)
    )
    return LimitedCeleryExecutor(celery, max_concurrent)


# The workers' app (`celery -A campaign_pipeline.defs.celery_executor worker`), built from the same
# environment as the run's, with dagster-celery's step task.
app = make_app(app_args())
execute_plan = create_task(app)
