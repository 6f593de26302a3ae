"""core.verify.judge: one look at a restarted K3s against the target, as tables of literal cases."""

from __future__ import annotations

from typing import Optional, Sequence

import pytest

from k3srotd.core.verify import Seen, Want, judge

A, B, C = "A" * 43, "B" * 43, "C" * 43
WANT = Want((B, A), B, "sha-new")


def seen(
    pid: Optional[int] = 7,
    restarted: bool = True,
    ready: Optional[bool] = True,
    sha: str = "sha-new",
    current: Optional[str] = B,
    served: Optional[Sequence[str]] = None,
    error: str = "",
) -> Seen:
    return Seen(pid, restarted, ready, sha, current, served, error)


@pytest.mark.parametrize(
    ("look", "outcome", "text"),
    [
        (seen(pid=None, restarted=True), "wait", "no K3s server process yet"),
        (seen(restarted=False), "wait", "K3s has not restarted yet (still pid 7)"),
        (seen(sha="sha-old", ready=True), "fail", "serves another key set than the one staged"),
        (seen(sha="sha-old", ready=False), "wait", "the live service.key differs from the staged key set"),
        (seen(sha="sha-old", ready=None), "wait", "the live service.key differs"),  # verify-api off: no verdict
        (seen(current=A), "wait", f"service.current.key holds {A}, expected {B}"),
        (seen(ready=None), "ok", ""),  # verify-api off: the files are all there is to check
        (seen(ready=False), "wait", "/readyz is not ok yet"),
        (seen(), "jwks", ""),  # all else matches: now read the JWKS
        (seen(served=[B, A]), "ok", ""),
        (seen(served=[B, A, B]), "ok", ""),  # a duplicate block is served once
        (seen(served=[A, B]), "fail", "the JWKS lists"),  # another order is another key set
        (seen(served=[B, A, C]), "fail", "the JWKS lists"),
        (seen(served=[]), "wait", "the JWKS lists no keys yet"),
        (seen(error="HTTP 503"), "wait", "HTTP 503"),
    ],
)
def test_judge(look: Seen, outcome: str, text: str) -> None:
    got, why = judge(WANT, look)
    assert got == outcome
    assert text in why


def test_outline_is_the_target_without_key_material() -> None:
    kf = Want((B, A, B), B, "x").outline()
    assert kf.kids == [B, A]
    assert kf.signer.kid == B
    assert all(b.raw == b"" for b in kf.blocks)
