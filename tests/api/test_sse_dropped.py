"""An SSE body that Quart never iterates (the client left between the view's return and the response start)
still gives back its lease and its organization's admission, and its usage is recorded."""

from __future__ import annotations

import contextlib
import gc
import uuid

import trio
import trio.testing

from actors.model_cache import Lease
from actors.tenant import Tenants
from bitnet_actor.api.auth import OrgAccess
from bitnet_actor.api.openai.admission import Plan
from bitnet_actor.api.openai.completions import SseStream
from bitnet_actor.api.openai.run import Run
from bitnet_actor.services.authn import Principal
from tests.api.conftest import Harness


async def test_a_dropped_stream_is_recorded_and_gives_everything_back(harness: Harness) -> None:
    handles = harness.system
    assert isinstance(handles.tenants, Tenants)
    org = uuid.uuid4()
    released: list[str] = []
    given_back = trio.Event()
    stack = contextlib.AsyncExitStack()
    stack.callback(given_back.set)
    stack.callback(released.append, "lease")
    await stack.enter_async_context(handles.tenants.admit(org))
    assert handles.tenants.statistics().in_flight == 1
    send, recv = trio.open_memory_channel[object](4)
    plan = Plan("m", (1, 2), {"seed": None}, 1, True, False, None, False, {"prompt_tokens": 2})
    run = Run(
        plan,
        Lease("m", None, None),  # type: ignore[arg-type]  # record() never touches the model
        OrgAccess(Principal("key"), org, None),
        recv,  # type: ignore[arg-type]
        "cmpl-test",
        0,
        handles,
        stack,
    )
    stream = SseStream(run)
    del stream
    gc.collect()
    with trio.fail_after(10):
        await given_back.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert run.recorded
    assert released == ["lease"]
    assert handles.tenants.statistics().in_flight == 0
    assert send.statistics().open_receive_channels == 0  # the scheduler sees the client gone
