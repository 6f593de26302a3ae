"""The metrics file, read back with prometheus_client's own text parser."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from k3srotd.output.metrics import MetricsSnapshot, render, write_metrics

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client is in the test extras")

SNAPSHOT = MetricsSnapshot(
    phase="published",
    signer_key_age_seconds=7776000.5,
    keys={"signer": 1, "verify": 2},
    last_success={"publish": 1704506400.0, "rotate": 1696557600},
    failures={"promote": 2},
    next_action={"promote": 1704507000.0},
)


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_family_with_help_and_type(tmp_path: Path) -> None:
    path = tmp_path / "k3srotd.prom"
    write_metrics(path, SNAPSHOT)
    fams = families(path.read_text())
    kinds = {name: (f.type, f.documentation) for name, f in fams.items()}  # type: ignore[attr-defined]
    assert set(kinds) == {
        "k3srotd_signer_key_age_seconds",
        "k3srotd_keys",
        "k3srotd_last_success_timestamp_seconds",
        "k3srotd_step_failures",  # a counter's family name drops _total; its sample keeps it
        "k3srotd_next_action_timestamp_seconds",
        "k3srotd_phase",
    }
    assert kinds["k3srotd_step_failures"][0] == "counter"
    assert all(kind == "gauge" for name, (kind, _) in kinds.items() if name != "k3srotd_step_failures")
    assert all(doc for _, doc in kinds.values())


def test_values_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "k3srotd.prom"
    write_metrics(str(path), SNAPSHOT)
    got = samples(path.read_text())
    assert got == {
        ("k3srotd_signer_key_age_seconds", ()): 7776000.5,
        ("k3srotd_keys", (("role", "signer"),)): 1,
        ("k3srotd_keys", (("role", "verify"),)): 2,
        ("k3srotd_last_success_timestamp_seconds", (("step", "publish"),)): 1704506400.0,
        ("k3srotd_last_success_timestamp_seconds", (("step", "rotate"),)): 1696557600,
        ("k3srotd_step_failures_total", (("step", "publish"),)): 0,
        ("k3srotd_step_failures_total", (("step", "promote"),)): 2,
        ("k3srotd_step_failures_total", (("step", "prune"),)): 0,
        ("k3srotd_step_failures_total", (("step", "rollback"),)): 0,
        ("k3srotd_step_failures_total", (("step", "rotate"),)): 0,
        ("k3srotd_next_action_timestamp_seconds", (("action", "promote"),)): 1704507000.0,
        ("k3srotd_phase", (("phase", "idle"),)): 0,
        ("k3srotd_phase", (("phase", "published"),)): 1,
        ("k3srotd_phase", (("phase", "promoted"),)): 0,
    }


def test_a_fresh_daemon_has_no_timestamps_but_all_counters() -> None:
    got = samples(render(MetricsSnapshot(phase="idle")))
    assert ("k3srotd_phase", (("phase", "idle"),)) in got and got[("k3srotd_phase", (("phase", "idle"),))] == 1
    assert not any(name.endswith("timestamp_seconds") or name.endswith("age_seconds") for name, _ in got)
    assert sum(1 for name, _ in got if name == "k3srotd_step_failures_total") == 5
    assert got[("k3srotd_keys", (("role", "verify"),))] == 0


def test_special_numbers_are_valid_exposition() -> None:
    got = samples(render(MetricsSnapshot(phase="idle", signer_key_age_seconds=float("inf"))))
    assert got[("k3srotd_signer_key_age_seconds", ())] == float("inf")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"phase": "rotating"}, "unknown phase 'rotating'"),
        ({"phase": "idle", "keys": {"retired": 1}}, "unknown role 'retired'"),
        ({"phase": "idle", "failures": {"restart": 1}}, "unknown step 'restart'"),
        ({"phase": "idle", "next_action": {"rollback": 1.0}}, "unknown action 'rollback'"),
    ],
)
def test_unknown_labels_are_refused(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        MetricsSnapshot(**kwargs)  # type: ignore[arg-type]


def test_written_atomically_0644_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "k3srotd.prom"
    path.write_text("old\n")
    old_umask = os.umask(0o077)
    try:
        write_metrics(path, SNAPSHOT)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k3srotd.prom"], "no temporary file is left"
    assert "k3srotd_phase" in path.read_text()


def test_a_failed_write_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_metrics(tmp_path / "missing-dir" / "k3srotd.prom", SNAPSHOT)
    (tmp_path / "k3srotd.prom").mkdir()  # a directory in the way: the rename fails after the temp file exists
    with pytest.raises(OSError):
        write_metrics(tmp_path / "k3srotd.prom", SNAPSHOT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k3srotd.prom"]


def test_readers_never_see_half_a_file(tmp_path: Path) -> None:
    """A scraper reading while the daemon rewrites sees one whole file each time."""
    path = tmp_path / "k3srotd.prom"
    write_metrics(path, SNAPSHOT)
    stop = threading.Event()
    seen: list[int] = []

    def scrape() -> None:
        while not stop.is_set():
            seen.append(len(samples(path.read_text())))

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for i in range(300):
            write_metrics(path, MetricsSnapshot(phase="idle", signer_key_age_seconds=float(i)))
            write_metrics(path, SNAPSHOT)
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= {len(samples(render(SNAPSHOT))), 11}
