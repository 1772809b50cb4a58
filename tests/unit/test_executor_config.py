"""CAMPAIGN_EXECUTOR: the run config each executor gets, and bad values in one line.

The code location under Celery and the S3 IO manager are in
`tests/integration/test_executor_config.py`.
"""

import pytest

from campaign_pipeline.defs.executor import send_steps_at_once
from campaign_pipeline.defs.jobs import campaign_run_config
from campaign_pipeline.errors import SettingsError
from campaign_pipeline.settings import campaign_executor

CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"


@pytest.mark.parametrize(
    ("executor", "processes", "execution"),
    [
        (None, 1, {"in_process": {}}),
        ("in_process", 3, {"in_process": {}}),
        ("celery", 1, {"max_concurrent": 1}),
        ("celery", 4, {"max_concurrent": 4}),
    ],
)
def test_run_config_matches_the_executor(
    executor: str | None, processes: int, execution: dict
) -> None:
    """Each executor gets its own execution block; Celery's holds no broker or backend."""
    config = campaign_run_config(CAMPAIGN_ID, processes, executor=executor)
    assert config["execution"] == {"config": execution}
    assert send_steps_at_once(config, shards=8) == (1 if executor != "celery" else processes)


def test_multiprocess_keeps_send_processes_even_at_one() -> None:
    """CAMPAIGN_EXECUTOR=multiprocess forks step processes even for one at a time."""
    config = campaign_run_config(CAMPAIGN_ID, 1, executor="multiprocess")
    assert config["execution"]["config"]["multiprocess"]["max_concurrent"] == 1


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [("spark", "must be one of in_process, multiprocess, celery, not 'spark'"), ("k8s", "k8s")],
)
def test_bad_executor_is_refused_in_one_line(
    raw: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown executor (or k8s, not built yet) is one SettingsError line naming it."""
    monkeypatch.setenv("CAMPAIGN_EXECUTOR", raw)
    with pytest.raises(SettingsError, match=fragment) as raised:
        campaign_executor()
    assert "\n" not in str(raised.value)
