import asyncio
import ipaddress

import pytest

from gateways.base import DeliveryRejected
from gateways.webhook.ssrf import check, forbidden, literal

REFUSED = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "224.0.0.1",
    "0.0.0.0",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::1",
    "fec0::1",
    "192.0.0.8",
    "192.88.99.1",
]
SPELLINGS = {
    "2130706433": "127.0.0.1",
    "0x7f000001": "127.0.0.1",
    "0177.0.0.1": "127.0.0.1",
    "127.1": "127.0.0.1",
    "0x7f.1": "127.0.0.1",
    "0xa9fea9fe": "169.254.169.254",
    "[::ffff:7f00:1]": "::ffff:127.0.0.1",
}


@pytest.mark.parametrize("address", REFUSED)
def test_private_and_special_ranges_are_refused(address: str) -> None:
    ip = literal(address)
    assert ip is not None and forbidden(ip)


@pytest.mark.parametrize("spelling,meaning", SPELLINGS.items())
def test_odd_ip_spellings_are_normalised(spelling: str, meaning: str) -> None:
    assert literal(spelling) == ipaddress.ip_address(meaning)


def test_public_addresses_and_names_pass() -> None:
    for public in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"):
        ip = literal(public)
        assert ip is not None and not forbidden(ip)
    assert literal("example.com") is None and literal("abc1.example") is None


@pytest.mark.parametrize(
    "url",
    [
        f"http://{a}/hook"
        for a in (
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "169.254.169.254",
        )
    ]
    + ["http://localhost:8080/x", "ftp://example.com/", "http://user:pw@example.com/", "http:///nohost"],
)
def test_check_refuses(url: str) -> None:
    with pytest.raises(DeliveryRejected) as info:
        asyncio.run(check(url))
    assert info.value.permanent


def test_allow_list_is_explicit() -> None:
    allow = (ipaddress.ip_network("127.0.0.1/32"),)
    target = asyncio.run(check("http://127.0.0.1:9999/in?x=1", allow))
    assert (target.ip, target.port, target.path, target.host) == ("127.0.0.1", 9999, "/in?x=1", "127.0.0.1")
    with pytest.raises(DeliveryRejected):
        asyncio.run(check("http://127.0.0.2:9999/in", allow))


def test_a_name_server_that_never_answers_holds_no_send_long_and_starves_no_other_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lookup that times out keeps its thread until the resolver gives up: sends to a tenant's silent
    name server filled the loop's default pool (6 threads), and every other tenant's host failed to resolve
    in time. Concurrent sends to one host share a lookup, so 64 sends to 8 silent hosts hold 8 of the
    pool's 16 threads; and a silent host fails at once for a while."""
    import socket
    import threading
    import time

    from gateways.webhook import ssrf

    release, asked = threading.Event(), []

    def resolver(host: str, port: int, *args: object) -> list[object]:
        asked.append(host)
        if host.startswith("silent"):
            release.wait(10)
            raise socket.gaierror("gave up")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    async def scenario() -> tuple[
        list[BaseException | ssrf.Target], float, ssrf.Target, BaseException | None
    ]:
        started = time.monotonic()
        silent = [check(f"https://silent{i % 8}.example/x", resolve_timeout=0.2) for i in range(64)]
        refused = await asyncio.gather(*silent, return_exceptions=True)
        took = time.monotonic() - started
        good = await check("https://hooks.example.com/x", resolve_timeout=0.2)
        try:
            await check("https://silent0.example/x", resolve_timeout=0.2)
        except DeliveryRejected as again:
            return refused, took, good, again
        return refused, took, good, None

    try:
        refused, took, good, again = asyncio.run(scenario())
    finally:
        release.set()
    assert all(isinstance(r, DeliveryRejected) and not r.permanent and "within" in r.reason for r in refused)
    assert took < 2 and good.ip == "93.184.216.34"
    assert sorted(h for h in asked if h.startswith("silent")) == sorted(
        f"silent{i}.example" for i in range(8)
    )
    assert isinstance(again, DeliveryRejected) and "lately" in again.reason, (
        "a silent host is not asked again"
    )


def test_an_internationalised_host_is_looked_up_and_named_in_idna_2008(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Left in Unicode, Python encoded `straße.de` by IDNA 2003 as `strasse.de`, another domain, whose
    owner received the signed payload over a valid TLS connection."""
    import socket

    asked: list[str] = []

    def resolver(host: str, port: int, *args: object) -> list[object]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    target = asyncio.run(check("https://straße.de/hook", resolve_timeout=1))
    assert (target.host, asked) == ("xn--strae-oqa.de", ["xn--strae-oqa.de"])


def test_a_host_that_waited_behind_silent_ones_is_not_put_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every lookup thread held by silent name servers, a host queued behind them ran out of time
    too, and was then refused for a minute as if its own name server were silent."""
    import socket
    import threading

    from gateways.webhook import ssrf

    release = threading.Event()

    def resolver(host: str, port: int, *args: object) -> list[object]:
        if host.startswith("mute"):
            release.wait(10)
            raise socket.gaierror("gave up")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    async def scenario() -> tuple[BaseException | ssrf.Target, ssrf.Target]:
        held = [check(f"https://mute{i}.example/x", resolve_timeout=0.2) for i in range(20)]
        waiting = check("https://queued.example.com/x", resolve_timeout=0.2)
        *_, queued = await asyncio.gather(*held, waiting, return_exceptions=True)
        release.set()
        await asyncio.sleep(0.3)
        return queued, await check("https://queued.example.com/x", resolve_timeout=1)

    try:
        queued, later = asyncio.run(scenario())
    finally:
        release.set()
    assert isinstance(queued, DeliveryRejected) and "within" in queued.reason
    assert later.ip == "93.184.216.34", "not refused for a minute as silent"
