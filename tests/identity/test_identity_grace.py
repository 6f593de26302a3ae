"""The grace floor: a grace-period under 1 h (kube-apiserver's floor for token lifetimes) is a config error unless
`unsafe-short-grace: true`, and then every command says so loudly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from k3srotd import config
from k3srotd.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "grace", "error"),
    [
        ("grace-period: 1h\n", dt.timedelta(hours=1), None),
        ("grace-period: 59m\n", None, "key 'grace-period' \\(59m\\) is under 1h"),
        ("grace-period: 0s\n", None, "unsafe-short-grace: true"),
        ("grace-period: 5s\nunsafe-short-grace: true\n", dt.timedelta(seconds=5), None),
        ("grace-period: 5s\nunsafe-short-grace: false\n", None, "is under 1h"),
        ("unsafe-short-grace: yes please\n", None, "key 'unsafe-short-grace'"),
    ],
)
def test_the_grace_floor(tmp_path: Path, text: str, grace: dt.timedelta, error: str) -> None:
    main = tmp_path / "c.yaml"
    main.write_text(f"k3s-config: {tmp_path}/none\n" + text)
    if error is None:
        assert config.load(str(main)).grace_period == grace
        return
    with pytest.raises(ConfigError, match=error) as e:
        config.load(str(main))
    assert str(e.value).startswith(f"{main}: ")


def test_short_grace_warning_only_under_the_floor(tmp_path: Path) -> None:
    main = tmp_path / "c.yaml"
    main.write_text(f"k3s-config: {tmp_path}/none\ngrace-period: 5s\nunsafe-short-grace: true\n")
    text = config.short_grace_warning(config.load(str(main)))
    assert text is not None and text.startswith("UNSAFE: grace-period is 5s") and "grace-period: 1h" in text
    main.write_text(f"k3s-config: {tmp_path}/none\ngrace-period: 2h\nunsafe-short-grace: true\n")
    assert config.short_grace_warning(config.load(str(main))) is None


def test_every_command_warns_and_a_short_grace_without_the_key_is_exit_2(plain_node) -> None:
    node = plain_node
    node.write_config(grace_period="5s")  # the test Node sets unsafe-short-grace: true
    for args in (("status",), ("status", "--json"), ("doctor",), ("prune", "--dry-run")):
        proc = node.k3srotd(*args)
        assert "k3srotd: UNSAFE: grace-period is 5s" in proc.stderr, args
    node.write_config(unsafe_short_grace=False)
    proc = node.k3srotd("status")
    assert proc.returncode == 2 and "key 'grace-period' (5s) is under 1h" in proc.stderr


def test_under_the_floor_the_max_expiration_check_is_waived_too(tmp_path: Path) -> None:
    """Any max expiration kube-apiserver accepts is 1h or more: a grace under 1h could never satisfy it."""
    k3s = tmp_path / "k3s.yaml"
    k3s.write_text("kube-apiserver-arg:\n- service-account-max-token-expiration=48h\n")
    main = tmp_path / "c.yaml"
    main.write_text(f"k3s-config: {k3s}\ngrace-period: 5s\nunsafe-short-grace: true\n")
    assert config.load(str(main)).grace_period == dt.timedelta(seconds=5)
    main.write_text(f"k3s-config: {k3s}\ngrace-period: 2h\nunsafe-short-grace: true\n")
    with pytest.raises(ConfigError, match="service-account-max-token-expiration"):
        config.load(str(main))
