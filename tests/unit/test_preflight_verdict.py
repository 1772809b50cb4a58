"""The preflight guard's verdict: one line naming the invalid fraction and the top reasons.

The guards through the job are in `tests/integration/test_guards.py`.
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
