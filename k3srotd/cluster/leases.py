"""The cluster's side of multi-server coordination: the control-plane Nodes and coordination.k8s.io/v1 Leases.

Objects, all in kube-system:
  k3srotd-step          one server drives a step (rotate-ca once); its annotations publish the step and its target
                        key set (Step), which every server's k3srotd reads to see that it is behind
  k3srotd-restart       one server restarts its K3s at a time, so etcd keeps its quorum
  k3srotd-node-<node>   each server's report (Report): its live key set, the last step it restarted for and how
                        that went, its answer to the last token check; holder = that node, renewed at every
                        report, so its age says when its k3srotd last looked
  k3srotd-tokens        a token check asked before a prune (check-id): each kube-apiserver counts stale and legacy
                        tokens on its own /metrics, so every server answers for its own in its report

Every write uses optimistic concurrency: a PUT carries the resourceVersion read, and kube-apiserver answers 409
when someone wrote in between; we read again and retry. A lease is held while renewTime + leaseDurationSeconds
is in the future, and taken over after that, so a holder that died blocks the others for one duration at most.
Times in renewTime/acquireTime are MicroTime (RFC 3339 with microseconds), compared with this node's clock: the
servers' clocks must agree within seconds (NTP), as Kubernetes's own leases assume.

The client is kubeapi.KubeAPI (stdlib HTTPS with the admin kubeconfig's client certificate): a handful of GET/
POST/PUT calls, no Kubernetes client library (import time, size, and one more dependency to keep current).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
from typing import Any, Optional

from k3srotd.core.clock import Clock
from k3srotd.node.kubeapi import APIError, KubeAPI

NAMESPACE = "kube-system"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
STEP_LEASE = "k3srotd-step"
RESTART_LEASE = "k3srotd-restart"
NODE_LEASE = "k3srotd-node-"
TOKENS_LEASE = "k3srotd-tokens"
ANN = "k3srotd.io/"
CONFLICT_RETRIES = 8


def micro(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: Any) -> Optional[dt.datetime]:
    if not isinstance(s, str) or not s:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


class Held(Exception):
    """Another node holds the lease."""

    def __init__(self, lease: Lease) -> None:
        until = lease.expires
        super().__init__(
            f"{lease.name} is held by {lease.holder}" + (f" until {micro(until)[:19]}Z at the latest" if until else "")
        )
        self.lease = lease


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
    step: str  # publish | promote | prune | rotate | rollback
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

    def annotations(self) -> dict[str, str]:
        return {
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
        )


@dataclasses.dataclass(frozen=True)
class Server:
    name: str
    ready: str  # "True" | "False" | "Unknown" | "" (no Ready condition)
    reason: str  # the Ready condition's message when not True


class Cluster:
    """Leases and Nodes through one API endpoint (this server's own)."""

    def __init__(self, api: KubeAPI, me: str, clock: Clock, duration: int) -> None:
        self.api = api
        self.me = me
        self.clock = clock
        self.duration = duration

    # --- nodes
    def servers(self) -> list[Server]:
        """The control-plane Nodes, by name. APIError when the API cannot say."""
        selector = urllib.parse.quote(f"{CONTROL_PLANE}=true", safe="")
        status, doc = self.api.call("GET", f"/api/v1/nodes?labelSelector={selector}")
        if status != 200 or not isinstance(doc, dict):
            raise APIError(f"{self.api.server_url}/api/v1/nodes: HTTP {status}", status)
        out = []
        for item in doc.get("items") or []:
            name = str((item.get("metadata") or {}).get("name") or "")
            ready, reason = "", ""
            for cond in (item.get("status") or {}).get("conditions") or []:
                if cond.get("type") == "Ready":
                    ready = str(cond.get("status") or "")
                    reason = "" if ready == "True" else str(cond.get("message") or cond.get("reason") or "")
            if name:
                out.append(Server(name, ready, reason))
        return sorted(out, key=lambda s: s.name)

    # --- leases
    def _check(self, status: int, doc: Any, what: str) -> dict[str, Any]:
        if status >= 300 or not isinstance(doc, dict):
            msg = doc.get("message") if isinstance(doc, dict) else ""
            raise APIError(f"{self.api.server_url}{LEASES}/{what}: HTTP {status}" + (f": {msg}" if msg else ""), status)
        return doc

    def lease(self, name: str) -> Optional[Lease]:
        status, doc = self.api.call("GET", f"{LEASES}/{name}")
        if status == 404:
            return None
        return Lease.from_json(self._check(status, doc, name))

    def leases(self) -> dict[str, Lease]:
        status, doc = self.api.call("GET", LEASES)
        items = self._check(status, doc, "").get("items") or []
        out = {}
        for item in items:
            lease = Lease.from_json(item)
            if lease.name.startswith("k3srotd-"):
                out[lease.name] = lease
        return out

    def _body(
        self, name: str, holder: str, renew: Optional[dt.datetime], acquire: Optional[dt.datetime], transitions: int
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"leaseDurationSeconds": self.duration, "leaseTransitions": transitions}
        if holder:
            spec["holderIdentity"] = holder
        if renew is not None:
            spec["renewTime"] = micro(renew)
        if acquire is not None:
            spec["acquireTime"] = micro(acquire)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        }

    def acquire(self, name: str, annotations: Optional[dict[str, str]] = None) -> Lease:
        """Take or renew `name` for this node, merging `annotations` in. Held when another node holds it."""
        for _ in range(CONFLICT_RETRIES):
            cur = self.lease(name)
            now = self.clock.now()
            if cur is None:
                body = self._body(name, self.me, now, now, 0)
                body["metadata"]["annotations"] = dict(annotations or {})
                status, doc = self.api.call("POST", LEASES, body)
                if status == 409:
                    continue
                return Lease.from_json(self._check(status, doc, name))
            if cur.held_by_other(self.me, now):
                raise Held(cur)
            taken = cur.holder != self.me or not cur.held(now)
            body = self._body(
                name,
                self.me,
                now,
                now if taken else cur.acquire,
                cur.transitions + (1 if taken and cur.holder and cur.holder != self.me else 0),
            )
            body["metadata"]["resourceVersion"] = cur.resource_version
            body["metadata"]["annotations"] = {**cur.annotations, **(annotations or {})}
            status, doc = self.api.call("PUT", f"{LEASES}/{name}", body)
            if status == 409:
                continue
            return Lease.from_json(self._check(status, doc, name))
        raise APIError(f"{name}: the lease kept changing under us ({CONFLICT_RETRIES} conflicts in a row)", 409)

    def release(self, name: str, annotations: Optional[dict[str, str]] = None) -> None:
        """Give `name` up if this node holds it (holder cleared, annotations kept and merged)."""
        for _ in range(CONFLICT_RETRIES):
            cur = self.lease(name)
            if cur is None or cur.holder != self.me:
                return
            body = self._body(name, "", None, cur.acquire, cur.transitions)
            body["metadata"]["resourceVersion"] = cur.resource_version
            body["metadata"]["annotations"] = {**cur.annotations, **(annotations or {})}
            status, doc = self.api.call("PUT", f"{LEASES}/{name}", body)
            if status == 409:
                continue
            self._check(status, doc, name)
            return
        raise APIError(f"{name}: the lease kept changing under us ({CONFLICT_RETRIES} conflicts in a row)", 409)

    # --- this node's report
    def report(self, report: Report) -> Lease:
        return self.acquire(NODE_LEASE + self.me, report.annotations())

    @staticmethod
    def reports(leases: dict[str, Lease]) -> dict[str, Report]:
        return {
            r.node: r for r in (Report.from_lease(le) for name, le in leases.items() if name.startswith(NODE_LEASE))
        }
