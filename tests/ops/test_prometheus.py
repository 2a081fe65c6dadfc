"""ops/prometheus: the alert rules, their promtool unit tests, the Prometheus and Alertmanager configs.

The checks run Debian's promtool and amtool (``bash ops/install_test_tools.sh``); without them the tests skip,
unless BITNET_TEST_REQUIRE_OPS_TOOLS=1 (CI), where they fail. The rules' metric names are checked against the
/metrics of a real server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.api.served import serve

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "ops" / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yaml"))
UNIT_TESTS = sorted((PROM / "tests").glob("*.yaml"))

# Metric names the rules use that come from other exporters, not from this service.
FOREIGN = re.compile(r"^(up|node_.*|container_.*|kube_.*)$")
# Names the rules use that another branch adds to the service (j-grafana: the model cache's miss counter).
# Each must be absent here: once it is exported, this test fails until the name is removed from this set.
PENDING: set[str] = set()

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def tool(name: str) -> str:
    """The path of ``name``, or a skip (a failure when BITNET_TEST_REQUIRE_OPS_TOOLS=1)."""
    found = shutil.which(name)
    if found is None:
        why = f"{name} is not installed (bash ops/install_test_tools.sh)"
        if os.environ.get("BITNET_TEST_REQUIRE_OPS_TOOLS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return found


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULES for group in load(path)["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers that are not functions, keywords, label
    names (in matchers and in by/on/... lists) or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (regexes with braces and all)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        if match.start() > 0 and (expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."):
            continue  # the tail of a number such as 1e3
        names.add(match.group())
    return names


def test_metric_names_are_found_in_an_expression() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{route!~"/x{1,2}"}[5m])))'
        " / on (pod) group_left bitnet:b > 1e3 and up == 0 unless ignoring (x) c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "bitnet:b", "up", "c"}


def test_promtool_check_rules() -> None:
    result = run(tool("promtool"), "check", "rules", *RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    result = run(promtool, "check", "config", PROM / "prometheus.yml")
    output = result.stdout + result.stderr
    if result.returncode != 0 and "field kubernetes_sd_configs not found" in output:
        # Debian's promtool is built without the Kubernetes service discovery: check a copy whose
        # kubernetes_sd_configs are file_sd_configs (everything else as written), and their roles here.
        config = load(PROM / "prometheus.yml")
        for job in config["scrape_configs"]:
            for sd in job.pop("kubernetes_sd_configs", []):
                assert set(sd) == {"role"}, sd
                assert sd["role"] in {"pod", "node", "service", "endpoints", "endpointslice", "ingress"}, sd
                job["file_sd_configs"] = [{"files": ["targets.json"]}]
        (tmp_path / "rules").symlink_to(PROM / "rules")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        result = run(promtool, "check", "config", tmp_path / "prometheus.yml")
        output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output


def test_promtool_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_every_rule_has_unit_tests_firing_and_not() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    exprs: list[str] = []
    for path in UNIT_TESTS:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
            exprs.extend(check["expr"] for check in case.get("promql_expr_test", []))
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    records = {rule["record"] for rule in rules() if "record" in rule}
    assert len(alerts) >= 10
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a not-firing case"
    tested = set().union(*(metric_names(e) for e in exprs))
    assert records - tested == set(), "recording rules without a promql_expr_test"


def test_alerts_carry_severity_and_annotations() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert set(rule["annotations"]) >= {"summary", "description", "runbook_url"}, rule["alert"]
            assert rule["annotations"]["runbook_url"].endswith("/" + rule["alert"])


def test_alertmanager_config_and_routes() -> None:
    amtool = tool("amtool")
    config = PROM / "alertmanager.yml"
    result = run(amtool, "check-config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    for labels, receiver in (
        (["severity=critical", "alertname=BitnetDown"], "pagerduty-critical"),
        (["severity=warning", "alertname=BitnetHighCpu"], "slack-warning"),
    ):
        result = run(amtool, "config", "routes", "test", f"--config.file={config}", *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.split() == [receiver], (labels, result.stdout)
    text = config.read_text(encoding="utf-8")
    assert "routing_key_file:" in text
    assert "slack_api_url_file:" in text
    assert not re.search(r"^\s*(routing_key|service_key|api_url|slack_api_url):", text, re.MULTILINE)


def exported_names(text: str) -> set[str]:
    """Series names in a Prometheus text exposition: those with samples, and those declared by # TYPE (a
    family without samples yet, such as per-model gauges before a model loads)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def test_rules_use_metrics_the_service_exports(
    aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    async with serve(pg_dsn, redis_url, tmp_path, {}) as served, httpx.AsyncClient(base_url=served.url) as client:
        assert (await client.get("/readyz")).status_code == 200  # the readiness checks set bitnet_dependency_up
        await client.get("/v1/models")
        response = await client.get("/metrics")
        assert response.status_code == 200
        exported = exported_names(response.text)
    assert 'bitnet_dependency_up{dependency="postgres"} 1.0' in response.text
    used: set[str] = set()
    for rule in rules():
        used |= metric_names(rule["expr"])
    records = {rule["record"] for rule in rules() if "record" in rule}
    assert {name for name in used if ":" in name} <= records, "a recorded name that no rule records"
    ours = {name for name in used if ":" not in name and not FOREIGN.match(name)}
    assert ours - PENDING - exported == set(), "names the rules use that the service does not export"
    assert PENDING & exported == set(), "exported now: remove from PENDING"
    assert {"up", "bitnet_http_requests_total", "bitnet_jobs_queued", "bitnet_requests_waiting"} <= used
