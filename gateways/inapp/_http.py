"""The inbox routes' HTTP pieces: verifying a recipient's token, problem documents, a path's action.

A token is an HS256 JWT signed with its tenant's own key (`tidings.client.inbox_signing_key`), with `sub`
(the recipient), `tenant` and `exp`.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

import jwt
from aiohttp import web

from gateways.api_schema import problem_document
from tidings.client import inbox_signing_key

log = logging.getLogger(__name__)
TOKEN_LEEWAY_S = 30


def recipient_of(token: str, master_secret: str) -> tuple[str, str] | None:
    """The (tenant, recipient) of a token signed with that tenant's own key (`inbox_signing_key`);
    the unverified `tenant` claim only picks the key, which then has to verify the whole token."""
    try:
        tenant = jwt.decode(token, options={"verify_signature": False}).get("tenant")
        if not isinstance(tenant, str) or not tenant:
            raise jwt.InvalidTokenError("no tenant claim")
        key = inbox_signing_key(master_secret, tenant)
        claims = jwt.decode(
            token, key, algorithms=["HS256"], options={"require": ["exp", "sub"]}, leeway=TOKEN_LEEWAY_S
        )
    except (jwt.InvalidTokenError, UnicodeError) as exc:
        log.info("refused an inbox token: %s", exc)
        return None
    recipient = claims.get("sub")
    return (tenant, recipient) if claims.get("tenant") == tenant and isinstance(recipient, str) else None


def refused(
    kind: type[web.HTTPException], title: str, detail: str | None = None, **headers: str
) -> web.HTTPException:
    """A problem document (RFC 9457), as the API's and the preference centre's errors are; a header
    name's `_` is a `-`."""
    document = problem_document(kind.status_code, title, detail)
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return kind(text=json.dumps(document), content_type="application/problem+json", headers=named or None)


def action(request: web.Request, kinds: dict[str, Any], id_name: str) -> tuple[Any, UUID]:
    """The event class the path's action names and the path's id; 404 for anything else."""
    kind = kinds.get(request.match_info["action"])
    try:
        found = UUID(request.match_info[id_name])
    except ValueError:
        raise refused(web.HTTPNotFound, "Not found") from None
    if kind is None:
        raise refused(web.HTTPNotFound, "Not found")
    return kind, found
