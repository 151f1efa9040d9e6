"""Which connections the chart's NetworkPolicies allow, as IBM's network-config-analyzer (nca) computes them.

nca is the real engine here: it reads the NetworkPolicies, the server Deployment and the helm test Pod exactly as
`helm template` rendered them (so the named ports ``http`` and ``metrics`` resolve from the real container ports),
together with a small stand-in cluster written once below, and ``nca --connectivity`` reports every allowed
connection between every pair of peers. This module parses that report into plain tuples
``(source, destination, protocol, port)``:

* peers are short names: ``server`` (the chart's Deployment), ``tester`` (its helm test Pod), the stand-in Pods
  (``neighbour``, ``prometheus``, ``stranger``, ``istiod``, ``kube-dns``), and the outside world as IP addresses
  written as collapsed CIDRs, e.g. ``0.0.0.0/0`` or ``10.0.0.3/32`` (nca cuts the address space into ranges at
  every ipBlock a policy names; the ranges a peer reaches on the same protocol and port are merged back, so the
  names do not depend on how nca cut them). A peer nca reports that is none of these keeps nca's own name
  (``namespace/name[Kind]``), so a test sees it;
* protocol is ``TCP``, ``UDP``, ``SCTP`` or ``*`` (every protocol); port is a number (a range of up to 1024 ports
  is spread into its numbers), ``"LO-HI"`` for a wider range, or ``*`` (every port). ``All connections`` is
  ``("*", "*")``, and a more specific tuple that ``*`` covers is dropped.

The stand-in cluster (every namespace labelled ``kubernetes.io/metadata.name=<name>``, as real clusters do):
the release namespace ns1 with a ``neighbour`` Pod; the monitoring namespace (the chart's
networkPolicy.monitoringNamespace, default gmp-system) with a ``prometheus`` Pod; ``other`` with a ``stranger``;
``istio-system`` with ``istiod`` (port 15012 named grpc-xds); ``kube-system`` with ``kube-dns`` (53/UDP, 53/TCP);
and the outside world. Only the chart's NetworkPolicies and workloads go to nca; the other kinds (Services, the
Ingress, custom resources) are left out, since nca would model an Ingress as an in-cluster controller Pod, which
GKE's load balancer is not.

What this leaves out, i.e. what nca, as a NetworkPolicy engine, cannot tell:

* host-network traffic: the kubelet's probes come from the node, which most CNIs let through to its own Pods
  whatever the policies say; GKE load balancers' health checks (from 35.191.0.0/16 and 130.211.0.0/22) come through
  a node or, with container-native load balancing, straight to the Pod: here they are just part of the outside world;
* Service ClusterIP translation (kube-proxy): policies see Pod addresses and container ports, and so does nca;
* Istio's own AuthorizationPolicy and mTLS (nca reads Istio resources, but the chart renders none);
* CNI-specific behaviour: GKE Dataplane V2 (Cilium) or Calico logging, FQDN rules, and whether an ipBlock also
  matches Pod addresses (nca treats ipBlocks as addresses outside the cluster);
* anything beyond this small world: another namespace or Pod with other labels may be selected differently.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

__all__ = [
    "ANY",
    "NAMESPACE",
    "NCA",
    "NCA_KINDS",
    "OUTSIDE",
    "REDIS",
    "SERVER",
    "TESTER",
    "Connection",
    "NcaError",
    "Port",
    "Workload",
    "canonical",
    "connectivity",
    "ip_name",
    "is_outside",
    "other_workloads",
    "sorted_paths",
]

NCA = ROOT / ".tools" / "bin" / "nca"
NAMESPACE = "ns1"  # the release namespace the tests render into
SERVER, TESTER, REDIS = "server", "tester", "redis"
ANY = "*"  # every protocol, or every port
OUTSIDE = "0.0.0.0/0"  # the whole outside world (IPv4; nca leaves IPv6 out unless a policy names it)

Port = int | str
Connection = tuple[str, str, str, Port]  # (source, destination, protocol, port)

# What nca is given from the rendered chart: the policies and the workloads they select.
NCA_KINDS = frozenset({"NetworkPolicy", "Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
                       "CronJob"})  # fmt: skip
_IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NcaError(AssertionError):
    """nca failed, warned, or printed something this module cannot read."""


@dataclass(frozen=True)
class Workload:
    """A Pod of the stand-in cluster; ``name`` is also its short name in the connections."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    ports: tuple[tuple[str, int, str], ...] = field(default=())  # (name, containerPort, protocol)

    def manifest(self) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "main", "image": f"example.invalid/{self.name}"}
        if self.ports:
            container["ports"] = [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in self.ports]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels)},
            "spec": {"containers": [container]},
        }


def other_workloads(monitoring_namespace: str = "gmp-system") -> list[Workload]:
    """The stand-in cluster's Pods besides the chart's own."""
    return [
        Workload("neighbour", NAMESPACE, {"app": "neighbour"}),
        Workload("prometheus", monitoring_namespace, {"app": "prometheus"}),
        Workload("stranger", "other", {"app": "stranger"}),
        Workload("istiod", "istio-system", {"app": "istiod", "istio": "pilot"}, (("grpc-xds", 15012, "TCP"),)),
        Workload("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, (("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"))),
    ]


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}}  # fmt: skip


def _chart_peer_names(documents: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """nca's names for the chart's server Deployment, test Pod and Redis (sessions.store=redis) -> ``server`` /
    ``tester`` / ``redis``."""
    names: dict[str, str] = {}
    for doc in documents:
        metadata = doc.get("metadata") or {}
        component = (metadata.get("labels") or {}).get("app.kubernetes.io/component")
        nca_name = f"{metadata.get('namespace', NAMESPACE)}/{metadata.get('name')}[{doc.get('kind')}]"
        if doc.get("kind") == "Deployment" and component in {SERVER, REDIS}:
            names[nca_name] = str(component)
        elif doc.get("kind") == "Pod" and component == "tester":
            names[nca_name] = TESTER
    if sorted(set(names.values()) - {REDIS}) != [SERVER, TESTER] or len(names) != len(set(names.values())):
        raise NcaError(f"the render should hold one server Deployment and one tester Pod, found {names}")
    return names


# nca's lint about selectors that pick all or no Pods: true of a world this small, and harmless.
_SELECTION_LINT = re.compile(r"Warning: (A podSelector|A namespaceSelector|A non-empty namespaceSelector|Rule) selects")


def connectivity(
    documents: Sequence[Mapping[str, Any]], *, monitoring_namespace: str = "gmp-system", workdir: Path | None = None
) -> set[Connection]:
    """Every connection nca allows between the rendered chart's workloads and the stand-in cluster (canonical)."""
    if not NCA.exists():
        raise NcaError(f"{NCA} is missing: run scripts/install-nca.sh (make test does)")
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="nca-") as scratch:
            return connectivity(documents, monitoring_namespace=monitoring_namespace, workdir=Path(scratch))
    workloads = other_workloads(monitoring_namespace)
    chart = [dict(doc) for doc in documents if doc.get("kind") in NCA_KINDS]
    namespaces = dict.fromkeys([NAMESPACE, *(w.namespace for w in workloads)])
    world, rendered, report = workdir / "world.yaml", workdir / "chart.yaml", workdir / "connectivity.txt"
    # The namespaces first: nca warns about a Pod whose namespace it has not read yet.
    world.write_text(yaml.safe_dump_all([*map(_namespace, namespaces), *(w.manifest() for w in workloads)]))
    rendered.write_text(yaml.safe_dump_all(chart))
    command = [str(NCA), "--connectivity", "--resource_list", str(world), "--resource_list", str(rendered),
               "--output_format", "txt_no_fw_rules", "--file_out", str(report)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=workdir)
    warnings = [line for line in result.stderr.splitlines() if line.strip() and not _SELECTION_LINT.search(line)]
    if result.returncode != 0 or warnings or not report.exists():
        # A warning means nca analysed something else than the tests assume (e.g. a named port no Pod has, or a key it
        # does not support). Its lint about selectors that pick all or no Pods of this small world is no such thing.
        raise NcaError(f"{' '.join(command)} -> exit {result.returncode}\n{result.stdout}{result.stderr}")
    names = {f"{w.namespace}/{w.name}[Pod]": w.name for w in workloads} | _chart_peer_names(chart)
    return canonical(_parse_report(report.read_text(), names))


_LINE = re.compile(r"(?P<src>\S+) => (?P<dst>\S+) : (?P<connections>.+)")
_CUBES = re.compile(r"\{[^{}]*\}(?:,\{[^{}]*\})*")
_FIELD_SPLIT = re.compile(r",(?=[a-z_]+:)")


def _parse_report(text: str, names: Mapping[str, str]) -> set[Connection]:
    """The lines ``SRC => DST : CONNECTIONS`` of nca's txt_no_fw_rules connectivity report."""
    connections: set[Connection] = set()
    for line in filter(None, map(str.strip, text.splitlines())):
        match = _LINE.fullmatch(line)
        if match is None:
            raise NcaError(f"unexpected line in nca's report: {line!r}")
        src, dst = (names.get(p, p) for p in (match["src"], match["dst"]))
        connections |= {(src, dst, protocol, port) for protocol, port in _parse_connections(match["connections"])}
    return connections


def _parse_connections(text: str) -> set[tuple[str, Port]]:
    """``All connections`` or ``{protocols:TCP, UDP,dst_ports:53,8080-8081},{...}`` -> (protocol, port) pairs."""
    if text == "All connections":
        return {(ANY, ANY)}
    if _CUBES.fullmatch(text) is None:  # e.g. "All but {...}", a complement this module does not expand
        raise NcaError(f"cannot read nca's connection set {text!r}")
    pairs: set[tuple[str, Port]] = set()
    for cube in re.findall(r"\{([^{}]*)\}", text):
        fields = dict(item.split(":", 1) for item in _FIELD_SPLIT.split(cube))
        if not set(fields) <= {"protocols", "dst_ports"}:
            raise NcaError(f"cannot read nca's connection set {text!r} (dimensions {sorted(fields)})")
        protocols = fields["protocols"].split(", ") if "protocols" in fields else [ANY]
        if any(" " in p for p in protocols):  # "all but TCP"
            raise NcaError(f"cannot read nca's protocols in {text!r}")
        ports: list[Port] = [ANY]
        if "dst_ports" in fields:
            ports = [int(p) if p.isdigit() else p for p in fields["dst_ports"].split(",")]
        pairs |= {(protocol, port) for protocol in protocols for port in ports}
    return pairs


def _ip_networks(name: str) -> list[_IpNetwork] | None:
    """The addresses an IP peer name stands for (``a.b.c.d``, ``A-B``, CIDRs, comma-separated), None if not one."""
    networks: list[_IpNetwork] = []
    try:
        for part in name.split(","):
            if "/" in part:
                networks.append(ipaddress.ip_network(part, strict=False))
            else:
                first, _, last = part.partition("-")
                start = ipaddress.ip_address(first)
                end = ipaddress.ip_address(last) if last else start
                networks.extend(ipaddress.summarize_address_range(start, end))
    except ValueError:
        return None
    return networks


def is_outside(name: str) -> bool:
    """Whether a peer name stands for addresses outside the cluster (rather than a Pod)."""
    return _ip_networks(name) is not None


def ip_name(networks: Iterable[_IpNetwork]) -> str:
    """The canonical name of a set of addresses: its collapsed CIDRs, IPv4 first, comma-separated."""
    listed = list(networks)
    collapsed = [*ipaddress.collapse_addresses(n for n in listed if n.version == 4),
                 *ipaddress.collapse_addresses(n for n in listed if n.version == 6)]  # fmt: skip
    return ",".join(str(n) for n in collapsed)


def _spread_ranges(connections: Iterable[Connection]) -> Iterable[Connection]:
    """Port ranges of up to 1024 ports as their numbers (nca joins adjacent ports into ranges as it sees fit)."""
    for src, dst, protocol, port in connections:
        low, _, high = str(port).partition("-")
        if high and low.isdigit() and high.isdigit() and int(high) - int(low) < 1024:
            yield from ((src, dst, protocol, number) for number in range(int(low), int(high) + 1))
        else:
            yield src, dst, protocol, port


def canonical(connections: Iterable[Connection]) -> set[Connection]:
    """Merge the IP peers reached on the same protocol and port into one, and drop what ``*`` already covers (so
    that two sets of connections that allow the same traffic are equal, however nca grouped them)."""
    merged: dict[tuple[str, str, str, Port], list[_IpNetwork]] = {}
    plain: set[Connection] = set()
    for src, dst, protocol, port in _spread_ranges(connections):
        src_ips, dst_ips = _ip_networks(src), _ip_networks(dst)
        if src_ips is not None and dst_ips is None:
            merged.setdefault(("from", dst, protocol, port), []).extend(src_ips)
        elif dst_ips is not None and src_ips is None:
            merged.setdefault(("to", src, protocol, port), []).extend(dst_ips)
        else:
            plain.add((src, dst, protocol, port))
    for (direction, peer, protocol, port), networks in merged.items():
        # The addresses that reach on every port (or protocol) reach on this one too, though nca prints them once.
        covering = {(ANY, ANY), (protocol, ANY), (ANY, port)} - {(protocol, port)}
        wider = [n for p, q in covering for n in merged.get((direction, peer, p, q), [])]
        outside = ip_name([*networks, *wider])
        plain.add((outside, peer, protocol, port) if direction == "from" else (peer, outside, protocol, port))
    return {
        (src, dst, protocol, port)
        for src, dst, protocol, port in plain
        if (protocol, port) == (ANY, ANY)
        or ((src, dst, ANY, ANY) not in plain and (port == ANY or (src, dst, protocol, ANY) not in plain))
    }


def sorted_paths(connections: Iterable[Connection]) -> list[Connection]:
    """The connections in a stable, readable order (numbers before ranges and ``*``)."""

    def key(c: Connection) -> tuple[str, str, str, int, str]:
        return (c[0], c[1], c[2], c[3] if isinstance(c[3], int) else 1 << 20, str(c[3]))

    return sorted(connections, key=key)
