"""``python -m deployer network plan|apply [--dry-run]``: the seed design's VPC (section 5), converged with
:mod:`deployer.gcp.compute_api`.

What it makes, in this order (each refers only to what comes before it):

* the VPC ``erlmcp-vpc``: custom subnets, REGIONAL dynamic routing, MTU 1460;
* the subnet ``erlmcp-subnet-<region>`` 10.0.0.0/24 with Private Google Access (VMs and nodes without external
  addresses reach Google APIs: Secret Manager, Artifact Registry, Logging), the secondary ranges the GKE cluster
  uses for pods (``pods`` 10.1.0.0/16) and services (``services`` 10.2.0.0/16), and VPC flow logs (5-second
  aggregation, 50 % sampling, all metadata);
* the Cloud Router ``erlmcp-router-<region>`` (ASN 65001) with Cloud NAT ``erlmcp-nat-<region>``: automatically
  allocated addresses, every subnet range (nodes and pods), logging ALL, 64 ports per VM growing on demand up to
  65 536 (dynamic port allocation: the seed's "64-65536 per VM");
* the firewall rules, named ``<network>-<purpose>``.

The firewall rules, and where they depart from the seed:

* 1000 ``allow-internal``: TCP, UDP and ICMP from the RFC 1918 ranges (``network.internalRanges``, which must be
  private ranges), as the seed.
* 1001 ``allow-ssh-iap``: TCP 22 from Identity-Aware Proxy's range 35.235.240.0/20 only (``gcloud compute ssh
  --tunnel-through-iap``, which checks IAM first). The seed's 1001 opened SSH to 0.0.0.0/0, marked as a risk; it
  is never produced, and :func:`firewall_rules` refuses any rule set that would let a public range reach port 22.
  ``network.sshViaIap: false`` leaves SSH closed altogether.
* 1002 ``allow-health-checks``: TCP 8080 (``compute.port``) and 9090 (``compute.metricsPort``) from Google's
  health-check ranges 35.191.0.0/16 and 130.211.0.0/22, to instances tagged ``erlmcp-server``.
* 1003 ``allow-https``: TCP 443 from anywhere to ``erlmcp-server`` instances, only with ``network.httpsPublic``.
* 1004 ``allow-gke-master``: TCP 10250 (the kubelet) from the cluster's control-plane range
  (``cluster.masterCidr``, 172.16.0.0/28), not the seed's 10.0.0.0/8. The private control plane reaches the
  nodes' kubelets (``kubectl logs``, ``exec``, ``port-forward``) from its own /28, which lies outside 10.0.0.0/8:
  the seed's source would not match it at all, and everything in 10.0.0.0/8 is already allowed by 1000, so the
  seed's rule was at once useless and redundant. With the seed's internal ranges 1000 happens to admit the /28
  too (it is inside 172.16.0.0/12); 1004 keeps the control plane's access explicit and working when
  ``network.internalRanges`` is narrowed to the VPC's own ranges. (GKE adds a master rule of its own when it
  creates the cluster; this one does not depend on it.)
* 65534 ``deny-all``: TCP and UDP from anywhere denied and logged, only with ``network.denyAll``: Google's implied
  deny (65535) already drops the rest; the explicit rule makes the drops visible in the firewall logs.

An optional rule turned off (1001, 1003, 65534) is deleted by the next apply if it exists: it is looked up by its
name, and nothing else in the project is ever deleted.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from typing import Any, TextIO

from google.cloud import compute_v1

from deployer.errors import ValuesError
from deployer.gcp.compute_api import (
    FIREWALL,
    NETWORK,
    ROUTER,
    SUBNETWORK,
    Absent,
    Location,
    Log,
    Platform,
    Resource,
    check_name,
    run,
)
from deployer.gcp.config import GcpConfig

__all__ = [
    "ANYWHERE",
    "HEALTH_CHECK_RANGES",
    "IAP_RANGE",
    "SERVER_TAG",
    "absent",
    "command",
    "desired",
    "firewall_rules",
    "public_ssh",
    "router_name",
]

IAP_RANGE = "35.235.240.0/20"  # Identity-Aware Proxy's TCP forwarding
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22")  # Google's health checkers (and load balancer proxies)
ANYWHERE = "0.0.0.0/0"
SERVER_TAG = "erlmcp-server"  # the network tag of instances serving erlmcp (the gce platform's template)
KUBELET_PORT = "10250"
_PRIVATE_ASNS = ((64512, 65534), (4_200_000_000, 4_294_967_294))


def _base(config: GcpConfig) -> str:
    return config.network.name.removesuffix("-vpc")


def router_name(config: GcpConfig) -> str:
    return f"{_base(config)}-router-{config.region}"


def _nat_name(config: GcpConfig) -> str:
    return f"{_base(config)}-nat-{config.region}"


# -- the configuration's checks --------------------------------------------------------------------------------


def _cidr(value: str, key: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValuesError(f"{key}: {value!r} is not an IPv4 CIDR range such as 10.0.0.0/24 ({exc})") from exc
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValuesError(f"{key}: {value!r} is IPv6; the VPC's ranges are IPv4")
    return network


def _private(value: str, key: str) -> ipaddress.IPv4Network:
    network = _cidr(value, key)
    if not network.is_private:
        raise ValuesError(f"{key}: {value} is not a private range (RFC 1918, e.g. 10.0.0.0/8)")
    return network


def _ranges(config: GcpConfig) -> dict[str, ipaddress.IPv4Network]:
    """The ranges of every region, by the key that sets each (``standby.*`` for the standby region's)."""
    section = config.network
    ranges = {
        "network.subnetCidr": _private(section.subnet_cidr, "network.subnetCidr"),
        "network.podsRange": _private(section.pods_range, "network.podsRange"),
        "network.servicesRange": _private(section.services_range, "network.servicesRange"),
        "cluster.masterCidr": _private(config.cluster.master_cidr, "cluster.masterCidr"),
    }
    standby = config.standby
    if standby is not None:
        for key, value in (("subnetCidr", standby.subnet_cidr), ("podsRange", standby.pods_range),
                           ("servicesRange", standby.services_range), ("masterCidr", standby.master_cidr)):  # fmt: skip
            ranges[f"standby.{key}"] = _private(value, f"standby.{key}")
    return ranges


def _check_ranges(config: GcpConfig) -> None:
    section = config.network
    ranges = _ranges(config)
    keys = list(ranges)
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            if ranges[first].overlaps(ranges[second]):
                raise ValuesError(f"{first} {ranges[first]} overlaps {second} {ranges[second]}; they must not")
    for key in ("cluster.masterCidr", "standby.masterCidr"):
        if key in ranges and ranges[key].prefixlen != 28:
            raise ValuesError(f"{key}: {ranges[key]} must be a /28 (GKE's control plane)")
    if not section.internal_ranges:
        raise ValuesError("network.internalRanges: give at least one range (the VPC's own, at least)")
    for value in section.internal_ranges:
        _private(value, "network.internalRanges")


def _check_numbers(config: GcpConfig) -> None:
    section = config.network
    if not 1300 <= section.mtu <= 8896:
        raise ValuesError(f"network.mtu: {section.mtu} is outside 1300-8896 (the seed's 1460 suits VPN/Interconnect)")
    if not any(low <= section.router_asn <= high for low, high in _PRIVATE_ASNS):
        raise ValuesError(
            f"network.routerAsn: {section.router_asn} is not a private ASN (64512-65534 or 4200000000-4294967294)"
        )
    if not 0 < section.flow_log_sampling <= 1:
        raise ValuesError(f"network.flowLogSampling: {section.flow_log_sampling} is not in (0, 1]")
    ports = section.nat_min_ports_per_vm
    if ports < 32 or ports > 32768 or ports & (ports - 1):
        raise ValuesError(f"network.natMinPortsPerVm: {ports} is not a power of two from 32 to 32768")


def check(config: GcpConfig) -> None:
    """Raises :class:`ValuesError`, naming the key, for a configuration that cannot describe a working VPC."""
    _check_ranges(config)
    _check_numbers(config)
    for what, name in (
        ("network.name", config.network.name),
        ("network.podsRangeName", config.network.pods_range_name),
        ("network.servicesRangeName", config.network.services_range_name),
        ("the subnet name", config.subnet_name),
        ("the router name", router_name(config)),
        ("the firewall rule name", f"{config.network.name}-allow-health-checks"),
    ):
        check_name(name, what)
    if config.network.pods_range_name == config.network.services_range_name:
        raise ValuesError("network.podsRangeName and network.servicesRangeName must differ")


# -- the desired resources -------------------------------------------------------------------------------------


def _network(config: GcpConfig) -> Any:
    return compute_v1.Network(
        name=config.network.name,
        description="erlmcp: the seed design's VPC (managed by python -m deployer network)",
        auto_create_subnetworks=False,
        mtu=config.network.mtu,
        routing_config=compute_v1.NetworkRoutingConfig(routing_mode="REGIONAL"),
    )


def _subnetwork(config: GcpConfig, where: Location) -> Any:
    section = config.network
    return compute_v1.Subnetwork(
        name=config.subnet_name,
        network=where.link(NETWORK, section.name),
        ip_cidr_range=section.subnet_cidr,
        private_ip_google_access=True,
        secondary_ip_ranges=[
            compute_v1.SubnetworkSecondaryRange(range_name=section.pods_range_name, ip_cidr_range=section.pods_range),
            compute_v1.SubnetworkSecondaryRange(
                range_name=section.services_range_name, ip_cidr_range=section.services_range
            ),
        ],
        log_config=compute_v1.SubnetworkLogConfig(
            enable=True,
            aggregation_interval="INTERVAL_5_SEC",
            flow_sampling=section.flow_log_sampling,
            metadata="INCLUDE_ALL_METADATA",
        ),
    )


def _router(config: GcpConfig, where: Location) -> Any:
    nat = compute_v1.RouterNat(
        name=_nat_name(config),
        nat_ip_allocate_option="AUTO_ONLY",
        source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
        log_config=compute_v1.RouterNatLogConfig(enable=True, filter="ALL"),
        enable_dynamic_port_allocation=True,
        enable_endpoint_independent_mapping=False,  # required off with dynamic port allocation
        min_ports_per_vm=config.network.nat_min_ports_per_vm,
        max_ports_per_vm=65536,
    )
    return compute_v1.Router(
        name=router_name(config),
        network=where.link(NETWORK, config.network.name),
        bgp=compute_v1.RouterBgp(asn=config.network.router_asn),
        nats=[nat],
    )


def _rule(
    config: GcpConfig,
    where: Location,
    purpose: str,
    priority: int,
    sources: Sequence[str],
    ports: dict[str, Sequence[str]],
    *,
    deny: bool = False,
    tags: Sequence[str] = (),
    log: bool = False,
    text: str,
) -> Any:
    """One ingress rule: ``ports`` maps a protocol to its ports (none: every port)."""
    entries = [{"I_p_protocol": protocol, **({"ports": list(p)} if p else {})} for protocol, p in ports.items()]
    rule = compute_v1.Firewall(
        name=f"{config.network.name}-{purpose}",
        description=f"erlmcp {priority}: {text}",
        network=where.link(NETWORK, config.network.name),
        direction="INGRESS",
        priority=priority,
        source_ranges=list(sources),
        target_tags=list(tags),
        disabled=False,
    )
    if deny:
        rule.denied = [compute_v1.Denied(entry) for entry in entries]
    else:
        rule.allowed = [compute_v1.Allowed(entry) for entry in entries]
    if log:
        rule.log_config = compute_v1.FirewallLogConfig(enable=True)
    return rule


def firewall_rules(config: GcpConfig, where: Location) -> list[Any]:
    """The rules the configuration asks for; ValuesError if one would open SSH to a public range."""
    serving = [str(config.compute.port), str(config.compute.metrics_port)]
    every = ["0-65535"]
    rules = [
        _rule(
            config,
            where,
            "allow-internal",
            1000,
            config.network.internal_ranges,
            {"tcp": every, "udp": every, "icmp": ()},
            text="everything between private addresses",
        ),
    ]
    if config.network.ssh_via_iap:
        rules.append(
            _rule(
                config,
                where,
                "allow-ssh-iap",
                1001,
                [IAP_RANGE],
                {"tcp": ["22"]},
                log=True,
                text="SSH through Identity-Aware Proxy only (never from the internet)",
            )
        )
    rules.append(
        _rule(
            config,
            where,
            "allow-health-checks",
            1002,
            HEALTH_CHECK_RANGES,
            {"tcp": serving},
            tags=[SERVER_TAG],
            text="Google's health checkers and load balancers",
        )
    )
    if config.network.https_public:
        rules.append(
            _rule(
                config,
                where,
                "allow-https",
                1003,
                [ANYWHERE],
                {"tcp": ["443"]},
                tags=[SERVER_TAG],
                text="HTTPS from anywhere",
            )
        )
    rules.append(
        _rule(
            config,
            where,
            "allow-gke-master",
            1004,
            [region.cluster.master_cidr for region in config.regions()],  # each region's cluster's
            {"tcp": [KUBELET_PORT]},
            text="the GKE control plane to the kubelets",
        )
    )
    if config.network.deny_all:
        rules.append(
            _rule(
                config,
                where,
                "deny-all",
                65534,
                [ANYWHERE],
                {"tcp": (), "udp": ()},
                deny=True,
                log=True,
                text="everything else, logged",
            )
        )
    for rule in rules:
        if public_ssh(rule):
            raise ValuesError(
                f"firewall rule {rule.name} would let the internet reach SSH (port 22); only "
                f"Identity-Aware Proxy ({IAP_RANGE}) may"
            )
    return rules


def _covers(ports: Sequence[str], port: int) -> bool:
    if not ports:
        return True
    for entry in ports:
        low, _, high = entry.partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def public_ssh(rule: Any) -> bool:
    """Whether an ingress rule allows TCP 22 from a range that is neither private nor IAP's (no source range at
    all means anywhere, as Compute Engine reads it)."""
    if rule.direction not in ("", "INGRESS") or not rule.allowed:
        return False
    iap = ipaddress.IPv4Network(IAP_RANGE)
    sources = [ipaddress.ip_network(s, strict=False) for s in rule.source_ranges or [ANYWHERE]]
    public = [s for s in sources if not (s.is_private or (isinstance(s, ipaddress.IPv4Network) and s.subnet_of(iap)))]
    ssh = any(a.I_p_protocol in ("tcp", "all") and _covers(a.ports, 22) for a in rule.allowed)
    return bool(public) and ssh


def desired(config: GcpConfig) -> list[Resource]:
    """Every resource of the network, in the order they are made: the VPC, each region's subnet and Router (with
    ``standby``, the standby region's after the primary's), the firewall rules; ValuesError for a bad
    configuration."""
    check(config)
    where = Location(config.project, config.region)
    regional: list[Resource] = []
    for index, region in enumerate(config.regions()):
        if index:
            check(region)  # the standby's names (the primary's were checked above)
        here, other = Location(region.project, region.region), region.region if index else None
        regional += [
            Resource(SUBNETWORK, _subnetwork(region, here), region=other),
            Resource(ROUTER, _router(region, here), region=other),
        ]
    return [
        Resource(NETWORK, _network(config)),
        *regional,
        *(Resource(FIREWALL, rule) for rule in firewall_rules(config, where)),
    ]


def absent(config: GcpConfig) -> list[Absent]:
    """The optional rules turned off: deleted if an earlier configuration made them."""
    optional = {
        "allow-ssh-iap": config.network.ssh_via_iap,
        "allow-https": config.network.https_public,
        "deny-all": config.network.deny_all,
    }
    return [Absent(FIREWALL, f"{config.network.name}-{purpose}") for purpose, on in optional.items() if not on]


def _title(config: GcpConfig) -> str:
    regions = ", ".join(region.region for region in config.regions())
    return f"Network {config.network.name} (project {config.project}, {regions})"


def command(args: argparse.Namespace, *, log: Log, out: TextIO | None = None) -> int:
    """``network plan|apply|render`` (render: offline): 0 when done; ValuesError for a bad configuration,
    CloudError if refused."""
    return run(args, Platform(_title, desired, absent=absent), log=log, out=out)
