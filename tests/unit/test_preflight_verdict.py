"""The guards: the preflight count before a campaign's first send, the rejection bound while
it sends.

The whole job (`execute_in_process`) on SQLite and PostgreSQL with moto's SQS server over HTTP;
the rejection guard through the fault proxy's `Failed` entries (moto almost never reports one).
Assertions read the campaign row, the recipients and the queue.
"""

from collections import Counter

from campaign_pipeline.sending.guards import PreflightCount

NO_PLUS = "phone number must start with '+' (E.164)"


def test_the_verdict_names_the_fraction_and_the_top_reasons() -> None:
    """82% invalid with 50% allowed: one line with counts, percentage and reasons by count."""
    counted = PreflightCount(500, Counter({NO_PLUS: 400, "no value for placeholder {{city}}": 12}))
    assert counted.verdict(0.5) == (
        f"412 of 500 recipients (82%) are invalid: {NO_PLUS} 400, "
        "no value for placeholder {{city}} 12 (at most 50% may be)"
    )
    assert counted.verdict(0.9) is None
    assert counted.verdict(1.0) is None
    assert PreflightCount(0).verdict(0.0) is None
    sampled = PreflightCount(100, Counter({NO_PLUS: 90}), sampled_from=10_000)
    assert (sampled.verdict(0.5) or "").startswith("90 of a sample of 100 of 10000 recipients")
