"""The OpenAPI paths of conversion jobs (:mod:`bitnet_actor.api.jobs`)."""

from __future__ import annotations

from typing import Any

from bitnet_actor.api.spec_tools import ORG, S, body, id_param, ok

__all__ = ["JOBS_PATHS"]

_JOB = {"type": "object", "description": "a conversion job", "additionalProperties": True}
_ID = id_param("job_id")

JOBS_PATHS: dict[str, Any] = {
    "/api/v1/orgs/{org_id}/jobs": {
        "parameters": [ORG],
        "get": {"summary": "The organization's jobs, newest first (needs models:read)", "responses": ok("list")},
        "post": {
            "summary": "Queue a job making a new version from a ready one: quantize to tq1_0/tq2_0/i2_s or"
            " convert to hf-ternary (needs models:write; 429 past 4 unfinished jobs)",
            "requestBody": body(
                {
                    "source": {"type": "string", "description": "name:version of a ready version"},
                    "target": {"type": "string", "enum": ["hf-ternary", "tq1_0", "tq2_0", "i2_s"]},
                    "output_name": S,
                    "output_version": S,
                },
                ["source", "target", "output_name", "output_version"],
            ),
            "responses": ok("the queued job", _JOB, "201"),
        },
    },
    "/api/v1/orgs/{org_id}/jobs/{job_id}": {
        "parameters": [ORG, _ID],
        "get": {
            "summary": "One job: state, attempts, progress, error, result version",
            "responses": ok("the job", _JOB),
        },
    },
    "/api/v1/orgs/{org_id}/jobs/{job_id}/events": {
        "parameters": [ORG, _ID],
        "get": {
            "summary": "The job's progress as server-sent events (`data: {job}`) until it ends",
            "responses": {
                "200": {"description": "events", "content": {"text/event-stream": {"schema": S}}},
                **{k: v for k, v in ok("").items() if k != "200"},
            },
        },
    },
    "/api/v1/orgs/{org_id}/jobs/{job_id}/cancel": {
        "parameters": [ORG, _ID],
        "post": {"summary": "Ask a job to stop (needs models:write)", "responses": ok("the job", _JOB)},
    },
}
