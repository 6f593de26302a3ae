"""The cluster's coordination objects as data: the k3srotd Leases and what their annotations publish (the step,
each server's report), the control-plane Nodes. No I/O: cluster/leases.py reads and writes them through the API.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Literal, Optional

StepName = Literal["publish", "promote", "prune", "rotate", "rollback", "rehearse"]
Outcome = Literal["rolling", "committed", "rolled-back"]

STEP_LEASE = "k3srotd-step"
RESTART_LEASE = "k3srotd-restart"
NODE_LEASE = "k3srotd-node-"
TOKENS_LEASE = "k3srotd-tokens"
ANN = "k3srotd.io/"
# kube-apiserver's identity Lease (Kubernetes >= 1.26, KEP-1965): one per running kube-apiserver in kube-system,
# renewed every 10 s (IdentityLeaseRenewIntervalPeriod); three renewals missed: that apiserver does not run
IDENTITY_LABEL = "apiserver.kubernetes.io/identity"
IDENTITY_VALUE = "kube-apiserver"
HOSTNAME_LABEL = "kubernetes.io/hostname"
IDENTITY_FRESH = dt.timedelta(seconds=30)


def micro(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: Any) -> Optional[dt.datetime]:
    if not isinstance(s, str) or not s:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    duration: int
    renew: Optional[dt.datetime]
    acquire: Optional[dt.datetime]
    transitions: int
    annotations: dict[str, str]
    resource_version: str

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Lease:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        return cls(
            name=str(meta.get("name", "")),
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(spec.get("leaseDurationSeconds") or 0),
            renew=parse_time(spec.get("renewTime")),
            acquire=parse_time(spec.get("acquireTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    @property
    def expires(self) -> Optional[dt.datetime]:
        if not self.holder or self.renew is None:
            return None
        return self.renew + dt.timedelta(seconds=self.duration)

    def held(self, now: dt.datetime) -> bool:
        exp = self.expires
        return exp is not None and exp > now

    def held_by_other(self, me: str, now: dt.datetime) -> bool:
        return self.holder != me and self.held(now)

    def ann(self, key: str) -> str:
        return self.annotations.get(ANN + key, "")


@dataclasses.dataclass(frozen=True)
class Step:
    """The step a driving server published: every server restarts onto `target_kids` (file sha256 `target_sha`)."""

    id: str
    step: str  # publish | promote | prune | rotate | rollback | rehearse
    driver: str
    before_kids: list[str]
    target_kids: list[str]
    signer_kid: str
    target_sha: str
    outcome: str  # rolling | committed | rolled-back
    published_at: Optional[dt.datetime]
    state: str = ""  # JSON of the driver's state snapshot once the step is finished, for the others to adopt
    window: str = ""  # "ignored": started with --ignore-window, so every server restarts at once, in its window or not

    @property
    def open(self) -> bool:
        return self.outcome == "rolling"

    def annotations(self) -> dict[str, str]:
        return {
            ANN + "step-id": self.id,
            ANN + "step": self.step,
            ANN + "driver": self.driver,
            ANN + "before-kids": ",".join(self.before_kids),
            ANN + "target-kids": ",".join(self.target_kids),
            ANN + "signer-kid": self.signer_kid,
            ANN + "target-sha256": self.target_sha,
            ANN + "outcome": self.outcome,
            ANN + "published-at": micro(self.published_at) if self.published_at else "",
            ANN + "state": self.state,
            ANN + "window": self.window,
        }

    @classmethod
    def from_lease(cls, lease: Optional[Lease]) -> Optional[Step]:
        if lease is None or not lease.ann("step-id") or not lease.ann("target-sha256"):
            return None
        return cls(
            id=lease.ann("step-id"),
            step=lease.ann("step"),
            driver=lease.ann("driver"),
            before_kids=[k for k in lease.ann("before-kids").split(",") if k],
            target_kids=[k for k in lease.ann("target-kids").split(",") if k],
            signer_kid=lease.ann("signer-kid"),
            target_sha=lease.ann("target-sha256"),
            outcome=lease.ann("outcome") or "rolling",
            published_at=parse_time(lease.ann("published-at")),
            state=lease.ann("state"),
            window=lease.ann("window"),
        )


@dataclasses.dataclass(frozen=True)
class Report:
    """A server's own account, from its k3srotd-node-<name> lease."""

    node: str
    live_kids: list[str]
    live_sha: str
    step_id: str  # the last published step it is on (restarted for, or found itself on)
    result: str  # ok | failed | "" (nothing yet)
    error: str
    at: Optional[dt.datetime]  # when its k3srotd last reported
    valid_until: Optional[dt.datetime]
    tokens_check: str = ""  # the token check (TOKENS_LEASE check-id) it answered last
    tokens: str = ""  # its answer: "ok" (no watched counter grew during the grace-period), else what grew
    host: str = ""  # its hostname: kube-apiserver's identity Lease names its host by it
    version: str = ""  # its K3s version (the API's /version)
    join: str = ""  # its join URL (`server:` in K3s's config); "" on the init server
    addrs: tuple[str, ...] = ()  # host:port where its kube-apiserver listens (a join URL names one of them)
    join_addrs: tuple[str, ...] = ()  # what its join URL resolves to, host:port

    def annotations(self) -> dict[str, str]:
        return {
            ANN + "host": self.host,
            ANN + "k3s-version": self.version,
            ANN + "join": self.join,
            ANN + "addrs": ",".join(self.addrs),
            ANN + "join-addrs": ",".join(self.join_addrs),
            ANN + "live-kids": ",".join(self.live_kids),
            ANN + "live-sha256": self.live_sha,
            ANN + "step-id": self.step_id,
            ANN + "result": self.result,
            ANN + "error": self.error,
            ANN + "tokens-check": self.tokens_check,
            ANN + "tokens": self.tokens,
        }

    @classmethod
    def from_lease(cls, lease: Lease) -> Report:
        return cls(
            node=lease.name[len(NODE_LEASE) :],
            live_kids=[k for k in lease.ann("live-kids").split(",") if k],
            live_sha=lease.ann("live-sha256"),
            step_id=lease.ann("step-id"),
            result=lease.ann("result"),
            error=lease.ann("error"),
            at=lease.renew,
            valid_until=lease.expires,
            tokens_check=lease.ann("tokens-check"),
            tokens=lease.ann("tokens"),
            host=lease.ann("host"),
            version=lease.ann("k3s-version"),
            join=lease.ann("join"),
            addrs=tuple(a for a in lease.ann("addrs").split(",") if a),
            join_addrs=tuple(a for a in lease.ann("join-addrs").split(",") if a),
        )

    def fresh(self, now: dt.datetime) -> bool:
        """Its k3srotd renewed its report within the report lease's duration."""
        return self.valid_until is not None and self.valid_until > now


@dataclasses.dataclass(frozen=True)
class Apiserver:
    """A kube-apiserver, from its identity Lease."""

    host: str  # the kubernetes.io/hostname label
    holder: str
    renew: Optional[dt.datetime]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Optional[Apiserver]:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(IDENTITY_LABEL) != IDENTITY_VALUE:
            return None
        spec = obj.get("spec") or {}
        host = str(labels.get(HOSTNAME_LABEL) or meta.get("name") or "")
        return cls(host, str(spec.get("holderIdentity") or ""), parse_time(spec.get("renewTime")))

    def fresh(self, now: dt.datetime) -> bool:
        return self.renew is not None and now - self.renew < IDENTITY_FRESH


@dataclasses.dataclass(frozen=True)
class Server:
    name: str
    ready: str  # "True" | "False" | "Unknown" | "" (no Ready condition)
    reason: str  # the Ready condition's message when not True
    node: bool = True  # it has a Node (a server started with --disable-agent has none)
    api: Optional[Apiserver] = None  # its kube-apiserver's identity Lease, when the cluster publishes them
