"""The key registry's read-then-write against a real server (immortal.security.keys)."""

from __future__ import annotations

from immortal import Client
from immortal.security.keys import (
    KeyRegistry,
    RegisteredKey,
    read_registry,
    registry_key,
    write_registry,
)
from immortal.security.signing import SigningKey
from immortal_hub import Hub


async def test_a_deleted_registry_can_be_written_again(client: Client, hub: Hub) -> None:
    key = SigningKey.generate("k1")
    registry = KeyRegistry((RegisteredKey("k1", key.public_key),))
    _, revision = await read_registry(client.nc, client.names, "default")
    assert await write_registry(client.nc, client.names, "default", registry, revision)
    kv = await client.nc.jetstream().key_value(client.names.bucket_policy)
    await kv.delete(registry_key("default"))
    found, revision = await read_registry(client.nc, client.names, "default")
    assert found.keys == () and revision > 0  # empty; the delete marker is what to expect
    assert await write_registry(client.nc, client.names, "default", registry, revision)
    found, _ = await read_registry(client.nc, client.names, "default")
    assert [k.key_id for k in found.keys] == ["k1"]
