import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.digest import (
    MAX_BYTES,
    MAX_ITEMS,
    Bucket,
    close,
    deferred,
    join,
    requested_ms,
    window_end,
    without,
)
from tidings.catalog import DigestRule
from tidings.events import DeliveryOutcome, NotificationRequested
from tidings.ids import new_notification_id

RULE = DigestRule(3600, {"email": {"default": {"subject": "{{ count }}"}}})
NOW = datetime(2026, 3, 27, 10, 30, tzinfo=UTC)  # a Friday, two days before Europe's spring-forward


def request(n: int = 0, **changes: object) -> NotificationRequested:
    base: dict[str, object] = {
        "tenant_id": "acme",
        "notification_id": new_notification_id(),
        "recipient_id": "u1",
        "notification_type": "post.liked",
        "data_json": json.dumps({"n": n}),
        "occurred_at": NOW,
    }
    return NotificationRequested(**(base | changes))


def single(bucket: Bucket, now: datetime) -> tuple[NotificationRequested | None, list[DeliveryOutcome]]:
    """The one digest request of a bucket whose items all joined on the same channels."""
    requests, outcomes = close(bucket, now)
    assert len(requests) <= 1
    return (requests[0][0] if requests else None), outcomes


@pytest.mark.parametrize(
    "choice,zone,expected",
    [
        (None, None, NOW + timedelta(hours=1)),
        ("weird", None, NOW + timedelta(hours=1)),
        ("hourly", None, NOW + timedelta(hours=1)),
        (
            "daily",
            "Europe/Berlin",
            datetime(2026, 3, 28, 8, 0, tzinfo=UTC),
        ),  # 11:30 local: tomorrow 09:00 CET
        ("daily", "America/Los_Angeles", datetime(2026, 3, 27, 16, 0, tzinfo=UTC)),  # 03:30 local: today
        ("weekly", "Europe/Berlin", datetime(2026, 3, 30, 7, 0, tzinfo=UTC)),  # Monday 09:00 CEST (after DST)
        ("daily", "No/Such_Zone", datetime(2026, 3, 28, 9, 0, tzinfo=UTC)),
    ],
)
def test_window_end(choice: str | None, zone: str | None, expected: datetime) -> None:
    assert window_end(RULE, choice, zone, NOW) == expected


def test_a_bucket_collects_requests_until_it_closes_into_one_digest_request() -> None:
    first, second = request(1), request(2)
    bucket, full = join(None, first, ["email"], NOW + timedelta(hours=1), NOW)
    assert full is None and bucket.due == NOW + timedelta(hours=1)
    bucket, full = join(bucket, second, ["email"], NOW + timedelta(hours=9), NOW + timedelta(minutes=5))
    assert full is None and bucket.due == NOW + timedelta(hours=1), "the open window keeps its end"
    (outcome,) = deferred(bucket, second, ["email"], NOW)
    assert (outcome.status, outcome.reason, outcome.channel) == ("DEFERRED", "digest", "email")
    digest, outcomes = single(bucket, bucket.due)
    assert digest is not None and digest.notification_id == bucket.digest_id
    assert digest.digest_of == [first.notification_id, second.notification_id]
    assert json.loads(digest.data_json) == {"items": [{"n": 1}, {"n": 2}], "count": 2}
    assert digest.channels == ["email"] and digest.key == first.key
    assert {(o.notification_id, o.status, o.reason) for o in outcomes} == {
        (first.notification_id, "QUEUED", "digested"),
        (second.notification_id, "QUEUED", "digested"),
    }
    assert single(bucket, bucket.due)[0] == digest, "closing again yields the same request (same ids)"


def test_items_that_expired_in_the_window_are_expired_not_digested() -> None:
    stale = request(1, expires_at=NOW + timedelta(minutes=10))
    bucket, _ = join(None, stale, ["email"], NOW + timedelta(hours=1), NOW)
    digest, outcomes = single(bucket, bucket.due)
    assert digest is None and [(o.status, o.reason) for o in outcomes] == [("EXPIRED", "expired")]
    bucket, _ = join(bucket, request(2), ["email"], NOW, NOW)
    digest, outcomes = single(bucket, bucket.due)
    assert digest is not None and json.loads(digest.data_json)["count"] == 1
    assert sorted(o.status for o in outcomes) == ["EXPIRED", "QUEUED"]


def test_a_digest_expires_with_its_last_item_and_never_when_one_item_never_does() -> None:
    soon, later = NOW + timedelta(hours=2), NOW + timedelta(hours=3)
    bucket, _ = join(None, request(1, expires_at=later), ["email"], NOW + timedelta(hours=1), NOW)
    bucket, _ = join(bucket, request(2, expires_at=soon), ["email"], NOW, NOW)
    digest, _ = single(bucket, bucket.due)
    assert digest is not None and digest.expires_at == later
    bucket, _ = join(bucket, request(3), ["email"], NOW, NOW)
    digest, _ = single(bucket, bucket.due)
    assert digest is not None and digest.expires_at is None


def test_a_request_already_in_the_bucket_is_not_added_again() -> None:
    first = request(1)
    bucket, _ = join(None, first, ["email"], NOW + timedelta(hours=1), NOW)
    again, closed = join(bucket, first, ["email"], NOW + timedelta(hours=1), NOW + timedelta(days=2))
    assert again == bucket and closed is None
    digest, _ = single(again, again.due)
    assert digest is not None and json.loads(digest.data_json)["count"] == 1


def test_a_full_bucket_closes_early_and_a_new_window_opens() -> None:
    bucket: Bucket | None = None
    closed = []
    for n in range(MAX_ITEMS + 1):
        bucket, full = join(
            bucket, request(n), ["email"], NOW + timedelta(hours=1, seconds=n), NOW + timedelta(seconds=n)
        )
        closed += [full] if full else []
    assert bucket is not None and len(closed) == 1 and len(closed[0].items) == MAX_ITEMS
    assert len(bucket.items) == 1 and bucket.due == NOW + timedelta(hours=1, seconds=MAX_ITEMS)
    assert bucket.digest_id != closed[0].digest_id


def test_a_bucket_closed_full_and_the_next_opened_in_one_millisecond_have_their_own_digest_ids() -> None:
    big = "x" * (MAX_BYTES // 2)
    first, _ = join(
        None, request(0, data_json=json.dumps({"t": big})), ["email"], NOW + timedelta(hours=1), NOW
    )
    second, closed = join(first, request(1, data_json=json.dumps({"t": big})), ["email"], NOW, NOW)
    assert closed is not None and closed.opened_at == second.opened_at
    assert closed.digest_id != second.digest_id


@given(
    st.lists(
        st.tuples(st.integers(min_value=100, max_value=8000), st.sampled_from(["y", "中", "😀", "\n"])),
        min_size=1,
        max_size=90,
    )
)
def test_a_digest_request_always_fits_its_size_limit(sizes: list[tuple[int, str]]) -> None:
    """Counted as the digest writes it: 8,000 CJK characters are 8 KiB of request text and 48 KiB of
    escaped digest data."""
    bucket: Bucket | None = None
    for size, char in sizes:
        r = request(data_json=json.dumps({"x": char * size}, ensure_ascii=False))
        bucket, full = join(bucket, r, ["email"], NOW + timedelta(hours=1), NOW)
        for b in [full, bucket]:
            if b is not None:
                assert b.size <= MAX_BYTES
                digest, outcomes = single(b, b.due)
                assert digest is not None  # the model validates the 256 KiB data limit
                assert digest.digest_of == [i.notification_id for i in b.items]
                assert {o.status for o in outcomes} == {"QUEUED"}


def test_a_bucket_filled_past_the_limit_by_a_previous_release_digests_what_fits() -> None:
    """Earlier releases counted characters: a bucket of 60 items of 4,000 CJK characters was 'full' at
    240,000 and is 1.4 MB as digest data. The items that fit are digested, the rest REJECTED."""
    items = [
        join(
            None, request(data_json=json.dumps({"x": "中" * 4000}, ensure_ascii=False)), ["email"], NOW, NOW
        )[0].items[0]
        for _ in range(60)
    ]
    legacy = Bucket(
        tenant_id="acme",
        recipient_id="u1",
        notification_type="post.liked",
        channels=["email"],
        opened_at=NOW,
        due=NOW,
        items=items,
        size=240_000,
    )
    digest, outcomes = single(legacy, NOW)
    assert digest is not None and 0 < len(digest.digest_of or []) < 60
    rejected = [o.notification_id for o in outcomes if o.status == "REJECTED"]
    assert rejected == [i.notification_id for i in items[len(digest.digest_of or []) :]]
    assert all(
        o.detail == f"no room left in digest {digest.notification_id}"
        for o in outcomes
        if o.status == "REJECTED"
    )


def test_a_cancelled_request_leaves_its_bucket() -> None:
    a, b = request(1), request(2)
    bucket, _ = join(None, a, ["email"], NOW + timedelta(hours=1), NOW)
    bucket, _ = join(bucket, b, ["email"], NOW, NOW)
    rest = without(bucket, a.notification_id)
    assert rest is not None and [i.notification_id for i in rest.items] == [b.notification_id]
    assert rest.size == len(json.dumps(b.data, separators=(",", ":")))
    assert without(rest, b.notification_id) is None


def test_a_digest_counts_as_requested_when_its_latest_item_was() -> None:
    bucket: Bucket | None = None
    for n, made in enumerate([5_000, 9_000, 7_000]):
        bucket, _ = join(bucket, request(n), ["email"], NOW + timedelta(hours=1), NOW, made)
    assert bucket is not None and requested_ms(bucket.items) == 9_000
    legacy, _ = join(None, request(), ["email"], NOW + timedelta(hours=1), NOW)
    assert requested_ms(legacy.items) is None, "items restored from before log times were kept"


def test_an_item_expires_in_its_digest_by_its_types_expires_after() -> None:
    """A flash sale that expires after an hour must not go out in the next day's digest."""
    from processors.plan import expiry
    from tidings.catalog import parse_type

    sale = parse_type(
        "*",
        {
            "key": "flash.sale",
            "category": "promo",
            "channels": ["email"],
            "expires_after": "1h",
            "templates": {"email": {"default": {"subject": "s", "body": "b"}}},
        },
    )
    r = request(notification_type="flash.sale")
    bucket, _ = join(None, r, ["email"], NOW + timedelta(days=1), NOW, expires_at=expiry(r, sale))
    digest, outcomes = single(bucket, NOW + timedelta(days=1))
    assert digest is None and [(o.status, o.reason) for o in outcomes] == [("EXPIRED", "expired")]


def test_items_that_joined_on_different_channels_make_a_digest_per_channel_group() -> None:
    """Push's condition skipped `small` (amount 5), and `mail` named email only: push's digest holds
    `big` alone, email's all three. Each item's outcomes name only the channels it joined on."""
    big, small, mail = request(5000), request(5), request(7, channels=["email"])
    bucket, _ = join(None, big, ["email", "push"], NOW + timedelta(hours=1), NOW, 1_000)
    bucket, _ = join(bucket, small, ["email"], NOW, NOW, 2_000)
    bucket, _ = join(bucket, mail, ["email"], NOW, NOW, 3_000)
    requests, outcomes = close(bucket, bucket.due)
    by_channels = {tuple(r.channels or []): (r, made) for r, made in requests}
    assert set(by_channels) == {("email",), ("push",)}
    email, push = by_channels["email",][0], by_channels["push",][0]
    assert email.digest_of == [big.notification_id, small.notification_id, mail.notification_id]
    assert push.digest_of == [big.notification_id] and json.loads(push.data_json)["items"] == [{"n": 5000}]
    assert (by_channels["email",][1], by_channels["push",][1]) == (3_000, 1_000)
    assert email.notification_id != push.notification_id != bucket.digest_id
    assert sorted((o.notification_id == big.notification_id, o.channel) for o in outcomes) == [
        (False, "email"),
        (False, "email"),
        (True, "email"),
        (True, "push"),
    ]
    again, _ = close(bucket, bucket.due)
    assert again == requests, "closing again yields the same requests (same ids)"


def test_a_digest_with_no_item_that_fits_is_not_sent_empty() -> None:
    huge = join(
        None, request(data_json=json.dumps({"x": "中" * 50_000}, ensure_ascii=False)), ["email"], NOW, NOW
    )
    requests, outcomes = close(huge[0], NOW)
    assert requests == [] and [(o.status, o.reason) for o in outcomes] == [("REJECTED", "invalid")]


def test_items_of_a_channel_the_types_digest_lost_while_open_are_skipped_not_told_queued() -> None:
    """A version published without the digest (or a channel's digest template) while a bucket was
    open: the digest request was refused when planned, after its items had been told QUEUED."""
    bucket: Bucket | None = None
    for n in range(2):
        bucket, _ = join(bucket, request(n), ["email", "push"], NOW + timedelta(hours=1), NOW)
    assert bucket is not None
    requests, outcomes = close(bucket, NOW + timedelta(hours=1), frozenset({"email"}))
    assert [r.channels for r, _ in requests] == [["email"]]
    assert sorted((o.channel, o.status, o.reason) for o in outcomes) == [
        ("email", "QUEUED", "digested"),
        ("email", "QUEUED", "digested"),
        ("push", "SKIPPED", "no_template"),
        ("push", "SKIPPED", "no_template"),
    ]
    gone, outcomes = close(bucket, NOW + timedelta(hours=1), frozenset())
    assert gone == [] and {(o.status, o.reason) for o in outcomes} == {("SKIPPED", "no_template")}


def test_bucket_keys_of_ids_holding_a_slash_do_not_meet() -> None:
    """`team/2` with type `x` and `team` with type `2/x` shared one bucket: one recipient's digest
    carried the other's items. Ids without a slash keep the key a bucket open at an upgrade has."""
    from processors.digest import bucket_key

    assert bucket_key("acme", "team/2", "x") != bucket_key("acme", "team", "2/x")
    assert bucket_key("acme", "ada", "order.shipped") == "acme/ada/order.shipped"
    keys = {bucket_key("acme", r, t) for r in ("a", "a/b", "a/b/c") for t in ("c", "b/c", "x")}
    assert len(keys) == 9


def test_a_bucket_open_under_its_earlier_key_is_still_found() -> None:
    """A cancellation or an erasure looking under the new key only missed a bucket opened before the
    upgrade, and its digest went out with the cancelled item or after the erasure."""
    from processors.digest import found_bucket

    store = {(0, "acme/team/2/x"): "legacy bucket"}
    get = lambda partition, key: store.get((partition, key))  # noqa: E731
    assert found_bucket(get, 0, "acme", "team/2", "x") == ("acme/team/2/x", "legacy bucket")
    assert found_bucket(get, 0, "acme", "team", "2/y") == ("acme\0team\0" + "2/y", None)
