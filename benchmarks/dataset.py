"""The benchmark's campaigns and recipients, the same every time (no database, no Dagster).

Recipient `i` is always the same person, so every implementation under test sees the same data
and the raw ceiling can build bodies of the same sizes without a database. Six campaigns cover
every message type; 1% of recipients have a phone number without '+', which every implementation
must mark `failed`.
"""

from typing import Any

ORGANIZATION_ID = "5f0c8a43-6d2e-4b7a-9a51-2c7e8f3d1b90"
INVALID_EVERY = 100  # one recipient in a hundred has no '+' in front of the phone number

FIRST_NAMES = (
    "Ana", "João", "Maria", "Wei", "Fatima", "Lucas", "Sofia", "Mateus",
    "Aisha", "Carlos", "Júlia", "Pedro", "Chloé", "Raj", "Emma", "Noah",
)  # fmt: skip
LAST_NAMES = (
    "Silva", "Santos", "Oliveira", "Chen", "Haddad", "García", "Müller", "Okafor",
    "Kumar", "Rossi", "Dubois", "Nakamura", "Smith", "Kowalski", "Costa", "Ibrahim",
)  # fmt: skip
CITIES = (
    "São Paulo", "Rio de Janeiro", "Lisbon", "Mexico City", "Bogotá", "Madrid",
    "Lagos", "Mumbai", "Jakarta", "Berlin", "Toronto", "Austin",
)  # fmt: skip
TIERS = ("bronze", "silver", "gold")

# The campaign-level columns of the six campaigns: every message type, placeholders from the
# recipient (`{{name}}`) and from its attributes (`{{city}}`).
CAMPAIGNS: tuple[dict[str, Any], ...] = (
    {
        "name": "Order update (template)",
        "message_type": "template",
        "template_name": "order_shipped_update",
        "template_language": "pt_BR",
        "template_parameters": [
            {"type": "header", "valueType": "text", "value": "Olá {{name}}!"},
            {"type": "body", "valueType": "text", "value": "{{city}}"},
        ],
    },
    {
        "name": "Spring sale (text)",
        "message_type": "text",
        "message_content": "Hi {{name}}, our spring sale starts today: 20% off everything "
        "until Sunday. Reply STOP to opt out.",
    },
    {
        "name": "Spring sale (image)",
        "message_type": "image",
        "media_url": "https://cdn.example.com/campaigns/spring-sale/hero-1080.jpg",
        "caption": "20% off everything until Sunday",
    },
    {
        "name": "Product teaser (video)",
        "message_type": "video",
        "media_url": "https://cdn.example.com/campaigns/spring-sale/teaser-720p.mp4",
        "caption": "New collection, out Friday",
    },
    {
        "name": "Catalogue (document)",
        "message_type": "document",
        "media_url": "https://cdn.example.com/campaigns/spring-sale/catalogue-2026.pdf",
        "caption": "Our spring catalogue, {{name}}",
    },
    {
        "name": "Voice note (audio)",
        "message_type": "audio",
        "media_url": "https://cdn.example.com/campaigns/spring-sale/voice-note.ogg",
        "caption": None,
    },
)


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` cut into `parts` sizes that differ by at most one."""
    return [total // parts + (1 if part < total % parts else 0) for part in range(parts)]


def recipient(index: int) -> tuple[str, str, dict[str, str]]:
    """Recipient number `index`: phone number, name and attributes, always the same."""
    area = 11 + index % 80
    phone = f"55{area}9{index % 100_000_000:08d}"
    if index % INVALID_EVERY != INVALID_EVERY - 1:
        phone = "+" + phone
    name = f"{FIRST_NAMES[index % 16]} {LAST_NAMES[index // 16 % 16]}"
    attributes = {
        "city": CITIES[index % len(CITIES)],
        "tier": TIERS[index % len(TIERS)],
        "customer_since": f"20{15 + index % 10}-0{1 + index % 9}-1{index % 10}",
    }
    return phone, name, attributes


def invalid_count(first: int, count: int) -> int:
    """How many of recipients `first` to `first + count - 1` have an invalid phone number."""
    return sum(1 for i in range(first, first + count) if i % INVALID_EVERY == INVALID_EVERY - 1)
