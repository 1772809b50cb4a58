"""Small text helpers shared by the command line, the trigger, the SQS check and the ops."""

import uuid


def one_line(text: object) -> str:
    """`text` with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())


def canonical_campaign_id(raw: str) -> str:
    """The campaign id in canonical UUID form; raises ValueError naming it if it is not one."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ValueError(f"campaign id {raw!r} is not a UUID") from None
