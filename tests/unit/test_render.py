import pytest

from tidings.render import (
    MAX_OUTPUT,
    RenderError,
    check_template,
    holds,
    locale_chain,
    pick_locale,
    render,
    render_field,
)

TEMPLATES = {
    "default": {"subject": "Order {{ order }} shipped", "html": "<p>{{ note }}</p>", "body": None},
    "de": {"subject": "Bestellung {{ order }} versandt"},
    "de-CH": {"subject": "Bestellig {{ order }}"},
}


def test_locale_chain() -> None:
    assert locale_chain("de-AT") == ["de-AT", "de", "default"]
    assert locale_chain("zh_Hant_TW") == ["zh-Hant-TW", "zh-Hant", "zh", "default"]
    assert locale_chain(None) == ["default"]


@pytest.mark.parametrize(
    "locale,chosen,subject",
    [
        ("de-AT", "de", "Bestellung A-1 versandt"),
        ("de-ch", "de-CH", "Bestellig A-1"),
        ("fr-FR", "default", "Order A-1 shipped"),
        (None, "default", "Order A-1 shipped"),
    ],
)
def test_locale_fallback(locale: str | None, chosen: str, subject: str) -> None:
    rendered = render(TEMPLATES, locale, {"order": "A-1", "note": "x"})
    assert rendered.locale == chosen and rendered.fields["subject"] == subject


@pytest.mark.parametrize("asked", ["pt-BR", "pt_BR", "PT-br", "pt-BR-x-app"])
def test_a_catalog_locale_written_with_an_underscore_is_chosen(asked: str) -> None:
    assert pick_locale({"default": {}, "pt_BR": {}}, asked) == "pt_BR"


def test_no_matching_locale_is_an_error() -> None:
    assert pick_locale({"de": {}}, "fr") is None
    with pytest.raises(RenderError, match="locale"):
        render({"de": {"subject": "x"}}, "fr", {})


def test_html_is_escaped_text_is_not() -> None:
    rendered = render(TEMPLATES, None, {"order": "<b>", "note": "<script>alert(1)</script>"})
    assert rendered.fields["html"] == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert rendered.fields["subject"] == "Order <b> shipped"
    assert rendered.fields["body"] is None


def test_missing_variable_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(RenderError, match="order"):
        render_field("subject", "Order {{ order }}", {})


def test_a_json_key_wins_over_a_dict_method_of_the_same_name() -> None:
    data = {"items": 3, "keys": "k"}
    assert render_field("subject", "{{ data.items }} {{ data.keys }}", {"data": data}) == "3 k"
    assert render_field("subject", "{{ data.values()|list }}", {"data": data}) == "[3, 'k']"


@pytest.mark.parametrize("template", ["{{ data.items }}", "{{ data['keys'] }}", "{{ data.get }}"])
def test_a_field_the_request_lacks_is_missing_even_when_a_dict_method_has_its_name(template: str) -> None:
    with pytest.raises(RenderError, match="has no attribute"):
        render_field("subject", template, {"data": {"order": 1}})
    assert render_field("subject", "{{ data.get('order') }}", {"data": {"order": 1}}) == "1"


@pytest.mark.parametrize("condition", ["data.items", "data.items > 0", "data.keys != 'x'"])
def test_a_condition_on_a_field_the_request_lacks_does_not_hold_when_a_dict_method_has_its_name(
    condition: str,
) -> None:
    assert holds(condition, {"data": {}})[0] is False
    assert holds("data.values()|list|length == 1", {"data": {"a": 1}}) == (True, None)


def test_ordinary_widths_and_format_strings_still_format() -> None:
    template = (
        "{{ '%5.2f' % 3.14159 }}|{{ '{:>4}'.format(7) }}|{{ 'ab'|center(6) }}|{{ 'Ref 20261126001 %s' % 1 }}"
        "|{{ '%.*f' % (2, 3.14159) }}|{{ '?q=Order%20123456&u={}'.format('x') }}"
    )
    expected = " 3.14|   7|  ab  |Ref 20261126001 1|3.14|?q=Order%20123456&u=x"
    assert render_field("body", template, {}) == expected


def test_data_is_never_evaluated_as_a_template() -> None:
    payload = "{{ ''.__class__.__mro__ }}"
    assert render_field("body", "{{ x }}", {"x": payload}) == payload


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ x.append(1) }}",
        "{% for i in range(10**9) %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10**8 }}",
        "{{ [1] * 10**8 }}",
        "{{ 2 ** 100000000 }}",
        "{{ x ** 100000000 }}",
        "{% for i in range(9000) %}{{ 'abcdefghij' }}{% endfor %}",
        "{{ x|attr('__class__') }}",
        "{{ 'a'.zfill(10**9)|length }}",
        "{{ 'a'.ljust(width=10**9)|length }}",
        "{{ 'a'|center(10**8)|length }}",
        "{{ 'a\nb'|indent(10**8)|length }}",
        "{{ ('x'.encode() * 10**8)|length }}",
        "{{ 'x'.encode().rjust(10**8)|length }}",
        "{{ '\t'.expandtabs(10**8)|length }}",
        "{{ ('\t' * 1000).expandtabs(tabsize=1000)|length }}",
        "{{ [1]|batch(10**8, 0)|first|length }}",
        "{% for i in range(5000) %}{% for j in range(5000) %}{% endfor %}{% endfor %}",
        "{% set r = range(10000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
        "{% for i in range(10000)|reverse %}{% for j in range(300)|reverse %}{% endfor %}{% endfor %}",
        "{% for i in range(10000)[:] %}{% for j in range(300)[::-1] %}{% endfor %}{% endfor %}",
        "{{ [1]|slice(10**7)|list|length }}",
        "{{ lipsum(1, False, 300000, 300001)|length }}",
    ],
)
def test_injection_and_resource_payloads_are_refused_safely(template: str) -> None:
    with pytest.raises(RenderError):
        render_field(
            "body" if "abcdefghij" not in template else "subject",
            template,
            {"x": [] if "x **" not in template else 7},
        )


def test_ordinary_loops_tabs_and_batches_stay_within_the_bounds() -> None:
    nested = "{% for i in range(100) %}{% for j in range(100) %}.{% endfor %}{% endfor %}"
    assert len(render_field("body", nested, {})) == 10_000
    ranged = "{{ range(3)|list }} {{ range(10)|length }} {{ range(10)[3] }} {{ range(2) }}"
    assert render_field("body", ranged, {}) == "[0, 1, 2] 10 3 range(0, 2)"
    assert render_field("body", "{{ 'a\tb'.expandtabs(4) }}|{{ [1, 2, 3]|batch(2, 0)|list }}", {}) == (
        "a   b|[[1, 2], [3, 0]]"
    )
    reordered = "{{ range(5)|reverse|list }} {{ range(5)[1:3]|list }} {{ range(5)[-1] }}"
    reordered += " {{ [1, 2, 3]|slice(2)|list }}"
    assert render_field("body", reordered, {}) == "[4, 3, 2, 1, 0] [1, 2] 4 [[1, 2], [3]]"


def test_output_cap() -> None:
    with pytest.raises(RenderError, match="larger than"):
        render_field("subject", "{{ s }}", {"s": "x" * (MAX_OUTPUT["subject"] + 1)})
    emoji = "\U0001f600" * (MAX_OUTPUT["html"] // 4 + 1)
    with pytest.raises(RenderError, match="bytes in UTF-8"):
        render_field("html", "{{ s }}", {"s": emoji})
    assert render_field("html", "{{ s }}", {"s": emoji[1:]}) == emoji[1:]


def test_data_json_must_render_to_an_object() -> None:
    assert render_field("data_json", '{"order": {{ order|tojson }}}', {"order": "A"}) == '{"order": "A"}'
    with pytest.raises(RenderError, match="JSON object"):
        render_field("data_json", "[{{ order|tojson }}]", {"order": "A"})
    for text in ('{"a": Infinity}', '{"a": 1e400}', '{"a": "\\ud800"}'):
        with pytest.raises(RenderError, match="data_json"):
            render_field("data_json", text, {})


def test_a_lone_surrogate_in_the_output_is_refused() -> None:
    with pytest.raises(RenderError, match="lone UTF-16 surrogate"):
        render_field("body", "{{ '\\ud800' }}", {})
    assert render_field("body", "{{ '\U0001f600' }} {{ s }}", {"s": "\u0416"}) == "\U0001f600 \u0416"


def test_a_template_that_does_not_compile_fails_as_a_render_error() -> None:
    with pytest.raises(RenderError, match="TemplateSyntaxError"):
        render_field("body", "{% if %}", {})


def test_check_template_reports_syntax_errors() -> None:
    check_template("subject", "Hello {{ name }}")
    with pytest.raises(RenderError, match="subject"):
        check_template("subject", "Hello {{ name ")


def test_fields_of_one_request_share_data_but_not_assignments() -> None:
    templates = {"default": {"subject": "{% set order = 'changed' %}{{ order }}", "body": "{{ order }}"}}
    rendered = render(templates, None, {"order": "A-1"})
    assert rendered.fields == {"subject": "changed", "body": "A-1"}
    with pytest.raises(RenderError, match="undefined"):
        render({"default": {"subject": "{% set x = 1 %}", "body": "{{ x }}"}}, None, {})


def test_a_template_cannot_change_the_data_other_fields_see() -> None:
    data = {"items": ["a"], "meta": {"k": "v"}}
    with pytest.raises(RenderError, match=r"SecurityError|unsafe"):
        render({"default": {"subject": "{{ items.append('b') }}", "body": "{{ items }}"}}, None, data)
    with pytest.raises(RenderError):
        render({"default": {"subject": "{{ meta.update({'k': 'x'}) }}"}}, None, data)
    assert data == {"items": ["a"], "meta": {"k": "v"}}


def test_printing_a_null_fails_like_printing_a_missing_value() -> None:
    with pytest.raises(RenderError, match="null"):
        render_field("body", "Hi {{ recipient.name }}", {"recipient": {"name": None}})
    shown = "Hi {{ recipient.name or 'there' }} {{ code|tojson }}{% if code %}{{ code }}{% endif %}"
    assert render_field("body", shown, {"recipient": {"name": None}, "code": None}) == "Hi there null"
