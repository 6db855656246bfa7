"""Malformed input: the wire decoder only ever raises PayloadError, and a hub fed garbage on
every input subject dead-letters it and keeps serving."""

from __future__ import annotations

import asyncio
import random
from typing import get_args

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from immortal import Client, PayloadError
from immortal._names import InputKind
from immortal._wire import Transition, decode
from immortal_hub._applying import INPUTS
from tests.helpers import running_worker
from tests.workflows import three_step

# Every model a hub decodes from the wire (inputs and fired timers), and history messages.
MODELS = [model for model, _ in INPUTS.values()] + [Transition]
KINDS = list(get_args(InputKind))

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(MODELS), data=st.binary(max_size=200))
def test_random_bytes_are_a_payload_error(model: type, data: bytes) -> None:
    try:
        decode(model, data)
    except PayloadError:
        pass


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(MODELS), value=values)
def test_wrong_shapes_are_a_payload_error(model: type, value: object) -> None:
    try:
        decode(model, msgpack.packb(value))
    except PayloadError:
        pass


def _garbage(rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if choice == 1:  # valid msgpack, wrong shape
        return msgpack.packb({"workflow_id": rng.random(), "x": [1, 2]})
    if choice == 2:  # the right keys with wrong types
        return msgpack.packb({"workflow_id": "w", "run_id": 7, "wft": "one", "through": None})
    return b"\xc1" * rng.randrange(1, 8)


async def test_hub_survives_garbage_on_every_input_subject(
    nats_url: str, prefix: str, client: Client
) -> None:
    seed = random.randrange(1 << 30)
    print(f"fuzz seed {seed}")
    rng = random.Random(seed)
    js = client.nc.jetstream()
    sent = 0
    for i in range(60):
        kind = KINDS[i % len(KINDS)]
        data = _garbage(rng)
        if i % 2:
            await js.publish(
                f"{prefix}.in.default.default.{kind}", data, headers={"Nats-Msg-Id": f"g{i}"}
            )
        else:
            reply = await client.nc.request(f"{prefix}.rpc.default.default.{kind}", data, timeout=5)
            assert reply.data.startswith(b"rejected:"), (seed, kind, data, reply.data)
        sent += 1
    async with running_worker(nats_url, prefix):
        assert await (await client.start(three_step, 2)).result(timeout=20) == 8
        async with asyncio.timeout(20):  # every piece of garbage is set aside, with a reason
            while len(letters := await client.dead_letters.list()) < sent:
                await asyncio.sleep(0.1)
    assert len(letters) == sent, seed
    assert all(letter.error for letter in letters)
