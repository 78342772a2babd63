"""The kubelet's recent history beside the verdict: its last Unhealthy and Killing events for each probe.

In -o wide and JSON always (the KUBELET column, `kubeletEvents`); in text only when the kubelet's view and
this check disagree, and then without costing a round trip in the common case (the pod's status says when
to look). The events are the sandbox kubelet's, recorded and aggregated as the kubelet records them.
"""

from __future__ import annotations

import json
import re

from kubectl_grpcprobe.errors import ExitCode
from kubectl_grpcprobe.sandbox import Sandbox

from .helpers import BLOG_MANIFEST, agnhost_container, grpcprobe, pod_manifest

NOT_SERVING = 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")'


def _events_requests(sandbox: Sandbox) -> int:
    return sum(1 for verb, path in sandbox.requests if "/events" in path and verb == "GET")


def _failed_then_frozen(sandbox: Sandbox) -> None:
    """test-grpc fails its readiness probe until the kubelet marks it not Ready, then the kubelet stops probing it."""
    sandbox.wait_ready("test-grpc")  # a new pod is not Ready until its first probe succeeds
    server = sandbox.server_for("test-grpc", "agnhost")
    server.force_unhealthy = True
    sandbox.wait_ready("test-grpc", ready=False, timeout=30)
    sandbox.kubelet.pod_stopped("default", "test-grpc")  # its view stays as it was: not Ready, the events recorded
    server.force_unhealthy = False


def test_json_and_wide_carry_the_kubelets_events() -> None:
    with Sandbox([BLOG_MANIFEST], kubelet_time_scale=0.05) as sandbox:
        _failed_then_frozen(sandbox)
        server = sandbox.server_for("test-grpc", "agnhost")
        server.force_unhealthy = True
        run = grpcprobe(sandbox, "test-grpc", "-o", "json")
        wide = grpcprobe(sandbox, "test-grpc", "-o", "wide")
    assert run.code == ExitCode.UNHEALTHY, run
    (probe,) = json.loads(run.out)["probes"]
    (event,) = probe["kubeletEvents"]
    assert event["reason"] == "Unhealthy" and event["message"] == NOT_SERVING
    assert event["count"] >= 3  # failureThreshold 3: at least three failures before Ready=False
    assert event["firstSeen"] <= event["lastSeen"]
    assert re.search(r" Unhealthy x\d+ \d+s ", wide.out), wide.out
    assert "the kubelet reported" not in run.err  # both see it failing: no disagreement to explain


def test_text_explains_a_disagreement_and_costs_nothing_otherwise() -> None:
    with Sandbox([BLOG_MANIFEST], kubelet_time_scale=0.05) as sandbox:
        sandbox.wait_ready("test-grpc")
        agreeing = grpcprobe(sandbox, "test-grpc")
        assert agreeing.code == ExitCode.OK and agreeing.err == ""
        assert _events_requests(sandbox) == 0  # Ready and SERVING: nothing to explain, no round trip
        _failed_then_frozen(sandbox)
        run = grpcprobe(sandbox, "test-grpc")
    assert run.code == ExitCode.OK, run
    assert re.fullmatch(
        r'pod/test-grpc container=agnhost: the kubelet reported "Readiness probe failed: service unhealthy \(responded with '
        r'"NOT_SERVING"\)" \d+ times, last \d+s ago; this check says: service healthy\n',
        run.err,
    ), run.err


def test_killing_events_of_a_liveness_probe() -> None:
    with Sandbox([], kubelet_time_scale=0.05) as sb:
        sb.apply(pod_manifest("live", [agnhost_container(livenessProbe={"grpc": {"port": 5000}, "failureThreshold": 1})]))
        sb.wait_for_pod("live", lambda pod: True)
        sb.server_for("live", "agnhost").force_unhealthy = True
        sb.wait_for_pod("live", lambda pod: pod["status"]["containerStatuses"][0]["restartCount"] >= 1, timeout=30)
        sb.kubelet.pod_stopped("default", "live")
        run = grpcprobe(sb, "live", "-o", "json")
        text = grpcprobe(sb, "live")
    (probe,) = json.loads(run.out)["probes"]
    reasons = {e["reason"]: e for e in probe["kubeletEvents"]}
    assert reasons["Killing"]["message"] == "Container agnhost failed liveness probe, will be restarted"
    assert reasons["Unhealthy"]["message"].startswith("Liveness probe failed: ")
    # The restarted process serves again, the kubelet saw failures moments ago: text explains (restartCount told it to look).
    assert text.code == ExitCode.OK
    assert 'the kubelet reported "Liveness probe failed: ' in text.err


def test_events_the_user_may_not_list_are_said_once_not_fatal(sandbox) -> None:
    sandbox.add_user("no-events", "no-events-token", denied=frozenset({("list", "events")}))
    config = sandbox.kubeconfig()
    config["users"].append({"name": "no-events", "user": {"token": "no-events-token"}})
    config["contexts"].append({"name": "no-events", "context": {"cluster": "sandbox", "user": "no-events", "namespace": "default"}})
    import yaml

    with open(sandbox.kubeconfig_path, "w") as fh:
        yaml.safe_dump(config, fh)
    run = grpcprobe(sandbox, "test-grpc", "-o", "json", context="no-events")
    assert run.code == ExitCode.OK, run
    (probe,) = json.loads(run.out)["probes"]
    assert probe["kubeletEvents"] is None
    assert any(d.startswith("the kubelet's events: not readable (") and "forbidden" in d for d in probe["diagnostics"]), probe
