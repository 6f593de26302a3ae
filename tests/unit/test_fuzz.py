"""Fuzz: any input gives a result or the product's own error in one line; parse then compose keeps every block."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k3srotd import config
from k3srotd.core import keys
from k3srotd.core.durations import parse_duration
from k3srotd.core.model import State
from k3srotd.errors import K3srotdError
from k3srotd.node.store import CorruptFile, decode_state

FAST = settings(
    max_examples=150,
    deadline=None,
    # too_slow: on a loaded two-core machine input generation alone can pass the health check's bound
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KEY = keys.generate(2048)
PEM_LINES = st.sampled_from(
    [b"-----BEGIN PUBLIC KEY-----\n", b"-----END PUBLIC KEY-----\n", b"-----BEGIN RSA PRIVATE KEY-----\n", b"\r\n"]
)
JUNK = st.lists(st.one_of(st.binary(max_size=80), PEM_LINES, st.just(KEY.raw)), max_size=8).map(b"".join)


def _one_line(e: Exception) -> None:
    assert isinstance(e, K3srotdError) and "\n" not in str(e) and len(str(e)) < 2000


@FAST
@given(JUNK)
def test_key_parser(data: bytes) -> None:
    try:
        kf = keys.parse(data, "/x/service.key")
    except K3srotdError as e:
        _one_line(e)
        return
    assert keys.compose(kf, kf.kids) == b"".join(
        s if isinstance(s, bytes) else s.raw if s.raw.endswith(b"\n") else s.raw + b"\n"
        for s in kf.segments
        if isinstance(s, bytes) or not s.duplicate
    )


@FAST
@given(st.text(max_size=40))
def test_durations(text: str) -> None:
    try:
        d = parse_duration(text)
    except ValueError as e:
        assert "\n" not in str(e) and len(str(e)) < 200
        return
    assert d >= dt.timedelta(0)


VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)


@FAST
@given(st.dictionaries(st.sampled_from(sorted(config.SCHEMA)), VALUES, max_size=3))
def test_config_loader(tmp_path: Path, values: dict) -> None:
    p = tmp_path / "config.yaml"
    p.write_text(json.dumps(values))  # JSON is YAML
    try:
        config.load(str(p), environ={})
    except K3srotdError as e:
        _one_line(e)


@FAST
@given(VALUES)
def test_window(value: object) -> None:
    try:
        config.load.__globals__["_window"](value)
    except (ValueError, TypeError, K3srotdError) as e:
        assert "\n" not in str(e) and len(str(e)) < 600


@FAST
@given(st.one_of(VALUES, st.fixed_dictionaries({"version": st.just(1)}, optional={"keys": VALUES, "pending": VALUES})))
def test_state_loader(value: object) -> None:
    try:
        s = decode_state(value)
    except (CorruptFile, ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        assert len(str(e)) < 10_000
        return
    assert isinstance(s, State)


@pytest.mark.parametrize("text", ["null", "[]", '"x"', "1"])
def test_state_that_is_no_object_is_corrupt(text: str) -> None:
    with pytest.raises(CorruptFile):
        decode_state(json.loads(text))
