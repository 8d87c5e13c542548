"""Codecs and pgtide.notify / notify_many against a real server."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from listen_helpers import Collector

import pgtide
from pgtide import codecs
from pgtide.notify import MAX_PAYLOAD_BYTES

SEED_002 = [
    ('"WARNING: Something really bad happened"', "WARNING: Something really bad happened"),
    (
        '{"topic": "abc", "data": "some data", "something": "else"}',
        {"topic": "abc", "data": "some data", "something": "else"},
    ),
    (
        '{"topic": "xyz", "notice": "update", "data": [2, "stuff"]}',
        {"topic": "xyz", "notice": "update", "data": [2, "stuff"]},
    ),
    ("[1,2,3,4,5]", [1, 2, 3, 4, 5]),
]


@pytest.mark.parametrize("codec", ["json", "literal"])
@pytest.mark.parametrize(("raw", "value"), SEED_002)
def test_seed_002_payloads_decode_to_python_values(codec: str, raw: str, value: Any) -> None:
    decode = codecs.decoder(codec)  # type: ignore[arg-type]
    assert decode is not None
    assert decode(raw) == value
    assert type(decode(raw)) is type(value)


def test_json_codec_falls_back_to_text_and_knows_true_and_null() -> None:
    decode = codecs.decoder("json")
    assert decode is not None
    assert decode("plain text") == "plain text"
    assert decode("") == ""
    assert decode('{"ok": true, "none": null}') == {"ok": True, "none": None}
    assert decode("[" * 5000) == "[" * 5000  # too deep for the parser: the text, no crash


def test_literal_codec_rejects_what_python_does_not_parse() -> None:
    decode = codecs.decoder("literal")
    assert decode is not None
    for bad in ("plain text", '{"ok": true}', "null", "", "__import__('os')"):
        with pytest.raises((ValueError, SyntaxError)):
            decode(bad)


def test_text_codec_is_identity_and_unknown_codec_is_a_clear_error() -> None:
    assert codecs.decoder("text") is None
    assert codecs.decoder(str.upper) is str.upper
    with pytest.raises(pgtide.ConfigError, match="use 'json', 'text', 'literal'"):
        codecs.decoder("yaml")  # type: ignore[arg-type]


def test_encode_sends_str_as_is_and_other_values_as_json() -> None:
    assert codecs.encode("hi") == "hi"
    assert json.loads(codecs.encode({"id": 1, "tags": ["a"]})) == {"id": 1, "tags": ["a"]}
    with pytest.raises(pgtide.InvalidPayload, match="JSON"):
        codecs.encode(object())


def test_oversized_payload_is_refused_before_sending(dsn: str) -> None:
    got = Collector()
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("big", got)
        with pytest.raises(pgtide.PayloadTooLarge) as caught:
            pgtide.notify("big", "x" * MAX_PAYLOAD_BYTES, dsn=dsn)
        assert "8000 bytes" in str(caught.value) and "big" in str(caught.value)
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, pgtide.PgtideError)
        # multi-byte characters count as bytes: 4000 x 2 bytes is too large as well
        with pytest.raises(pgtide.PayloadTooLarge, match="8000 bytes"):
            pgtide.notify("big", "é" * 4000, dsn=dsn)
        with pytest.raises(pgtide.PayloadTooLarge):
            pgtide.notify_many([("big", "ok"), ("big", "y" * 9000)], dsn=dsn)
        pgtide.notify("big", "z" * (MAX_PAYLOAD_BYTES - 1), dsn=dsn)
        got.wait_for(1)
        assert got.payloads == ["z" * (MAX_PAYLOAD_BYTES - 1)]  # nothing else was sent


def test_bad_channel_names_are_clear_errors(dsn: str) -> None:
    for bad in ("", "x" * 64, "é" * 32, "nul\x00"):
        with pytest.raises(pgtide.InvalidChannel):
            pgtide.notify(bad, "x", dsn=dsn)
    with pytest.raises(pgtide.InvalidPayload, match="NUL"):
        pgtide.notify("ok", "a\x00b", dsn=dsn)


def test_notify_inside_the_callers_transaction(dsn: str) -> None:
    got = Collector()
    with pgtide.Listener(dsn=dsn) as listener, psycopg.connect(dsn) as conn:
        listener.subscribe("tx", got)
        pgtide.notify("tx", {"n": 1}, conn=conn)
        conn.rollback()  # never delivered
        pgtide.notify("tx", {"n": 2}, conn=conn)
        conn.execute("SELECT 1")
        assert len(got) == 0  # not before the commit
        conn.commit()
        assert got.wait_for(1) == [{"n": 2}]


def test_notify_many_sends_in_order_in_one_transaction(dsn: str) -> None:
    got = Collector()
    with pgtide.Listener(dsn=dsn) as listener:
        listener.subscribe("many", got)
        sent = pgtide.notify_many([("many", {"i": i}) for i in range(500)], dsn=dsn)
        assert sent == 500
        assert got.wait_for(500) == [{"i": i} for i in range(500)]
        assert len({n.pid for n in got.notes}) == 1
        assert pgtide.notify_many([], dsn=dsn) == 0
