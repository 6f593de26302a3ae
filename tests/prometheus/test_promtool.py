"""Prometheus's own tools on what k3srotd ships: the metrics file that a rotation writes passes
`promtool check metrics`, and the packaged alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`, tests/prometheus/k3srotd.rules.test.yml)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from k3srotd_node import Node

from k3srotd.output.metrics import MetricsSnapshot, render, write_metrics

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RULES = REPO / "packaging/prometheus/k3srotd.rules.yml"
RULES_TEST = HERE / "k3srotd.rules.test.yml"
ALERTS = {
    "K3srotdSignerKeyTooOld",
    "K3srotdStepFailed",
    "K3srotdRollbackFailed",
    "K3srotdStepStuck",
    "K3srotdPruneHeld",
}


def run(promtool: Path, *args: str, stdin: str = "", cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def check_metrics(promtool: Path, text: str) -> None:
    """promtool reads the exposition text on stdin; it prints nothing and exits 0 when it has no complaint."""
    res = run(promtool, "check", "metrics", stdin=text)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", ""), text + res.stdout + res.stderr


def test_metrics_file_of_a_rotation_passes_promtool(promtool: Path, node: Node, tmp_path: Path) -> None:
    metrics = tmp_path / "textfile" / "k3srotd.prom"
    metrics.parent.mkdir()
    node.write_config(metrics_file=str(metrics))
    res = node.k3srotd("rotate-now")
    assert res.returncode == 0, res.stderr[-3000:]
    text = metrics.read_text()
    assert 'k3srotd_phase{phase="promoted"} 1' in text and 'k3srotd_keys{role="verify"} 1' in text
    check_metrics(promtool, text)


@pytest.mark.parametrize(
    "snapshot",
    [
        MetricsSnapshot(phase="idle"),  # a fresh node: families without samples
        MetricsSnapshot(
            phase="published",
            signer_key_age_seconds=7776000.5,
            keys={"signer": 1, "verify": 2},
            last_success={"publish": 1704506400.0, "rotate": 1696557600},
            failures={"promote": 2, "rollback": 1},
            next_action={"promote": 1704507000.0},
        ),
    ],
    ids=["fresh", "published"],
)
def test_metrics_file_in_every_shape_passes_promtool(promtool: Path, snapshot: MetricsSnapshot, tmp_path: Path) -> None:
    path = tmp_path / "k3srotd.prom"
    write_metrics(path, snapshot)
    check_metrics(promtool, path.read_text())


def test_rules_pass_promtool_check_rules(promtool: Path) -> None:
    res = run(promtool, "check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in res.stdout, res.stdout


def test_rules_unit_tests_pass(promtool: Path) -> None:
    res = run(promtool, "test", "rules", RULES_TEST.name)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_every_alert_is_shown_firing_and_uses_only_metrics_k3srotd_writes() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c["exp_alerts"]}
    assert fired == ALERTS, "each alert has a case where it fires"
    written = set(re.findall(r"^# TYPE (\S+) ", render(MetricsSnapshot(phase="idle")), re.M))
    for r in rules:
        used = set(re.findall(r"\bk3srotd_[a-z_]+", r["expr"]))
        assert used and used <= written, (r["alert"], used - written)
    for t in tests:
        for s in t["input_series"]:
            assert s["series"].split("{")[0] in written, s["series"]
