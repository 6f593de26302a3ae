"""Literal tables: doctor's rehearsal verdict, the release name recorded, and the Key Manager refusal of the
commands that change keys (the emulator serves no Arc ExtensionConfig group, so the API's answers are literal)."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from k3srotd.commands.doctor import rehearsal_verdict
from k3srotd.core import versions
from k3srotd.errors import ConfigError, SafetyRefusal
from k3srotd.node import keymanager
from k3srotd.node.kubeapi import APIError

AT = "2026-12-01T03:00:00Z"


@pytest.mark.parametrize(
    ("record", "running", "level", "says"),
    [
        (None, "v1.31.4+k3s1", "WARN", "none has passed"),
        ({}, "v1.31.4+k3s1", "WARN", "none has passed"),
        ({"at": AT, "k3s_version": "v1.31.4+k3s1"}, "v1.31.4+k3s1", "PASS", "passed at " + AT),
        ({"at": AT, "k3s_version": "v1.31.4+k3s1"}, "v1.31.5+k3s1", "WARN", "this node runs v1.31.5+k3s1"),
        ({"at": AT, "k3s_version": "v1.31.4+k3s1"}, "v1.31.4+k3s2", "WARN", "ran on K3s v1.31.4+k3s1"),
        ({"at": AT, "k3s_version": "v1.31.4+k3s1"}, None, "PASS", "passed"),  # no version to compare: trust it
    ],
)
def test_doctor_warns_until_a_rehearsal_passed_on_this_release(
    record: Optional[dict[str, str]], running: Optional[str], level: str, says: str
) -> None:
    got, text = rehearsal_verdict(record, running)
    assert got == level and says in text, text


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("k3s version v1.31.4+k3s1 (a8d0c1a2)\ngo version go1.22.9", "v1.31.4+k3s1"),
        ("k3s version v1.30.5-rc1+k3s1 (x)", "v1.30.5-rc1+k3s1"),
        ("k3s: command not found", None),
    ],
)
def test_the_release_a_rehearsal_is_recorded_against(text: str, release: Optional[str]) -> None:
    assert versions.release(text) == release


class Answers:
    """The API's answers by path, literally (a KubeAPI's `call`)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        got = self.answers.get(path, (404, {}))
        if isinstance(got, Exception):
            raise got
        return got  # type: ignore[no-any-return]


GROUP = {"/apis/clusterconfig.azure.com": (200, {"preferredVersion": {"groupVersion": "clusterconfig.azure.com/v1"}})}
KM = {"spec": {"extensionType": "Microsoft.Arc.KubernetesKeyManager"}, "metadata": {"name": "km", "namespace": "x"}}
OTHER = {"spec": {"extensionType": "microsoft.flux"}, "metadata": {"name": "flux"}}
LIST = "/apis/clusterconfig.azure.com/v1/extensionconfigs"


@pytest.mark.parametrize(
    ("answers", "refused"),
    [
        ({}, False),  # no Arc extension support: the group is 404
        ({**GROUP, LIST: (200, {"items": [OTHER]})}, False),
        ({**GROUP, LIST: (200, {"items": [OTHER, KM]})}, True),
        ({**GROUP, LIST: (404, {})}, False),
        ({"/apis/clusterconfig.azure.com": APIError("connection refused")}, False),  # the step's checks say so
        ({"/apis/clusterconfig.azure.com": ConfigError("/k.yaml: cannot read the kubeconfig")}, False),
        ({**GROUP, LIST: (500, {})}, False),
    ],
)
@pytest.mark.parametrize("what", ["rotate-now", "prune", "rehearse"])
def test_commands_that_change_keys_refuse_while_the_key_manager_is_installed(
    answers: dict[str, Any], refused: bool, what: str
) -> None:
    api = Answers(answers)
    if not refused:
        keymanager.refuse_if_installed(api, what)  # type: ignore[arg-type]
        return
    with pytest.raises(SafetyRefusal) as e:
        keymanager.refuse_if_installed(api, what)  # type: ignore[arg-type]
    assert e.value.exit_code == 3
    assert str(e.value).startswith(f"{what} refused: Microsoft's Key Manager") and "x/km" in str(e.value)
