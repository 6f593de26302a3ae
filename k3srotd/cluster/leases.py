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

import datetime as dt
import urllib.parse
from typing import Any, Optional

from k3srotd.core.clock import Clock
from k3srotd.core.cluster import NODE_LEASE, Apiserver, Lease, Report, Server, micro
from k3srotd.node.kubeapi import APIError, KubeAPI

NAMESPACE = "kube-system"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
CONFLICT_RETRIES = 8


class Held(Exception):
    """Another node holds the lease."""

    def __init__(self, lease: Lease) -> None:
        until = lease.expires
        super().__init__(
            f"{lease.name} is held by {lease.holder}" + (f" until {micro(until)[:19]}Z at the latest" if until else "")
        )
        self.lease = lease


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
        return self.snapshot()[0]

    def snapshot(self) -> tuple[dict[str, Lease], list[Apiserver]]:
        """k3srotd's Leases and the kube-apiservers' identity Leases, from one list of kube-system's Leases."""
        status, doc = self.api.call("GET", LEASES)
        items = self._check(status, doc, "").get("items") or []
        out, apis = {}, []
        for item in items:
            lease = Lease.from_json(item)
            if lease.name.startswith("k3srotd-"):
                out[lease.name] = lease
            api = Apiserver.from_json(item) if isinstance(item, dict) else None
            if api is not None:
                apis.append(api)
        return out, apis

    def version(self) -> str:
        """The K3s version this server's kube-apiserver reports (GET /version: gitVersion, e.g. v1.31.4+k3s1)."""
        status, doc = self.api.call("GET", "/version")
        if status != 200 or not isinstance(doc, dict):
            return ""
        return str(doc.get("gitVersion") or "")

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
