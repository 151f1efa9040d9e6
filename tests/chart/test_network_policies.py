"""The chart's NetworkPolicies, proven by a real policy engine (IBM's network-config-analyzer, tests/chart/
connectivity.py) over every chart/ci/*-values.yaml scenario: exactly the paths of the path table in chart/README.md
involve the server and the helm test Pod, no more and no fewer."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.connectivity import (
    ANY,
    NAMESPACE,
    NCA,
    OUTSIDE,
    REDIS,
    SERVER,
    TESTER,
    Connection,
    Port,
    Workload,
    canonical,
    connectivity,
    ip_name,
    is_outside,
    other_workloads,
    sorted_paths,
)
from tests.chart.rendering import SCENARIOS, values_of
from tests.conftest import ROOT

# nca itself takes about 0.5 s a scenario; with Helm, the module takes 10-20 s: real processes, as "slow" means.
pytestmark = pytest.mark.slow

DNS: list[tuple[str, Port]] = [("UDP", 53), ("TCP", 53)]
ISTIOD_XDS = 15012


OPEN_SCENARIOS = [s for s in SCENARIOS if not values_of(s)["networkPolicy"]["enabled"]]


# --- the path table (chart/README.md), for the stand-in cluster of tests/chart/connectivity.py ---------------------


def _matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a set of labels."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, listed = expression["key"], expression["operator"], expression.get("values") or []
        holds = {
            "In": key in labels and labels[key] in listed,
            "NotIn": key not in labels or labels[key] not in listed,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }
        if not holds[operator]:
            return False
    return True


def _ip_block(block: Mapping[str, Any]) -> str:
    """An ipBlock (cidr minus its excepts) as the connections name it."""
    kept: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [ipaddress.ip_network(block["cidr"])]
    for text in block.get("except") or []:
        hole = ipaddress.ip_network(text)
        pieces: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for network in kept:
            if network.version != hole.version or not network.overlaps(hole):
                pieces.append(network)
            elif not network.subnet_of(hole):  # type: ignore[arg-type]
                pieces.extend(network.address_exclude(hole))  # type: ignore[arg-type]
        kept = pieces
    return ip_name(kept)


def _selected(peers: Sequence[Mapping[str, Any]] | None, world: Sequence[Workload]) -> list[str]:
    """The stand-in peers a NetworkPolicy peer list (from / to) selects; none listed: everyone."""
    if not peers:
        return [*(w.name for w in world), OUTSIDE]
    selected: list[str] = []
    for peer in peers:
        if "ipBlock" in peer:
            selected.append(_ip_block(peer["ipBlock"]))
            continue
        namespaces, pods = peer.get("namespaceSelector"), peer.get("podSelector")
        for workload in world:
            in_namespace = (
                workload.namespace == NAMESPACE
                if namespaces is None
                else _matches(namespaces, {"kubernetes.io/metadata.name": workload.namespace})
            )
            if in_namespace and (pods is None or _matches(pods, workload.labels)):
                selected.append(workload.name)
    return selected


def _ports(ports: Sequence[Mapping[str, Any]] | None) -> list[tuple[str, Port]]:
    """A NetworkPolicy rule's ports as (protocol, port); none listed: every protocol and port."""
    if not ports:
        return [(ANY, ANY)]
    listed: list[tuple[str, Port]] = []
    for entry in ports:
        protocol, port = entry.get("protocol", "TCP"), entry.get("port")
        if port is None:
            listed.append((protocol, ANY))
        elif isinstance(port, str) and not port.isdigit():
            raise NotImplementedError(f"expected_paths does not resolve the named port {port!r} in egress rules")
        elif entry.get("endPort"):
            listed.append((protocol, f"{port}-{entry['endPort']}"))
        else:
            listed.append((protocol, int(port)))
    return listed


def expected_paths(values: Mapping[str, Any]) -> set[Connection]:
    """Every connection that involves the server or the tester, by the path table of chart/README.md:

    with networkPolicy.enabled (the default):
    | from | to | ports |
    | anyone (every Pod, every namespace, the outside) | server | http (or, with allowedSources, only from those) |
    | tester (the helm test Pod) | server | http and metrics |
    | Pods of the monitoring namespace | server | metrics |
    | server | anyone | DNS only: UDP 53 and TCP 53 |
    | server | what networkPolicy.egress declares | those ports |
    | server | istiod in istio-system | TCP 15012, only with istio.enabled |
    | tester | anyone | DNS only |
    | anyone | tester | nothing |
    | server | the chart's Redis (sessions.store=redis) | TCP 6379; nobody else reaches it, it reaches nobody |
    | server | sessions.external.egressTo (anyone when empty), with sessions.store=external | sessions.external.port |
    and nothing else. Without networkPolicy.enabled, every path is open.
    """
    policy = values["networkPolicy"]
    http, metrics = int(values["service"]["port"]), int(values["service"]["metricsPort"])
    world = other_workloads(policy["monitoringNamespace"])
    everyone = _selected(None, world)
    if not policy["enabled"]:
        peers = [SERVER, TESTER, *everyone, *([REDIS] if values["sessions"]["store"] == "redis" else [])]
        return canonical((a, b, ANY, ANY) for a in peers for b in peers if a != b and {a, b} & {SERVER, TESTER})
    paths: set[Connection] = set()
    paths |= {(source, SERVER, "TCP", http) for source in _selected(policy["allowedSources"], world)}
    paths |= {(TESTER, SERVER, "TCP", http), (TESTER, SERVER, "TCP", metrics)}
    paths |= {(w.name, SERVER, "TCP", metrics) for w in world if w.namespace == policy["monitoringNamespace"]}
    for sender in (SERVER, TESTER):
        paths |= {(sender, peer, protocol, port) for peer in everyone for protocol, port in DNS}
    for rule in policy["egress"]:
        destinations = _selected(rule.get("to"), world)
        paths |= {
            (SERVER, peer, protocol, port) for peer in destinations for protocol, port in _ports(rule.get("ports"))
        }
    sessions = values["sessions"]
    if sessions["store"] == "redis":
        paths.add((SERVER, REDIS, "TCP", 6379))
    elif sessions["store"] == "external":
        external = sessions["external"]
        paths |= {(SERVER, peer, "TCP", int(external["port"])) for peer in _selected(external["egressTo"], world)}
    istio = values.get("istio") or {}
    if istio.get("enabled"):
        istio_namespace = istio.get("namespace", "istio-system")
        paths |= {(SERVER, w.name, "TCP", ISTIOD_XDS) for w in world
                  if w.namespace == istio_namespace and w.labels.get("app") == "istiod"}  # fmt: skip
    return canonical(paths)


# --- what nca finds -------------------------------------------------------------------------------------------------

_ANALYSED: dict[Path, tuple[list[dict[str, Any]], set[Connection]]] = {}


def analysed(helm: str, scenario: Path) -> tuple[list[dict[str, Any]], set[Connection]]:
    """The scenario rendered by real Helm, and every connection nca allows in it (once per scenario)."""
    if not NCA.exists():
        pytest.fail("nca is not installed: run scripts/install-nca.sh (make test does)")
    if scenario not in _ANALYSED:
        rendered = subprocess.run(
            [helm, "template", "r1", str(ROOT / "chart"), "--namespace", NAMESPACE, "-f", str(scenario)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        documents = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
        monitoring = values_of(scenario)["networkPolicy"]["monitoringNamespace"]
        _ANALYSED[scenario] = documents, connectivity(documents, monitoring_namespace=monitoring)
    return _ANALYSED[scenario]


def involving_the_chart(paths: Iterable[Connection]) -> set[Connection]:
    return {path for path in paths if {SERVER, TESTER, REDIS} & set(path[:2])}


def allows(paths: set[Connection], source: str, destination: str, protocol: str, port: Port) -> bool:
    """Whether the connections let ``protocol``/``port`` through (``*`` in a path covers every value)."""
    return any((source, destination, p, q) in paths for p in (protocol, ANY) for q in (port, ANY))


def _difference(found: set[Connection], expected: set[Connection]) -> str:
    def listed(paths: set[Connection]) -> str:
        return "".join(f"\n    {path!r}" for path in sorted_paths(paths)) or " none"

    return (f"\n  missing (the path table allows them, nca does not):{listed(expected - found)}"
            f"\n  unexpected (nca allows them, the path table does not):{listed(found - expected)}")  # fmt: skip


# --- the tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_nca_allows_exactly_the_documented_paths_to_and_from_the_server_and_the_tester(
    helm: str, scenario: Path
) -> None:
    _, paths = analysed(helm, scenario)
    found, expected = involving_the_chart(paths), expected_paths(values_of(scenario))
    assert found == expected, f"{scenario.name}:{_difference(found, expected)}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_the_helm_test_pod_reaches_the_servers_http_and_metrics_ports(helm: str, scenario: Path) -> None:
    _, paths = analysed(helm, scenario)
    values = values_of(scenario)
    blocked = [
        f"{name} (TCP {port})"
        for name, port in (("http", values["service"]["port"]), ("metrics", values["service"]["metricsPort"]))
        if not allows(paths, TESTER, SERVER, "TCP", int(port))
    ]
    reached = sorted_paths(p for p in paths if p[:2] == (TESTER, SERVER))
    assert not blocked, f"{scenario.name}: the test Pod cannot reach the server's {', '.join(blocked)}; nca: {reached}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_nca_sees_only_the_chart_and_the_stand_in_cluster(helm: str, scenario: Path) -> None:
    """A harness check: no peer nca reports is unknown (e.g. a Pod nca made up, or one named differently)."""
    _, paths = analysed(helm, scenario)
    world = other_workloads(values_of(scenario)["networkPolicy"]["monitoringNamespace"])
    known = {SERVER, TESTER, *(w.name for w in world)}
    unknown = sorted({peer for path in paths for peer in path[:2]
                      if peer not in known | {REDIS} and not is_outside(peer)})  # fmt: skip
    assert not unknown, f"{scenario.name}: nca reports peers outside the stand-in cluster: {unknown}"
    assert {path[0] for path in paths} >= known, f"{scenario.name}: some peers send nothing at all"


@pytest.mark.parametrize("scenario", OPEN_SCENARIOS, ids=lambda p: p.name)
def test_without_network_policies_nothing_is_enforced(helm: str, scenario: Path) -> None:
    documents, paths = analysed(helm, scenario)
    assert not [d["metadata"]["name"] for d in documents if d["kind"] == "NetworkPolicy"]
    for source in ("stranger", OUTSIDE):
        assert (source, SERVER, ANY, ANY) in paths, f"{scenario.name}: {source} -> server is restricted"
