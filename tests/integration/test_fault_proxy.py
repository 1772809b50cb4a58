"""The fault proxy's FIFO deduplication, pinned to SQS's documented rule.

SQS: a message sent with a deduplication id that the queue accepted in the last five minutes is
answered as accepted and not delivered, even if the first one was received and deleted since;
the interval is per queue. The "nothing twice" scenarios of `test_faults.py` rest on the proxy
keeping this rule where moto forgets deleted messages, so the rule is checked here on its own,
together with what moto itself does when nothing is deleted in between.
"""

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import drain
from tests.support import fault_proxy
from tests.support.fault_proxy import FaultProxy


def send(client: Any, queue_url: str, dedup_id: str, entry_id: str = "e0") -> dict[str, Any]:
    response = client.send_message_batch(
        QueueUrl=queue_url,
        Entries=[
            {
                "Id": entry_id,
                "MessageBody": f"body {dedup_id}",
                "MessageGroupId": "g",
                "MessageDeduplicationId": dedup_id,
            }
        ],
    )
    assert not response.get("Failed"), response
    return response["Successful"][0]


@pytest.fixture
def proxied(sqs_endpoint: str, sqs_client: Any) -> Any:
    import boto3

    with FaultProxy(sqs_endpoint) as proxy:
        yield (
            proxy,
            boto3.client(
                "sqs",
                region_name="us-east-1",
                endpoint_url=proxy.url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ),
        )


def test_a_resend_after_the_first_was_deleted_is_accepted_and_not_delivered(
    proxied: Any, make_queue: Callable[..., str], sqs_client: Any
) -> None:
    proxy, client = proxied
    queue_url = make_queue(fifo=True)
    first = send(client, queue_url, "d1")
    assert [m["MessageId"] for m in drain(sqs_client, queue_url)] == [first["MessageId"]]
    again = send(client, queue_url, "d1", entry_id="e1")
    assert again["MessageId"] == first["MessageId"] and again["Id"] == "e1"
    assert drain(sqs_client, queue_url) == []
    assert proxy.deduplicated_entries == 1


def test_another_deduplication_id_or_another_queue_is_delivered(
    proxied: Any, make_queue: Callable[..., str], sqs_client: Any
) -> None:
    _, client = proxied
    queue_url, other_queue_url = make_queue(fifo=True), make_queue(fifo=True)
    send(client, queue_url, "d1")
    send(client, queue_url, "d2")
    send(client, other_queue_url, "d1")
    assert sorted(m["Body"] for m in drain(sqs_client, queue_url)) == ["body d1", "body d2"]
    assert [m["Body"] for m in drain(sqs_client, other_queue_url)] == ["body d1"]


def test_after_the_interval_the_same_id_is_delivered_again(
    proxied: Any, make_queue: Callable[..., str], sqs_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five minutes in SQS; shortened here, the rule is the same."""
    monkeypatch.setattr(fault_proxy, "DEDUPLICATION_SECONDS", 1.0)
    _, client = proxied
    queue_url = make_queue(fifo=True)
    first = send(client, queue_url, "d1")
    drain(sqs_client, queue_url)
    assert send(client, queue_url, "d1")["MessageId"] == first["MessageId"]
    assert drain(sqs_client, queue_url) == []
    time.sleep(1.1)
    later = send(client, queue_url, "d1")
    assert later["MessageId"] != first["MessageId"]
    assert [m["MessageId"] for m in drain(sqs_client, queue_url)] == [later["MessageId"]]


def test_moto_itself_drops_a_resend_while_the_first_is_still_queued(
    make_queue: Callable[..., str], sqs_client: Any
) -> None:
    """Without the proxy and without draining in between, the real endpoint deduplicates."""
    queue_url = make_queue(fifo=True)
    send(sqs_client, queue_url, "d1")
    send(sqs_client, queue_url, "d1", entry_id="e1")
    assert [m["Body"] for m in drain(sqs_client, queue_url)] == ["body d1"]
