"""Settings read from the spec's environment variables, with their documented defaults."""

import math
import os

from campaign_pipeline.errors import SettingsError
from campaign_pipeline.frequency_caps import FrequencyCap, parse_frequency_cap


def positive_int(variable: str, default: int) -> int:
    """The variable as a positive whole number, `default` when unset or blank."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{variable} must be a whole number, not {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{variable} must be positive, not {value}")
    return value


def positive_number(variable: str) -> float | None:
    """The variable as a positive, finite number, None when unset or blank."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{variable} must be a number, not {raw!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"{variable} must be a positive number, not {raw!r}")
    return value


def one_of(variable: str, choices: tuple[str, ...]) -> str | None:
    """The variable as one of `choices`, None when unset or blank."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return None
    if raw not in choices:
        raise SettingsError(f"{variable} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


def campaign_batch_size() -> int:
    """CAMPAIGN_BATCH_SIZE: campaigns the sensor starts per tick (default 10)."""
    return positive_int("CAMPAIGN_BATCH_SIZE", 10)


def campaign_processing_interval_seconds() -> int:
    """CAMPAIGN_PROCESSING_INTERVAL (ms, default 30000) as the sensor's interval in seconds."""
    return max(1, round(positive_int("CAMPAIGN_PROCESSING_INTERVAL", 30_000) / 1000))


def campaign_send_processes() -> int:
    """CAMPAIGN_SEND_PROCESSES: send steps of one run at once (default 1: all in one process)."""
    return positive_int("CAMPAIGN_SEND_PROCESSES", 1)


def background_job_interval_seconds() -> int:
    """BACKGROUND_JOB_INTERVAL (ms, default 60000) as the recovery sensor's interval in seconds."""
    return max(1, round(positive_int("BACKGROUND_JOB_INTERVAL", 60_000) / 1000))


def campaign_max_resume_attempts() -> int:
    """CAMPAIGN_MAX_RESUME_ATTEMPTS: resume runs of a stalled campaign before it fails (3)."""
    return positive_int("CAMPAIGN_MAX_RESUME_ATTEMPTS", 3)


def campaign_max_messages_per_second() -> float | None:
    """CAMPAIGN_MAX_MESSAGES_PER_SECOND: a campaign's rate cap (unset: none)."""
    return positive_number("CAMPAIGN_MAX_MESSAGES_PER_SECOND")


def campaign_max_invalid_fraction() -> float:
    """CAMPAIGN_MAX_INVALID_FRACTION: invalid recipients a campaign may have (0.5; 1 disables)."""
    raw = os.environ.get("CAMPAIGN_MAX_INVALID_FRACTION", "").strip()
    if not raw:
        return 0.5
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(
            f"CAMPAIGN_MAX_INVALID_FRACTION must be a number from 0 to 1, not {raw!r}"
        ) from None
    if not 0 <= value <= 1:
        raise SettingsError(f"CAMPAIGN_MAX_INVALID_FRACTION must be from 0 to 1, not {value}")
    return value


def campaign_max_rejected() -> int:
    """CAMPAIGN_MAX_REJECTED: entries SQS may refuse for good in one send step (default 100)."""
    return positive_int("CAMPAIGN_MAX_REJECTED", 100)


# Where a run's steps execute. Kubernetes (dagster-k8s's k8s_job_executor) is the next one;
# the README's Scale out says how it would be configured.
EXECUTORS = ("in_process", "multiprocess", "celery")
DEFAULT_CELERY_BROKER = "pyamqp://guest@127.0.0.1:5672//"
DEFAULT_CELERY_BACKEND = "rpc://"


def campaign_executor() -> str | None:
    """CAMPAIGN_EXECUTOR: where a run's steps execute (unset: by CAMPAIGN_SEND_PROCESSES)."""
    raw = os.environ.get("CAMPAIGN_EXECUTOR", "").strip()
    if raw == "k8s":
        raise SettingsError(
            "CAMPAIGN_EXECUTOR=k8s is not built in yet (see the README's Scale out); "
            f"use one of {', '.join(EXECUTORS)}"
        )
    return one_of("CAMPAIGN_EXECUTOR", EXECUTORS)


def celery_broker_url() -> str:
    """CAMPAIGN_CELERY_BROKER: the Celery broker's URL (default RabbitMQ on this machine)."""
    return os.environ.get("CAMPAIGN_CELERY_BROKER", "").strip() or DEFAULT_CELERY_BROKER


def celery_backend_url() -> str:
    """CAMPAIGN_CELERY_BACKEND: Celery's result backend (default `rpc://`, over the broker)."""
    return os.environ.get("CAMPAIGN_CELERY_BACKEND", "").strip() or DEFAULT_CELERY_BACKEND


def campaign_frequency_cap() -> FrequencyCap | None:
    """CAMPAIGN_FREQUENCY_CAP: marketing messages per person and organization (unset: no cap)."""
    raw = os.environ.get("CAMPAIGN_FREQUENCY_CAP", "").strip()
    if not raw:
        return None
    try:
        return parse_frequency_cap(raw)
    except ValueError as error:
        raise SettingsError(f"CAMPAIGN_FREQUENCY_CAP: {error}") from None
