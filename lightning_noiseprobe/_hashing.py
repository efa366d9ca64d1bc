"""Stable hashes (independent of process, rank and Python's hash seed)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["derive_seed", "hash_json", "hash_state_dict", "hash_tensor"]


def derive_seed(*keys: Any) -> int:
    """A 63-bit seed derived deterministically from ``keys``.

    The same keys give the same seed in every process, on every rank and in
    every epoch, unlike Python's ``hash``.

    >>> derive_seed(0, "clip.wav", "white", 100) == derive_seed(0, "clip.wav", "white", 100)
    True
    >>> derive_seed(0, "a") != derive_seed(0, "b")
    True
    """
    payload = json.dumps([str(k) for k in keys], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") & ((1 << 63) - 1)


def hash_json(obj: Any) -> str:
    """SHA-256 hex digest of a JSON-serialisable object (keys sorted).

    >>> hash_json({"b": 1, "a": 2}) == hash_json({"a": 2, "b": 1})
    True
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def hash_tensor(t: torch.Tensor, h: Any = None) -> str:
    """SHA-256 hex digest of a tensor's dtype, shape and bytes.

    >>> hash_tensor(torch.zeros(3)) == hash_tensor(torch.zeros(3))
    True
    >>> hash_tensor(torch.zeros(3)) == hash_tensor(torch.zeros(4))
    False
    """
    h = h or hashlib.sha256()
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    h.update(t.numpy().tobytes())
    return str(h.hexdigest())


def hash_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest over a state dict's names and tensors."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        value = state[key]
        if isinstance(value, torch.Tensor):
            hash_tensor(value, h)
        else:
            h.update(repr(value).encode())
    return str(h.hexdigest())
