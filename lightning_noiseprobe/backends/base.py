"""The backend contract: what the probe needs from a music language model.

A backend wraps a frozen audio codec and an autoregressive LM over its codes.
The probe only ever calls the methods below, so any MusicGen implementation
(audiocraft, Hugging Face transformers, ...) can be probed the same way.

Shapes follow audiocraft: waveforms ``[B, C, S]``, codes ``[B, K, T]`` (K
codebooks, T frames), per-token losses and masks ``[B, K, T]`` aligned with the
codes (no shift: ``nll[b, k, t]`` is ``-log p(codes[b, k, t] | past)``).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "ProbeBackend",
    "available_backends",
    "get_backend",
    "register_backend",
]


class ProbeBackend(ABC):
    """A frozen codec plus a language model over its codes.

    Constructors are cheap; heavy work (imports, building or loading weights)
    happens in :meth:`load`, which returns ``self`` so that
    ``get_backend("audiocraft", model="tiny").load()`` reads naturally.

    Subclasses set :attr:`name` and implement the abstract members.
    """

    #: Registry name, e.g. ``"audiocraft"``.
    name: str = ""

    # -- static description -------------------------------------------------
    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Audio sample rate the codec expects, in Hz."""

    @property
    @abstractmethod
    def channels(self) -> int:
        """Audio channels the codec expects."""

    @property
    @abstractmethod
    def frame_rate(self) -> float:
        """Token frames per second (MusicGen: 50)."""

    @property
    @abstractmethod
    def num_codebooks(self) -> int:
        """Number of codebooks K."""

    @property
    @abstractmethod
    def cardinality(self) -> int:
        """Entries per codebook (MusicGen: 2048)."""

    # -- lifecycle ----------------------------------------------------------
    @abstractmethod
    def load(self) -> ProbeBackend:
        """Build or load the weights. Idempotent. Returns ``self``."""

    @property
    @abstractmethod
    def lm(self) -> torch.nn.Module:
        """The language model (the part that fine-tunes)."""

    @property
    @abstractmethod
    def codec(self) -> torch.nn.Module:
        """The frozen audio codec."""

    def codec_fingerprint(self) -> str:
        """A hash of the codec weights, used as a cache key for tokenized audio."""
        from lightning_noiseprobe._hashing import hash_state_dict

        return hash_state_dict(self.codec.state_dict())

    # -- compute --------------------------------------------------------------
    @abstractmethod
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Tokenize audio with the frozen codec.

        Args:
            wav: ``[B, C, S]`` float waveform at :attr:`sample_rate`, :attr:`channels`.

        Returns:
            ``[B, K, T]`` long codes.
        """

    @abstractmethod
    def token_nll(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token negative log-likelihood of ``codes`` under the LM.

        Log-softmax is computed in float32 even under autocast; invalid
        positions (delay pattern) hold 0 in ``nll`` and ``False`` in ``mask``
        (never NaN).

        Args:
            codes: ``[B, K, T]`` long codes.
            descriptions: one text per item (``None`` = unconditional), or
                ``None`` for all-unconditional.

        Returns:
            ``(nll, mask)``, both ``[B, K, T]``; ``nll`` float32, ``mask`` bool.
        """

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for ``metrics.json``."""
        return {
            "backend": self.name,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_rate": self.frame_rate,
            "num_codebooks": self.num_codebooks,
            "cardinality": self.cardinality,
        }


_REGISTRY: dict[str, Callable[..., ProbeBackend]] = {}


def register_backend(
    name: str,
) -> Callable[[Callable[..., ProbeBackend]], Callable[..., ProbeBackend]]:
    """Class decorator adding a backend factory to the registry under ``name``."""

    def wrap(factory: Callable[..., ProbeBackend]) -> Callable[..., ProbeBackend]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def _ensure_builtin_backends() -> None:
    # Importing the modules registers them; they import their heavy libraries lazily.
    from lightning_noiseprobe.backends import audiocraft as _audiocraft  # noqa: F401

    with contextlib.suppress(ImportError):
        from lightning_noiseprobe.backends import transformers as _transformers  # noqa: F401


def available_backends() -> list[str]:
    """Names accepted by :func:`get_backend` (and the CLI's ``--backend``)."""
    _ensure_builtin_backends()
    return sorted(_REGISTRY)


def get_backend(name: str, **kwargs: Any) -> ProbeBackend:
    """Construct a registered backend (cheap; call ``.load()`` to build weights).

    Raises:
        ValueError: if ``name`` is not registered; the message lists the choices.
    """
    _ensure_builtin_backends()
    if name not in _REGISTRY:
        raise ValueError(
            f"Expected argument `backend` to be one of {sorted(_REGISTRY)} but got {name!r}."
        )
    return _REGISTRY[name](**kwargs)
