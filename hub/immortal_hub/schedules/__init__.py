"""Schedules inside the hub: changes decided and made on a client's request, firings
turned into starts (``immortal._schedules`` is the client's side).

- ``_changes``: create, pause, resume, delete by request, decided by the tenant's policy
  (``policy._schedules``) before anything is written.
- ``_store``: the definition in ``imm-schedules`` and the repeating scheduled message.
- ``_firing``: the start a firing makes, acting for the schedule's author.
"""

from immortal_hub.schedules._changes import ScheduleChanges
from immortal_hub.schedules._firing import scheduled_start

__all__ = ["ScheduleChanges", "scheduled_start"]
