from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from immortal import Names
from immortal._names import decode_token, encode_token, validate_tenant

KV_KEY_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


@given(st.text())
def test_any_string_encodes_to_a_valid_token_and_back(value: str) -> None:
    token = encode_token(value)
    assert token, "a token is never empty"
    assert set(token) <= KV_KEY_CHARS  # so no ".", "*", ">", whitespace, "/" either
    assert decode_token(token) == value


@given(st.text(), st.text())
def test_distinct_strings_get_distinct_tokens(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


@pytest.mark.parametrize(
    ("raw", "token"),
    [
        ("orders", "orders"),
        ("a.b", "a=2Eb"),
        ("x y", "x=20y"),
        ("", "="),
        ("=", "=3D"),
        ("é", "=C3=A9"),
    ],
)
def test_known_encodings(raw: str, token: str) -> None:
    assert encode_token(raw) == token


def test_subjects_put_the_user_tokens_in_one_token_each() -> None:
    n = Names("imm")
    subject = n.history_subject("acme", "order.42 >*", "run-1")
    assert subject.split(".") == ["imm", "hist", "acme", "order=2E42=20=3E=2A", "run-1"]
    assert n.parse_input_subject(n.input_subject("acme", "q.1", "start")) == (
        "acme",
        "q.1",
        "start",
    )
    assert n.parse_queue_key(n.queue_key("acme", "emails.eu")) == ("acme", "emails.eu")


def test_prefix_changes_every_name() -> None:
    n = Names("blue")
    assert n.stream_in == "BLUE_IN" and n.stream_runs == "BLUE_RUNS"
    assert n.task_subject("t", "q", "wf") == "blue.task.t.q.wf"
    assert n.bucket_hubs == "blue-hubs"
    # Pushed workflow tasks: a core subject outside every stream, one per worker and one
    # per queue; a worker id with a dot stays one token.
    assert n.push_subject("t", "q.1") == "blue.push.t.q=2E1"
    assert n.push_subject("t", "q", "w.1") == "blue.push.t.q.w=2E1"
    assert n.workflow_history_filter("t", "order.7") == "blue.hist.t.order=2E7.*"
    with pytest.raises(ValueError, match="invalid prefix"):
        Names("no.dots")


@pytest.mark.parametrize("bad", ["", "Acme", "a_b", "a.b", "-x", "x" * 64])
def test_tenants_are_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid tenant"):
        validate_tenant(bad)
