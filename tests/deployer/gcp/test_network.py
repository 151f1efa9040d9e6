"""``python -m deployer network``: the seed's VPC, subnet, Cloud Router with NAT and firewall rules, planned offline
from the configuration and applied through the real google-cloud-compute clients against a local server of the
Compute Engine REST protocol (:mod:`tests.compute_rest`): create, re-apply, drift, dry runs, refusals."""

from __future__ import annotations

import ipaddress
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import compute_v1

from deployer.cli import main
from deployer.gcp import network
from deployer.gcp.compute_api import FIREWALL, NETWORK, ROUTER, SUBNETWORK
from deployer.gcp.config import GcpConfig, load_config
from tests.compute_rest import ComputeRest

PROJECT = "demo-project"
REGION = "us-central1"
SUBNET = f"erlmcp-subnet-{REGION}"
ROUTER_NAME = f"erlmcp-router-{REGION}"


@pytest.fixture
def compute() -> Iterator[ComputeRest]:
    server = ComputeRest(PROJECT).start()
    yield server
    server.stop()


def cli(server: ComputeRest, capsys: Any, *argv: str, config: Path | None = None) -> tuple[int, str, str]:
    """``python -m deployer network ARGV`` against the local server: exit code, stdout, stderr."""
    extra = ["--config", str(config)] if config else []
    code = main(["network", *argv, "--project", PROJECT, "--insecure", "--endpoint", server.endpoint, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "erlmcp-gcp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def resources(**sections: Any) -> dict[str, Any]:
    """The desired network of a configuration, by name."""
    return {r.name: r for r in network.desired(GcpConfig(project=PROJECT, **sections))}


def rules(**sections: Any) -> dict[int, Any]:
    return {r.message.priority: r.message for r in resources(**sections).values() if r.kind is FIREWALL}


def as_plan(out: str) -> dict[tuple[str, str], Any]:
    return {(c["kind"], c["name"]): c for c in json.loads(out)["changes"]}


# -- the plan, offline ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("https_public", [False, True])
@pytest.mark.parametrize("deny_all", [False, True])
def test_every_resource_is_a_valid_compute_v1_message_that_survives_a_strict_json_round_trip(
    https_public: bool, deny_all: bool
) -> None:
    for resource in resources(network={"httpsPublic": https_public, "denyAll": deny_all}).values():
        kind = type(resource.message)
        assert kind is resource.kind.message
        again = kind.from_json(kind.to_json(resource.message), ignore_unknown_fields=False)
        assert again == resource.message


def test_the_vpc_is_custom_mode_regional_routing_mtu_1460() -> None:
    vpc = resources()["erlmcp-vpc"].message
    assert (vpc.auto_create_subnetworks, vpc.routing_config.routing_mode, vpc.mtu) == (False, "REGIONAL", 1460)


def test_the_subnet_has_private_google_access_the_gke_secondary_ranges_and_flow_logs() -> None:
    config = GcpConfig(project=PROJECT)
    subnet = resources()[SUBNET].message
    assert subnet.name == config.subnet_name
    assert subnet.ip_cidr_range == "10.0.0.0/24"
    assert subnet.private_ip_google_access is True
    secondary = {r.range_name: r.ip_cidr_range for r in subnet.secondary_ip_ranges}
    assert secondary == {config.network.pods_range_name: "10.1.0.0/16", config.network.services_range_name:
                         "10.2.0.0/16"}  # fmt: skip
    assert secondary.keys() == {"pods", "services"}  # the names the GKE cluster's ip_allocation_policy uses
    log = subnet.log_config
    assert (log.enable, log.aggregation_interval, log.flow_sampling) == (True, "INTERVAL_5_SEC", 0.5)
    assert subnet.network.endswith(f"/projects/{PROJECT}/global/networks/erlmcp-vpc")


def test_the_router_has_asn_65001_and_a_nat_auto_only_logging_all_with_64_ports_per_vm_and_more_on_demand() -> None:
    router = resources()[ROUTER_NAME].message
    assert router.bgp.asn == 65001
    (nat,) = router.nats
    assert nat.nat_ip_allocate_option == "AUTO_ONLY"
    assert nat.source_subnetwork_ip_ranges_to_nat == "ALL_SUBNETWORKS_ALL_IP_RANGES"
    assert (nat.log_config.enable, nat.log_config.filter) == (True, "ALL")
    assert (nat.min_ports_per_vm, nat.max_ports_per_vm, nat.enable_dynamic_port_allocation) == (64, 65536, True)


def test_the_default_firewall_is_internal_ssh_through_iap_health_checks_and_the_gke_master() -> None:
    found = rules()
    assert sorted(found) == [1000, 1001, 1002, 1004]
    assert list(found[1000].source_ranges) == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    assert {a.I_p_protocol for a in found[1000].allowed} == {"tcp", "udp", "icmp"}
    assert list(found[1001].source_ranges) == [network.IAP_RANGE]
    assert [(a.I_p_protocol, list(a.ports)) for a in found[1001].allowed] == [("tcp", ["22"])]
    assert set(found[1002].source_ranges) == {"35.191.0.0/16", "130.211.0.0/22"}
    assert [(a.I_p_protocol, list(a.ports)) for a in found[1002].allowed] == [("tcp", ["8080", "9090"])]
    assert list(found[1002].target_tags) == [network.SERVER_TAG]


def test_rule_1004_lets_the_private_control_plane_range_reach_the_kubelet_not_the_seeds_10_slash_8() -> None:
    found = rules(cluster={"masterCidr": "172.16.0.32/28"})
    assert list(found[1004].source_ranges) == ["172.16.0.32/28"]
    assert [(a.I_p_protocol, list(a.ports)) for a in found[1004].allowed] == [("tcp", ["10250"])]
    assert "10.0.0.0/8" not in found[1004].source_ranges


def test_https_1003_and_deny_all_65534_exist_only_when_configured() -> None:
    assert 1003 not in rules()
    assert 65534 not in rules()
    found = rules(network={"httpsPublic": True, "denyAll": True})
    assert list(found[1003].source_ranges) == ["0.0.0.0/0"]
    assert [(a.I_p_protocol, list(a.ports)) for a in found[1003].allowed] == [("tcp", ["443"])]
    assert not found[65534].allowed
    assert {d.I_p_protocol for d in found[65534].denied} == {"tcp", "udp"}
    assert found[65534].log_config.enable is True


def _opens_ssh_to(rule: Any) -> list[str]:
    """The non-private sources other than IAP that a rule lets reach TCP 22."""

    def covers(ports: Any) -> bool:
        return not ports or any(int(p.split("-")[0]) <= 22 <= int(p.split("-")[-1]) for p in ports)

    if not any(a.I_p_protocol in ("tcp", "all") and covers(a.ports) for a in rule.allowed):
        return []
    sources = list(rule.source_ranges) or ["0.0.0.0/0"]
    return [s for s in sources if s != network.IAP_RANGE and not ipaddress.ip_network(s).is_private]


@pytest.mark.parametrize(("https_public", "deny_all", "ssh_via_iap"), list(itertools.product([False, True], repeat=3)))
def test_no_rule_ever_allows_0_0_0_0_slash_0_or_any_public_range_to_port_22(
    https_public: bool, deny_all: bool, ssh_via_iap: bool
) -> None:
    found = rules(network={"httpsPublic": https_public, "denyAll": deny_all, "sshViaIap": ssh_via_iap})
    for rule in found.values():
        assert _opens_ssh_to(rule) == [], rule.name
        assert not network.public_ssh(rule)
    assert (1001 in found) is ssh_via_iap


def test_the_guard_recognises_a_rule_that_would_open_ssh_to_the_internet() -> None:
    seed_1001 = compute_v1.Firewall(name="seed-ssh", direction="INGRESS", source_ranges=["0.0.0.0/0"],
                                    allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])])  # fmt: skip
    no_source = compute_v1.Firewall(name="open", allowed=[compute_v1.Allowed(I_p_protocol="all")])
    iap_only = compute_v1.Firewall(name="iap", source_ranges=[network.IAP_RANGE],
                                   allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["20-30"])])  # fmt: skip
    assert network.public_ssh(seed_1001)
    assert network.public_ssh(no_source)
    assert not network.public_ssh(iap_only)


# -- bad configurations: exit 2, nothing called ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("network:\n  subnetCidr: 10.0.0.300/24\n", "network.subnetCidr: '10.0.0.300/24' is not an IPv4 CIDR range"),
        ("network:\n  subnetCidr: 10.0.0.1/24\n", "network.subnetCidr: '10.0.0.1/24' is not an IPv4 CIDR range"),
        ("network:\n  podsRange: 10.0.0.0/16\n", "network.subnetCidr 10.0.0.0/24 overlaps network.podsRange"),
        ("network:\n  subnetCidr: 8.8.8.0/24\n", "network.subnetCidr: 8.8.8.0/24 is not a private range"),
        ("network:\n  internalRanges: [0.0.0.0/0]\n", "network.internalRanges: 0.0.0.0/0 is not a private range"),
        ("network:\n  routerAsn: 15169\n", "network.routerAsn: 15169 is not a private ASN"),
        ("network:\n  natMinPortsPerVm: 100\n", "network.natMinPortsPerVm: 100 is not a power of two"),
        ("cluster:\n  masterCidr: 172.16.0.0/24\n", "cluster.masterCidr: 172.16.0.0/24 must be a /28"),
        ("network:\n  name: Erlmcp_VPC\n", "network.name 'Erlmcp_VPC' is not a Compute Engine name"),
        ("network:\n  mtu: 9000\n", "network.mtu: 9000 is outside 1300-8896"),
        (
            "standby:\n  region: us-east1\n  podsRange: 10.1.0.0/16\n",
            "network.podsRange 10.1.0.0/16 overlaps standby.podsRange 10.1.0.0/16",
        ),
        (
            "standby:\n  region: us-east1\n  masterCidr: 172.16.0.0/28\n",
            "cluster.masterCidr 172.16.0.0/28 overlaps standby.masterCidr",
        ),
        ("standby:\n  region: us-central1\n", "standby.region must be another region than region (us-central1)"),
    ],
)
def test_a_bad_configuration_exits_2_naming_the_key_and_calls_nothing(
    compute: ComputeRest, capsys: Any, tmp_path: Path, yaml_text: str, message: str
) -> None:
    code, out, err = cli(compute, capsys, "apply", config=write_config(tmp_path, yaml_text))
    assert code == 2
    assert out == ""
    assert message in err
    assert compute.calls == []


def test_insecure_without_an_endpoint_exits_2(capsys: Any) -> None:
    assert main(["network", "plan", "--project", PROJECT, "--insecure"]) == 2
    assert "--insecure needs --endpoint" in capsys.readouterr().err


# -- against the API ---------------------------------------------------------------------------------------------


def test_plan_on_an_empty_project_creates_everything_and_writes_nothing(compute: ComputeRest, capsys: Any) -> None:
    code, out, _ = cli(compute, capsys, "plan")
    assert code == 0
    assert out.startswith("Network erlmcp-vpc (project demo-project, us-central1) plan: 7 to create, 0 to update")
    assert "CREATE     firewall rule  erlmcp-vpc-allow-ssh-iap" in out
    assert compute.writes == []
    assert compute.calls


def test_apply_creates_everything_in_order_and_the_api_holds_what_was_planned(
    compute: ComputeRest, capsys: Any
) -> None:
    code, out, err = cli(compute, capsys, "apply")
    assert code == 0, err
    assert "applied: 7 created, 0 updated, 0 deleted, 0 unchanged" in out
    assert [w.path.rsplit("/", 1)[-1] for w in compute.writes] == [
        "networks",
        "subnetworks",
        "routers",
        *["firewalls"] * 4,
    ]
    assert compute.names("firewalls") == sorted(
        f"erlmcp-vpc-{p}" for p in ("allow-internal", "allow-ssh-iap", "allow-health-checks", "allow-gke-master")
    )
    config = load_config(None, project=PROJECT)
    for resource in network.desired(config):
        stored = compute.get(resource.kind.collection, resource.name, REGION)
        sent = json.loads(type(resource.message).to_json(resource.message, always_print_fields_with_no_presence=False))
        assert {k: stored[k] for k in sent} == sent


def test_apply_again_changes_nothing_and_writes_nothing(compute: ComputeRest, capsys: Any) -> None:
    assert cli(compute, capsys, "apply")[0] == 0
    writes = len(compute.writes)
    code, out, _ = cli(compute, capsys, "apply", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["mode"] == "apply"
    assert document["summary"]["NO CHANGE"] == 7
    assert {c["action"] for c in document["changes"]} == {"NO CHANGE"}
    assert len(compute.writes) == writes


def test_a_firewall_source_range_changed_by_someone_is_an_update_naming_the_field_and_apply_restores_it(
    compute: ComputeRest, capsys: Any
) -> None:
    assert cli(compute, capsys, "apply")[0] == 0
    rule = "erlmcp-vpc-allow-health-checks"
    compute.edit("firewalls", rule, lambda r: r.update(sourceRanges=["0.0.0.0/0"]))
    code, out, _ = cli(compute, capsys, "plan")
    assert code == 0
    assert f"UPDATE     firewall rule  {rule}" in out
    assert 'source_ranges: ["0.0.0.0/0"] -> ["35.191.0.0/16", "130.211.0.0/22"]' in out
    assert "1 to update" in out
    assert "6 unchanged" in out
    writes = len(compute.writes)
    assert cli(compute, capsys, "apply")[0] == 0
    (patch,) = compute.writes[writes:]
    assert patch.method == "PATCH"
    assert patch.path.endswith(f"/firewalls/{rule}")
    assert set(patch.body or {}) == {"name", "sourceRanges"}  # only what differs
    assert compute.get("firewalls", rule)["sourceRanges"] == ["35.191.0.0/16", "130.211.0.0/22"]
    assert "7 unchanged" in cli(compute, capsys, "plan")[1]


def test_subnet_drift_is_patched_with_the_fingerprint_the_api_requires(compute: ComputeRest, capsys: Any) -> None:
    assert cli(compute, capsys, "apply")[0] == 0
    compute.edit("subnetworks", SUBNET, lambda s: s.update(privateIpGoogleAccess=False, logConfig={"enable": False}),
                 region=REGION)  # fmt: skip
    fingerprint = compute.get("subnetworks", SUBNET, REGION)["fingerprint"]
    code, out, _ = cli(compute, capsys, "apply")
    assert code == 0
    assert "private_ip_google_access: false -> true" in out
    assert "log_config.enable: false -> true" in out
    patch = compute.writes[-1]
    assert patch.body is not None
    assert patch.body["fingerprint"] == fingerprint
    stored = compute.get("subnetworks", SUBNET, REGION)
    assert stored["privateIpGoogleAccess"] is True
    assert stored["logConfig"]["flowSampling"] == 0.5
    assert stored["ipCidrRange"] == "10.0.0.0/24"


def test_a_nat_setting_changed_in_the_console_is_drift_in_the_router(compute: ComputeRest, capsys: Any) -> None:
    assert cli(compute, capsys, "apply")[0] == 0
    compute.edit("routers", ROUTER_NAME, lambda r: r["nats"][0]["logConfig"].update(filter="ERRORS_ONLY"), REGION)
    code, out, _ = cli(compute, capsys, "plan", "--json")
    change = as_plan(out)[("router", ROUTER_NAME)]
    assert change["action"] == "UPDATE"
    assert change["differences"] == [{"field": "nats[0].log_config.filter", "actual": "ERRORS_ONLY", "desired": "ALL"}]


def test_turning_on_https_plans_one_new_rule_and_leaves_the_rest(compute: ComputeRest, capsys: Any,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    assert cli(compute, capsys, "apply")[0] == 0
    code, out, _ = cli(compute, capsys, "plan", "--json", config=write_config(tmp_path, "network:\n  httpsPublic: "
                                                                                         "true\n"))  # fmt: skip
    assert code == 0
    changes = as_plan(out)
    assert changes[("firewall rule", "erlmcp-vpc-allow-https")]["action"] == "CREATE"
    assert json.loads(out)["summary"] == {"CREATE": 1, "UPDATE": 0, "DELETE": 0, "NO CHANGE": 7}


def test_apply_dry_run_prints_the_plan_and_writes_nothing(compute: ComputeRest, capsys: Any) -> None:
    code, out, _ = cli(compute, capsys, "apply", "--dry-run")
    assert code == 0
    assert "plan (dry run: nothing written): 7 to create" in out
    assert compute.writes == []
    assert compute.resources == {}


def test_an_api_refusal_exits_1_naming_the_resource_and_the_next_apply_completes(compute: ComputeRest,
                                                                                 capsys: Any) -> None:  # fmt: skip
    compute.refuse("POST", "routers", 403)
    code, out, err = cli(compute, capsys, "apply")
    assert code == 1
    assert out == ""
    assert f"cannot create router {ROUTER_NAME}" in err
    assert "Required 'compute.routers.post' permission" in err
    assert "(HTTP 403)" in err
    assert "Compute Engine API is enabled in project demo-project" in err
    assert compute.names("networks") == ["erlmcp-vpc"]
    assert compute.names("routers") == []
    code, out, _ = cli(compute, capsys, "apply")
    assert code == 0
    assert "2 created" not in out
    assert "5 created, 0 updated, 0 deleted, 2 unchanged" in out


def test_an_operation_that_ends_in_error_exits_1_with_its_message(compute: ComputeRest, capsys: Any) -> None:
    compute.fail_operation("POST", "subnetworks", "IP_SPACE_EXHAUSTED: the range is in use")
    code, _, err = cli(compute, capsys, "apply")
    assert code == 1
    assert f"cannot create subnetwork {SUBNET}: IP_SPACE_EXHAUSTED: the range is in use" in err


def test_an_unreachable_endpoint_exits_1_saying_so(capsys: Any) -> None:
    code = main(["network", "plan", "--project", PROJECT, "--insecure", "--endpoint", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot read network erlmcp-vpc: the Compute Engine API cannot be reached (ConnectionError" in err


def test_the_resources_are_made_in_an_order_where_references_exist() -> None:
    order = [r.kind for r in network.desired(GcpConfig(project=PROJECT))]
    assert order[:3] == [NETWORK, SUBNETWORK, ROUTER]
    assert set(order[3:]) == {FIREWALL}


def test_without_credentials_the_command_exits_1_saying_how_to_get_them(
    capsys: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    assert main(["network", "plan", "--project", PROJECT]) == 1
    err = capsys.readouterr().err
    assert "no Google Cloud credentials" in err
    assert "gcloud auth application-default login" in err


def test_an_optional_rule_turned_off_is_deleted_by_name_and_nothing_else_is(
    compute: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    on = write_config(tmp_path, "network:\n  httpsPublic: true\n  denyAll: true\n")
    assert cli(compute, capsys, "apply", config=on)[0] == 0
    assert "erlmcp-vpc-allow-https" in compute.names("firewalls")
    compute.resources["global/firewalls/someone-elses-rule"] = {"name": "someone-elses-rule"}
    off = write_config(tmp_path, "network:\n  denyAll: true\n  sshViaIap: false\n")
    code, out, _ = cli(compute, capsys, "plan", "--json", config=off)
    assert code == 0
    deleted = [(c["name"], c["note"]) for c in json.loads(out)["changes"] if c["action"] == "DELETE"]
    assert deleted == [("erlmcp-vpc-allow-ssh-iap", "no longer in the configuration"),
                       ("erlmcp-vpc-allow-https", "no longer in the configuration")]  # fmt: skip
    assert json.loads(out)["summary"] == {"CREATE": 0, "UPDATE": 0, "DELETE": 2, "NO CHANGE": 7}
    assert cli(compute, capsys, "apply", config=off)[0] == 0
    assert compute.names("firewalls") == sorted(
        ["erlmcp-vpc-allow-internal", "erlmcp-vpc-allow-health-checks", "erlmcp-vpc-allow-gke-master",
         "erlmcp-vpc-deny-all", "someone-elses-rule"]
    )  # fmt: skip
    assert [w.method for w in compute.writes[-2:]] == ["DELETE", "DELETE"]
    assert "0 to delete, 7 unchanged" in cli(compute, capsys, "plan", config=off)[1]


def test_a_standby_region_gets_its_own_subnet_and_router_in_the_same_vpc_in_one_run(
    compute: ComputeRest, capsys: Any, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "standby:\n  region: us-east1\n  zones: [us-east1-b, us-east1-c, us-east1-d]\n")
    code, _, err = cli(compute, capsys, "apply", config=config)
    assert code == 0, err
    subnet = compute.get("subnetworks", "erlmcp-subnet-us-east1", "us-east1")
    assert subnet["ipCidrRange"] == "10.4.0.0/24"
    assert [r["ipCidrRange"] for r in subnet["secondaryIpRanges"]] == ["10.5.0.0/16", "10.6.0.0/16"]
    assert compute.get("routers", "erlmcp-router-us-east1", "us-east1")["nats"][0]["name"] == "erlmcp-nat-us-east1"
    assert compute.get("subnetworks", "erlmcp-subnet-us-central1", "us-central1")["ipCidrRange"] == "10.0.0.0/24"
    assert compute.get("firewalls", "erlmcp-vpc-allow-gke-master")["sourceRanges"] == ["172.16.0.0/28",
                                                                                       "172.16.0.16/28"]  # fmt: skip
    assert compute.names("networks") == ["erlmcp-vpc"]  # one VPC for both regions

    before = len(compute.writes)
    code, out, err = cli(compute, capsys, "plan", "--json", config=config)
    assert code == 0, err
    assert {c["action"] for c in json.loads(out)["changes"]} == {"NO CHANGE"}
    assert len(compute.writes) == before
