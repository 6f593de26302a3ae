"""Config loading: layering, every kind of bad value named with key and file, K3s's own settings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from k3srotd import config
from k3srotd.core.durations import format_duration, parse_duration
from k3srotd.errors import ConfigError


def write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, seconds",
    [("90d", 90 * 86400), ("24h", 86400), ("10m", 600), ("30s", 30), ("1h30m", 5400), ("1h0m0s", 3600), ("0", 0)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "1x", "h", "1h 30m", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(dt.timedelta(days=89, hours=23, minutes=5)) == "89d 23h"
    assert format_duration(dt.timedelta(seconds=250)) == "4m 10s"


def test_defaults_when_no_file(tmp_path: Path) -> None:
    cfg = config.load(str(write(tmp_path / "c.yaml", f"k3s-config: {tmp_path}/none.yaml\n")))
    assert cfg.strategy == "staged" and cfg.key_size == 2048
    assert cfg.grace_period == dt.timedelta(hours=24)
    assert cfg.restart_command == ("systemctl", "restart", "k3s")
    assert cfg.k3s_data_dir == "/var/lib/rancher/k3s"
    assert cfg.live_key == Path("/var/lib/rancher/k3s/server/tls/service.key")


def test_dropins_override_in_lexical_order_and_env_names_the_file(tmp_path: Path) -> None:
    main = write(tmp_path / "k.yaml", f"grace-period: 48h\nk3s-service: k3s-main\nk3s-config: {tmp_path}/none\n")
    write(tmp_path / "k.yaml.d" / "20-b.yaml", "grace-period: 72h\n")
    write(tmp_path / "k.yaml.d" / "10-a.yaml", "grace-period: 36h\nkey-size: 4096\n")
    write(tmp_path / "k.yaml.d" / "ignored.txt", "grace-period: nonsense\n")
    cfg = config.load(None, {"K3SROTD_CONFIG": str(main)})
    assert cfg.grace_period == dt.timedelta(hours=72)
    assert cfg.key_size == 4096
    assert cfg.restart_command == ("systemctl", "restart", "k3s-main")


@pytest.mark.parametrize(
    "text, words",
    [
        ("gracee-period: 24h\n", "unknown key 'gracee-period'"),
        ("grace-period: soon\n", "key 'grace-period'"),
        ("key-size: 1024\n", "key 'key-size'"),
        ("strategy: yolo\n", "key 'strategy'"),
        ("restart-command: systemctl restart k3s\n", "key 'restart-command'"),
        ("verify-api: yes please\n", "key 'verify-api'"),
        ("backup-keep: 0\n", "key 'backup-keep'"),
        ("state-dir: relative/path\n", "key 'state-dir'"),
        ("k3s-server-url: http://127.0.0.1:6443\n", "key 'k3s-server-url'"),
        ("maintenance-window: {days: [someday], start: '02:00', end: '03:00'}\n", "key 'maintenance-window'"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("grace-period: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, words: str) -> None:
    p = write(tmp_path / "config.yaml", text)
    with pytest.raises(ConfigError) as e:
        config.load(str(p))
    assert str(p) in str(e.value) and words in str(e.value)
    assert e.value.exit_code == 2
    assert "\n" not in str(e.value)


def test_a_missing_explicit_main_file_means_defaults_and_its_drop_ins(tmp_path: Path) -> None:
    main = tmp_path / "nope.yaml"
    assert config.load(str(main)).grace_period == dt.timedelta(hours=24)
    write(tmp_path / "nope.yaml.d" / "10-grace.yaml", "grace-period: 48h\n")
    cfg = config.load(str(main))
    assert cfg.grace_period == dt.timedelta(hours=48)
    assert cfg.sources == (str(tmp_path / "nope.yaml.d" / "10-grace.yaml"),)


def test_k3s_settings_and_grace_shorter_than_token_expiration(tmp_path: Path) -> None:
    k3s = write(
        tmp_path / "k3s" / "config.yaml",
        "data-dir: /srv/k3s\nkube-apiserver-arg:\n  - service-account-issuer=https://issuer.example\n"
        "  - service-account-issuer=https://old-issuer.example\n"
        "  - service-account-max-token-expiration=48h\n",
    )
    write(
        tmp_path / "k3s" / "config.yaml.d" / "50.yaml",
        "kube-apiserver-arg+:\n  - service-account-extend-token-expiration=false\n",
    )
    p = write(tmp_path / "c.yaml", f"k3s-config: {k3s}\ngrace-period: 72h\n")
    cfg = config.load(str(p))
    assert cfg.k3s_data_dir == "/srv/k3s"
    assert cfg.k3s.issuer == "https://issuer.example"
    assert cfg.k3s.max_token_expiration == dt.timedelta(hours=48)
    assert cfg.k3s.extend_token_expiration is False
    assert not cfg.k3s.tokens_may_outlive_grace
    p.write_text(f"k3s-config: {k3s}\ngrace-period: 24h\n")
    with pytest.raises(ConfigError, match="shorter than K3s's service-account-max-token-expiration"):
        config.load(str(p))


INSTALLER_UNIT = """[Unit]
Description=Lightweight Kubernetes

[Service]
Type=notify
EnvironmentFile=-/etc/systemd/system/k3s.service.env
ExecStartPre=/bin/sh -xc '! /usr/bin/systemctl is-enabled --quiet nm-cloud-setup.service'
ExecStart=/usr/local/bin/k3s \\
    server \\
\t'--data-dir' \\
\t'/srv/k3s' \\
\t'--kube-apiserver-arg=service-account-extend-token-expiration=false' \\
\t'--kube-apiserver-arg' \\
\t'service-account-max-token-expiration=48h' \\

"""


def test_k3s_flags_in_the_installers_unit_count_like_its_config(tmp_path: Path) -> None:
    """INSTALL_K3S_EXEC puts flags into the unit's ExecStart (the installer's layout, one quoted word a line), not
    into K3s's config file: k3srotd reads them there, after the config file's values, as K3s orders them."""
    units = tmp_path / "systemd"
    write(units / "k3s.service", INSTALLER_UNIT)
    k3s = write(tmp_path / "k3s" / "config.yaml", "kube-apiserver-arg:\n  - service-account-issuer=https://a.example\n")
    p = write(tmp_path / "c.yaml", f"k3s-config: {k3s}\ngrace-period: 72h\n")
    cfg = config.load(str(p), environ={}, unit_dir=str(units))
    assert cfg.k3s_data_dir == "/srv/k3s"
    assert cfg.k3s.issuer == "https://a.example"
    assert cfg.k3s.max_token_expiration == dt.timedelta(hours=48)
    assert cfg.k3s.extend_token_expiration is False
    p.write_text(f"k3s-config: {k3s}\ngrace-period: 24h\n")
    with pytest.raises(ConfigError, match="shorter than K3s's service-account-max-token-expiration"):
        config.load(str(p), environ={}, unit_dir=str(units))
    # without the unit, the same K3s config says nothing of token lifetimes
    assert config.load(str(p), environ={}, unit_dir=str(tmp_path / "none")).k3s.max_token_expiration is None
