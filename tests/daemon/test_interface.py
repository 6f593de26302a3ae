"""One source for the interface: the man page and the README's command table say what `--help` says.

Each command's synopsis (its options, in order) is the same in click, in the man page's COMMANDS and in the
README's table; the man page's first sentence of a command is its --help's; the man page's keys are the
configuration's. And the contradictions found once stay fixed.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from k3srotd import config
from k3srotd.cli import cli

REPO = Path(__file__).resolve().parents[2]
MAN = (REPO / "packaging" / "k3srotd.8").read_text()
README = (REPO / "README.md").read_text()


def roff_text(text: str) -> str:
    """Roff source to plain words: escapes and font changes out, macro names off, quotes dropped."""
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\(dq", '"')
    text = re.sub(r"^\.[A-Z]{1,2} ?", "", text, flags=re.M)
    return " ".join(text.replace('"', "").split())


def commands() -> dict[str, click.Command]:
    return dict(cli.commands)  # type: ignore[attr-defined]


def synopsis(name: str, cmd: click.Command) -> str:
    opts = [o for p in cmd.params for o in p.opts if o.startswith("--") and o != "--help"]
    return " ".join([name, *(f"[{o}]" for o in opts)])


def man_items() -> dict[str, tuple[str, str]]:
    """COMMANDS: name -> (synopsis line, first plain-text sentence run)."""
    section = MAN.split(".SH COMMANDS\n", 1)[1].split("\n.SH ", 1)[0]
    out = {}
    for item in ("\n" + section).split("\n.TP\n")[1:]:
        head, *rest = item.split("\n")
        plain = []
        for ln in rest:
            if ln.startswith("."):
                break
            plain.append(ln)
        syn = roff_text(head)
        out[syn.split()[0]] = (syn, roff_text("\n".join(plain)))
    return out


def readme_rows() -> dict[str, str]:
    section = README.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+(?: [^`]*)?)` \|", section, re.M)
    return {r.split()[0]: r for r in rows}


def first_paragraph(cmd: click.Command) -> str:
    return " ".join((cmd.help or "").split("\n\n")[0].split())


@pytest.mark.parametrize("name", sorted(commands()))
def test_each_command_reads_the_same_in_help_man_page_and_readme(name: str) -> None:
    cmd = commands()[name]
    want = synopsis(name, cmd)
    items = man_items()
    assert name in items, f"{name} has no entry in the man page's COMMANDS"
    assert items[name][0] == want
    assert items[name][1].startswith(first_paragraph(cmd)), (items[name][1], first_paragraph(cmd))
    assert readme_rows().get(name) == want, f"README's command table: {readme_rows().get(name)!r} != {want!r}"


def test_no_command_is_documented_that_the_program_lacks() -> None:
    assert set(man_items()) == set(commands())
    assert set(readme_rows()) == set(commands())


def test_the_global_options_are_the_man_pages() -> None:
    opts = [o for p in cli.params for o in p.opts if o.startswith("--") and o != "--help"]
    section = roff_text(MAN.split(".SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0])
    synopsis_text = roff_text(MAN.split(".SH SYNOPSIS\n", 1)[1].split("\n.SH ", 1)[0])
    for o in opts:
        assert o in section and o in synopsis_text, o


def test_every_configuration_key_is_in_the_man_page_and_no_other() -> None:
    section = MAN.split(".SH CONFIGURATION\n", 1)[1].split("\n.SH ", 1)[0]
    documented = {roff_text(m) for m in re.findall(r"^\.TP\n(\.B [^\n]+)$", section, re.M)}
    assert documented == set(config.SCHEMA)


def test_the_contradictions_found_once() -> None:
    text = roff_text(MAN)
    assert "must exist" not in text
    assert "A missing file means all defaults" in roff_text(MAN.split(".BI \\-\\-config", 1)[1].split(".TP", 1)[0])
    leak = roff_text(MAN.split("After a leak of the signing key", 1)[1].split(".PP", 2)[1])
    assert "rotate-now --skip-publish-wait --ignore-window" in leak
    assert "prune --force --yes --ignore-window" in leak
    for name in commands():
        out = CliRunner().invoke(cli, [name, "--help"]).output
        assert "README" not in out, f"{name} --help points at a README the package may not ship"
    root = CliRunner().invoke(cli, ["--help"]).output
    assert "a missing file means all defaults" in " ".join(root.split())


def test_the_readme_lists_the_supported_k3s_versions_doctor_checks() -> None:
    from k3srotd.core import versions

    for row in versions.readme_rows():
        assert row in README, f"README lacks the supported-versions row: {row}"
