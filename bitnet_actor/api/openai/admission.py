"""One admission path for every inference surface (HTTP completions, chat, the websocket).

``admit`` takes an authenticated caller and a checked body and returns a started :class:`Run`: it leases the
model (404 / 503 as the model cache says), parses the body against the model (vocabulary, context length,
chat template), holds the organization's admission (its plan's weight and cap), checks the rate limits and
the monthly quota (429 ``rate_limit_exceeded`` with Retry-After, 429 ``insufficient_quota``, 503 when the
limiter is away past its fail-open window) reserving the prompt plus ``max_tokens`` of every choice, and
submits the generation (429 with Retry-After when the queue is full). Whatever fails on the way gives back
what was taken; the rate-limit headers of the decision go on the response (:func:`expose_limits`).

With ``cache=True`` (HTTP completions and chat) and the organization's response cache on, a deterministic
request is looked up in the response cache (:mod:`bitnet_actor.services.response_cache`) after the limits
were taken and before anything is submitted: a hit is a run with the stored body and nothing generating
(it is still metered and settled like any run); ``x-bitnet-cache`` says ``hit``, ``miss`` or ``bypass``
(on but not deterministic). Without the cache on, no header.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from quart import g, has_request_context, has_websocket_context

from actors.inference import Generate
from actors.model_cache import ModelCapacityError, ModelLoadFailedError, UnknownModelError
from bitnet_actor.api.auth import OrgAccess, authenticate, bound, check_permission, handles
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.openai.protocol import CHAT, COMPLETION, RequestType, bad
from bitnet_actor.api.openai.run import Run
from bitnet_actor.api.openai.tool_calls import ToolPlan, plan_tools, template_messages
from bitnet_actor.api.regions import check_home_region
from bitnet_actor.api.traced import child_span, request_context
from bitnet_actor.engine.constraints import ConstraintError
from bitnet_actor.engine.tokenizer import TokenizerError
from bitnet_actor.services import tenancy
from bitnet_actor.services.errors import NotFoundError, ValidationError
from bitnet_actor.services.limits import LimiterUnavailableError
from bitnet_actor.services.models import registry
from bitnet_actor.services.models.routes import pick
from bitnet_actor.services.response_cache import ResponseCache, cache_key, deterministic

if TYPE_CHECKING:
    from uuid import UUID

    from actors.model_cache import Lease
    from bitnet_actor.api.openai.chat_fields import OutputFormat
    from bitnet_actor.engine import Model, SamplingParams
    from bitnet_actor.engine.constraints import Grammar
    from bitnet_actor.handles import Handles
    from bitnet_actor.services.authn import Principal
    from bitnet_actor.services.billing.plans import OrgProfile
    from bitnet_actor.services.ratelimit import Decision

__all__ = [
    "Plan",
    "admit",
    "chat_prompt",
    "check_limits",
    "expose_limits",
    "inference_access",
    "inference_org",
    "lease",
    "new_run_id",
    "peek_limits",
    "plan_generation",
    "sticky_id",
]


async def inference_access() -> OrgAccess:
    """The caller of an inference route (see :func:`inference_org`).

    Raises:
        ApiError: 401 / 403.
    """
    principal = await authenticate()
    assert principal is not None
    return await inference_org(handles(), principal)


async def inference_org(h: Handles, principal: Principal) -> OrgAccess:
    """The organization an authenticated caller runs inference for: an API key's, with the ``inference``
    scope, or an organization-bound access token's, for a member whose role allows inference.

    Raises:
        ApiError: 401 (the token's organization dropped the user) / 403.
    """
    if principal.key is not None:
        check_permission("inference", scopes=principal.key.scopes)
        return bound(OrgAccess(principal, principal.key.org_id, None))
    if principal.token_org is None or principal.user_id is None:
        raise ApiError(403, "inference needs an API key (or an access token bound to an organization)")
    role = await tenancy.membership_role(h.stores.db, principal.token_org, principal.user_id)
    if role is None:
        raise ApiError(401, "the access token's organization no longer includes this user")
    check_permission("inference", role=role)
    if principal.token_scopes is not None:
        check_permission("inference", scopes=principal.token_scopes)
    return bound(OrgAccess(principal, principal.token_org, role))


async def lease(
    stack: contextlib.AsyncExitStack, h: Handles, body: dict[str, Any], org_id: UUID | None, *, caller: str = ""
) -> Lease:
    """Lease the model ``body["model"]`` until ``stack`` closes: a platform model by name, else one of the
    organization's A/B routes (split by weight, sticky per the body's ``user``, else ``caller``: the API key
    or user id), else one of its registry models (``name``, ``name:version``, ``name@alias``, resolved now;
    the response names the version in ``model`` and ``x-bitnet-model-version``).

    Raises:
        ApiError: 400 without a model name, 404 for an unknown model, 421 from a replica outside the
            organization's home region, 503 when it cannot be loaded now.
    """
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise bad("model is required", "model", "missing_required_parameter")
    if org_id is not None:
        await check_home_region(h, org_id)
    try:
        if name in h.models.model_names() or org_id is None:
            return await stack.enter_async_context(h.inference.lease(name))
        ref = name
        route = await h.routes.get(org_id, name) if ":" not in name and "@" not in name else None
        if route is not None:
            user = body.get("user")
            try:
                ref = pick(route, user if isinstance(user, str) and user else caller).ref or name
            except NotFoundError:
                raise UnknownModelError(name) from None
        try:
            version = await registry.resolve(h.stores.db, org_id, ref)
        except (NotFoundError, ValidationError):
            raise UnknownModelError(name) from None
        if version.local_path is not None and version.name in h.models.model_names():
            return await stack.enter_async_context(h.inference.lease(version.name))
        leased = await stack.enter_async_context(h.inference.lease_version(version))
        if has_request_context():
            g.model_version = version.ref
        return leased
    except UnknownModelError:
        raise ApiError(404, f"the model {name!r} does not exist", param="model", code="model_not_found") from None
    except ModelCapacityError as exc:
        raise ApiError(503, str(exc), code="model_capacity", headers={"Retry-After": "30"}) from None
    except ModelLoadFailedError as exc:
        raise ApiError(503, str(exc), code="model_load_failed", headers={"Retry-After": "30"}) from None


@dataclass(frozen=True, slots=True)
class Plan:
    """A generation request, checked against its model."""

    model: str
    prompt_ids: tuple[int, ...]
    params: dict[str, Any]
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None
    chat: bool
    request_data: dict[str, Any] = field(default_factory=dict)
    tools: ToolPlan | None = None
    grammar_param: str | None = None  # the field a refused grammar came from

    def sampling(self, index: int) -> SamplingParams:
        """The sampling parameters of choice ``index`` (n choices from one seed: reproducible and different)."""
        from bitnet_actor.engine import SamplingParams

        values = dict(self.params)
        if values["seed"] is not None:
            values["seed"] = values["seed"] + index
        try:
            return SamplingParams(**values)
        except ValueError as exc:
            raise bad(str(exc), "params") from None


def chat_prompt(model: Model, messages: list[dict[str, Any]], tools: ToolPlan | None = None) -> list[int]:
    """The token ids of ``messages`` (and ``tools``) through the model's chat template (tool calls and results
    in the conversation rendered as :func:`~bitnet_actor.api.openai.tool_calls.template_messages` says).

    Raises:
        ApiError: 400 when the template refuses the conversation or the vocabulary cannot encode it.
    """
    rendered, tools_arg = template_messages(tools, messages)
    try:
        return list(
            model.tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=True, tools=tools_arg)
        )
    except TokenizerError as exc:
        raise bad(str(exc), "messages") from None


def _tool_plan(body: dict[str, Any], model: Model) -> ToolPlan | None:
    """The request's tools under the model's chat template (None: no tools).

    Raises:
        ApiError: 400 for a tool_choice without tools or naming none of them, or no chat template.
    """
    tools = CHAT.parse(body, "tools") or ()
    choice = CHAT.parse(body, "tool_choice")
    if not tools:
        if choice not in (None, "none"):
            raise bad("tool_choice needs tools", "tool_choice")
        return None
    try:
        template = model.tokenizer.get_chat_template(None, [t.as_template_input() for t in tools])
    except TokenizerError as exc:
        raise bad(str(exc), "messages") from None
    try:
        return plan_tools(tools, choice, CHAT.parse(body, "parallel_tool_calls"), template)
    except ValueError as exc:
        raise bad(str(exc), "tool_choice") from None


def encode_prompt(model: Model, prompt: str, *, add_special_tokens: bool = True) -> list[int]:
    """The token ids of a text prompt.

    Raises:
        ApiError: 400 when the model's vocabulary cannot encode it.
    """
    try:
        return list(model.tokenizer.encode(prompt, add_special_tokens=add_special_tokens))
    except TokenizerError as exc:
        raise bad(str(exc), "prompt") from None


def _prompt_ids(kind: RequestType, body: dict[str, Any], model: Model, tools: ToolPlan | None) -> list[int]:
    if kind is CHAT:
        return chat_prompt(model, CHAT.parse(body, "messages"), tools)
    prompt = COMPLETION.parse(body, "prompt")
    if isinstance(prompt, str):
        ids = encode_prompt(model, prompt)
    else:
        ids = prompt
        if any(t >= model.vocab_size for t in ids):
            raise bad("prompt token ids must be inside the vocabulary", "prompt")
    if not ids:
        raise bad("the prompt is empty", "prompt")
    return ids


def plan_generation(kind: RequestType, body: dict[str, Any], model: Model, name: str) -> Plan:
    """Check a completion or chat body against ``model``.

    Raises:
        ApiError: 400 naming the field (``context_length_exceeded`` when the prompt does not fit).
    """
    chat = kind is CHAT
    tools = _tool_plan(body, model) if chat else None
    prompt_ids = _prompt_ids(kind, body, model, tools)
    max_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = kind.parse(body, max_name)
    bias = kind.parse(body, "logit_bias")
    for token in bias:
        if token >= model.vocab_size:
            raise bad(f"logit_bias token {token} is outside the vocabulary", "logit_bias")
    if chat:
        want, top = CHAT.parse(body, "logprobs"), CHAT.parse(body, "top_logprobs")
        if top and not want:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs")
        logprobs = top if want else None
    else:
        logprobs = COMPLETION.parse(body, "logprobs")
    params: dict[str, Any] = {
        name: kind.parse(body, name)
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
    }
    params.update(
        top_k=max(0, kind.parse(body, "top_k")),
        seed=kind.parse(body, "seed"),
        stop=kind.parse(body, "stop"),
        logit_bias=bias,
        logprobs=logprobs is not None,
        top_logprobs=logprobs or 0,
        ignore_eos=kind.parse(body, "ignore_eos"),
    )
    params["grammar"], grammar_param = _output_grammar(kind, body, tools)
    for compat in ("metadata", "store", "service_tier", "reasoning_effort"):
        if compat in kind.by_name:
            kind.parse(body, compat)
    room = model.context_length - len(prompt_ids)
    if room < 1:
        raise bad(
            f"the prompt has {len(prompt_ids)} tokens; the model's context is {model.context_length}",
            "messages" if chat else "prompt",
            "context_length_exceeded",
        )
    if max_tokens is None:
        max_tokens = room
    elif len(prompt_ids) + max_tokens > model.context_length:
        raise bad(
            f"the prompt ({len(prompt_ids)} tokens) plus {max_name} ({max_tokens}) exceeds the "
            f"model's context of {model.context_length} tokens",
            max_name,
            "context_length_exceeded",
        )
    params["max_tokens"] = max_tokens
    n = kind.parse(body, "n") if "n" in kind.by_name else 1
    stream = kind.parse(body, "stream") if "stream" in kind.by_name else False
    options = kind.parse(body, "stream_options") if "stream_options" in kind.by_name else None
    if options and not stream:
        raise bad("stream_options needs stream: true", "stream_options")
    user = kind.parse(body, "user")
    request_data = {k: v for k, v in params.items() if k not in ("stop", "logit_bias", "grammar")}
    if params["grammar"] is not None:
        request_data["response_format"] = params["grammar"].kind
    if tools is not None:
        request_data.update(tools=len(tools.tools), tool_choice=tools.choice)
    request_data.update(n=n, stream=stream, prompt_tokens=len(prompt_ids), user=user)
    include_usage = bool(options and options.get("include_usage"))
    return Plan(
        name, tuple(prompt_ids), params, n, stream, include_usage, logprobs, chat, request_data, tools, grammar_param
    )


def _output_grammar(kind: RequestType, body: dict[str, Any], tools: ToolPlan | None) -> tuple[Grammar | None, str]:
    """The grammar ``response_format`` (or a ``required`` / named ``tool_choice``) asks for (None: free text)
    and the field a refusal of it names. Checking it against the vocabulary is :func:`check_grammar`'s.

    Raises:
        ApiError: 400 when both ask to constrain the output.
    """
    fmt: OutputFormat | None = kind.parse(body, "response_format") if "response_format" in kind.by_name else None
    forced = tools.grammar() if tools is not None else None
    if fmt is not None and forced is not None:
        raise bad("response_format cannot be used with tool_choice required or a named function", "response_format")
    if fmt is not None:
        return fmt.grammar, "response_format.json_schema.schema" if fmt.type == "json_schema" else "response_format"
    return forced, "tools"


async def check_grammar(plan: Plan, model: Model) -> None:
    """Check the plan's grammar against the model's vocabulary, in a worker thread (the first one reads the
    vocabulary into llguidance: a fraction of a second at 128k tokens; later ones are cached).

    Raises:
        ApiError: 400 naming what the schema uses that structured output does not support, or a model whose
            tokenizer cannot serve it.
    """
    grammar = plan.params.get("grammar")
    if grammar is None:
        return
    try:
        await trio.to_thread.run_sync(lambda: model.constraints.check(grammar))
    except ConstraintError as exc:
        raise bad(str(exc), plan.grammar_param or "response_format", "invalid_json_schema") from None


def expose_limits(decision: Decision) -> None:
    """Put ``decision``'s rate-limit headers on the current response (``bitnet_actor.app`` adds them)."""
    if has_request_context() or has_websocket_context():
        g.ratelimit_headers = decision.headers()


def _refusal(decision: Decision, tokens: int) -> ApiError:
    headers = decision.headers()
    if decision.quota_exhausted:
        return ApiError(
            429,
            "You exceeded your current quota: this organization's monthly tokens are used up; "
            "upgrade the plan or wait for the next month.",
            type_="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    from bitnet_actor.services.ratelimit import openai_duration

    wait = openai_duration(decision.retry_after_s)
    for state in decision.states:
        cost = 1 if state.kind == "requests" else tokens
        if state.remaining < cost:
            what = "requests per min (RPM)" if state.kind == "requests" else "tokens per min (TPM)"
            scope = state.scope.split(":", 1)[0]
            scope = {"org": "organization", "key": "API key", "user": "user"}.get(scope, scope)
            return ApiError(
                429,
                f"Rate limit reached for {what} on this {scope}: limit {state.limit}, remaining "
                f"{state.remaining}, requested {cost}. Please try again in {wait}.",
                code="rate_limit_exceeded",
                headers=headers,
            )
    return ApiError(
        429,
        f"Too many requests in flight at once for this API key. Please try again in {wait}.",
        code="rate_limit_exceeded",
        headers=headers,
    )


async def check_limits(
    h: Handles, access: OrgAccess, profile: OrgProfile, *, request_id: str, tokens: int, requests: int = 1
) -> Decision:
    """Admit one request against its key's and organization's limits and quota (``requests=0``: only read
    them, for the headers of routes that cost nothing); the headers go on the response.

    Raises:
        ApiError: 429 (rate limit, concurrency, quota) / 503 (the limiter is away past its fail-open window).
    """
    principal = access.principal
    try:
        decision = await h.limits.admit(
            profile,
            key=principal.key,
            user_id=principal.user_id,
            request_id=request_id,
            tokens=tokens,
            requests=requests,
        )
    except LimiterUnavailableError as exc:
        raise ApiError(503, str(exc), code="rate_limiter_unavailable", headers={"Retry-After": "5"}) from None
    if not decision.allowed and requests:
        h.metrics.ratelimited.labels("quota" if decision.quota_exhausted else "rate").inc()
        raise _refusal(decision, tokens)
    expose_limits(decision)
    return decision


async def peek_limits(access: OrgAccess) -> None:
    """Put the caller's rate-limit state on the response of a route that costs nothing (``/v1/models``,
    tokenize): read, not taken; nothing when the limiter is away (the route still answers)."""
    h = handles()
    profile = await h.tenants.profile(access.org_id)
    with contextlib.suppress(ApiError):
        await check_limits(h, access, profile, request_id="", tokens=0, requests=0)


async def admit(
    h: Handles, access: OrgAccess, kind: RequestType, body: dict[str, Any], *, run_id: str, cache: bool = False
) -> Run:
    """Lease, plan, hold the organization's admission and submit: a started :class:`Run`.

    ``body`` has passed ``kind.check``. The run owns what was taken (the lease, the admission) until
    :meth:`Run.record`; on any failure here it is all given back before the error propagates. ``cache``:
    use the organization's response cache (see the module docstring); a hit submits nothing and returns a
    run holding the stored body (``Run.cached``).

    Raises:
        ApiError: 400 / 404 / 429 / 503.
    """
    stack = contextlib.AsyncExitStack()
    decision: Decision | None = None
    try:
        leased = await lease(stack, h, body, access.org_id, caller=sticky_id(access))
        plan = plan_generation(kind, body, leased.model, leased.name)
        await check_grammar(plan, leased.model)
        limits = await stack.enter_async_context(h.tenants.admit(access.org_id))
        reserve = (len(plan.prompt_ids) + plan.params["max_tokens"]) * plan.n
        with child_span(h.tracing, "rate_limit", tokens_reserved=reserve):
            decision = await check_limits(h, access, limits, request_id=run_id, tokens=reserve)
        key = _cache_lookup_key(access, limits, leased, plan) if cache else None
        cached = await _cache_get(h, key, plan.model) if key is not None else None
        if cached is not None:
            run = Run(plan, leased, access, _ended(), run_id, int(time.time()), h, stack, decision)
            run.replay(cached)
            run.trace(request_context())
            return run
        generate = Generate(
            org_id=access.org_id,
            prompt_ids=plan.prompt_ids,
            params=tuple(plan.sampling(i) for i in range(plan.n)),
            deadline=trio.current_time() + h.settings.request_timeout,
            weight=limits.weight,
            max_running=limits.max_running,
        )
        try:
            recv = h.inference.submit_nowait(leased, generate)
        except trio.WouldBlock:
            raise ApiError(
                429,
                "the server is busy: too many requests are waiting for this model; retry shortly",
                code="rate_limit_exceeded",
                headers={"Retry-After": "2"},
            ) from None
    except BaseException:
        with trio.CancelScope(shield=True):
            await stack.aclose()
            if decision is not None:  # admitted, then refused further on: it used nothing
                await h.limits.settle(decision, used_tokens=0)
        raise
    run = Run(plan, leased, access, recv, run_id, int(time.time()), h, stack, decision)
    if key is not None:
        run.cache_key, run.cache_ttl_s = key, limits.response_cache_ttl_s
    run.trace(request_context())
    return run


def _cache_state(state: str) -> None:
    if has_request_context():
        g.response_cache = state  # bitnet_actor.app puts it on the response as x-bitnet-cache


def _cache_lookup_key(access: OrgAccess, profile: OrgProfile, leased: Lease, plan: Plan) -> str | None:
    """The response cache key of this request; None when the organization has no cache or it cannot apply."""
    if not profile.response_cache_ttl_s:
        return None
    if not deterministic(plan.params) or not leased.identity:
        _cache_state("bypass")
        return None
    return cache_key(
        org_id=access.org_id,
        identity=leased.identity,
        endpoint=("chat" if plan.chat else "completions") + (f"+{plan.tools.variant}" if plan.tools else ""),
        prompt_ids=plan.prompt_ids,
        params=plan.params,
        n=plan.n,
        logprobs=plan.logprobs,
    )


async def _cache_get(h: Handles, key: str, model: str) -> dict[str, Any] | None:
    body = await ResponseCache(h.stores.redis).get(key)
    if body is None:
        h.metrics.response_cache_misses.labels(model).inc()
        _cache_state("miss")
    else:
        h.metrics.response_cache_hits.labels(model).inc()
        _cache_state("hit")
    return body


def _ended() -> trio.MemoryReceiveChannel[Any]:
    """A reply channel with nothing coming (a cache hit: no generation)."""
    send, recv = trio.open_memory_channel[Any](0)
    send.close()
    return recv


def sticky_id(access: OrgAccess) -> str:
    """Who a request comes from, for A/B routes when its body names no ``user``: its API key, else its user."""
    principal = access.principal
    if principal.key is not None:
        return f"key:{principal.key.key_id}"
    return f"user:{principal.user_id}"


def new_run_id(prefix: str) -> str:
    """An id like OpenAI's (``chatcmpl-...``, ``cmpl-...``, ``resp_...``)."""
    sep = "_" if prefix == "resp" else "-"
    return f"{prefix}{sep}{uuid.uuid4().hex}"
