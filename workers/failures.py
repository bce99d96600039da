"""Whose fault a failure is, decided here once: the record's, or the system's.

- `RecordFault`: the failure belongs to one event (its object does not exist, is not an image, is too
  large, is forbidden, makes the model fail where other images do not). It becomes that event's dead
  letter, with `reason` and `detail`; a re-delivery gets the same dead letter.
- `SystemFault`: a dependency fails for everyone (the storage endpoint or its credentials, the model
  or its device, memory). No record is charged with it: the worker pauses with the events
  unanswered and uncommitted, retries, and answers them when the dependency is back
  (workers/outages.py). `DeviceLost` is the one that cannot come back in this process: the worker
  ends, so that the orchestrator restarts it clean.

Every failure on an event's path becomes one of the two through `fault_of`; the fetcher decides for
storage (it alone can ask the endpoint whether it answers at all) and `model_fault` for the model.
"""
from __future__ import annotations

from topics import events as ev

# The dependencies a system fault names.
STORAGE = "storage"  # the S3 endpoint, or the folder file:// sources are read from
MODEL = "model"  # the model fails for a known-good input too
MEMORY = "memory"  # out of memory even for one known-good image
DEVICE = "device"  # the accelerator is gone for this process (a poisoned CUDA context)
DEPENDENCIES = (STORAGE, MODEL, MEMORY, DEVICE)

# Messages of accelerator errors after which a CUDA context is unusable: every later call fails.
_DEVICE_LOST = ("illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address",
                "uncorrectable ecc", "illegal instruction", "device has fallen off the bus", "gpu is lost",
                "cuda driver is shutting down")
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")


class RecordFault(Exception):
    """A failure that belongs to one event: its dead letter's `reason` (a code from topics.events) and
    `detail` (capped: details may quote what producers send)."""

    def __init__(self, reason: str, detail: str):
        detail = ev.bounded_detail(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class SystemFault(Exception):
    """A dependency failing for everyone: `dependency` (one of DEPENDENCIES) and what it said."""

    def __init__(self, dependency: str, detail: str):
        detail = ev.bounded_detail(detail)
        super().__init__(f"{dependency}: {detail}")
        self.dependency, self.detail = dependency, detail


class DeviceLost(SystemFault):
    """The device cannot recover in this process: the worker ends and is restarted."""

    def __init__(self, detail: str):
        super().__init__(DEVICE, detail)


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def fault_of(err: BaseException) -> RecordFault | SystemFault:
    """The fault `err` is, on one event's path: faults as they are; any other exception is a bug or a
    library failing on this record's data, so the record's (`internal_error`).

    Examples:
        >>> fault_of(ValueError("bad pixels")).reason
        'internal_error'
        >>> fault_of(SystemFault(STORAGE, "connection refused")).dependency
        'storage'
    """
    if isinstance(err, (RecordFault, SystemFault)):
        return err
    return RecordFault(ev.INTERNAL_ERROR, describe(err))


def model_fault(err: BaseException) -> RecordFault | SystemFault:
    """What the model raising `err` for a batch says by itself: the device lost (`DeviceLost`), out of
    memory (a SystemFault of MEMORY: smaller batches may fit), or anything else, which only a known-good
    input can tell apart (`Pipeline` checks: the model's fault if that fails too, else the image's)."""
    text = str(err).lower()
    if any(fragment in text for fragment in _DEVICE_LOST):
        return DeviceLost(describe(err))
    if isinstance(err, MemoryError) or _is_out_of_memory(err) or any(f in text for f in _OUT_OF_MEMORY):
        return SystemFault(MEMORY, describe(err))
    return fault_of(err)


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                  if isinstance(k, type))
    return bool(kinds) and isinstance(err, kinds)
