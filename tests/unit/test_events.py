import json
import typing
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest
from pydantic import ValidationError

from tidings.client import notification_request, recipient_update
from tidings.codec import default_codec
from tidings.errors import InvalidEvent
from tidings.events import (
    MAX_DATA_BYTES,
    BroadcastRequested,
    DestinationUpdated,
    Event,
    NotificationRequested,
    PreferencesUpdated,
    QuietHours,
    RecipientUpdated,
    WebhookEndpointUpdated,
    data_json_of,
)
from tidings.ids import delivery_id, new_notification_id, notification_id_for
from tidings.schemas import default_schemas
from tidings.vocabulary import DECODED


def _optional(annotation: object) -> bool:
    return type(None) in typing.get_args(annotation)


@pytest.mark.parametrize("name", sorted(Event.registry))
def test_model_mirrors_current_schema(name: str) -> None:
    schema = default_schemas().current(name).raw
    model = Event.registry[name]
    assert list(model.model_fields) == [f["name"] for f in schema["fields"]]
    for f in schema["fields"]:
        field = model.model_fields[f["name"]]
        nullable = isinstance(f["type"], list) and "null" in f["type"]
        assert _optional(field.annotation) == nullable, f["name"]
        if "default" in f:
            assert not field.is_required(), f"{f['name']} has an Avro default but is required in the model"


def make(**changes: object) -> NotificationRequested:
    base: dict[str, object] = {
        "tenant_id": "acme",
        "notification_id": new_notification_id(),
        "recipient_id": "u1",
        "notification_type": "t",
    }
    return NotificationRequested(**(base | changes))


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"tenant_id": "a/b"}, "tenant_id"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"recipient_id": "x" * 300}, "recipient_id"),
        ({"recipient_id": "a\nb"}, "recipient_id"),
        ({"data_json": "[1,2]"}, "data_json"),
        ({"data_json": "{not json"}, "data_json"),
        ({"data_json": json.dumps({"x": "y" * MAX_DATA_BYTES})}, "data_json"),
        ({"priority": "urgent"}, "priority"),
        ({"channels": ["email", "pigeon"]}, "channels"),
        ({"scheduled_at": datetime(2030, 1, 1)}, "scheduled_at"),
    ],
)
def test_invalid_requests_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(**changes)
    assert field in str(info.value)


def test_timestamps_become_utc_milliseconds() -> None:
    local = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert make(scheduled_at=local).scheduled_at == datetime(2026, 3, 1, 10, 0, 0, 123000, tzinfo=UTC)


def test_requests_are_scheduled_at_most_400_days_ahead_and_locales_are_short() -> None:
    """Checked where requests are made; the router rejects one decoded from an older producer."""
    make(scheduled_at=datetime.now(UTC) + timedelta(days=399))
    for late in (timedelta(days=401), timedelta(days=365 * 274)):
        with pytest.raises(ValidationError, match="at most 400 days ahead"):
            make(scheduled_at=datetime.now(UTC) + late)
    with pytest.raises(ValidationError, match="at most 400 days ahead"):
        BroadcastRequested(
            tenant_id="acme",
            audience_id="all",
            broadcast_id=new_notification_id(),
            notification_type="t",
            scheduled_at=datetime.now(UTC) + timedelta(days=500),
        )
    make(locale="zh-Hant-TW")
    with pytest.raises(ValidationError, match="not a locale"):
        make(locale="en-" + "x1234567-" * 10 + "x")


def test_events_are_frozen_and_keyed_by_tenant_and_recipient() -> None:
    event = make()
    with pytest.raises(ValidationError):
        event.recipient_id = "other"  # type: ignore[misc]
    assert event.key == "acme/u1"
    assert event.data == {}


def test_quiet_hours_format() -> None:
    QuietHours(start="22:00", end="07:30")
    with pytest.raises(ValidationError):
        QuietHours(start="25:00", end="07:00")
    PreferencesUpdated(tenant_id="t", recipient_id="r", quiet_hours={"start": "22:00", "end": "06:00"})


def test_ids() -> None:
    nid = new_notification_id()
    assert nid.version == 7
    assert delivery_id(nid, "email", "a@example.com") == delivery_id(nid, "email", "a@example.com")
    assert delivery_id(nid, "email", "a@example.com") != delivery_id(nid, "sms", "a@example.com")
    assert notification_id_for("acme", "order-1") == notification_id_for("acme", "order-1")
    assert notification_id_for("acme", "order-1") != notification_id_for("globex", "order-1")
    assert isinstance(notification_id_for("acme", "x"), UUID)


def test_nan_and_infinity_are_not_json_and_are_refused_everywhere() -> None:
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValidationError, match=f"{constant} is not JSON"):
            NotificationRequested(
                tenant_id="acme",
                notification_id=new_notification_id(),
                recipient_id="ada",
                notification_type="t",
                data_json=f'{{"x": {constant}}}',
            )
    with pytest.raises(InvalidEvent, match="not JSON-serialisable"):
        notification_request(tenant="acme", recipient="ada", type="t", data={"x": float("nan")})
    with pytest.raises(InvalidEvent, match="not JSON-serialisable"):
        recipient_update(tenant="acme", recipient="ada", properties={"x": float("inf")})
    with pytest.raises(InvalidEvent, match="idempotency_key"):
        notification_request(tenant="acme", recipient="ada", type="t", idempotency_key=" ")


def test_a_time_zone_or_locale_that_is_not_one_is_refused_where_an_event_is_made() -> None:
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        RecipientUpdated(tenant_id="acme", recipient_id="ada", timezone="Mars/Base")
    for folder in ("America", "Etc/"):
        with pytest.raises(ValidationError, match="not an IANA time zone"):
            RecipientUpdated(tenant_id="acme", recipient_id="ada", timezone=folder)
    for locale in ("not a locale", "de-AT\n"):
        with pytest.raises(ValidationError, match="not a locale"):
            RecipientUpdated(tenant_id="acme", recipient_id="ada", locale=locale)
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        PreferencesUpdated(
            tenant_id="acme",
            recipient_id="ada",
            quiet_hours=QuietHours(start="22:00", end="07:00", timezone="Europe/Wien"),
        )
    ok = RecipientUpdated(tenant_id="acme", recipient_id="ada", timezone="Europe/Vienna", locale="de-AT")
    assert (ok.timezone, ok.locale) == ("Europe/Vienna", "de-AT")


def test_an_event_written_before_those_checks_still_decodes() -> None:
    fields = RecipientUpdated(tenant_id="acme", recipient_id="ada").model_dump()
    old = RecipientUpdated.model_construct(**fields | {"timezone": "Mars/Base", "locale": "xx yy"})
    decoded = default_codec().decode(default_codec().encode(old))
    assert isinstance(decoded, RecipientUpdated) and decoded.timezone == "Mars/Base"


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + "A" * 17,
        "whsec_A=AAAAAAAAAAAAAAA",
        "whsec_" + "A" * 16 + " whsec_" + "B" * 17,
        "xhsec_" + "A" * 16,
    ],
)
def test_a_webhook_secret_base64_does_not_decode_is_refused(secret: str) -> None:
    """The pattern let a 17-character key through, and every send to the endpoint failed decoding it.
    Unpadded keys are read as the signer reads them; records written before the check still decode."""
    for good in ("whsec_" + "A" * 43, "whsec_" + "A" * 14 + "=="):
        assert DestinationUpdated(tenant_id="acme", destination_id="d", url="https://h.example", secret=good)
    old = {
        "tenant_id": "acme",
        "destination_id": "d",
        "url": "https://h.example",
        "secret": "whsec_" + "A" * 17,
    }
    assert DestinationUpdated.model_validate(old, context=DECODED).secret == old["secret"]
    with pytest.raises(ValidationError, match="secret"):
        WebhookEndpointUpdated(
            tenant_id="acme", recipient_id="ada", endpoint_id="e", url="https://h.example", secret=secret
        )
    rotating = "whsec_" + "A" * 16 + " whsec_" + "B" * 16
    assert DestinationUpdated(
        tenant_id="acme", destination_id="d", url="https://h.example", secret=rotating
    ).secret
    with pytest.raises(ValidationError, match="secret"):
        DestinationUpdated(tenant_id="acme", destination_id="d", url="https://h.example", secret=secret)


def test_text_and_times_no_record_can_hold_are_invalid_events_not_crashes() -> None:
    """A lone surrogate (JSON's \\ud800) cannot be written as UTF-8, a time past 9999 cannot be in UTC,
    deep data cannot be written as JSON: each raised an error of its own, which the API answered 500."""
    with pytest.raises(InvalidEvent, match="lone surrogate"):
        default_codec().encode(make(recipient_id="\ud800"))
    with pytest.raises(ValidationError, match="outside the years"):
        make(expires_at=datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))))
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidEvent, match="JSON"):
        data_json_of({"x": deep})


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"nick": "\\ud800"}', False),
        ('{"nick": "a\\uDC00b"}', False),
        ('{"\\ud83d": 1}', False),
        ('{"nick": "\\ud83d\\ude00"}', True),
        ('{"nick": "\\\\ud800"}', True),
        ('{"nick": "\\u00e9"}', True),
    ],
)
def test_json_data_refuses_a_lone_surrogate_and_takes_pairs(text: str, ok: bool) -> None:
    """A lone surrogate is JSON's syntax and no character: no UTF-8 encoder or jsonb takes it."""
    make = lambda: RecipientUpdated(tenant_id="acme", recipient_id="ada", properties_json=text)  # noqa: E731
    if ok:
        assert make().properties_json == text
    else:
        with pytest.raises(ValidationError, match="lone UTF-16 surrogate"):
            make()


@pytest.mark.parametrize("depth", [64, 65, 250])
def test_json_data_nested_deeper_than_the_stores_can_keep_is_refused(depth: int) -> None:
    """Nested 250 deep is 1.8 KB that `json.loads` reads and pydantic cannot write: a digest holding it
    stopped the router's commit at every start."""
    data: object = 1
    for level in range(depth):
        data = {"a": data} if level % 2 or level == depth - 1 else [data]
    text = json.dumps(data)
    if depth <= 64:
        assert make(data_json=text).data_json == text
        assert RecipientUpdated(tenant_id="acme", recipient_id="ada", properties_json=text)
    else:
        with pytest.raises(ValidationError, match="nested deeper than 64 levels"):
            make(data_json=text)
        with pytest.raises(ValidationError, match="nested deeper than 64 levels"):
            RecipientUpdated(tenant_id="acme", recipient_id="ada", properties_json=text)


def test_avro_int_fields_refuse_what_an_int_cannot_hold() -> None:
    """fastavro writes 2**40 into an `int` field and reads it back; Java's and Go's readers refuse it."""
    from uuid import uuid4

    from tidings.events import DeliveryOutcome

    fields = {"tenant_id": "acme", "notification_id": uuid4(), "status": "SENT"}
    assert DeliveryOutcome(**fields, attempt=2**31 - 1, template_version=2**31 - 1).attempt == 2**31 - 1
    for field in ("attempt", "template_version"):
        with pytest.raises(ValidationError, match="less than or equal to 2147483647"):
            DeliveryOutcome(**fields | {field: 2**31})


def test_data_with_a_key_that_is_not_a_string_is_refused() -> None:
    """json writes {1: "a", "1": "b"} with the key "1" twice; readers keep one of them."""
    with pytest.raises(InvalidEvent, match=r"keys must be strings, not int \(1\)"):
        notification_request(tenant="acme", recipient="ada", type="t", data={1: "a", "1": "b"})
    with pytest.raises(InvalidEvent, match="keys must be strings"):
        notification_request(tenant="acme", recipient="ada", type="t", data={"items": [{None: 1}]})
    ok = notification_request(tenant="acme", recipient="ada", type="t", data={"items": [{"n": 1}]})
    assert json.loads(ok.data_json) == {"items": [{"n": 1}]}
