"""``python -m deployer monitoring`` against a local server of the real Cloud Monitoring APIs (AlertPolicyService,
NotificationChannelService, DashboardsService) with in-memory state: plan, apply, re-apply, drift, deletion of what
is no longer asked for, dry runs, secrets, refusals."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from google.cloud import monitoring_dashboard_v1, monitoring_v3

from app.observability.cloud_monitoring import metric_descriptors
from deployer.cli import main
from deployer.gcp import monitoring
from deployer.gcp.monitoring import Clients, Options
from tests.conftest import ROOT
from tests.gcp import EMPTY, Refused, refusing, serve, unary

PROJECT = "demo-project"
PARENT = f"projects/{PROJECT}"
SECRET_KEY = "pd-0123456789abcdef0123456789abcdef"
SLACK_TOKEN = "xoxb-1111-2222-slack-secret-token"
LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
REQUIRED_LABELS = {"email": {"email_address"}, "pagerduty": {"service_key"}, "slack": {"channel_name", "auth_token"},
                   "webhook_tokenauth": {"url"}}  # fmt: skip
SENSITIVE = {"service_key", "auth_token"}


def check_labels(labels: Any) -> None:
    for key, value in labels.items():
        if not LABEL.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid user label {key}={value}")


@dataclass
class FakeMonitoring:
    """The three services over one in-memory project, checking what Cloud Monitoring checks on what we send."""

    channels: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)
    dashboards: dict[str, Any] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1001))
    refuse: dict[str, Refused] = field(default_factory=dict)  # method name -> the error of its next call

    def handler(self, method: Callable[[Any], Any]) -> Any:
        return refusing(method, self.refuse)

    def _project(self, name: str) -> None:
        if name != PARENT:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no project {name}")

    def _find(self, store: dict[str, Any], name: str) -> Any:
        if name not in store:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"{name} does not exist")
        return store[name]

    def _write(self, method: str, name: str) -> None:
        self.writes.append(f"{method} {name}")

    @staticmethod
    def _now() -> monitoring_v3.MutationRecord:
        return monitoring_v3.MutationRecord(mutate_time=datetime.now(UTC), mutated_by="fake@example.com")

    # -- notification channels

    def _shown_channel(self, channel: Any) -> Any:
        """What the API gives back: sensitive labels obfuscated."""
        shown = monitoring_v3.NotificationChannel(channel)
        for label in SENSITIVE & set(shown.labels):
            shown.labels[label] = "*" * 8 + shown.labels[label][-4:]
        return shown

    def _check_channel(self, channel: Any) -> None:
        missing = REQUIRED_LABELS.get(channel.type_, {"?"}) - set(channel.labels)
        if channel.type_ not in REQUIRED_LABELS or missing:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"channel type {channel.type_!r} needs {missing}")
        check_labels(channel.user_labels)

    def list_channels(self, request: Any) -> Any:
        self._project(request.name)
        shown = [self._shown_channel(c) for c in self.channels.values()]
        return monitoring_v3.ListNotificationChannelsResponse(notification_channels=shown, next_page_token="")

    def get_channel(self, request: Any) -> Any:
        return self._shown_channel(self._find(self.channels, request.name))

    def create_channel(self, request: Any) -> Any:
        self._project(request.name)
        channel = monitoring_v3.NotificationChannel(request.notification_channel)
        self._check_channel(channel)
        channel.name = f"{PARENT}/notificationChannels/{next(self.ids)}"
        channel.creation_record = self._now()
        self.channels[channel.name] = channel
        self._write("CreateNotificationChannel", channel.name)
        return self._shown_channel(channel)

    def update_channel(self, request: Any) -> Any:
        incoming = request.notification_channel
        stored = self._find(self.channels, incoming.name)
        updated = monitoring_v3.NotificationChannel(stored)
        if request.update_mask.paths:
            request.update_mask.MergeMessage(type(incoming).pb(incoming), type(updated).pb(updated), True, True)
        else:
            updated = monitoring_v3.NotificationChannel(incoming)
            updated.creation_record = stored.creation_record
        if updated.type_ != stored.type_:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the type of a channel cannot change")
        self._check_channel(updated)
        updated.mutation_records.append(self._now())
        self.channels[incoming.name] = updated
        self._write("UpdateNotificationChannel", incoming.name)
        return self._shown_channel(updated)

    def delete_channel(self, request: Any) -> None:
        self._find(self.channels, request.name)
        users = [p.name for p in self.policies.values() if request.name in p.notification_channels]
        if users and not request.force:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"{request.name} is used by {users}")
        del self.channels[request.name]
        self._write("DeleteNotificationChannel", request.name)

    # -- alert policies

    def _check_policy(self, policy: Any) -> None:
        if not policy.display_name or not 1 <= len(policy.conditions) <= 6:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a policy needs a display name and 1 to 6 conditions")
        if len(policy.conditions) > 1 and not policy.combiner:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a combiner is required for more than one condition")
        for condition in policy.conditions:
            kinds = [k for k in ("condition_threshold", "condition_absent") if k in condition]
            if len(kinds) != 1 or not condition.display_name:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "each condition: a display name and one kind")
        for name in policy.notification_channels:
            if name not in self.channels:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"no notification channel {name}")
        check_labels(policy.user_labels)

    def _name_conditions(self, policy: Any) -> None:
        for condition in policy.conditions:
            if not condition.name:
                condition.name = f"{policy.name}/conditions/{next(self.ids)}"

    def list_policies(self, request: Any) -> Any:
        self._project(request.name)
        return monitoring_v3.ListAlertPoliciesResponse(alert_policies=list(self.policies.values()),
                                                       next_page_token="")  # fmt: skip

    def get_policy(self, request: Any) -> Any:
        return self._find(self.policies, request.name)

    def create_policy(self, request: Any) -> Any:
        self._project(request.name)
        policy = monitoring_v3.AlertPolicy(request.alert_policy)
        self._check_policy(policy)
        policy.name = f"{PARENT}/alertPolicies/{next(self.ids)}"
        self._name_conditions(policy)
        policy.creation_record = policy.mutation_record = self._now()
        self.policies[policy.name] = policy
        self._write("CreateAlertPolicy", policy.name)
        return policy

    def update_policy(self, request: Any) -> Any:
        incoming = request.alert_policy
        stored = self._find(self.policies, incoming.name)
        updated = monitoring_v3.AlertPolicy(stored)
        if request.update_mask.paths:
            request.update_mask.MergeMessage(type(incoming).pb(incoming), type(updated).pb(updated), True, True)
        else:
            updated = monitoring_v3.AlertPolicy(incoming)
            updated.creation_record = stored.creation_record
        self._check_policy(updated)
        self._name_conditions(updated)
        updated.mutation_record = self._now()
        self.policies[incoming.name] = updated
        self._write("UpdateAlertPolicy", incoming.name)
        return updated

    def delete_policy(self, request: Any) -> None:
        self._find(self.policies, request.name)
        del self.policies[request.name]
        self._write("DeleteAlertPolicy", request.name)

    # -- dashboards

    def _check_dashboard(self, dashboard: Any) -> None:
        if not dashboard.display_name or not dashboard.mosaic_layout.tiles:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a dashboard needs a display name and widgets")
        for tile in dashboard.mosaic_layout.tiles:
            names = [tile.widget.alert_chart.name] if "alert_chart" in tile.widget else []
            names += list(tile.widget.incident_list.policy_names) if "incident_list" in tile.widget else []
            for name in names:
                if name not in self.policies:
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"no alert policy {name}")
        check_labels(dashboard.labels)

    def list_dashboards(self, request: Any) -> Any:
        self._project(request.parent)
        return monitoring_dashboard_v1.ListDashboardsResponse(dashboards=list(self.dashboards.values()),
                                                              next_page_token="")  # fmt: skip

    def get_dashboard(self, request: Any) -> Any:
        return self._find(self.dashboards, request.name)

    def create_dashboard(self, request: Any) -> Any:
        self._project(request.parent)
        dashboard = monitoring_dashboard_v1.Dashboard(request.dashboard)
        self._check_dashboard(dashboard)
        dashboard.name = f"{PARENT}/dashboards/{uuid.uuid4()}"
        dashboard.etag = uuid.uuid4().hex
        self.dashboards[dashboard.name] = dashboard
        self._write("CreateDashboard", dashboard.name)
        return dashboard

    def update_dashboard(self, request: Any) -> Any:
        incoming = monitoring_dashboard_v1.Dashboard(request.dashboard)
        stored = self._find(self.dashboards, incoming.name)
        if incoming.etag and incoming.etag != stored.etag:
            raise Refused(grpc.StatusCode.ABORTED, "the dashboard changed since it was read (etag)")
        self._check_dashboard(incoming)
        incoming.etag = uuid.uuid4().hex
        self.dashboards[incoming.name] = incoming
        self._write("UpdateDashboard", incoming.name)
        return incoming

    def delete_dashboard(self, request: Any) -> None:
        self._find(self.dashboards, request.name)
        del self.dashboards[request.name]
        self._write("DeleteDashboard", request.name)

    def services(self) -> dict[str, dict[str, Any]]:
        v3, dash = monitoring_v3, monitoring_dashboard_v1
        h = self.handler
        return {
            "google.monitoring.v3.NotificationChannelService": {
                "ListNotificationChannels": unary(h(self.list_channels), v3.ListNotificationChannelsRequest,
                                                  v3.ListNotificationChannelsResponse),
                "GetNotificationChannel": unary(h(self.get_channel), v3.GetNotificationChannelRequest,
                                                v3.NotificationChannel),
                "CreateNotificationChannel": unary(h(self.create_channel), v3.CreateNotificationChannelRequest,
                                                   v3.NotificationChannel),
                "UpdateNotificationChannel": unary(h(self.update_channel), v3.UpdateNotificationChannelRequest,
                                                   v3.NotificationChannel),
                "DeleteNotificationChannel": unary(h(self.delete_channel), v3.DeleteNotificationChannelRequest, EMPTY),
            },
            "google.monitoring.v3.AlertPolicyService": {
                "ListAlertPolicies": unary(h(self.list_policies), v3.ListAlertPoliciesRequest,
                                           v3.ListAlertPoliciesResponse),
                "GetAlertPolicy": unary(h(self.get_policy), v3.GetAlertPolicyRequest, v3.AlertPolicy),
                "CreateAlertPolicy": unary(h(self.create_policy), v3.CreateAlertPolicyRequest, v3.AlertPolicy),
                "UpdateAlertPolicy": unary(h(self.update_policy), v3.UpdateAlertPolicyRequest, v3.AlertPolicy),
                "DeleteAlertPolicy": unary(h(self.delete_policy), v3.DeleteAlertPolicyRequest, EMPTY),
            },
            "google.monitoring.dashboard.v1.DashboardsService": {
                "ListDashboards": unary(h(self.list_dashboards), dash.ListDashboardsRequest,
                                        dash.ListDashboardsResponse),
                "GetDashboard": unary(h(self.get_dashboard), dash.GetDashboardRequest, dash.Dashboard),
                "CreateDashboard": unary(h(self.create_dashboard), dash.CreateDashboardRequest, dash.Dashboard),
                "UpdateDashboard": unary(h(self.update_dashboard), dash.UpdateDashboardRequest, dash.Dashboard),
                "DeleteDashboard": unary(h(self.delete_dashboard), dash.DeleteDashboardRequest, EMPTY),
            },
        }  # fmt: skip


@dataclass
class Api:
    fake: FakeMonitoring
    endpoint: str
    clients: Clients


@pytest.fixture
def api() -> Iterator[Api]:
    fake = FakeMonitoring()
    server, port = serve(fake.services())
    clients = Clients.connect(f"127.0.0.1:{port}", insecure=True)
    yield Api(fake, f"127.0.0.1:{port}", clients)
    clients.close()
    server.stop(None)


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Path]:
    pagerduty, slack = tmp_path / "pagerduty.key", tmp_path / "slack.token"
    pagerduty.write_text(SECRET_KEY + "\n")
    slack.write_text(SLACK_TOKEN + "\n")
    return {"pagerduty": pagerduty, "slack": slack}


def channel_args(secrets: dict[str, Path], *emails: str) -> list[str]:
    return [*(a for e in emails for a in ("--email", e)), "--pagerduty-key-file", str(secrets["pagerduty"]),
            "--slack-channel", "#erlmcp-alerts", "--slack-token-file", str(secrets["slack"]),
            "--webhook-url", "https://hooks.example.com/erlmcp?auth_token=webhook-token-in-url"]  # fmt: skip


def run(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["monitoring", *args, "--project", PROJECT, "--endpoint", api.endpoint, "--insecure"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def plan_json(api: Api, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    code, out, err = run(api, capsys, "plan", "--json", *args)
    assert code == 0, err
    return list(json.loads(out)["changes"])


def actions(changes: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(c["action"], c["kind"], c["key"]) for c in changes]


POLICIES = ["error-rate", "latency-p95", "memory", "health", "connections-saturation", "task-leak"]
DASHBOARDS = ["overview", "latency-errors", "capacity", "alerts"]


def test_plan_on_an_empty_project_creates_everything_and_writes_nothing(api, capsys, secrets) -> None:
    changes = plan_json(api, capsys, *channel_args(secrets, "ops@example.com", "oncall@example.com"))
    kinds = [(c["kind"], c["action"]) for c in changes]
    assert kinds == [("notification channel", "CREATE")] * 5 + [("alert policy", "CREATE")] * 6 + [
        ("dashboard", "CREATE")] * 4  # fmt: skip
    assert [c["key"] for c in changes[5:]] == POLICIES + DASHBOARDS
    assert {c["key"] for c in changes[:5]} >= {"pagerduty", "slack", "webhook"}
    assert api.fake.writes == []


def test_apply_creates_labelled_objects_whose_policies_name_the_created_channels(api, capsys, secrets) -> None:
    code, out, err = run(api, capsys, "apply", *channel_args(secrets, "ops@example.com"))
    assert code == 0, err
    assert out.startswith(f"Cloud Monitoring applied for project {PROJECT}: 14 created, 0 updated, 0 deleted, 0 unch")
    fake = api.fake
    assert (len(fake.channels), len(fake.policies), len(fake.dashboards)) == (4, 6, 4)
    for labels in [*(c.user_labels for c in fake.channels.values()), *(p.user_labels for p in fake.policies.values()),
                   *(d.labels for d in fake.dashboards.values())]:  # fmt: skip
        assert (labels["managed-by"], labels["erlmcp-namespace"]) == ("erlmcp", "_all")
        assert labels["erlmcp-key"]
    channel = {c.user_labels["erlmcp-key"]: c.name for c in fake.channels.values()}
    policy = {p.user_labels["erlmcp-key"]: p for p in fake.policies.values()}
    everyone = sorted(channel.values())
    assert sorted(policy["health"].notification_channels) == everyone
    assert sorted(policy["error-rate"].notification_channels) == everyone
    assert sorted(policy["latency-p95"].notification_channels) == sorted(
        n for k, n in channel.items() if k != "pagerduty")  # warnings page nobody  # fmt: skip
    alerts = next(d for d in fake.dashboards.values() if d.labels["erlmcp-key"] == "alerts")
    charts = [t.widget.alert_chart.name for t in alerts.mosaic_layout.tiles if "alert_chart" in t.widget]
    assert charts == [policy[key].name for key in POLICIES]
    assert "deployer: created alert policy error-rate: projects/demo-project/alertPolicies/" in err


def test_the_policies_carry_the_thresholds_chosen(api, capsys, secrets) -> None:
    run(api, capsys, "apply", "--memory-limit-bytes", str(1024 * 1024 * 1024), "--max-connections", "500")
    policy = {p.user_labels["erlmcp-key"]: p for p in api.fake.policies.values()}

    def threshold(key: str, index: int = 0) -> float:
        return float(policy[key].conditions[index].condition_threshold.threshold_value)

    assert threshold("error-rate") == 0.05
    assert 'metric.label.code = starts_with("5")' in policy["error-rate"].conditions[0].condition_threshold.filter
    assert policy["error-rate"].conditions[0].condition_threshold.denominator_filter
    assert threshold("latency-p95") == 1.0
    assert threshold("memory") == 1024 * 1024 * 1024 * 9 // 10
    assert threshold("connections-saturation") == 400
    assert policy["health"].conditions[0].condition_absent.duration.total_seconds() == 300
    assert [threshold("task-leak", i) for i in range(3)] == [50.0, 10.0, 1000.0]
    assert policy["task-leak"].combiner == monitoring_v3.AlertPolicy.ConditionCombinerType.AND_WITH_MATCHING_RESOURCE
    severity = monitoring_v3.AlertPolicy.Severity
    assert {k: severity(p.severity).name for k, p in policy.items()} == {
        "error-rate": "ERROR", "latency-p95": "WARNING", "memory": "ERROR", "health": "CRITICAL",
        "connections-saturation": "WARNING", "task-leak": "WARNING"}  # fmt: skip


def test_apply_again_changes_nothing_and_writes_nothing(api, capsys, secrets) -> None:
    options = channel_args(secrets, "ops@example.com", "oncall@example.com")
    assert run(api, capsys, "apply", *options)[0] == 0
    writes = list(api.fake.writes)
    code, out, _ = run(api, capsys, "apply", *options)
    assert code == 0
    assert out.splitlines()[0].endswith(": 0 created, 0 updated, 0 deleted, 15 unchanged")
    assert all(line.startswith("  NO CHANGE") for line in out.splitlines()[1:])
    assert api.fake.writes == writes


def test_a_threshold_changed_in_the_console_is_drift_that_plan_names_and_apply_undoes(api, capsys) -> None:
    assert run(api, capsys, "apply", "--email", "ops@example.com")[0] == 0
    policies = api.clients.policies
    listed = policies.list_alert_policies(name=PARENT)
    error_rate = next(p for p in listed if p.user_labels["erlmcp-key"] == "error-rate")
    error_rate.conditions[0].condition_threshold.threshold_value = 0.5  # someone in the console
    policies.update_alert_policy(alert_policy=error_rate)

    code, out, _ = run(api, capsys, "plan", "--email", "ops@example.com")
    assert code == 0
    lines = out.splitlines()
    assert "1 to update" in lines[0]
    at = next(i for i, line in enumerate(lines) if "error-rate" in line)
    assert lines[at].split()[:3] == ["UPDATE", "alert", "policy"]
    assert lines[at + 1].strip() == "conditions[0].condition_threshold.threshold_value: 0.5 -> 0.05"

    writes = len(api.fake.writes)
    assert run(api, capsys, "apply", "--email", "ops@example.com")[0] == 0
    assert api.fake.writes[writes:] == [f"UpdateAlertPolicy {error_rate.name}"]
    assert policies.get_alert_policy(name=error_rate.name).conditions[0].condition_threshold.threshold_value == 0.05
    assert {c["action"] for c in plan_json(api, capsys, "--email", "ops@example.com")} == {"NO CHANGE"}


def test_a_removed_channel_is_deleted_once_policies_stop_naming_it_and_foreign_objects_stay(api, capsys) -> None:
    foreign = api.clients.channels.create_notification_channel(name=PARENT, notification_channel={
        "type_": "email", "display_name": "someone else's", "labels": {"email_address": "boss@example.com"},
    })  # fmt: skip
    api.clients.policies.create_alert_policy(name=PARENT, alert_policy={
        "display_name": "someone else's", "combiner": "OR", "notification_channels": [foreign.name],
        "conditions": [{"display_name": "c", "condition_absent": {"filter": 'metric.type = "x"'}}]})  # fmt: skip
    assert run(api, capsys, "apply", "--email", "a@example.com", "--email", "b@example.com")[0] == 0
    gone = next(c for c in api.fake.channels.values() if c.labels["email_address"] == "b@example.com")

    changes = plan_json(api, capsys, "--email", "a@example.com")
    assert [c for c in changes if c["action"] == "DELETE"] == [{
        "action": "DELETE", "kind": "notification channel", "key": gone.user_labels["erlmcp-key"],
        "displayName": "erlmcp: email b@example.com", "name": gone.name, "secrets": {}, "differences": []}]  # fmt: skip
    updated = [c for c in changes if c["action"] == "UPDATE"]
    assert {c["key"] for c in updated} == set(POLICIES)
    assert all([d["field"] for d in c["differences"]] == ["notification_channels"] for c in updated)
    text = run(api, capsys, "plan", "--email", "a@example.com")[1]
    assert f"      notification_channels: -{gone.name}\n" in text

    assert run(api, capsys, "apply", "--email", "a@example.com")[0] == 0
    assert gone.name not in api.fake.channels
    assert api.fake.writes[-1] == f"DeleteNotificationChannel {gone.name}"
    assert foreign.name in api.fake.channels
    assert any(p.display_name == "someone else's" for p in api.fake.policies.values())


def test_apply_dry_run_prints_the_plan_and_writes_nothing(api, capsys, secrets) -> None:
    code, out, err = run(api, capsys, "apply", "--dry-run", *channel_args(secrets, "ops@example.com"))
    assert code == 0, err
    assert out.splitlines()[0] == (f"Cloud Monitoring plan (dry run: nothing written) for project {PROJECT}: "
                                   "14 to create, 0 to update, 0 to delete, 0 unchanged")  # fmt: skip
    assert api.fake.writes == []
    assert err == ""


def test_secrets_are_never_printed_and_a_changed_secret_file_is_an_update(api, capsys, secrets) -> None:
    options = channel_args(secrets, "ops@example.com")
    outputs = [run(api, capsys, "plan", *options), run(api, capsys, "plan", "--json", *options),
               run(api, capsys, "apply", *options)]  # fmt: skip
    secrets["slack"].write_text("xoxb-3333-4444-a-new-secret-token\n")
    outputs += [run(api, capsys, "plan", *options), run(api, capsys, "plan", "--json", *options)]
    shown = "\n".join(out + err for _, out, err in outputs)
    for secret in (SECRET_KEY, SLACK_TOKEN, "xoxb-3333-4444-a-new-secret-token", "webhook-token-in-url",
                   SECRET_KEY[-12:], SLACK_TOKEN[-12:]):  # fmt: skip
        assert secret not in shown
    assert f"service_key (from {secrets['pagerduty']})" in outputs[0][1]
    assert "https://hooks.example.com/erlmcp?(query hidden)" in outputs[0][1]
    lines = outputs[3][1].splitlines()
    at = next(i for i, line in enumerate(lines) if "Slack" in line)
    assert lines[at].split()[0] == "UPDATE"
    assert lines[at + 1].strip() == f"auth_token: (changed) -> (from {secrets['slack']})"
    # The token the API holds was sent once, at creation.
    slack = next(c for c in api.fake.channels.values() if c.type_ == "slack")
    assert slack.labels["auth_token"] == SLACK_TOKEN


def test_a_namespace_scopes_filters_names_and_ownership(api, capsys) -> None:
    assert run(api, capsys, "apply", "--namespace", "mcp-prod")[0] == 0
    policy = next(iter(api.fake.policies.values()))
    assert 'resource.label.namespace = "mcp-prod"' in policy.conditions[0].condition_threshold.filter
    assert policy.display_name.startswith("erlmcp (mcp-prod): ")
    assert policy.user_labels["erlmcp-namespace"] == "mcp-prod"
    # Another namespace is a separate set: its plan creates everything and deletes nothing of mcp-prod's.
    assert {c["action"] for c in plan_json(api, capsys, "--namespace", "mcp-test")} == {"CREATE"}
    assert {c["action"] for c in plan_json(api, capsys)} == {"CREATE"}


def test_bad_usage_exits_2_with_a_clear_message(api, capsys, secrets, tmp_path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["monitoring", "plan"])
    assert exited.value.code == 2
    assert "the following arguments are required: --project" in capsys.readouterr().err

    cases = [
        (["--slack-channel", "#alerts"], "--slack-channel and --slack-token-file go together"),
        (["--slack-token-file", str(secrets["slack"])], "--slack-channel and --slack-token-file go together"),
        (["--pagerduty-key-file", str(tmp_path / "missing")], "--pagerduty-key-file: cannot read"),
        (["--email", "not-an-address"], "is not an email address"),
        (["--namespace", "Not_A_Namespace"], "is not a Kubernetes namespace name"),
    ]
    for extra, message in cases:
        code, out, err = run(api, capsys, "plan", *extra)
        assert (code, out) == (2, ""), extra
        assert message in err
    assert main(["monitoring", "plan", "--project", PROJECT, "--insecure"]) == 2
    assert "--insecure needs --endpoint" in capsys.readouterr().err
    assert api.fake.writes == []


def test_an_api_refusal_stops_apply_with_exit_1_naming_the_object_and_the_next_apply_completes(api, capsys) -> None:
    api.fake.refuse["create_policy"] = Refused(grpc.StatusCode.PERMISSION_DENIED, "monitoring.alertPolicies.create")
    code, out, err = run(api, capsys, "apply", "--email", "ops@example.com")
    assert (code, out) == (1, "")
    assert "deployer: created notification channel email-" in err
    assert "deployer: cannot create alert policy error-rate: monitoring.alertPolicies.create" in err
    assert (len(api.fake.channels), len(api.fake.policies)) == (1, 0)

    code, out, err = run(api, capsys, "apply", "--email", "ops@example.com")
    assert code == 0, err
    assert out.splitlines()[0].endswith(": 10 created, 0 updated, 0 deleted, 1 unchanged")


def test_every_condition_and_chart_reads_an_exported_metric_with_an_aligner_that_fits_its_kind() -> None:
    kinds = {d["type"]: (d["metric_kind"], d["value_type"], {label["key"] for label in d["labels"]})
             for d in metric_descriptors()}  # fmt: skip
    fits = {("CUMULATIVE", "INT64"): {"ALIGN_RATE", "ALIGN_DELTA"},
            ("CUMULATIVE", "DISTRIBUTION"): {"ALIGN_DELTA"},
            ("GAUGE", "INT64"): {"ALIGN_MEAN", "ALIGN_MAX", "ALIGN_MIN", "ALIGN_PERCENT_CHANGE"}}  # fmt: skip
    options = Options(project=PROJECT, namespace="mcp", emails=("a@example.com",))
    policies = monitoring.desired_policies(options, {"x": "projects/p/notificationChannels/1"})
    dashboards = monitoring.desired_dashboards(options, {k: f"projects/p/alertPolicies/{k}" for k in POLICIES})
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "filter" in node and ("aggregation" in node or "aggregations" in node):
                for aggregation in node.get("aggregations") or [node["aggregation"]]:
                    found.append((node["filter"], aggregation))
            if "denominator_filter" in node:
                for aggregation in node["denominator_aggregations"]:
                    found.append((node["denominator_filter"], aggregation))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for desired in [*policies.values(), *dashboards.values()]:
        walk(type(desired.message).to_dict(desired.message, use_integers_for_enums=False))
    assert len(found) >= 25  # 8 in the policies, the rest in the charts
    for filter_, aggregation in found:
        metric = re.search(r'metric\.type = "([^"]+)"', filter_)
        assert metric is not None, filter_
        assert metric.group(1) in kinds, filter_
        kind, value_type, labels = kinds[metric.group(1)]
        assert aggregation["per_series_aligner"] in fits[(kind, value_type)], (filter_, aggregation)
        assert set(re.findall(r"metric\.labels?\.(\w+)", filter_)) <= labels
        assert 'resource.type = "generic_task" AND resource.label.namespace = "mcp"' in filter_
        if value_type == "DISTRIBUTION" and aggregation.get("cross_series_reducer", "REDUCE_NONE") != "REDUCE_NONE":
            assert aggregation["cross_series_reducer"] in {"REDUCE_SUM", "REDUCE_PERCENTILE_50",
                                                           "REDUCE_PERCENTILE_95", "REDUCE_PERCENTILE_99"}  # fmt: skip


@pytest.mark.slow
def test_the_cli_run_as_a_process_plans_against_the_local_server(api, secrets) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deployer", "monitoring", "plan", "--project", PROJECT, "--endpoint", api.endpoint,
         "--insecure", *channel_args(secrets, "ops@example.com")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (f"Cloud Monitoring plan for project {PROJECT}: 14 to create, "
                                             "0 to update, 0 to delete, 0 unchanged")  # fmt: skip
    assert SECRET_KEY not in result.stdout + result.stderr
    assert api.fake.writes == []
