"""Websocket streaming at ``/v1/responses``, shaped like OpenAI's Responses API websocket mode.

The client sends JSON messages:

- ``{"type": "response.create", "model": ..., "input": "text" | [messages], "max_output_tokens": ..., ...}``
  (sampling parameters as in ``/v1/completions``);
- ``{"type": "response.cancel"}`` to stop the response in flight;
- ``{"type": "authenticate", "api_key": "bnk_live_..."}`` first, when the upgrade request carried no
  ``Authorization: Bearer`` header.

A signed-in browser (the portal's playground) connects with its session cookie instead: the upgrade must come
from this server's own origin (``Origin`` equal to the host: no other site can open a socket with the user's
cookie) and carry the session's CSRF token and the organization in the query
(``?csrf_token=...&organization=<id>``); the user must be a member whose role allows inference. Its responses
are admitted, rate-limited and metered as the user's, exactly like the API's.

The server answers ``response.created``, ``response.output_text.delta`` events, then ``response.completed``
(with usage), ``response.cancelled`` or ``response.failed``; problems are ``{"type": "error", ...}`` events
and the socket stays open. Responses run one after another on one socket.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from uuid import UUID

import trio
from quart import Blueprint, websocket

from actors.scheduler import Failed, Finished, Token
from bitnet_actor.api.auth import OrgAccess, bound, check_permission, handles
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.openai.admission import admit, inference_org, new_run_id
from bitnet_actor.api.openai.protocol import CHAT, COMPLETION, RESPONSE_CREATE
from bitnet_actor.errors import BitnetError
from bitnet_actor.services import authn, tenancy
from bitnet_actor.services.errors import AuthenticationError
from bitnet_actor.services.jwt import KeyDecryptionError
from bitnet_actor.services.sessions import COOKIE_NAME

if TYPE_CHECKING:
    from bitnet_actor.api.openai.run import Run
    from bitnet_actor.handles import Handles

__all__ = ["blueprint"]

blueprint = Blueprint("responses_ws", __name__)


def _error(message: str, *, code: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": code, "message": message, "param": param},
    }


_SEND_TIMEOUT_S = 30.0


class _ClientStuckError(BitnetError):
    """A send did not finish within ``_SEND_TIMEOUT_S``: the connection is given up."""


async def _send(event: dict[str, Any]) -> None:
    # Hypercorn compresses a frame (permessage-deflate) in the sending task and then writes it: a send
    # cancelled between the two (a response.cancel arriving mid-delta) advances the compressor without
    # sending, and the client can no longer decompress anything. So a send always finishes, unless the
    # client stops reading altogether, and then the connection ends.
    data = json.dumps(event, ensure_ascii=False)
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + _SEND_TIMEOUT_S
        await websocket.send(data)
    if scope.cancelled_caught:
        raise _ClientStuckError(f"the client read nothing for {_SEND_TIMEOUT_S:g} s")
    await trio.lowlevel.checkpoint_if_cancelled()


async def _authenticate(h: Handles, first: dict[str, Any] | None) -> OrgAccess:
    """The same credentials and rules as the HTTP API: an API key or an access token, as a bearer header on
    the upgrade request or in a first ``authenticate`` message (``api_key``, or ``access_token``)."""
    header = websocket.headers.get("Authorization", "")
    credential = header.partition(" ")[2].strip() if header.lower().startswith("bearer ") else ""
    if not credential and first is not None and first.get("type") == "authenticate":
        credential = str(first.get("api_key") or first.get("access_token") or "")
    if not credential:
        raise ApiError(401, "send 'Authorization: Bearer <API key>' or an authenticate message first")
    try:
        principal = await authn.from_bearer(h.auth, credential)
    except AuthenticationError as exc:
        raise ApiError(401, str(exc)) from None
    except KeyDecryptionError:
        raise ApiError(
            503, "access tokens are unavailable on this server (misconfigured secret key)", code="misconfigured"
        ) from None
    return await inference_org(h, principal)


async def _session_access(h: Handles) -> OrgAccess:
    """A signed-in user's access from the session cookie (see the module docstring).

    Raises:
        ApiError: 403 for another origin, a missing or wrong CSRF token, a bad organization or a role without
            inference; 401 for an expired session.
    """
    origin = websocket.headers.get("Origin", "")
    if not origin or urlsplit(origin).netloc != websocket.host:
        raise ApiError(403, "a signed-in socket must come from this server's own pages (Origin)")
    try:
        principal = await authn.from_session(
            h.auth, websocket.cookies[COOKIE_NAME], unsafe=True, csrf_token=websocket.args.get("csrf_token")
        )
    except AuthenticationError as exc:
        raise ApiError(401, str(exc)) from None
    except authn.CsrfError:
        raise ApiError(403, "missing or invalid csrf_token in the query", code="csrf_failed") from None
    try:
        org_id = UUID(websocket.args.get("organization", ""))
    except ValueError:
        raise ApiError(403, "name the organization in the query (?organization=<id>)") from None
    assert principal.user_id is not None
    role = await tenancy.membership_role(h.stores.db, org_id, principal.user_id)
    if role is None:
        raise ApiError(403, "you are not a member of that organization")
    check_permission("inference", role=role)
    return bound(OrgAccess(principal, org_id, role))


@blueprint.websocket("/v1/responses")
async def responses() -> None:
    """Serve responses on one socket until the client closes it."""
    h = handles()
    send_msgs, recv_msgs = trio.open_memory_channel[dict[str, Any] | None](16)  # 16: client messages in flight
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_reader, send_msgs)
        access: OrgAccess | None = None
        if websocket.headers.get("Authorization") or websocket.cookies.get(COOKIE_NAME):
            try:
                if websocket.headers.get("Authorization"):
                    access = await _authenticate(h, None)
                else:
                    access = await _session_access(h)
            except ApiError as exc:
                await _send(_error(exc.message, code=exc.code or "invalid_api_key"))
                nursery.cancel_scope.cancel()
                return
        async for message in recv_msgs:
            if message is None:
                await _send(_error("messages must be JSON objects", code="invalid_json"))
                continue
            kind = message.get("type")
            if access is None:
                try:
                    access = await _authenticate(h, message)
                except ApiError as exc:
                    await _send(_error(exc.message, code=exc.code or "invalid_api_key"))
                    continue
                if kind == "authenticate":
                    continue
            if kind == "response.create":
                await _respond(h, access, message, recv_msgs)
            elif kind == "response.cancel":
                await _send(_error("no response is in progress", code="no_response"))
            else:
                await _send(_error(f"unknown message type {kind!r}", param="type"))
        nursery.cancel_scope.cancel()


async def _reader(send: trio.MemorySendChannel[dict[str, Any] | None]) -> None:
    async with send:
        while True:
            raw = await websocket.receive()
            try:
                message = json.loads(raw)
            except (TypeError, ValueError):
                message = None
            await send.send(message if isinstance(message, dict) else None)


async def _respond(
    h: Handles, access: OrgAccess, message: dict[str, Any], inbox: trio.MemoryReceiveChannel[dict[str, Any] | None]
) -> None:
    try:
        RESPONSE_CREATE.check(message)
        skip = ("type", "input", "max_output_tokens", "instructions", "text")
        body = {k: v for k, v in message.items() if k not in skip}
        text_format = RESPONSE_CREATE.parse(message, "text")
        if text_format is not None:
            if "response_format" in message:
                raise ApiError(400, "send text.format or response_format, not both", param="text.format")
            body["response_format"] = text_format
        if "max_output_tokens" in message:
            body["max_tokens"] = RESPONSE_CREATE.parse(message, "max_output_tokens")
        data = message.get("input")
        chat = isinstance(data, list)
        if chat:
            instructions = RESPONSE_CREATE.parse(message, "instructions")
            body["messages"] = ([{"role": "system", "content": instructions}] if instructions else []) + list(
                data  # type: ignore[arg-type]
            )
        elif isinstance(data, str):
            body["prompt"] = data
        else:
            raise ApiError(400, "input must be a string or a list of messages", param="input")
        run: Run = await admit(h, access, CHAT if chat else COMPLETION, body, run_id=new_run_id("resp"))
    except ApiError as exc:
        await _send(_error(exc.message, code=exc.code or "invalid_request_error", param=exc.param))
        return
    response_id, plan, recv = run.id, run.plan, run.recv
    shell = {"id": response_id, "object": "response", "created_at": run.created, "model": plan.model}
    item_id = f"msg_{uuid.uuid4().hex}"
    text: list[str] = []
    outcome, failure = "completed", None
    try:  # from here on the run holds a lease and an admission: the finally gives them back
        await _send({"type": "response.created", "response": {**shell, "status": "in_progress", "output": []}})
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def watch_for_cancel() -> None:
                    nonlocal outcome
                    async for msg in inbox:
                        if msg is not None and msg.get("type") == "response.cancel":
                            outcome = "cancelled"
                            scope.cancel()
                            return
                        await _send(
                            _error(
                                "a response is in progress; send response.cancel or wait", code="response_in_progress"
                            )
                        )

                nursery.start_soon(watch_for_cancel)
                async with recv:
                    async for event in recv:
                        run.observe(event)
                        if isinstance(event, Token) and event.text:
                            text.append(event.text)
                            await _send(
                                {
                                    "type": "response.output_text.delta",
                                    "response_id": response_id,
                                    "item_id": item_id,
                                    "output_index": 0,
                                    "content_index": 0,
                                    "delta": event.text,
                                }
                            )
                        elif isinstance(event, Finished):
                            run.choice(0).finish_reason = event.reason
                        elif isinstance(event, Failed):
                            failure = event
                nursery.cancel_scope.cancel()
    finally:
        recv.close()
        with trio.CancelScope(shield=True):
            await run.record(outcome if failure is None else "failed", endpoint="responses")
    usage = run.usage()
    done = {
        **shell,
        "output": [
            {
                "type": "message",
                "id": item_id,
                "role": "assistant",
                "status": outcome,
                "content": [{"type": "output_text", "text": "".join(text)}],
            }
        ],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]},
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        },
    }
    if failure is not None:
        await _send(
            {
                "type": "response.failed",
                "response": {**done, "status": "failed", "error": {"code": failure.code, "message": failure.message}},
            }
        )
    elif outcome == "cancelled":
        await _send({"type": "response.cancelled", "response": {**done, "status": "cancelled"}})
    else:
        reason = run.choice(0).finish_reason
        status = "incomplete" if reason == "length" else "completed"
        extra = {"incomplete_details": {"reason": "max_output_tokens"}} if status == "incomplete" else {}
        await _send({"type": "response.completed", "response": {**done, "status": status, **extra}})
