"""Consumes the edge's own requests; produces its operational endpoints.

- `GET /healthz`: 200 while the process serves HTTP (liveness: restart it when this fails).
- `GET /readyz`: 200 when every dependency the mounted routes need answers within 3 s (Kafka always;
  PostgreSQL when the API or the inbox is mounted), else 503 naming the one that did not (readiness:
  take it out of the load balancer, do not restart it). The answer names the error's type only; the
  message, which can carry host and user names, goes to the log, as the edge faces the internet.
- `GET /metrics`: Prometheus text format: requests by method, route template and status, their
  durations, and the process's CPU, memory and file descriptors. Route templates, not paths, keep
  the label set bounded whatever ids clients send.
- `GET /openapi.json`: OpenAPI 3.1 for the server-side API, generated from the routes and request
  models it mounts, so the document cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tidings.errors import KafkaUnavailable

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Operation:
    """One documented route. `security` names who calls it: a tenant's service with its API key
    (`apiKey`), or a recipient's app with the JWT the tenant's backend signed (`recipientToken`)."""

    method: str
    path: str
    handler: Callable[..., Awaitable[web.StreamResponse]]
    summary: str
    body: type[BaseModel] | None = None
    status: int = 200
    security: str = "apiKey"
    query: tuple[str, ...] = ()
    """The query parameters it reads, each described in `QUERY`."""
    idempotent: bool = False
    """It takes an `Idempotency-Key` header."""
    rated: bool = False
    """It counts against the tenant's rate, and may answer 429."""


QUERY = {
    "limit": "Items per page (bounded by the route's maximum)",
    "before": "The cursor of the previous page's last item: the page after it",
    "after": "The `next` of the previous page: the page after it",
    "archived": "true to include archived items",
    "channel": "Only this channel",
    "address": "Only this address (an email address in any case)",
    "active": "true (default), false (lifted) or any",
    "reason": "Why, kept on the record",
    "from": "Window start, ISO 8601 (default: 24 hours before `to`)",
    "to": "Window end, ISO 8601 (default: now)",
    "type": "Only this notification type",
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The producer's own key (1..255 characters): a retry with it names the same ids",
    "schema": {"type": "string"},
}


Check = Callable[[web.Application], Awaitable[Any]]
OPERATIONS: web.AppKey[list[Operation]] = web.AppKey("operations", list)
CHECKS: web.AppKey[dict[str, Check]] = web.AppKey("readiness_checks", dict)
PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["title", "status"],
}


def unavailable_problem(title: str) -> web.Response:
    document = {"type": "about:blank", "title": title, "status": 503, "detail": "try again"}
    return web.json_response(document, status=503, content_type="application/problem+json")


def invalid_value_problem(exc: pg_errors.DataError) -> web.Response:
    """PostgreSQL's own words on a value it cannot take (`bigint out of range`), without the query."""
    detail = exc.diag.message_primary or type(exc).__name__
    document = {"type": "about:blank", "title": "Invalid value", "status": 400, "detail": detail}
    return web.json_response(document, status=400, content_type="application/problem+json")


def add_check(application: web.Application, name: str, check: Check) -> None:
    application.setdefault(CHECKS, {})[name] = check


def mount(application: web.Application, accepted: type[BaseModel]) -> None:
    """Mount the endpoints and the request metrics; `accepted` is the schema of every 202 body."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    requests = Counter(
        "tidings_edge_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
    )
    seconds = Histogram(
        "tidings_edge_request_seconds",
        "Time to answer an HTTP request",
        ["method", "route"],
        registry=registry,
    )

    @web.middleware
    async def measure(request: web.Request, handler: Any) -> web.StreamResponse:
        start, status = time.perf_counter(), 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            requests.labels(request.method, route, str(status)).inc()
            seconds.labels(request.method, route).observe(time.perf_counter() - start)

    @web.middleware
    async def unavailable(request: web.Request, handler: Any) -> web.StreamResponse:
        """Kafka not acknowledging, or PostgreSQL not answering, is a 503 everywhere: the caller (a
        provider, an app) retries. A value PostgreSQL refuses (a cursor beyond bigint, NUL in an id) is
        the caller's 400, whichever route let it through."""
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except KafkaUnavailable as exc:
            log.warning("Kafka did not acknowledge %s: %s", request.path, exc)
            return unavailable_problem("Not accepted")
        except (pg_errors.OperationalError, PoolTimeout) as exc:
            log.warning("PostgreSQL did not answer %s: %s", request.path, exc)
            return unavailable_problem("The read store is unavailable")
        except pg_errors.DataError as exc:
            return invalid_value_problem(exc)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks: dict[str, Check] = request.app.get(CHECKS) or {}
        results = await asyncio.gather(
            *(asyncio.wait_for(check(request.app), READY_TIMEOUT_S) for check in checks.values()),
            return_exceptions=True,
        )
        report: dict[str, str] = {}
        for name, r in zip(checks, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("not ready: %s: %s: %s", name, type(r).__name__, r)
            report[name] = "ok" if not isinstance(r, BaseException) else f"unavailable ({type(r).__name__})"
        ready = all(v == "ok" for v in report.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": report}, status=200 if ready else 503
        )

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def spec(request: web.Request) -> web.Response:
        return web.json_response(openapi(request.app.get(OPERATIONS) or [], accepted))

    application.middlewares.extend([measure, unavailable])
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", metrics)
    application.router.add_get("/openapi.json", spec)


def openapi(operations: list[Operation], accepted: type[BaseModel]) -> dict[str, Any]:
    models = sorted({op.body for op in operations if op.body} | {accepted}, key=lambda m: m.__name__)
    _, schemas = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        names = re.findall(r"{(\w+)}", op.path)
        answer = (
            {"$ref": f"#/components/schemas/{accepted.__name__}"} if op.status == 202 else {"type": "object"}
        )
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "parameters": [
                *({"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names),
                *(
                    {"name": n, "in": "query", "description": QUERY[n], "schema": {"type": "string"}}
                    for n in op.query
                ),
                *([IDEMPOTENCY_KEY] if op.idempotent else []),
            ],
            "responses": {
                str(op.status): {
                    "description": op.summary,
                    "content": {"application/json": {"schema": answer}},
                },
                "401": {"description": "No valid credentials", "content": problem},
                "422": {"description": "Invalid fields", "content": problem},
                "503": {"description": "Kafka or PostgreSQL unavailable: retry", "content": problem},
            },
        }
        if op.query:
            entry["responses"]["400"] = {"description": "Bad query", "content": problem}
        if op.rated:
            entry["responses"]["429"] = {
                "description": "Over the tenant's rate: Retry-After",
                "content": problem,
            }
        if op.security != "apiKey":
            entry["security"] = [{op.security: []}]
        if op.body is not None:
            schema = {"$ref": f"#/components/schemas/{op.body.__name__}"}
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidings API", "version": "1"},
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": {**schemas.get("$defs", {}), "Problem": PROBLEM},
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A tenant's API key"},
                "recipientToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 JWT with sub (recipient), tenant and exp",
                },
            },
        },
    }
