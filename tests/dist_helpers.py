"""Ending a test script's gloo process group (the multi-process test scripts)."""

from __future__ import annotations

import os
import sys
from datetime import timedelta


def leave_process_group(timeout_s: float = 120.0) -> None:
    """Every rank waits for the others, then the process ends at once, without tearing gloo
    down. Call it on success, once every result is written and closed.

    The barrier is gloo's monitored one: a rank that does not arrive within ``timeout_s``
    is named in the error. ``destroy_process_group()`` can hang (pytorch/pytorch#75097; a
    CI run once waited out a test's 600 s after both ranks had trained), and exiting with
    the group alive can abort in interpreter finalisation ("terminate called without an
    active exception", exit -6; pytorch/pytorch#179291), so neither is done.
    """
    import torch.distributed as dist

    dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
