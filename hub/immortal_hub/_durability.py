"""Whether the NATS server fsyncs JetStream writes before it acknowledges them.

Immortal's history is only as durable as the server's acknowledgement: with JetStream's
default ``sync_interval`` (2 minutes) an acknowledged write can be lost on power failure
(Jepsen's NATS 2.12.1 analysis). The server reports its setting only in ``/varz``, served
on its monitoring port or to the system account; an account user (a hub) sees it nowhere
else (not in the INFO on connect, nor in ``$JS.API.INFO``). So the hub reads ``/varz`` from
the monitoring port, by default port 8222 on the host it connected to, and makes sure the
answer is from that server (its ``server_id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from typing import Any

from nats.aio.client import Client as NATS

__all__ = ["check_sync_always"]

log = logging.getLogger(__name__)

MONITOR_PORT = 8222
_TIMEOUT_S = 1.0


async def check_sync_always(nc: NATS, where: str, monitor: str | None = None) -> str | None:
    """Warn (and return the warning) unless the connected server syncs every write.

    ``where`` names the server in the message; ``monitor`` is its monitoring endpoint
    (default ``http://<host connected to>:8222``).
    """
    url = nc.connected_url
    if monitor is None:
        if url is None or url.hostname is None:
            return None
        monitor = f"http://{url.hostname}:{MONITOR_PORT}"
    varz = await asyncio.to_thread(_varz, monitor.rstrip("/") + "/varz")
    ours = nc._server_info.get("server_id")  # the INFO the server sent us
    if varz is None or varz.get("server_id") != ours:
        warning = (
            f"cannot tell whether JetStream at {where} syncs every write: no monitoring "
            f"endpoint of that server at {monitor} (enable it with `http: 8222`, or name it "
            "with --monitor). Unless its config sets `sync_interval: always`, a power failure "
            "can lose acknowledged history"
        )
    else:
        config = (varz.get("jetstream") or {}).get("config") or {}
        if config.get("sync_always"):
            log.debug("JetStream at %s syncs every write", where)
            return None
        interval = config.get("sync_interval")
        every = f"every {interval / 1e9:g} s" if isinstance(interval, int) else "on a timer"
        warning = (
            f"JetStream at {where} syncs writes {every}, not always: a power failure can "
            "lose acknowledged history. Set `sync_interval: always` in its jetstream block "
            "(see nats.conf)"
        )
    log.warning("%s", warning)
    return warning


def _varz(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            found = json.load(resp)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
