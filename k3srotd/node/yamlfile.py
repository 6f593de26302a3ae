"""A YAML config file read strictly: bounded, UTF-8, no duplicate keys, no unbounded nesting; one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k3srotd.core.text import show
from k3srotd.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror}); fix its permissions or path") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: is larger than 1 MiB; it is no k3srotd config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: is not UTF-8 (byte {e.start}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader that refuses duplicate keys
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", "") or ""
        why = f" ({problem[:80]})" if "duplicate key" in problem else ""
        raise ConfigError(f"{path}: is not valid YAML{where}{why}; fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{path}: is nested too deeply; it is no k3srotd config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of keys such as `grace-period: 24h`")
    return data


def _loader() -> Any:
    """yaml.SafeLoader, except that a key given twice in one mapping is an error (YAML 1.2 says keys are unique;
    PyYAML keeps the last one silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {show(key)}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader
