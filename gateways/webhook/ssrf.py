"""Refuses webhook targets inside private networks (SSRF guard).

A URL's host is resolved once; every address it resolves to must be globally routable, and the caller
connects to the checked address (not to the name again), so DNS rebinding cannot swap it afterwards.
IP literals are normalised first, including the legacy spellings `inet_aton` accepts (decimal
`2130706433`, hex `0x7f000001`, octal `0177.0.0.1`, short `127.1`), and IPv4-mapped or NAT64 IPv6
addresses are judged by the IPv4 address they carry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import idna

from gateways.base import DeliveryRejected

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
DENIED = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24", "fec0::/10"))
"""Ranges `is_global` lets through on some Python versions (3.11.7 calls all three global): IETF
protocol assignments (192.0.0.8, a dummy address), the retired 6to4 relay anycast, and IPv6 site-local
addresses, deprecated but still routed inside private networks."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    ip: str
    port: int
    path: str


def literal(host: str) -> IP | None:
    """The address an IP literal denotes, in any spelling; None for a host name."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if bare.replace(".", "").replace("x", "").replace("X", "").isalnum() and any(c.isdigit() for c in bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def forbidden(ip: IP, allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()) -> bool:
    if any(ip in net for net in allow if net.version == ip.version):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return forbidden(ip.ipv4_mapped, allow)
        if ip in NAT64:
            return forbidden(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), allow)
        if ip.sixtofour is not None:
            return forbidden(ip.sixtofour, allow)
    if any(ip in net for net in DENIED if net.version == ip.version):
        return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def ascii_host(host: str) -> str:
    """The host name in IDNA 2008 (UTS #46), the form DNS, the Host header and TLS all get: left in
    Unicode, Python encoded it by IDNA 2003, which maps `straße.de` to `strasse.de`, another domain, whose
    owner then received the signed payload over a valid TLS connection."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise DeliveryRejected(f"webhook host is not a valid name: {exc}") from None


LOOKUPS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="webhook-dns")
"""Lookups run here, not on the loop's default pool: a lookup that times out keeps its thread until the
system resolver gives up, and a tenant's name server that never answers filled the default pool (6
threads on 2 cores), so every tenant's hosts failed to resolve in time."""
SILENT_FOR = 60.0
RESOLVE_TIMEOUT_S = 5.0
_inflight: dict[tuple[asyncio.AbstractEventLoop, str, int], asyncio.Future[list[Any]]] = {}
_silent: dict[str, float] = {}
"""Hosts whose lookup timed out, until when they are not looked up again: without it each send to the
host took a thread for the resolver's whole timeout."""


_started: dict[tuple[str, int], float] = {}
"""When each running lookup left the queue: only a host whose own lookup ran out of time is silent,
not one that waited for a thread behind others (it was put aside for a minute, whoever's it was)."""


def _lookup(host: str, port: int) -> list[Any]:
    _started[(host, port)] = time.monotonic()
    try:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    finally:
        _started.pop((host, port), None)


async def _resolved(host: str, port: int, resolve_timeout: float) -> list[IP]:
    """The host's addresses. One lookup per host at a time (concurrent sends share it), and a host that
    did not answer within `resolve_timeout` fails at once for `SILENT_FOR` seconds."""
    if _silent.get(host, 0.0) > time.monotonic():
        raise DeliveryRejected(
            f"webhook host did not resolve lately (within {SILENT_FOR:g}s)", permanent=False
        )
    loop = asyncio.get_running_loop()
    key = (loop, host, port)
    lookup = _inflight.get(key)
    if lookup is None:
        lookup = loop.run_in_executor(LOOKUPS, _lookup, host, port)
        _inflight[key] = lookup
        lookup.add_done_callback(lambda _: _inflight.pop(key, None))
    try:
        infos = await asyncio.wait_for(asyncio.shield(lookup), resolve_timeout)
    except TimeoutError:
        started = _started.get((host, port))
        if started is not None and time.monotonic() - started >= resolve_timeout:
            _silent[host] = time.monotonic() + SILENT_FOR
            if len(_silent) > 10_000:
                _silent.clear()
        raise DeliveryRejected(
            f"webhook host did not resolve within {resolve_timeout:g}s", permanent=False
        ) from None
    except socket.gaierror as exc:
        raise DeliveryRejected(f"webhook host does not resolve: {exc}", permanent=False) from None
    except UnicodeError as exc:
        raise DeliveryRejected(f"webhook host is not a valid name: {exc}") from None
    return [ipaddress.ip_address(info[4][0]) for info in infos]


async def check(
    url: str,
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
    resolve_timeout: float = RESOLVE_TIMEOUT_S,
) -> Target:
    """Parse and resolve `url`; raise DeliveryRejected (permanent) when it may not be called. The lookup
    is bounded by `resolve_timeout` (not permanent when it runs out): it runs outside the request's own
    timeout, and a tenant's name server that never answers held the send for the resolver's full
    timeout. Web Push called it without one until session 30."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise DeliveryRejected(f"webhook URL does not parse: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryRejected(f"webhook URL must be http(s) with a host: {parts.scheme}://…")
    if parts.username or parts.password:
        raise DeliveryRejected("webhook URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DeliveryRejected(f"webhook URL has a bad port: {exc}") from None
    host = parts.hostname
    address = literal(host)
    if address is not None:
        candidates = [address]
    else:
        host = ascii_host(host)
        candidates = await _resolved(host, port, resolve_timeout)
    if not candidates or any(forbidden(ip, allow) for ip in candidates):
        raise DeliveryRejected("webhook target is not a public address (SSRF guard)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, str(candidates[0]), port, path)
