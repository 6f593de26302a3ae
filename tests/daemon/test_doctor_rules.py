"""doctor's decisions as tables of literal cases: one FAIL per root cause, which process is this node's K3s, what
a `systemctl restart` restart-command needs, the supported K3s versions, and the Key Manager extension."""

from __future__ import annotations

from typing import Optional

import pytest

from k3srotd.commands.checks import FAIL, PASS, SKIP, WARN, Check, Level, run_checks
from k3srotd.commands.doctor_host import Candidate, process_verdict, systemctl_unit, unit_verdict
from k3srotd.core import versions
from k3srotd.node import keymanager


def fixed(name: str, level: Level, needs: tuple[str, ...] = ()) -> Check:
    return Check(name, lambda: (level, f"{name}: {level.lower()}"), needs)


def test_one_fail_per_root_cause_and_the_rest_say_so() -> None:
    ran: list[str] = []

    def never() -> tuple[Level, str]:
        ran.append("API")
        return PASS, "API: ok"

    out = run_checks(
        [
            fixed("k3s-bin", FAIL),
            fixed("K3s server node", PASS, ("k3s-bin",)),
            fixed("K3s running", PASS, ("K3s server node",)),
            Check("API", never, ("K3s running",)),
            fixed("state-dir", PASS),
            fixed("restart-command", WARN, ("k3s-bin",)),
        ]
    )
    assert out.lines == [
        "FAIL  k3s-bin: fail",
        "SKIP  K3s server node: not checked; follows from the FAIL of `k3s-bin` above",
        "SKIP  K3s running: not checked; follows from the FAIL of `k3s-bin` above",
        "SKIP  API: not checked; follows from the FAIL of `k3s-bin` above",
        "PASS  state-dir: pass",
        "SKIP  restart-command: not checked; follows from the FAIL of `k3s-bin` above",
    ]
    assert out.failed and ran == []


def test_a_skip_of_its_own_does_not_skip_what_needs_it() -> None:
    out = run_checks([fixed("API", SKIP), fixed("public issuer", PASS, ("API",)), fixed("node", FAIL)])
    assert [ln[:4] for ln in out.lines] == ["SKIP", "PASS", "FAIL"]
    assert out.failed
    assert not run_checks([fixed("a", WARN), fixed("b", SKIP, ("a",))]).failed


OURS = "/var/lib/rancher/k3s"
NS = "mnt:[4026531832]"
CONTAINER = "mnt:[4026532999]"


@pytest.mark.parametrize(
    "found, level, says",
    [
        ([Candidate(10, NS, OURS, False)], PASS, "pid 10, data dir /var/lib/rancher/k3s"),
        # the same data dir path inside a container: another K3s
        ([Candidate(11, CONTAINER, OURS, True)], FAIL, "pid 11 runs in another mount namespace (a container)"),
        # another data dir here
        ([Candidate(12, NS, "/srv/k3s", False)], FAIL, "of /var/lib/rancher/k3s in this host's mount namespace; start"),
        # a title without flags (K3s rewrites it): ours when it holds a file under our data dir
        ([Candidate(13, NS, None, True)], PASS, "pid 13"),
        ([Candidate(14, NS, None, False)], FAIL, "(pid 14 holds no file under it: not this node's K3s)"),
        # the container's is ignored, ours found after it
        ([Candidate(15, CONTAINER, OURS, True), Candidate(16, NS, OURS, False)], PASS, "pid 16"),
        # a namespace that cannot be read (not root): not held against it
        ([Candidate(17, None, OURS, False)], PASS, "pid 17"),
        ([], FAIL, "no `k3s server` process of /var/lib/rancher/k3s in this host's mount namespace; start K3s"),
    ],
)
def test_which_process_is_this_nodes_k3s(found: list[Candidate], level: str, says: str) -> None:
    got, text = process_verdict(found, NS, OURS)
    assert got == level and says in text, text


@pytest.mark.parametrize(
    "argv, unit",
    [
        (["systemctl", "restart", "k3s"], "k3s"),
        (["/usr/bin/systemctl", "--no-block", "restart", "k3s.service"], "k3s.service"),
        (["systemctl", "try-restart", "k3s"], "k3s"),
        (["systemctl", "stop", "k3s"], None),
        (["/usr/local/bin/restart-k3s"], None),
        (["systemctl", "restart", "k3s", "other"], None),
    ],
)
def test_the_unit_of_a_restart_command(argv: list[str], unit: Optional[str]) -> None:
    assert systemctl_unit(argv) == unit


NO_SYSTEMD = "System has not been booted with systemd as init system (PID 1). Can't operate.\n"


@pytest.mark.parametrize(
    "rc, out, err, running, level, says",
    [
        (0, "LoadState=loaded\nActiveState=active\n", "", True, PASS, "systemctl restart k3s (loaded, active)"),
        (0, "LoadState=not-found\nActiveState=inactive\n", "", True, FAIL, "unit k3s does not exist"),
        (0, "LoadState=masked\nActiveState=inactive\n", "", True, FAIL, "unit k3s is masked"),
        # K3s runs, not from this unit: a restart would start a second K3s
        (0, "LoadState=loaded\nActiveState=inactive\n", "", True, FAIL, "would start a second one"),
        # K3s not running: the unit's state follows from that FAIL
        (0, "LoadState=loaded\nActiveState=failed\n", "", False, SKIP, "follows from `K3s running`"),
        # no systemd here (a container, a chroot): the check did not run, and the line says why
        (1, "", NO_SYSTEMD, True, SKIP, "systemctl cannot answer here (System has not been booted"),
    ],
)
def test_a_systemctl_restart_command(rc: int, out: str, err: str, running: bool, level: str, says: str) -> None:
    got, text = unit_verdict("k3s", rc, out, err, running)
    assert got == level and says in text, text


@pytest.mark.parametrize(
    "text, version, level, says",
    [
        ("k3s version v1.31.4+k3s1 (a6b8b2f5)\ngo version go1.22.9", (1, 31, 4), PASS, "K3s v1.31.4"),
        ("k3s version v1.31.1+k3s1", (1, 31, 1), PASS, "K3s v1.31.1"),
        ("k3s version v1.31.0+k3s1", (1, 31, 0), FAIL, "v1.28.14, v1.29.9, v1.30.5, v1.31.1 or later"),
        ("k3s version v1.28.14+k3s1", (1, 28, 14), PASS, "K3s v1.28.14"),
        ("k3s version v1.28.13+k3s1", (1, 28, 13), FAIL, "rotate-ca accepts service.key alone"),
        ("k3s version v1.27.16+k3s1", (1, 27, 16), FAIL, "rotate-ca accepts service.key alone"),
        ("k3s version v1.32.0+k3s1", (1, 32, 0), PASS, "K3s v1.32.0"),
        ("k3s version v1.26.1+k3s1", (1, 26, 1), FAIL, "`k3s certificate rotate-ca` exists: v1.23.17, v1.24.11"),
        ("k3s version v1.22.17+k3s1", (1, 22, 17), FAIL, "`k3s certificate rotate-ca` exists"),
        ("k3s version v2.0.0+k3s1", (2, 0, 0), PASS, "K3s v2.0.0"),
    ],
)
def test_supported_k3s_versions(text: str, version: tuple[int, int, int], level: str, says: str) -> None:
    v = versions.parse(text)
    assert v == version
    got, line = versions.check(v)
    assert got == level and says in line, line
    assert (level == FAIL) == line.endswith("upgrade K3s")


def test_no_version_in_the_output() -> None:
    assert versions.parse("k3s: command not found") is None


def ext(name: str, kind: object, ns: str = "azure-arc") -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"extensionType": kind}}


@pytest.mark.parametrize(
    "listing, found",
    [
        ({"items": [ext("MySAkeymanager", "microsoft.arc.kuberneteskeymanager")]}, ["azure-arc/MySAkeymanager"]),
        ({"items": [ext("km", "Microsoft.Arc.KubernetesKeyManager", "km-ns")]}, ["km-ns/km"]),
        ({"items": [ext("flux", "microsoft.flux"), ext("monitor", "microsoft.azuremonitor.containers")]}, []),
        ({"items": [{"metadata": {"name": "x"}}, {"spec": None}, "junk"]}, []),
        ({"items": []}, []),
        ({}, []),
        (None, []),
    ],
)
def test_the_key_manager_extension_is_found_by_its_type(listing: object, found: list[str]) -> None:
    assert keymanager.key_managers(listing) == found


def test_the_refusal_names_the_object_and_how_to_choose() -> None:
    line = keymanager.refusal(["azure-arc/MySAkeymanager"])
    assert "ExtensionConfig azure-arc/MySAkeymanager" in line and "microsoft.arc.kuberneteskeymanager" in line
    assert "az k8s-extension delete" in line and "-n MySAkeymanager" in line and "\n" not in line
