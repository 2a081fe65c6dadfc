"""Fuzz a running server's HTTP API with schemathesis, driven by the OpenAPI document it serves.

The document at ``/api/v1/openapi.json`` describes both ``/api/v1`` and ``/v1``. Every operation gets generated
requests (valid and invalid), sent with one API key, and each response is checked: never a 5xx, always a status
code the document lists, always a body matching the document's schema for that status. The CI test
(``tests/api/test_schemathesis.py``) runs this with a few derandomized examples per operation; run it by hand
for a longer search:

    python ops/fuzz_api.py --url http://127.0.0.1:8000 --key sk-... --max-examples 200 --phases all

It prints a table of operations by checks (``ok`` or the number of distinct failures) and exits 1 when any
check failed. The key should belong to a throwaway organization: the run creates, changes and deletes things
in it (but never the key itself, see ``EXCLUDED``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHECKS = ("not_a_server_error", "status_code_conformance", "response_schema_conformance")

# Operations the fuzzer leaves alone, each with its reason (METHOD PATH, as the document spells it).
EXCLUDED: dict[str, str] = {
    "DELETE /api/v1/orgs/{org_id}/keys/{key_id}": "would revoke the key the run authenticates with",
    "POST /api/v1/orgs/{org_id}/keys/{key_id}/rotate": "would rotate away the key the run authenticates with",
    "POST /api/v1/orgs/{org_id}/models": "a model upload: a tar of a checkpoint, long and tested by its own tests",
    "PUT /api/v1/orgs/{org_id}/models/uploads/{upload_id}": "a resumable upload's bytes: tested by its own tests",
    "GET /v1/responses": "a websocket upgrade, which an HTTP fuzzer cannot speak",
    "DELETE /api/v1/orgs/{org_id}/sso/saml": "SSO settings change who may sign in; tests/api/test_saml_sso.py",
    "PUT /api/v1/orgs/{org_id}/sso/saml": "SSO settings change who may sign in; tests/api/test_saml_sso.py",
}

__all__ = ["CHECKS", "EXCLUDED", "FuzzResult", "fuzz", "main"]


@dataclass
class FuzzResult:
    """What one run found: per operation ("METHOD PATH"), per check, the distinct failure messages."""

    operations: list[str] = field(default_factory=list)
    failures: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)  # operations that could not be tested
    exit_code: int = 0
    output: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors

    def table(self) -> str:
        """Operations by checks: ``ok`` or the count of distinct failures, ``error`` where nothing ran."""
        width = max((len(op) for op in self.operations), default=10)
        lines = [f"{'operation':<{width}}  " + "  ".join(f"{c:>27}" for c in CHECKS)]
        for op in self.operations:
            cells = []
            for check in CHECKS:
                found = self.failures.get(op, {}).get(check, [])
                cells.append(f"{'error' if op in self.errors else (len(found) or 'ok')!s:>27}")
            lines.append(f"{op:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)


def _config(org_id: str) -> str:
    # Every /orgs/{org_id} path takes "current", the key's own organization: random ids would test only the 404.
    return f'[parameters]\n"path.org_id" = "{org_id}"\n'


def fuzz(
    url: str,
    key: str,
    *,
    max_examples: int = 10,
    seed: int = 1,
    phases: str = "examples,fuzzing",
    org_id: str = "current",
    timeout_s: float = 1800,
) -> FuzzResult:
    """Run the schemathesis CLI against ``url`` (the server's origin) and read its NDJSON event report.

    Args:
        url: the server's origin, like ``http://127.0.0.1:8000``.
        key: an API key (``Authorization: Bearer``) of a throwaway organization, with every scope.
        max_examples: generated cases per operation and phase.
        seed: hypothesis's seed; with derandomization on, the same seed sends the same requests.
        phases: schemathesis phases (``examples,coverage,fuzzing,stateful`` or ``all``).
        org_id: the value of every ``{org_id}`` path parameter.
        timeout_s: the whole run's limit.

    Returns:
        The operations tested and what failed.
    """
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as tmp:
        config = Path(tmp) / "schemathesis.toml"
        config.write_text(_config(org_id))
        events = Path(tmp) / "events.ndjson"
        cmd = [
            exe,
            "--config-file",
            str(config),
            "run",
            f"{url}/api/v1/openapi.json",
            "--url",
            url,
            "-H",
            f"Authorization: Bearer {key}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(max_examples),
            "--seed",
            str(seed),
            "--generation-deterministic",
            "--phases",
            "examples,coverage,fuzzing,stateful" if phases == "all" else phases,
            "--workers",
            "1",
            "--request-timeout",
            "120",
            "--continue-on-failure",
            "--no-color",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(events),
        ]
        for op in EXCLUDED:
            cmd += ["--exclude-name", op]  # an operation's name is its label, "METHOD PATH"
        # In the temporary directory: schemathesis leaves a .schemathesis/ cache in its working directory.
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=tmp)
        result = FuzzResult(exit_code=done.returncode, output=done.stdout + done.stderr)
        if events.exists():
            _read_events(events, result)
    return result


def _read_events(path: Path, result: FuzzResult) -> None:
    for line in path.read_text().splitlines():
        event = json.loads(line)
        kind, data = next(iter(event.items()))
        if kind == "NonFatalError" and data.get("related_to_operation"):
            result.errors.setdefault(data["label"], []).append(data["value"].get("message", ""))
        if kind != "ScenarioFinished":
            continue
        recorder = data["recorder"]
        label = recorder["label"]
        if label not in result.operations:
            result.operations.append(label)
        for checks in (recorder.get("checks") or {}).values():
            for check in checks:
                if check.get("status") == "failure":
                    failure = (check.get("failure_info") or {}).get("failure") or {}
                    message = f"{failure.get('title', check)}: {failure.get('message', '')}"[:2000]
                    found = result.failures.setdefault(label, {}).setdefault(check["name"], [])
                    if message not in found:
                        found.append(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's origin, like http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="an API key of a throwaway organization, every scope")
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phases", default="all", help="comma-separated schemathesis phases, or all")
    parser.add_argument("--json", type=Path, help="also write the result here as JSON")
    args = parser.parse_args(argv)
    result = fuzz(args.url, args.key, max_examples=args.max_examples, seed=args.seed, phases=args.phases)
    print(result.table())
    for op, checks in result.failures.items():
        for check, messages in checks.items():
            for message in messages:
                print(f"\n{op} [{check}]\n{message}")
    for op, messages in result.errors.items():
        print(f"\n{op} [error]\n" + "\n".join(messages))
    if args.json:
        args.json.write_text(json.dumps({"failures": result.failures, "errors": result.errors}, indent=2))
    if not result.operations:
        print(result.output, file=sys.stderr)
        return 2
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
