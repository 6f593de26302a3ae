"""tokenmetrics: the Prometheus text parser, growth across kube-apiserver restarts, the prune verdict. Tables of
literal times; the history file in a temp dir."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import pytest

from k3srotd.identity import tokenmetrics as tm

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
STALE, LEGACY = tm.STALE, tm.LEGACY[0]
GRACE = dt.timedelta(hours=24)


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def r(hours: float, start: Optional[float], stale: float = 0, legacy: float = 0) -> tm.Reading:
    return tm.Reading(at(hours), start, {STALE: stale, LEGACY: legacy})


def test_parse_prometheus_text() -> None:
    text = """# HELP serviceaccount_stale_tokens_total [ALPHA] Cumulative stale projected service account tokens used
# TYPE serviceaccount_stale_tokens_total counter
serviceaccount_stale_tokens_total 3
serviceaccount_legacy_tokens_total{a="x y",b="q\\"}{"} 2 1700000000000
serviceaccount_legacy_tokens_total{a="z"} 1.5e1
process_start_time_seconds 1.70000000012e+09
weird_nan NaN

apiserver_request_total{code="200",verb="GET"} +Inf
"""
    got = tm.parse(text)
    assert got[STALE] == 3
    assert got[LEGACY] == 17
    assert got[tm.START] == pytest.approx(1700000000.12)
    assert "weird_nan" not in got
    assert got["apiserver_request_total"] == float("inf")


def test_parse_agrees_with_prometheus_client(k3s_server) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    k3s_server.add_token_uses(stale=4, legacy_manual=2)
    text = k3s_server.metrics_text()
    theirs = {f.name: sum(s.value for s in f.samples) for f in parser.text_string_to_metric_families(text)}
    ours = tm.parse(text)
    assert ours[STALE] == 4 and ours["serviceaccount_legacy_manual_token_uses_total"] == 2
    for name, value in ours.items():
        assert theirs.get(name, theirs.get(name.removesuffix("_total"))) == value


@pytest.mark.parametrize("line", ["serviceaccount_stale_tokens_total", 'x{a="1" 3', "x abc"])
def test_parse_rejects_garbage(line: str) -> None:
    with pytest.raises(tm.MetricsError, match="line 1"):
        tm.parse(line)


# readings: (hours, process start as epoch seconds or None, stale)
S1, S2 = at(-48).timestamp(), at(1).timestamp()  # one kube-apiserver, then one started at hour 1


@pytest.mark.parametrize(
    ("history", "now", "amount", "known", "since_h"),
    [
        # a reading a grace-period ago, same process: plain difference
        ([r(-30, S1, 5), r(-1, S1, 7)], r(0, S1, 9), 2 + 2, True, -30),
        ([r(-24, S1, 5)], r(0, S1, 5), 0, True, -24),
        # a restart in between (new start time): the new process's count is growth
        ([r(-25, S1, 5), r(0.5, S1, 6)], r(2, S2, 3), 1 + 3, True, -25),
        # a restart seen only as a lower value (no start times)
        ([r(-25, None, 5)], r(0, None, 2), 2, True, -25),
        # no reading that old, but the process started inside the window: all its count is growth
        ([r(2, S2, 1)], r(3, S2, 4), 4, True, 2),
        # no reading that old, process older than the window, counter non-zero: cannot tell
        ([r(-2, S1, 5)], r(0, S1, 5), 0, False, -2),
        ([], r(0, S1, 5), 0, False, 0),
        ([], r(0, S1, 0), 0, True, 0),
        # readings older than the base do not count
        ([r(-50, S1, 0), r(-30, S1, 5), r(-10, S1, 5)], r(0, S1, 5), 0, True, -30),
    ],
)
def test_growth(history: list, now: tm.Reading, amount: float, known: bool, since_h: float) -> None:
    g = tm.growth(history, now, now.at - GRACE, STALE)
    assert (g.amount, g.known, g.since) == (amount, known, at(since_h))


def test_verdict_names_the_counter_and_the_amount() -> None:
    history = [r(-25, S1, 0, 1)]
    both = (tm.STALE, *tm.LEGACY)
    assert tm.verdict(history, r(0, S1, 0, 1), GRACE, both) is None
    v = tm.verdict(history, r(0, S1, 3, 4), GRACE, both)
    assert v is not None
    assert f"{STALE} grew by 3 since 2029-12-31T11:00:00Z" in v and f"{LEGACY} grew by 3" in v
    assert "within the last grace-period, 1d" in v
    # only the stale counter gates: legacy growth alone holds nothing (the Secret scan names the key instead)
    assert tm.verdict(history, r(0, S1, 0, 4), GRACE, tm.GATING) is None
    assert "cannot tell" in (tm.verdict([], tm.Reading(T0, S1, {}), GRACE, tm.GATING) or "")
    unknown = tm.verdict([], r(0, S1, 5), GRACE, tm.GATING)
    assert unknown is not None and "next attempt can tell" in unknown


def test_history_keeps_the_window_and_the_last_reading_before_it(tmp_path: Path) -> None:
    h = tm.History(str(tmp_path / "state"))
    assert h.load() == []
    for hours in (-60, -40, -30, -10, -1):
        h.add(r(hours, S1, 1), keep_after=at(hours) - GRACE)
    h.add(r(0, S1, 2), keep_after=at(0) - GRACE)
    assert [x.at for x in h.load()] == [at(-30), at(-10), at(-1), at(0)]
    assert (tmp_path / "state" / tm.FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / "state" / tm.FILE).write_text("{not json")
    assert h.load() == []


class FakeAPI:
    server_url = "https://127.0.0.1:6443"

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        assert (method, path) == ("GET", "/metrics")
        return self.status, self.body


def test_read_keeps_only_the_token_counters() -> None:
    got = tm.read(FakeAPI(200, b"process_start_time_seconds 12\nfoo 1\nserviceaccount_stale_tokens_total 2\n"), T0)
    assert got == tm.Reading(T0, 12.0, {STALE: 2.0})
    with pytest.raises(tm.MetricsError, match="HTTP 403"):
        tm.read(FakeAPI(403, b""), T0)
