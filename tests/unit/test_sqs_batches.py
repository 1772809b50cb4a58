"""The SQS batch queue without a server: retry decisions with botocore's Stubber (exact calls),
backoff, masking, partial answers, the client's retries and timeouts, fair-queue group ids and
their one-line errors.

Everything against moto's server over HTTP is in `tests/integration/test_sqs_queue.py`.
"""

import json
import random
import statistics

import pytest
from botocore.stub import Stubber
from dagster_aws.utils import ResourceWithBoto3Configuration

from campaign_pipeline.errors import IncompleteAnswer, SettingsError
from campaign_pipeline.privacy import mask_phone_numbers
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sqs import BatchResult, backoff_seconds, is_retryable
from tests.conftest import REGION

CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"


def messages(count: int, prefix: str = "a") -> tuple[list[str], list[str]]:
    """(ids, bodies) of `count` messages."""
    return [f"{prefix}{i}" for i in range(count)], [json.dumps({"n": i}) for i in range(count)]


def accepted(result: BatchResult) -> dict[str, str]:
    return dict(zip(result.accepted_ids, result.message_ids, strict=True))


def stubbed_queue(**fields: object) -> tuple[SqsQueue, Stubber]:
    queue = SqsQueue(
        queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/q",
        region_name=REGION,
        retry_base_seconds=0,
        **fields,
    )
    return queue, Stubber(queue.client)


def batch_request(ids: list[str]) -> dict:
    return {
        "QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
        "Entries": [{"Id": i, "MessageBody": json.dumps({"n": int(i[1:])})} for i in ids],
    }


# SQS's throttling codes, written out here rather than read from the product: dropping one
# there must fail this test.
THROTTLING_CODES = (
    "RequestThrottled",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "KMS.ThrottlingException",
)


@pytest.mark.parametrize("code", THROTTLING_CODES)
def test_throttling_is_retried_although_sqs_calls_it_a_sender_fault(code: str) -> None:
    assert is_retryable({"SenderFault": True, "Code": code})


def test_server_faults_are_retried_and_other_sender_faults_are_final() -> None:
    assert is_retryable({"SenderFault": False, "Code": "InternalError"})
    assert is_retryable({"SenderFault": False, "Code": "ServiceUnavailable"})
    for code in ("InvalidMessageContents", "InvalidParameterValue", "AccessDenied"):
        assert not is_retryable({"SenderFault": True, "Code": code})


@pytest.mark.parametrize("code", THROTTLING_CODES)
def test_a_throttled_entry_is_sent_again_and_queued(code: str) -> None:
    queue, stubber = stubbed_queue()
    failed = {"Id": "a0", "SenderFault": True, "Code": code, "Message": "slow down"}
    stubber.add_response(
        "send_message_batch", {"Successful": [], "Failed": [failed]}, batch_request(["a0"])
    )
    stubber.add_response(
        "send_message_batch",
        {"Successful": [{"Id": "a0", "MessageId": "m0", "MD5OfMessageBody": "x"}], "Failed": []},
        batch_request(["a0"]),
    )
    with stubber:
        result = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(1))
    stubber.assert_no_pending_responses()
    assert accepted(result) == {"a0": "m0"} and not result.rejected


def test_backoff_grows_exponentially_to_the_cap_with_full_jitter() -> None:
    """Each attempt draws uniformly from [0, min(cap, base * 2**attempt)] (AWS's full jitter)."""
    random.seed(7)
    base, cap, draws = 0.1, 2.0, 4000
    for attempt in range(8):
        bound = min(cap, base * 2**attempt)
        values = [backoff_seconds(attempt, base, cap) for _ in range(draws)]
        assert all(0 <= value <= bound for value in values), attempt
        # Uniform on [0, bound]: the extremes are reached, the mean is half the bound.
        assert max(values) > 0.98 * bound, attempt
        assert min(values) < 0.02 * bound, attempt
        assert abs(statistics.fmean(values) - bound / 2) < 0.03 * bound, attempt
        assert len(set(values)) > 0.99 * draws, attempt  # jittered, not a fixed delay


def test_a_rejected_entrys_message_is_kept_with_phone_numbers_masked() -> None:
    """SQS's message may quote the refused value; what reaches failure_reason is masked."""
    queue, stubber = stubbed_queue()
    failed = {
        "Id": "a0",
        "SenderFault": True,
        "Code": "InvalidParameterValue",
        "Message": "Value +14155550123 for parameter to is invalid",
    }
    stubber.add_response(
        "send_message_batch", {"Successful": [], "Failed": [failed]}, batch_request(["a0"])
    )
    with stubber:
        result = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(1))
    assert result.rejected == [
        ("a0", "InvalidParameterValue", "Value ***23 for parameter to is invalid")
    ]


def test_an_entry_sqs_leaves_out_of_its_answer_stays_pending_and_the_batch_says_so() -> None:
    """A 200 naming an entry neither Successful nor Failed: it may be queued or not."""
    queue, stubber = stubbed_queue()
    stubber.add_response(
        "send_message_batch",
        {
            "Successful": [{"Id": "a0", "MessageId": "m0", "MD5OfMessageBody": "x"}],
            "Failed": [{"Id": "a2", "SenderFault": False, "Code": "InternalError"}],
        },
        batch_request(["a0", "a1", "a2"]),
    )
    with stubber:
        result = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(3))
    stubber.assert_no_pending_responses()  # nothing resent, not even the retryable a2
    assert accepted(result) == {"a0": "m0"} and not result.rejected
    assert isinstance(result.error, IncompleteAnswer)
    assert str(result.error) == (
        "SendMessageBatch answered for 2 of 3 entries; the other 1 stay pending"
    )


def test_phone_numbers_are_masked_in_error_text() -> None:
    """An error message that echoes a phone number keeps only its last two digits."""
    assert mask_phone_numbers("bad number +14155550123 here") == "bad number ***23 here"


def test_masking_leaves_uuids_and_hyphenated_ids_whole() -> None:
    """Run and campaign ids are what people search logs for: their digit runs are not phones."""
    text = "run 123e4567-e89b-12d3-a456-426614174000 failed for +14155550123 (call 4155550199)"
    assert mask_phone_numbers(text) == (
        "run 123e4567-e89b-12d3-a456-426614174000 failed for ***23 (call ***99)"
    )


def test_send_batch_retries_only_retryable_entries_and_never_resends_accepted() -> None:
    """A 200 with Failed entries: throttled and server faults go again, sender faults are final."""
    queue, stubber = stubbed_queue()
    stubber.add_response(
        "send_message_batch",
        {
            "Successful": [{"Id": "a0", "MessageId": "m0", "MD5OfMessageBody": "x"}],
            "Failed": [
                {"Id": "a1", "SenderFault": False, "Code": "InternalError"},
                {"Id": "a2", "SenderFault": True, "Code": "RequestThrottled"},
                {
                    "Id": "a3",
                    "SenderFault": True,
                    "Code": "InvalidMessageContents",
                    "Message": "no",
                },
            ],
        },
        batch_request(["a0", "a1", "a2", "a3"]),
    )
    stubber.add_response(
        "send_message_batch",
        {
            "Successful": [
                {"Id": "a1", "MessageId": "m1", "MD5OfMessageBody": "x"},
                {"Id": "a2", "MessageId": "m2", "MD5OfMessageBody": "x"},
            ],
            "Failed": [],
        },
        batch_request(["a1", "a2"]),
    )
    with stubber:
        result = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(4))
    stubber.assert_no_pending_responses()
    assert accepted(result) == {"a0": "m0", "a1": "m1", "a2": "m2"}
    assert result.rejected == [("a3", "InvalidMessageContents", "no")]
    assert result.retried_entries == 2
    assert result.error is None


def test_send_batch_gives_up_after_max_entry_retries() -> None:
    """An entry that keeps failing ends failed with SQS's code after the allowed resends."""
    queue, stubber = stubbed_queue(max_entry_retries=2)
    failure = {
        "Successful": [],
        "Failed": [{"Id": "a0", "SenderFault": False, "Code": "InternalError"}],
    }
    for _ in range(3):
        stubber.add_response("send_message_batch", failure, batch_request(["a0"]))
    with stubber:
        result = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(1))
    stubber.assert_no_pending_responses()
    assert result.rejected == [("a0", "InternalError", "")]
    assert not result.accepted_ids
    assert result.retried_entries == 2


def test_send_batch_keeps_known_outcomes_when_the_api_fails() -> None:
    """An API error after a partial success keeps the accepted entry and leaves the rest unknown."""
    queue, stubber = stubbed_queue()
    stubber.add_response(
        "send_message_batch",
        {
            "Successful": [{"Id": "a0", "MessageId": "m0", "MD5OfMessageBody": "x"}],
            "Failed": [{"Id": "a1", "SenderFault": False, "Code": "InternalError"}],
        },
        batch_request(["a0", "a1"]),
    )
    stubber.add_client_error("send_message_batch", "AccessDenied", http_status_code=403)
    with stubber:
        result = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(2))
    assert accepted(result) == {"a0": "m0"}
    assert not result.rejected
    assert result.error is not None


def test_client_uses_standard_retries_and_timeouts() -> None:
    """botocore retries are pinned to 'standard' mode with the configured attempts."""
    queue = SqsQueue(queue_url="https://x/q", region_name=REGION, max_attempts=7)
    config = queue.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert config.connect_timeout == queue.connect_timeout_seconds


def test_resource_is_dagster_aws_boto3_configuration() -> None:
    """SqsQueue takes dagster-aws's session fields: use_ssl=False makes the endpoint http."""
    queue = SqsQueue(queue_url="https://x/q", region_name=REGION, use_ssl=False)
    assert isinstance(queue, ResourceWithBoto3Configuration)
    assert queue.client.meta.endpoint_url == f"http://sqs.{REGION}.amazonaws.com"


ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"


def test_a_fair_group_id_is_sent_on_every_entry_of_a_standard_queue() -> None:
    """The exact request: each entry carries the group, and no FIFO deduplication id."""
    queue, stubber = stubbed_queue()
    request = batch_request(["a0", "a1"])
    for entry in request["Entries"]:
        entry["MessageGroupId"] = ORGANIZATION_ID
    stubber.add_response(
        "send_message_batch",
        {
            "Successful": [
                {"Id": i, "MessageId": f"m{i}", "MD5OfMessageBody": "x"} for i in ("a0", "a1")
            ],
            "Failed": [],
        },
        request,
    )
    with stubber:
        result = queue.batch_queue().send_batch(
            CAMPAIGN_ID, *messages(2), fair_group_id=ORGANIZATION_ID
        )
    stubber.assert_no_pending_responses()
    assert sorted(result.accepted_ids) == ["a0", "a1"]


def test_the_resource_field_overrides_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """fair_queue_group on the resource wins over SQS_FAIR_QUEUE_GROUP."""
    monkeypatch.setenv("SQS_FAIR_QUEUE_GROUP", "organization")
    queue = SqsQueue(queue_url="https://x/q", region_name=REGION, fair_queue_group="campaign")
    assert queue.batch_queue().fair_group_id(CAMPAIGN_ID, ORGANIZATION_ID) == CAMPAIGN_ID


def test_a_bad_fair_grouping_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything but organization or campaign is one SettingsError line, variable or field."""
    monkeypatch.setenv("SQS_FAIR_QUEUE_GROUP", "tenant")
    queue = SqsQueue(queue_url="https://x/q", region_name=REGION)
    with pytest.raises(SettingsError) as error:
        queue.batch_queue()
    assert str(error.value) == (
        "SQS_FAIR_QUEUE_GROUP must be one of organization, campaign, not 'tenant'"
    )
    field = SqsQueue(queue_url="https://x/q", region_name=REGION, fair_queue_group="org")
    with pytest.raises(SettingsError, match=r"^fair_queue_group must be one of"):
        field.batch_queue()
