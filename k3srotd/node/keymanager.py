"""Coexistence: Microsoft's "Key Manager for Kubernetes" Azure Arc extension rotates the same service-account
signing key on K3s (AKS Edge Essentials). Two rotators of one key fight: each would restart K3s on a key set the
other does not expect, and prune keys the other still signs with. k3srotd refuses to take part while it is there.

How it shows in the cluster (Microsoft's documentation): the extension is installed with
`az k8s-extension create --extension-type microsoft.arc.kuberneteskeymanager`; Arc's extensions-manager agent
installs each extension from a Helm chart, and keeps one ExtensionConfig object per installed extension (group
clusterconfig.azure.com, `kubectl get extensionconfigs -A`) whose `spec.extensionType` names its type. The
extension's own namespace and workloads are not documented, so the ExtensionConfig is what is looked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from k3srotd.node.kubeapi import APIError

if TYPE_CHECKING:
    from k3srotd.node.kubeapi import KubeAPI

EXTENSION_TYPE = "microsoft.arc.kuberneteskeymanager"
GROUP = "clusterconfig.azure.com"
REMOVE = "az k8s-extension delete -t connectedClusters -g <group> -c <cluster> -n {name}"


def key_managers(listing: object) -> list[str]:
    """`namespace/name` of each ExtensionConfig in an API list whose spec.extensionType is the key manager's
    (compared without case, as Azure compares extension types)."""
    items = listing.get("items") if isinstance(listing, dict) else None
    found = []
    for item in items if isinstance(items, list) else []:
        spec = item.get("spec") if isinstance(item, dict) else None
        kind = spec.get("extensionType") if isinstance(spec, dict) else None
        if isinstance(kind, str) and kind.strip().lower() == EXTENSION_TYPE:
            meta = item.get("metadata") or {}
            found.append(f"{meta.get('namespace', '')}/{meta.get('name', '?')}".lstrip("/"))
    return found


def refusal(found: list[str]) -> str:
    """One line: what is installed, why k3srotd stands aside, and how to choose k3srotd instead."""
    name = found[0].rsplit("/", 1)[-1]
    return (
        f"Microsoft's Key Manager for Kubernetes extension is installed (ExtensionConfig {', '.join(found)}, "
        f"type {EXTENSION_TYPE}); it rotates this same key, and k3srotd does not fight it. Use one of the two: "
        f"to keep k3srotd, remove the extension (`{REMOVE.format(name=name)}`)"
    )


def detect(api: KubeAPI) -> Optional[str]:
    """The refusal line when the extension is installed, None when it is not. Raises APIError when the API does
    not say (unreachable, or an answer that is neither the list nor 404)."""
    status, group = api.call("GET", f"/apis/{GROUP}")
    if status == 404:  # no Arc extension support in this cluster at all
        return None
    try:
        version = group["preferredVersion"]["groupVersion"] if status == 200 else None
    except (KeyError, TypeError):
        version = None
    if not isinstance(version, str):
        raise APIError(f"/apis/{GROUP}: HTTP {status}, not an API group", status)
    status, listing = api.call("GET", f"/apis/{version}/extensionconfigs")
    if status == 404:  # the group without ExtensionConfig objects
        return None
    if status != 200:
        raise APIError(f"/apis/{version}/extensionconfigs: HTTP {status}", status)
    found = key_managers(listing)
    return refusal(found) if found else None


def refuse_if_installed(api: KubeAPI, what: str) -> None:
    """For `rotate-now`, `prune` and `rehearse` by hand: refused (exit 3) while the extension is installed, as the
    daemon's own steps are; a dry run and `rollback` (which puts back what k3srotd itself replaced) are not
    refused. An API that cannot say (unreachable, or no usable kubeconfig) does not refuse here: the step's own
    checks need the API, and say so."""
    from k3srotd.errors import K3srotdError, SafetyRefusal

    try:
        found = detect(api)
    except (APIError, K3srotdError):
        return
    if found is not None:
        raise SafetyRefusal(f"{what} refused: {found}")
