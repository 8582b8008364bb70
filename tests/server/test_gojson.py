"""JSON as daprd's Go code reads and writes it (statelab.server.gojson)."""

from __future__ import annotations

import pytest

from statelab.server import gojson


@pytest.mark.parametrize(
    ("value", "go", "jsoniter"),
    [
        (1.0, "1", "1"),
        (0.1, "0.1", "0.1"),
        (3.14159265, "3.14159265", "3.141593"),
        (12345678901234567890.0, "12345678901234567000", "12345678901234567000"),
        (1e-7, "1e-7", "0"),
        (1.5e-7, "1.5e-7", "0"),
        (1e21, "1e+21", "1e+21"),
        (-2.5, "-2.5", "-2.5"),
    ],
)
def test_floats_are_formatted_like_go_and_jsoniter(value, go, jsoniter):
    assert gojson.go_float(value) == go
    assert gojson.jsoniter_float(value) == jsoniter


def test_encoding_json_sorts_keys_and_escapes_html():
    assert gojson.dumps_go({"b": "<&>", "a": [1, None, True]}) == b'{"a":[1,null,true],"b":"\\u003c\\u0026\\u003e"}'


def test_jsoniter_keeps_document_order_and_does_not_escape():
    assert gojson.dumps_jsoniter({"b": "<&>", "a": 1}) == b'{"b":"<&>","a":1}'


def test_decoder_reads_the_first_value_and_ignores_trailing_bytes():
    assert gojson.loads(b' [{"key": "k"}] trailing garbage') == [{"key": "k"}]


def test_numbers_become_floats_as_in_go():
    assert gojson.loads(b"[1, 2.5]") == [1.0, 2.5]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "EOF"),
        (b"   ", "EOF"),
        (b"[1,", "unexpected EOF"),
        (b"NaN", "invalid character 'N' looking for beginning of value"),
        (b"1e400", "json: cannot unmarshal number 1e400 into Go value of type float64"),
    ],
)
def test_bodies_go_rejects_are_rejected_with_gos_words(body, message):
    with pytest.raises(gojson.GoJSONError, match=message):
        gojson.loads(body)


def test_lone_surrogates_become_the_replacement_character():
    assert gojson.dumps_go(gojson.loads(b'"\\ud800x"')) == '"\ufffdx"'.encode()
