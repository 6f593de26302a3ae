"""`k3srotd prune --reissue-legacy`: have K3s's token controller sign again every service-account-token Secret whose
token a retired key signed (such Secrets hold the key's prune: their tokens never expire).

It clears each Secret's token; kube-controller-manager's token controller then signs a new one with the current
signer (identity/evidence.py). It changes no key and restarts nothing, so it takes neither the lock nor a window.
"""

from __future__ import annotations

from typing import Optional

import click

from k3srotd.config import Config
from k3srotd.core import planner
from k3srotd.core.clock import Clock
from k3srotd.core.ports import Log
from k3srotd.engine import session as engine
from k3srotd.errors import ConfigError, SafetyRefusal, StepFailed
from k3srotd.identity import evidence
from k3srotd.node.k3s import K3s

AFTER = (
    "clients that read these Secrets must read them again: a pod that mounts one sees the new token once the "
    "kubelet syncs the volume (about a minute), a copy kept elsewhere must be replaced; then run `k3srotd prune`"
)


def reissue_legacy(cfg: Config, log: Log, dry_run: bool, clock: Optional[Clock] = None) -> None:
    if not cfg.verify_api:
        raise ConfigError(
            f"{cfg.sources[-1] if cfg.sources else 'config'}: verify-api is false; --reissue-legacy needs the API"
        )
    k3s = K3s(cfg)
    v = engine.view(cfg, clock or Clock(), k3s)
    retired = {kid for kid, _ in planner.retired(v.state, v.live)}
    api = k3s.api()
    try:
        found = [s for s in evidence.scan(api) if s.kid in retired]
    except evidence.EvidenceError as e:
        raise StepFailed(f"the service-account-token Secrets cannot be read: {e}") from None
    if not found:
        click.echo("nothing to re-issue: no service-account-token Secret holds a token signed by a retired key")
        return
    if dry_run:
        for s in found:
            click.echo(f"would re-issue {s.ref} (signed by {s.kid})")
        click.echo("dry run: nothing was changed")
        return
    signer = k3s.current_kid()
    if signer != v.live.signer.kid:  # the controller signs with what K3s loaded, which must be the live signer
        raise SafetyRefusal(
            f"{cfg.current_key}: K3s signs with {signer}, not the live file's signer {v.live.signer.kid}; it has "
            "not restarted since the key file changed. Finish or roll back that step first"
        )
    try:
        left = evidence.reissue(api, found, v.live.signer.kid)
    except evidence.EvidenceError as e:
        raise StepFailed(f"re-issuing the legacy tokens failed: {e}") from None
    done = [s for s in found if s not in left]
    for s in done:
        click.echo(f"re-issued {s.ref} (was signed by {s.kid}; now by {v.live.signer.kid})")
    log.info(
        "legacy.reissued",
        msg=f"re-issued {len(done)} service-account-token Secret(s): {', '.join(s.ref for s in done)}",
        secrets=[s.ref for s in done],
        signer_kid=v.live.signer.kid,
    )
    if left:
        raise StepFailed(
            f"the token controller did not sign {', '.join(s.ref for s in left)} again within 60s (their token is "
            "cleared; kube-controller-manager fills it when it runs); run `k3srotd prune --reissue-legacy` again"
        )
    click.echo(AFTER)
