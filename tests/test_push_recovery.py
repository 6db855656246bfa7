"""A dead hub's pushed tasks are recovered even when each claimer dies before it has read
the dead hub's whole history: the read keeps its progress in the key (hub/_push_recovery)."""

from __future__ import annotations

import pytest
from nats.js.errors import KeyNotFoundError

import immortal_hub._push_recovery
from immortal import Client
from immortal._codec import pack, unpack
from immortal._wire import EventType, HistoryEvent, RunState, Transition, encode
from immortal_hub import Hub
from immortal_hub._emissions import Emission
from immortal_hub._push_recovery import PUSH_HEADER, Recovery


async def _append(client: Client, i: int, pusher: str | None) -> None:
    state = RunState(
        workflow_id=f"wf-{i}", run_id=f"run{i}", workflow_type="t", queue="default", wft=2
    )
    events = [HistoryEvent(id=1, type=EventType.WORKFLOW_STARTED, ts=1)]
    headers = {PUSH_HEADER: pusher} if pusher else {}
    subject = client.names.history_subject(client.tenant, state.workflow_id, state.run_id)
    await client.nc.jetstream().publish(
        subject, encode(Transition(events=events, state=state)), headers=headers
    )


async def test_a_recovery_cut_short_is_resumed_from_where_it_stopped(
    client: Client, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(immortal_hub._push_recovery, "CHUNK", 10)
    js = client.nc.jetstream()
    start = (await js.stream_info(client.names.stream_history)).state.last_seq + 1
    for i in range(29):  # two chunks and more of other hubs' appends...
        await _append(client, i, "someone-alive")
    await _append(client, 29, "ghost")  # ...then the dead hub's push, its task still open
    kv = await js.key_value(client.names.bucket_hubs)
    revision = await kv.put("ghost", pack({"hub": "ghost", "from_seq": start, "ts": 0}))

    published: list[Emission] = []

    async def dies_publishing(tenant: str, e: Emission) -> None:
        raise ConnectionError("killed while publishing")

    first = Recovery(client.nc, kv, client.names, "claimer-1", dies_publishing)
    assert await first.recover([("ghost", revision)]) == []
    record = await kv.get("ghost")
    # It read two chunks (nothing of the ghost's) and marked them done before it died.
    assert unpack(record.value)["from_seq"] == start + 20
    assert unpack(record.value)["claimed_by"] == "claimer-1"

    async def publishes(tenant: str, e: Emission) -> None:
        published.append(e)

    second = Recovery(client.nc, kv, client.names, "claimer-2", publishes)
    assert await second.recover([("ghost", record.revision)]) == []
    assert [e.msg_id for e in published] == ["run29:2"]  # the ghost's open task, once
    with pytest.raises(KeyNotFoundError):
        await kv.get("ghost")  # recovered: the key goes
