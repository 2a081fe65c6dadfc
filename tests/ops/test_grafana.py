"""The Grafana dashboards in ops/grafana: valid dashboard JSON, provisioning that points at them, and every
panel's PromQL naming only series a real server's /metrics exports (after requests that create its labelled
series), with the labels it groups and filters by."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bitnet_actor.observability import Metrics
from bitnet_actor.system import DEMO_MODEL_DIR
from tests.api.served import serve
from tests.ops import promql

GRAFANA = Path(__file__).resolve().parents[2] / "ops" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$", re.DOTALL)
_VARIABLE = re.compile(r"\$\{?(\w+)")
GRAFANA_VARIABLES = frozenset({"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"})


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        board: dict[str, Any] = json.load(f)
    return board


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in board.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every label_values variable query."""
    out = [
        (f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t["expr"])
        for p in panels(board)
        for t in p.get("targets", [])
        if "expr" in t
    ]
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = _LABEL_VALUES.match(query)
            assert match and match["expr"], f"variable {var['name']}: expected label_values(expr, label): {query!r}"
            out.append((f"variable {var['name']}", match["expr"]))
    return out


def dashboard_problems(board: dict[str, Any]) -> list[str]:
    """What makes ``board`` unfit to provision (empty when it is fine)."""
    out = []
    for key in ("uid", "title"):
        if not isinstance(board.get(key), str) or not board[key]:
            out.append(f"no {key}")
    if not isinstance(board.get("schemaVersion"), int) or board["schemaVersion"] < 36:
        out.append(f"schemaVersion {board.get('schemaVersion')!r} is older than Grafana 9")
    variables = {v.get("name") for v in board.get("templating", {}).get("list", [])}
    ids = [p.get("id") for p in panels(board)]
    if len(ids) != len(set(ids)) or not all(isinstance(i, int) for i in ids):
        out.append(f"panel ids not unique integers: {ids}")
    if not panels(board):
        out.append("no panels")
    cells: dict[tuple[int, int], str] = {}
    for p in panels(board):
        name = f"panel {p.get('id')} {p.get('title')!r}"
        pos = p.get("gridPos")
        if not isinstance(pos, dict) or not all(isinstance(pos.get(k), int) for k in "hwxy"):
            out.append(f"{name}: no gridPos h/w/x/y")
        elif pos["x"] < 0 or pos["w"] < 1 or pos["x"] + pos["w"] > 24 or pos["h"] < 1:
            out.append(f"{name}: gridPos {pos} is off the 24-column grid")
        elif any(p is top for top in board["panels"]):  # a collapsed row's own panels take no room
            area = [(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])]
            if clash := next((cells[c] for c in area if c in cells), None):
                out.append(f"{name} overlaps {clash}")
            cells.update(dict.fromkeys(area, name))
        if p.get("type") == "row":
            continue
        if not p.get("title"):
            out.append(f"{name}: no title")
        ds = p.get("datasource")
        if not isinstance(ds, dict) or ds.get("type") != "prometheus" or not ds.get("uid"):
            out.append(f"{name}: no Prometheus datasource")
        targets = p.get("targets") or []
        if not targets:
            out.append(f"{name}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)) or not all(refs):
            out.append(f"{name}: refIds {refs} not set and unique")
        for t in targets:
            if not isinstance(t.get("expr"), str) or not t["expr"].strip():
                out.append(f"{name} {t.get('refId')}: no expr")
                continue
            for var in _VARIABLE.findall(t["expr"]) + _VARIABLE.findall(json.dumps(ds)):
                if var not in variables and var not in GRAFANA_VARIABLES:
                    out.append(f"{name} {t.get('refId')}: ${var} is not a variable of the dashboard")
    return out


def test_the_dashboards_exist() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"bitnet-service", "bitnet-inference", "bitnet-usage"}
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids)), uids


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_json_is_provisionable(path: Path) -> None:
    board = load(path)
    assert dashboard_problems(board) == []
    assert "id" not in board or board["id"] is None  # provisioning assigns ids; a fixed one clashes across orgs
    assert any(v["name"] == "instance" for v in board["templating"]["list"])
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in board["templating"]["list"])


def test_the_structure_check_finds_broken_dashboards() -> None:
    board = load(GRAFANA / "dashboards" / "bitnet-service.json")
    target = next(p for p in board["panels"] if p["type"] != "row")
    target["id"] = board["panels"][0]["id"]
    target["targets"][0]["expr"] = 'rate(x{job="$nope"}[5m])'
    del target["datasource"]
    del board["panels"][-1]["gridPos"]
    board["panels"][-2]["gridPos"] = dict(board["panels"][-3]["gridPos"])
    found = "\n".join(dashboard_problems(board))
    for expected in ("not unique", "no Prometheus datasource", "$nope is not a variable", "no gridPos", "overlaps"):
        assert expected in found


def test_provisioning_points_at_the_dashboards() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "bitnet.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    # The README's mount puts ops/grafana/dashboards at the provider's path.
    readme = (GRAFANA / "README.md").read_text()
    mounts = re.findall(r"ops/grafana/dashboards:(/[\w/.-]+?)(?::ro)?[\s\"']", readme)
    assert mounts and set(mounts) == {path}, (mounts, path)
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True and source["uid"]
    assert source["url"].startswith("${")  # taken from Grafana's environment


def concrete(expr: str) -> str:
    """``expr`` as Grafana sends it: intervals and ranges for $__*, a match-all regex for the others."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: "1m" if m[1].startswith("__") else ".*", expr)


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("BITNET_TEST_REQUIRE_OPS_TOOLS") == "1":
            pytest.fail("promtool is missing (BITNET_TEST_REQUIRE_OPS_TOOLS=1): Debian's prometheus package has it")
        pytest.skip("promtool is missing (Debian's prometheus package has it)")
    found = [(f"{path.name} {where}", expr) for path in DASHBOARDS for where, expr in expressions(load(path))]
    rules = [
        {"record": f"grafana:check:{i}", "expr": concrete(expr), "labels": {"where": where}}
        for i, (where, expr) in enumerate(found)
    ]
    assert rules
    good = tmp_path / "dashboards.rules.yaml"
    good.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(good)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "bogus.rules.yaml"  # the same check refuses a broken expression
    broken = [{"record": "grafana:check:bad", "expr": concrete("sum by (le (rate(x[$__rate_interval]))")}]
    bad.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": broken}]}))
    done = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0


# --- the PromQL checker itself


def scraped(text: str) -> dict[str, frozenset[str] | None]:
    return promql.exported_names(text_string_to_metric_families(text))


def test_the_reader_separates_metrics_functions_and_labels() -> None:
    reading = promql.read(
        'sum by (route, status) (rate(bitnet_http_requests_total{instance=~"$instance", status=~"5.."}'
        "[$__rate_interval])) / on (instance) group_left sum without (le) (x:recorded{a='{b}'} offset 5m) > 0.5"
    )
    assert reading.metrics == {"bitnet_http_requests_total", "x:recorded"}
    assert reading.functions == {"sum", "rate"}
    assert reading.grouping == {"route", "status", "instance", "le"}
    assert reading.matched == {"bitnet_http_requests_total": {"instance", "status"}, "x:recorded": {"a"}}


def test_the_checker_reports_what_is_not_exported() -> None:
    metrics = Metrics()
    metrics.http_requests.labels("GET", "/healthz", "200").inc()
    exported = scraped(metrics.render().decode())
    good = 'sum by (route, status) (rate(bitnet_http_requests_total{status=~"5..", instance=~"$i"}[5m]))'
    assert promql.problems(good, exported) == []
    quantile = "histogram_quantile(0.9, sum by (le) (rate(bitnet_http_request_duration_seconds_bucket[5m])))"
    assert promql.problems(quantile, exported) == []  # a histogram without samples still has its names
    bad = {
        "rate(bitnet_no_such_thing_total[5m])": "unknown metric 'bitnet_no_such_thing_total'",
        "rate(bitnet_http_requests[5m])": "unknown metric 'bitnet_http_requests'",  # a counter is x_total
        "bitnet_ready_total": "unknown metric 'bitnet_ready_total'",  # a gauge has no _total
        "rat(bitnet_http_requests_total[5m])": "unknown function 'rat'",
        "sum by (path) (rate(bitnet_http_requests_total[5m]))": "label 'path' is on none",
        'bitnet_http_requests_total{code="200"}': "has no label 'code'",
        "histogram_quantile(0.9, rate(bitnet_http_request_duration_seconds_sum[5m]))": "no _bucket series",
        "histogram_quantile(0.9, sum(rate(bitnet_http_request_duration_seconds_bucket[5m])))": "without le",
        "sum(rate(bitnet_http_requests_total{a='1'[5m]))": "unbalanced",
        "sum(rate((bitnet_http_requests_total[5m]))": "unbalanced parentheses",
        "sum(rate(bitnet_http_requests_total[5m])))": "unbalanced parentheses",
    }
    for expr, expected in bad.items():
        assert any(expected in p for p in promql.problems(expr, exported)), (expr, promql.problems(expr, exported))


# --- against a real server


async def test_every_panel_queries_series_the_server_exports(
    aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    async with (
        serve(pg_dsn, redis_url, tmp_path, {"demo": DEMO_MODEL_DIR}) as served,
        httpx.AsyncClient(base_url=served.url, timeout=60) as http,
    ):
        for _ in range(100):  # the model's first load holds readiness back
            if (await http.get("/readyz")).status_code == 200:
                break
            await trio.sleep(0.1)
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/no/such/route")).status_code == 404
        body = {"model": "demo", "prompt": "Once upon", "max_tokens": 4, "ignore_eos": True, "temperature": 0}
        auth = {"Authorization": f"Bearer {served.key}"}
        r = await http.post("/v1/completions", json=body, headers=auth)
        assert r.status_code == 200, r.text
        r = await http.post("/v1/completions", json={**body, "stream": True}, headers=auth)
        assert r.status_code == 200, r.text
        r = await http.get("/metrics")
        assert r.status_code == 200
    exported = scraped(r.text)
    # The requests made the labelled series, so the label checks below had samples to look at.
    assert {"route", "status", "method"} <= (exported["bitnet_http_requests_total"] or set())
    assert "model" in (exported["bitnet_time_to_first_token_seconds_bucket"] or set())
    assert "model" in (exported["bitnet_inter_token_latency_seconds_bucket"] or set())
    assert exported["bitnet_model_cache_misses_total"] is not None
    assert exported["process_cpu_seconds_total"] is not None
    assert exported["process_resident_memory_bytes"] is not None
    found = []
    for path in DASHBOARDS:
        for where, expr in expressions(load(path)):
            found += [f"{path.name} {where}: {p}\n    {expr}" for p in promql.problems(expr, exported)]
    assert found == [], "\n".join(found)
