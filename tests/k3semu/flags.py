"""Command-line flags as urfave/cli (Go's flag package) parses them, and K3s's config files.

Flags: `--name value`, `--name=value`, `-n value`, one or two dashes; booleans take no value (or `=false`);
parsing stops at the first argument that is not a flag. An unknown flag is `flag provided but not defined`.

Config (pkg/configfilearg): the main YAML file, then `<file>.d/*.yaml` in lexical order, later keys
overriding earlier ones, `key+:` appending to a list. Keys are the long flag names; keys that are not flags
of the command are ignored. Values from the command line win; list flags collect both.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml


class UsageError(Exception):
    pass


@dataclass(frozen=True)
class Flag:
    name: str
    aliases: Tuple[str, ...] = ()
    kind: str = "string"  # string | int | bool | slice
    default: Any = None
    env: Optional[str] = None


def _convert(flag: Flag, raw: Any, source: str) -> Any:
    if flag.kind == "int":
        try:
            return int(raw)
        except (TypeError, ValueError) as exc:
            raise UsageError(f'invalid value "{raw}" for flag -{flag.name}: parse error ({source})') from exc
    if flag.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw)
        if text in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if text in ("0", "f", "F", "FALSE", "false", "False"):
            return False
        raise UsageError(f'invalid boolean value "{raw}" for -{flag.name}: parse error')
    if flag.kind == "slice":
        if isinstance(raw, list):
            return [str(x) for x in raw]
        return [x for x in str(raw).split(",") if x] if source == "env" else [str(raw)]
    return str(raw)


def parse(flags: Sequence[Flag], args: Sequence[str]) -> Tuple[Dict[str, Any], List[str], set]:
    """Return (values by flag name, remaining arguments, names set on the command line)."""
    by_name = {}
    for f in flags:
        by_name[f.name] = f
        for a in f.aliases:
            by_name[a] = f
    values: Dict[str, Any] = {f.name: ([] if f.kind == "slice" else f.default) for f in flags}
    given: set = set()
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.lstrip("-").partition("=")
        flag = by_name.get(name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if flag.kind == "bool":
            val: Any = _convert(flag, value if eq else True, "cli")
        else:
            if not eq:
                i += 1
                if i >= len(args):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = args[i]
            val = _convert(flag, value, "cli")
        if flag.kind == "slice":
            values[flag.name] = ([] if flag.name not in given else values[flag.name]) + val
        else:
            values[flag.name] = val
        given.add(flag.name)
        i += 1
    for f in flags:
        if f.name not in given and f.env and os.environ.get(f.env):
            values[f.name] = _convert(f, os.environ[f.env], "env")
    return values, args[i:], given


def load_config(path: str, required: bool) -> Tuple[Dict[str, Any], List[str]]:
    """Merged K3s config and the list of files read."""
    files: List[str] = []
    if os.path.exists(path):
        files.append(path)
    elif required:
        raise UsageError(f"stat {path}: no such file or directory")
    files += sorted(glob.glob(os.path.join(glob.escape(path + ".d"), "*.yaml")))
    merged: Dict[str, Any] = {}
    for name in files:
        with open(name) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise UsageError(f"{name}: config must be a YAML mapping")
        for key, value in data.items():
            key = str(key)
            if key.endswith("+"):
                key = key[:-1]
                old = merged.get(key, [])
                old = old if isinstance(old, list) else [old]
                merged[key] = old + (value if isinstance(value, list) else [value])
            else:
                merged[key] = value
    return merged, files


def apply_config(flags: Sequence[Flag], values: Dict[str, Any], given: set, config: Dict[str, Any]) -> None:
    for f in flags:
        if f.name not in config:
            continue
        val = _convert(f, config[f.name], "config")
        if f.kind == "slice":
            values[f.name] = val + (values[f.name] if f.name in given else [])
        elif f.name not in given:
            values[f.name] = val
