"""Consumes Vonage's webhooks at the edge (inbound SMS, delivery receipts); produces the edge's parsers for
them, route path -> parser, under the account's signature secret.

- `INBOUND`: an inbound message, STOP or START (`inbound.vonage`), as a query string, form or JSON body.
- `RECEIPTS + "/{recipient}/{notification}/{delivery}"`: a receipt naming its delivery in the URL.
- `RECEIPTS`: a receipt at the tenant's path, which names its delivery by `client-ref` only: the sender
  points receipts here when the full path does not fit the 100 characters Vonage takes for `callback`
  (`vonage.vonage_callback`), and an account's dashboard URL points here. The delivery-status
  projection gives the delivery's notification and recipient (`holders.delivery_of`), checked against
  the receipt's number like the full path's; a delivery not found there yet is taken as one that names
  no delivery: a dead number is still suppressed for every recipient holding it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateways.sms import holders, inbound, receipts
from tidings.events import ProviderFeedback

INBOUND = "/inbound/vonage/{tenant}"
RECEIPTS = "/callbacks/vonage/status/{tenant}"


def parsers(secret: str, method: inbound.VonageMethod) -> dict[str, Callable[..., Any]]:
    def inbound_message(r: web.Request, body: bytes, tenant: str) -> list[ProviderFeedback]:
        return inbound.vonage(
            body,
            tenant_id=tenant,
            signature_secret=secret,
            signature_method=method,
            query=r.query,
            content_type=r.content_type,
        )

    def receipt(r: web.Request, body: bytes, tenant: str) -> list[ProviderFeedback]:
        return receipts.vonage_receipt(
            inbound.vonage_params_of(r.query, body, r.content_type),
            tenant_id=tenant,
            signature_secret=secret,
            signature_method=method,
            recipient=r.match_info.get("recipient"),
            notification=r.match_info.get("notification"),
            delivery=r.match_info.get("delivery"),
        )

    async def tenant_receipt(r: web.Request, body: bytes, tenant: str) -> list[ProviderFeedback]:
        params = inbound.vonage_params_of(r.query, body, r.content_type)
        inbound.verify_vonage(params, secret, method, None, None, "Vonage delivery receipt")
        ref = params.get("client-ref", "")
        found = await holders.delivery_of(r.app[holders.POOL], tenant, ref) if ref else None
        named = {"recipient": found[1], "notification": str(found[0]), "delivery": ref} if found else {}
        return receipts.vonage_receipt(
            params, tenant_id=tenant, signature_secret=secret, signature_method=method, **named
        )

    return {
        INBOUND: inbound_message,
        RECEIPTS: tenant_receipt,
        RECEIPTS + "/{recipient}/{notification}/{delivery}": receipt,
    }
