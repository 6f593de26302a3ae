"""Configuration: /etc/k3srotd/config.yaml, then config.yaml.d/*.yaml in lexical order (K3s's own scheme).

Every key is checked at load: an unknown key, a wrong type or an impossible value is one line naming the key and
the file (exit 2). K3s's own config is read for data-dir and the kube-apiserver service-account settings.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shlex
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from k3srotd.confvalues import (
    _argv,
    _bool,
    _choice,
    _count,
    _duration,
    _nonempty_path,
    _optional_url,
    _path,
    _positive_duration,
    _str,
    _tristate,
    _url,
    _window,
)
from k3srotd.core.durations import format_duration, parse_duration
from k3srotd.core.text import show
from k3srotd.errors import ConfigError

DEFAULT_CONFIG = "/etc/k3srotd/config.yaml"
DEFAULT_K3S_CONFIG = "/etc/rancher/k3s/config.yaml"
DEFAULT_K3S_DATA_DIR = "/var/lib/rancher/k3s"
DEFAULT_SERVER_URL = "https://127.0.0.1:6443"

SYSTEMD_DIR = "/etc/systemd/system"  # where the K3s installer writes k3s.service.env


@dataclasses.dataclass(frozen=True)
class K3sSettings:
    """What k3srotd reads from K3s's config: where its files are and how long its tokens live."""

    data_dir: Optional[str] = None
    node_name: Optional[str] = None
    issuer: Optional[str] = None
    max_token_expiration: Optional[dt.timedelta] = None
    extend_token_expiration: Optional[bool] = None  # None: not set, K3s's (upstream) default is true
    sources: tuple[str, ...] = ()

    @property
    def tokens_may_outlive_grace(self) -> bool:
        """Admission-injected tokens live a year unless extend is false, and max expiration bounds the rest."""
        return self.extend_token_expiration is not False or self.max_token_expiration is None


@dataclasses.dataclass(frozen=True)
class Config:
    k3s_bin: str = "/usr/local/bin/k3s"
    k3s_config: str = DEFAULT_K3S_CONFIG
    k3s_data_dir: str = DEFAULT_K3S_DATA_DIR
    k3s_server_url: str = DEFAULT_SERVER_URL
    kubeconfig: str = "/etc/rancher/k3s/k3s.yaml"
    k3s_service: str = "k3s"
    restart_command: tuple[str, ...] = ("systemctl", "restart", "k3s")
    restart_timeout: dt.timedelta = dt.timedelta(minutes=5)
    key_size: int = 2048
    strategy: str = "staged"
    publish_wait: dt.timedelta = dt.timedelta(minutes=10)
    rotation_interval: dt.timedelta = dt.timedelta(days=90)
    grace_period: dt.timedelta = dt.timedelta(hours=24)
    maintenance_window: Any = None  # k3srotd.window.MaintenanceWindow, parsed lazily
    staging_dir: str = "/opt/k3s"
    state_dir: str = "/var/lib/k3srotd"
    backup_keep: int = 10
    verify_api: bool = True
    log_format: str = "auto"
    metrics_file: str = ""
    hooks_dir: str = "/etc/k3srotd/hooks.d"
    automatic: bool = False  # the daemon starts rotations and prunes on its own only when the operator opted in
    unsafe_short_grace: bool = False  # allows a grace-period under GRACE_FLOOR (tests, demos); every command warns
    # keys of our own beyond the basic table (see the README)
    max_splay: dt.timedelta = dt.timedelta(minutes=15)  # the daemon delays due steps by up to this, per node
    node_name: str = ""  # this server's Node in multi-server coordination; empty: K3s's node-name, else the hostname
    server_name: str = ""  # node-name as resolved once at load: ours, K3s's, the installer's env file; "": hostname
    oidc_issuer_url: str = ""  # overrides K3s's service-account-issuer
    verify_issuer: str = "auto"  # auto | true | false
    issuer_wait_warn: dt.timedelta = dt.timedelta(hours=1)
    issuer_poll: dt.timedelta = dt.timedelta(seconds=10)  # rotate-now asks the public issuer again this often
    verify_tokens: bool = True
    prune_token_metrics: bool = True
    k3s: K3sSettings = K3sSettings()
    sources: tuple[str, ...] = ()

    # Paths derived from the keys above, named once here.
    @property
    def live_key(self) -> Path:
        return Path(self.k3s_data_dir) / "server" / "tls" / "service.key"

    @property
    def current_key(self) -> Path:
        return Path(self.k3s_data_dir) / "server" / "tls" / "service.current.key"

    @property
    def staging_server_dir(self) -> Path:
        return Path(self.staging_dir) / "server"

    @property
    def staging_key(self) -> Path:
        return self.staging_server_dir / "tls" / "service.key"

    @property
    def state_file(self) -> Path:
        return Path(self.state_dir) / "state.json"

    @property
    def lock_file(self) -> Path:
        return Path(self.state_dir) / "lock"

    @property
    def backup_dir(self) -> Path:
        return Path(self.state_dir) / "backups"


# key -> (field name, checker)
SCHEMA: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "k3s-bin": ("k3s_bin", _nonempty_path),
    "k3s-config": ("k3s_config", _nonempty_path),
    "k3s-data-dir": ("k3s_data_dir", _nonempty_path),
    "k3s-server-url": ("k3s_server_url", _url),
    "kubeconfig": ("kubeconfig", _nonempty_path),
    "k3s-service": ("k3s_service", _str),
    "restart-command": ("restart_command", _argv),
    "restart-timeout": ("restart_timeout", _positive_duration),
    "key-size": ("key_size", _choice(2048, 3072, 4096)),
    "strategy": ("strategy", _choice("staged", "direct")),
    "publish-wait": ("publish_wait", _duration),
    "rotation-interval": ("rotation_interval", _positive_duration),
    "grace-period": ("grace_period", _duration),
    "maintenance-window": ("maintenance_window", _window),
    "staging-dir": ("staging_dir", _nonempty_path),
    "state-dir": ("state_dir", _nonempty_path),
    "backup-keep": ("backup_keep", _count),
    "verify-api": ("verify_api", _bool),
    "log-format": ("log_format", _choice("auto", "journal", "json", "console")),
    "metrics-file": ("metrics_file", _path),
    "hooks-dir": ("hooks_dir", _nonempty_path),
    "automatic": ("automatic", _bool),
    "unsafe-short-grace": ("unsafe_short_grace", _bool),
    "max-splay": ("max_splay", _duration),
    "node-name": ("node_name", _str),
    "oidc-issuer-url": ("oidc_issuer_url", _optional_url),
    "verify-issuer": ("verify_issuer", _tristate),
    "issuer-wait-warn": ("issuer_wait_warn", _positive_duration),
    "issuer-poll": ("issuer_poll", _positive_duration),
    "verify-tokens": ("verify_tokens", _bool),
    "prune-token-metrics": ("prune_token_metrics", _bool),
}


def _layered(main: Path, trusted: bool = False) -> tuple[dict[str, tuple[Any, str]], list[str]]:
    """Main file then FILE.d/*.yaml in lexical order; later keys override. Values carry their source file.
    A missing main file means all defaults, also for --config: its drop-ins still count.
    `trusted`: k3srotd's own config, which names what root runs: each file and the folder must be root's."""
    from k3srotd.node.ownership import require_path
    from k3srotd.node.yamlfile import read_yaml

    merged: dict[str, tuple[Any, str]] = {}
    sources: list[str] = []
    files: list[Path] = []
    if main.exists():
        files.append(main)
    dropin = Path(str(main) + ".d")
    if trusted:
        require_path(str(dropin), "the config's drop-in folder")
    if dropin.is_dir():
        files.extend(sorted(p for p in dropin.iterdir() if p.suffix == ".yaml" and p.is_file()))
    for f in files:
        if trusted:
            require_path(str(f), "the config")
        sources.append(str(f))
        for k, v in read_yaml(f).items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise ConfigError(f"{f}: key {show(k)} is not a name; keys are words such as grace-period")
            merged[str(k)] = (v, str(f))
    return merged, sources


def load(path: Optional[str] = None, environ: Optional[dict[str, str]] = None, unit_dir: str = SYSTEMD_DIR) -> Config:
    env = os.environ if environ is None else environ
    explicit = path or env.get("K3SROTD_CONFIG")
    main = Path(os.path.abspath(explicit or DEFAULT_CONFIG))
    raw, sources = _layered(main, trusted=True)
    values: dict[str, Any] = {}
    for key, (value, src) in raw.items():
        if key not in SCHEMA:
            raise ConfigError(f"{src}: unknown key {show(key)}; see `man k3srotd` or the README for the keys")
        field, check = SCHEMA[key]
        try:
            values[field] = check(value)
        except (ValueError, TypeError, OverflowError, ConfigError) as e:
            msg = str(e).split(": ", 1)[-1] if isinstance(e, ConfigError) else str(e)
            raise ConfigError(f"{src}: key {key!r}: {msg}") from None
    if "restart_command" not in values:
        values["restart_command"] = ("systemctl", "restart", values.get("k3s_service", "k3s"))
    service = values.get("k3s_service", "k3s")
    k3s = load_k3s_settings(Path(values.get("k3s_config", DEFAULT_K3S_CONFIG)), unit_flags(service, unit_dir))
    if "k3s_data_dir" not in values:
        values["k3s_data_dir"] = k3s.data_dir or DEFAULT_K3S_DATA_DIR
    name = values.get("node_name") or k3s.node_name
    values["server_name"] = name or _installer_node_name(service, unit_dir) or ""
    cfg = Config(**values, k3s=k3s, sources=tuple(sources))
    _check_grace(cfg, raw)
    return cfg


GRACE_FLOOR = dt.timedelta(hours=1)  # kube-apiserver's own floor for service-account-max-token-expiration


def _installer_node_name(service: str, unit_dir: str) -> Optional[str]:
    """K3S_NODE_NAME in the environment file the K3s installer writes beside the unit (read once, here)."""
    env = Path(unit_dir) / f"{service}.service.env"
    try:
        lines = env.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:  # KEY=value or KEY='value'; only this key is read (the file also holds K3s's token)
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "K3S_NODE_NAME":
            name = value.strip().strip("'\"")
            if name:
                return name
    return None


UNIT_FLAGS = ("kube-apiserver-arg", "data-dir", "node-name")  # the flags of K3s's unit that k3srotd needs


def unit_flags(service: str, unit_dir: str) -> list[tuple[str, str]]:
    """(flag, value) from ExecStart of the unit the K3s installer writes (INSTALL_K3S_EXEC ends up there):
    settings given only as flags are not in K3s's config file, and K3s hides its own argv once running."""
    try:
        text = (Path(unit_dir) / f"{service}.service").read_text(errors="replace")
    except OSError:
        return []
    joined = text.replace("\\\n", " ")  # systemd's line continuation
    line = next((ln for ln in joined.splitlines() if ln.strip().startswith("ExecStart=")), "")
    try:
        words = shlex.split(line.strip()[len("ExecStart=") :])
    except ValueError:
        return []  # unbalanced quotes: systemd would refuse the unit too
    found: list[tuple[str, str]] = []
    for i, w in enumerate(words):
        name, eq, value = w.lstrip("-").partition("=")
        if not w.startswith("-") or name not in UNIT_FLAGS:
            continue
        if not eq:  # `--flag value`
            if i + 1 >= len(words):
                continue
            value = words[i + 1]
        found.append((name, value))
    return found


def _check_grace(cfg: Config, raw: dict[str, tuple[Any, str]]) -> None:
    mte = cfg.k3s.max_token_expiration
    src = raw["grace-period"][1] if "grace-period" in raw else "the default"
    if cfg.grace_period < GRACE_FLOOR and not cfg.unsafe_short_grace:
        raise ConfigError(
            f"{src}: key 'grace-period' ({format_duration(cfg.grace_period)}) is under 1h, kube-apiserver's floor for "
            "token lifetimes, so tokens signed by a pruned key may still be in use; raise it to 1h or more "
            "(`unsafe-short-grace: true` allows it, for tests and demos only)"
        )
    if mte is not None and cfg.grace_period < mte and cfg.grace_period >= GRACE_FLOOR:  # under it: unsafe, warned
        raise ConfigError(
            f"{src}: key 'grace-period' ({cfg.grace_period}) is shorter than K3s's "
            f"service-account-max-token-expiration ({mte}); tokens would outlive their key. Raise grace-period"
        )


def short_grace_warning(cfg: Config) -> Optional[str]:
    """Every command says it loudly while unsafe-short-grace lets a grace-period under 1h through."""
    if cfg.grace_period >= GRACE_FLOOR:
        return None
    return (
        f"UNSAFE: grace-period is {format_duration(cfg.grace_period)} (under 1h) because unsafe-short-grace is true: "
        "a prune may break tokens that are still in use (service-account-max-token-expiration is not enforced either). "
        "For tests and demos only; remove it and set grace-period: 1h or more"
    )


def _bool_text(v: str) -> Optional[bool]:
    return {"true": True, "false": False}.get(v.strip().lower())


def load_k3s_settings(main: Path, flags_given: Sequence[tuple[str, str]] = ()) -> K3sSettings:
    """K3s's config.yaml and .d/: keys as its CLI flags; `key+` appends to a list, as K3s does. Then the flags of
    K3s's unit: K3s puts config-file values before its command line, so a flag's list items come last and a flag's
    scalar wins (urfave/cli's altsrc, pkg/configfilearg)."""
    try:
        raw, sources = _layered(main)
    except ConfigError as e:
        raise ConfigError(f"{e} (K3s's config, read for data-dir and kube-apiserver-arg)") from None
    merged: dict[str, Any] = {}
    for key, (value, _src) in raw.items():
        if key.endswith("+"):
            base = key[:-1]
            prev = merged.get(base, [])
            merged[base] = (prev if isinstance(prev, list) else [prev]) + (
                value if isinstance(value, list) else [value]
            )
        else:
            merged[key] = value
    args = merged.get("kube-apiserver-arg", [])
    if isinstance(args, str):
        args = [args]
    args = (list(args) if isinstance(args, list) else []) + [v for f, v in flags_given if f == "kube-apiserver-arg"]
    for flag, value in flags_given:
        if flag != "kube-apiserver-arg":
            merged[flag] = value
    flags: dict[str, str] = {}
    for a in args if isinstance(args, list) else []:
        if not isinstance(a, str):
            continue  # K3s passes strings only; a nested value is no flag
        name, _, val = a.lstrip("-").partition("=")
        if name == "service-account-issuer" and name in flags:
            continue  # kube-apiserver signs with the first issuer given; later ones are only accepted
        flags[name] = val
    mte = None
    if "service-account-max-token-expiration" in flags:
        try:
            mte = parse_duration(flags["service-account-max-token-expiration"])
        except ValueError:
            src = sources[-1] if sources else str(main)
            raise ConfigError(
                f"{src}: kube-apiserver-arg service-account-max-token-expiration="
                f"{show(flags['service-account-max-token-expiration'])} is not a duration"
            ) from None
    extend = None
    if "service-account-extend-token-expiration" in flags:
        extend = _bool_text(flags["service-account-extend-token-expiration"] or "true")
    data_dir = merged.get("data-dir")
    node_name = merged.get("node-name")
    return K3sSettings(
        data_dir=str(data_dir) if data_dir else None,
        node_name=str(node_name) if node_name else None,
        issuer=flags.get("service-account-issuer") or None,
        max_token_expiration=mte,
        extend_token_expiration=extend,
        sources=tuple(sources),
    )
