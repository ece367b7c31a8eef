"""Delivery receipts as the SMS vendors send them, for the local servers in `sms.py`.

After accepting a message that asked for a receipt, Twilio POSTs its status callback to the
`StatusCallback` URL (form-encoded, `X-Twilio-Signature` over the URL and the sorted parameters, keyed
with the auth token): first `sent`, then `delivered`, or `undelivered` with an `ErrorCode`. Vonage sends
one DLR per part to the message's `callback` URL, as a query string (GET) or a JSON body (POST),
signed with the account's signature secret (`md5hash`: MD5 of the sorted `&name=value` string, `&` and
`=` in values replaced by `_`, followed by the secret). Signing is written out here rather than taken from
the product, so a mistake on either side shows. URLs are requested exactly as given (`encoded=True`), as
the vendors call the URL they were given, percent-encoding included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
from yarl import URL


def twilio_signed(url: str, params: dict[str, str], token: str) -> str:
    data = url + "".join(k + v for k, v in sorted(params.items()))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def vonage_signed(params: dict[str, str], secret: str) -> str:
    data = "".join(f"&{k}={v.replace('&', '_').replace('=', '_')}" for k, v in sorted(params.items()))
    return hashlib.md5((data + secret).encode()).hexdigest()


async def twilio_receipts(
    url: str, form: dict[str, str], sid: str, account: str, token: str, error: str | None
) -> list[int]:
    answers = []
    final = "undelivered" if error else "delivered"
    async with aiohttp.ClientSession() as http:
        for status in ("sent", final):
            params = {
                "MessageSid": sid,
                "SmsSid": sid,
                "AccountSid": account,
                "To": form["To"],
                "MessageStatus": status,
                "SmsStatus": status,
                "ApiVersion": "2010-04-01",
                **({"From": form["From"]} if form.get("From") else {}),
                **({"ErrorCode": error} if error and status == final else {}),
            }
            headers = {"X-Twilio-Signature": twilio_signed(url, params, token)}
            async with http.post(URL(url, encoded=True), data=params, headers=headers) as r:
                answers.append(r.status)
    return answers


async def vonage_receipts(
    params: dict[str, str], ids: list[str], api_key: str, secret: str, method: str, error: str | None
) -> list[int]:
    answers = []
    async with aiohttp.ClientSession() as http:
        for message_id in ids:
            dlr: dict[str, Any] = {
                "msisdn": params["to"],
                "to": params["from"],
                "network-code": "23410",
                "messageId": message_id,
                "price": "0.03330000",
                "status": "failed" if error else "delivered",
                "scts": datetime.now(UTC).strftime("%y%m%d%H%M"),
                "err-code": error or "0",
                "api-key": api_key,
                "message-timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "timestamp": str(int(time.time())),
                "nonce": secrets.token_hex(8),
                **({"client-ref": params["client-ref"]} if "client-ref" in params else {}),
            }
            dlr["sig"] = vonage_signed(dlr, secret)
            target = URL(params["callback"], encoded=True)
            request = http.get(target.with_query(dlr)) if method == "GET" else http.post(target, json=dlr)
            async with request as r:
                answers.append(r.status)
    return answers
