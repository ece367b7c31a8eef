"""Renders catalog templates safely: Jinja2's immutable sandbox, strict variables, bounded work and output.

Templates come from the catalog (tenant-authored); data comes from producers. The sandbox refuses
attribute tricks (`''.__class__.__mro__`), `StrictUndefined` turns a missing variable into an error
instead of an empty string, `range()` is limited to 10,000 items and the steps of loops over ranges to
100,000 per field rendered (nested loops multiply), string, bytes and list repetition (`*`, `**`),
padding, tab expansion and the `batch` and `slice` filters' counts are capped, `lipsum` is not offered,
and output is streamed and cut off at a size cap. Locales fall back `de-AT` → `de` → `default`.
Catalog conditions are Jinja2 expressions in the same sandbox, with lenient undefined values (`holds`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, Template, TemplateError, Undefined, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.filters import sync_do_slice
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tidings.errors import TidingsError
from tidings.vocabulary import MAX_LOCALE_LENGTH, json_object

MAX_OUTPUT = {"subject": 998, "title": 256, "body": 64 * 1024, "html": 512 * 1024, "data_json": 4 * 1024}
"""Each rendered field's cap, in characters while it renders (a runaway loop stops early) and in UTF-8
bytes once whole: in characters alone, an HTML part of emoji was 2 MiB, and its command too large for
the broker."""
MAX_RANGE = 10_000
MAX_RANGE_STEPS = 100_000
MAX_REPEAT = 100_000
FIELDS = ("subject", "title", "body", "html", "data_json")


class RenderError(TidingsError):
    """A template failed on this data; permanent for this request."""


LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A template's string literal can spell one (`'\\ud800'`); refused here, every gateway can encode its
content as UTF-8 (push payloads are sent unescaped, a third the size of `\\u` escapes)."""
PADDING = frozenset({"center", "ljust", "rjust", "zfill"})
_RANGE_LEFT: ContextVar[list[int] | None] = ContextVar("range_left", default=None)


def _bounded_width(*values: Any) -> None:
    if any(isinstance(v, int) and not isinstance(v, bool) and v > MAX_REPEAT for v in values):
        raise SecurityError(f"a width larger than {MAX_REPEAT}")


class _Environment(ImmutableSandboxedEnvironment):
    """Bounds the one-step ways to ask for a huge string: `*`, `**` and padding to a width (`center`,
    `zfill`, ..., the `center` and `indent` filters). It is not a memory limit: a template can still
    build a large string in many steps (widths inside format strings, `replace`, `join`), so templates
    are trusted catalog input (docs/catalog.md); a MemoryError is a render failure, not a crash. A JSON
    object's key wins over a dict method of the same name, so `data.items` or `data.keys` is the
    request's field, not `dict.items`; a field the object lacks is missing even when a dict method has
    its name (printing a bound method, or a condition on one holding), and only a call (`data.values()`)
    reaches the method."""

    intercepted_binops = frozenset({"*", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, Undefined) and type(__obj._undefined_obj) is dict and __obj._undefined_name:
            __obj = super().getattr(__obj._undefined_obj, __obj._undefined_name)
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str | bytes) and name in PADDING:
            _bounded_width(*args, *kwargs.values())
        if isinstance(owner, str | bytes) and name == "expandtabs":
            _bounded_width(*(len(owner) * w for w in (*args, *kwargs.values()) if isinstance(w, int)))
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            return obj[attribute] if attribute in obj else self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if type(obj) is dict and isinstance(argument, str) and argument not in obj:
            return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large")
            return operator.pow(left, right)
        for seq, count in ((left, right), (right, left)):
            if (
                isinstance(seq, str | bytes | list | tuple)
                and isinstance(count, int)
                and len(seq) * count > MAX_REPEAT
            ):
                raise SecurityError(f"repetition larger than {MAX_REPEAT} items")
        return operator.mul(left, right)


class _Range(Sequence[int]):
    """A `range()` of a template: at most MAX_RANGE items, and each item taken from it in a loop counts
    against the render's budget of MAX_RANGE_STEPS, however often the range is walked: counting at the
    call let `{% set r = range(10000) %}` be walked inside itself, 100 million steps. A slice of it is
    one too, and walking it backwards (`|reverse`) counts as walking it."""

    def __init__(self, r: range) -> None:
        self.r = r

    def __len__(self) -> int:
        return len(self.r)

    def __repr__(self) -> str:
        return repr(self.r)

    def __getitem__(self, index: Any) -> Any:
        item = self.r[index]
        return _Range(item) if isinstance(item, range) else item

    def __iter__(self) -> Iterator[int]:
        return self._counted(self.r)

    def __reversed__(self) -> Iterator[int]:
        return self._counted(reversed(self.r))

    @staticmethod
    def _counted(items: Iterable[int]) -> Iterator[int]:
        left = _RANGE_LEFT.get()
        for item in items:
            if left is not None:
                left[0] -= 1
                if left[0] < 0:
                    raise SecurityError(
                        f"loops over range() of more than {MAX_RANGE_STEPS} steps in one render"
                    )
            yield item


def _bounded_range(*args: int) -> _Range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise SecurityError(f"range() larger than {MAX_RANGE}")
    return _Range(r)


def _bounded_batch(value: Any, linecount: int, *args: Any, **kwargs: Any) -> None:
    _bounded_width(linecount)


def _guarded(original: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        check(value, *args, *kwargs.values())
        return original(value, *args, **kwargs)

    return bounded


def _not_null(value: Any) -> Any:
    """Printing a null fails like printing a missing value: "Hi None" for a recipient without a name,
    or a request's `"code": null`, was sent as written."""
    if value is None:
        raise UndefinedError("a value printed is null (give it a default: `x or 'there'`)")
    return value


def _environment(autoescape: bool, undefined: type[Undefined] = StrictUndefined) -> _Environment:
    env = _Environment(
        undefined=undefined, autoescape=autoescape, keep_trailing_newline=False, finalize=_not_null
    )
    env.globals["range"] = _bounded_range
    for name in ("center", "indent"):
        env.filters[name] = _guarded(env.filters[name], _bounded_width)
    env.filters["batch"] = _guarded(env.filters["batch"], _bounded_batch)
    env.filters["slice"] = _guarded(sync_do_slice, _bounded_batch)
    del env.globals["lipsum"]
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}
    return env


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


class _Missing(ChainableUndefined):
    """A missing value in a condition: falsy, and any use of it beyond truth (`==`, `!=`, `in`, `~`,
    iteration) fails, which `holds` turns into "does not hold". Plain `ChainableUndefined` compares
    unequal to everything, so `data.plan != 'free'` would hold for a request without a plan."""

    __slots__ = ()

    def _refuse(self, *_: Any, **__: Any) -> Any:
        self._fail_with_undefined_error()

    __eq__ = __ne__ = __contains__ = __str__ = __iter__ = __len__ = _refuse
    __hash__ = ChainableUndefined.__hash__


_CONDITIONS = _environment(autoescape=False, undefined=_Missing)
FAILURES = (
    MemoryError,
    TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    AssertionError,
    RecursionError,
)
"""What a template or condition can raise on bad data, besides its own Jinja errors."""
MAX_CONDITION = 1000


def _env(field: str) -> _Environment:
    return _HTML if field == "html" else _TEXT


@lru_cache(maxsize=4096)
def _compiled(field: str, source: str) -> Template:
    return _env(field).from_string(source)


def check_template(field: str, source: str) -> None:
    """Raise RenderError when a template does not compile (catalog validation)."""
    try:
        _compiled(field, source)
    except TemplateError as exc:
        raise RenderError(f"{field}: {exc}") from exc


@lru_cache(maxsize=4096)
def _condition(source: str) -> Callable[..., Any]:
    return _CONDITIONS.compile_expression(source, undefined_to_none=False)


def check_condition(source: str) -> None:
    """Raise RenderError when a condition is not one Jinja2 expression of at most MAX_CONDITION characters."""
    if not source.strip() or len(source) > MAX_CONDITION:
        raise RenderError(f"a condition is a non-empty expression of at most {MAX_CONDITION} characters")
    try:
        _condition(source)
    except (TemplateError, RecursionError) as exc:
        raise RenderError(f"condition {source[:100]!r}: {type(exc).__name__}: {exc}") from exc


def holds(source: str, context: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether a condition holds for `context`, and why not when it does not.

    A missing value is falsy (`data.a.b` of nothing is missing too, not an error), and using one in a
    comparison or computation makes the condition false rather than failing: a condition about a field
    the request does not carry does not hold. Any other failure (a type error, the sandbox refusing an
    attribute, a bound exceeded) raises RenderError, as a template failure does.
    """
    budget = _RANGE_LEFT.set([MAX_RANGE_STEPS])
    try:
        value = _condition(source)(**context)
    except SecurityError as exc:
        raise RenderError(f"condition {source!r}: SecurityError: {exc}") from exc
    except UndefinedError as exc:
        return False, f"{source}: {exc}"
    except FAILURES as exc:
        raise RenderError(f"condition {source!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        _RANGE_LEFT.reset(budget)
    if isinstance(value, Undefined) and value._undefined_exception is SecurityError:
        raise RenderError(f"condition {source!r}: SecurityError: {value._undefined_message}")
    return (True, None) if value else (False, source)


def variables(context: Mapping[str, Any]) -> dict[str, Any]:
    """The template variables for `context`: the environment's globals overlaid with it.

    Built once per request and shared by every field rendered for it (`Template.new_context(shared=True)`),
    instead of Jinja merging globals and data again for each field. Sharing is safe: the immutable
    sandbox refuses to modify the data, and a template's own assignments go to its context, not here.
    """
    return {**_TEXT.globals, **context}


def render_field(field: str, source: str, context: Mapping[str, Any]) -> str:
    return _render_field(field, source, variables(context))


def _render_field(field: str, source: str, parent: dict[str, Any]) -> str:
    cap = MAX_OUTPUT[field]
    parts: list[str] = []
    size = 0
    budget = _RANGE_LEFT.set([MAX_RANGE_STEPS])
    try:
        template = _compiled(field, source)
        for chunk in template.root_render_func(template.new_context(parent, shared=True)):
            size += len(chunk)
            if size > cap:
                raise RenderError(f"{field}: output larger than {cap} characters")
            parts.append(chunk)
    except RenderError:
        raise
    except FAILURES as exc:
        raise RenderError(f"{field}: {type(exc).__name__}: {exc}") from exc
    finally:
        _RANGE_LEFT.reset(budget)
    text = "".join(parts)
    if LONE_SURROGATE.search(text):
        raise RenderError(f"{field}: output holds a lone UTF-16 surrogate, which no encoding carries")
    if len(text) * 4 > cap and len(text.encode("utf-8")) > cap:
        raise RenderError(f"{field}: output larger than {cap} bytes in UTF-8")
    if field == "data_json":
        try:
            json_object(text)
        except ValueError as exc:
            raise RenderError(f"data_json: rendered text is not a JSON object: {exc}") from exc
    return text


def locale_chain(locale: str | None) -> list[str]:
    """`de-AT` → [`de-AT`, `de`, `default`]; case-insensitive, `_` accepted for `-`. A locale longer
    than any real one (from an event written before locales were checked) is ignored: its chain would
    cost memory quadratic in its length."""
    chain: list[str] = []
    if locale and len(locale) <= MAX_LOCALE_LENGTH:
        parts = locale.replace("_", "-").split("-")
        chain = ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]
    return [*chain, "default"]


@dataclass(frozen=True)
class Rendered:
    locale: str
    fields: dict[str, str | None]


def pick_locale(available: Mapping[str, Any], locale: str | None) -> str | None:
    """The catalog's locale for a request's, case-insensitive and `_` read as `-` on both sides: a
    catalog's `pt_BR` was never chosen, and the publish check rendered `default` in its place."""
    lowered = {k.lower().replace("_", "-"): k for k in available}
    for candidate in locale_chain(locale):
        if candidate.lower() in lowered:
            return lowered[candidate.lower()]
    return None


def render(
    templates: Mapping[str, Mapping[str, str | None]], locale: str | None, context: Mapping[str, Any]
) -> Rendered:
    """Render one channel's templates (locale → field → source) for the best matching locale."""
    chosen = pick_locale(templates, locale)
    if chosen is None:
        raise RenderError(f"no template for locale {locale!r} or 'default'")
    parent = variables(context)
    fields = {
        f: (_render_field(f, src, parent) if src is not None else None)
        for f, src in templates[chosen].items()
        if f in FIELDS
    }
    return Rendered(chosen, fields)
