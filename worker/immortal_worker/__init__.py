"""The Immortal worker: runs workflow and activity code for its queues."""

from immortal_worker._worker import Worker

__all__ = ["Worker"]
