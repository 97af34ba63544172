"""Where a worker keeps its source weights: on the merge device, or on the host.

A search worker merges every candidate into one resident model on its device
and evaluates it there. Its sources (a base and the experts) are read for every
candidate. On the CPU they stay memory-mapped: the page cache holds them once
for every worker of the machine. On a GPU they either live on the device
(``device``: no transfer per candidate, but the device holds every source beside
the candidate and the evaluation's activations) or stay memory-mapped on the
host (``host``), and each tensor's inputs are copied to the device as that
tensor is merged (one tensor's inputs on the device at a time). ``auto`` puts
them on the device when they fit with room to spare, else on the host.
docs/scale.md gives the transfer and merge times this implies at 7B and 70B.
"""

from __future__ import annotations

from typing import Literal

import torch

SourcesOn = Literal["auto", "device", "host"]
#: the share of the device's memory ``auto`` leaves to the evaluation (activations, KV cache)
EVAL_SHARE = 0.2


def fits_on_device(sources_bytes: int, model_bytes: int, free: int, total: int) -> bool:
    """Whether the sources, the resident candidate (``model_bytes``) and the evaluation's share
    of the device fit in its ``free`` memory."""
    return sources_bytes + model_bytes + EVAL_SHARE * total <= free


def source_device(device: torch.device, sources_on: SourcesOn, sources_bytes: int,
                  model_bytes: int) -> torch.device:
    """The device the sources are held on, for a worker merging on ``device``."""
    if sources_on not in ("auto", "device", "host"):
        raise ValueError(f"sources_on must be auto, device or host, not {sources_on!r}")
    if device.type == "cpu" or sources_on == "device":
        return device
    if sources_on == "host":
        return torch.device("cpu")
    free, total = torch.cuda.mem_get_info(device)
    return device if fits_on_device(sources_bytes, model_bytes, free, total) else torch.device("cpu")
