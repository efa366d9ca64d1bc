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

    def lm_logits(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM logits aligned with ``codes``, with gradients (the training path).

        Backends that can be fine-tuned implement it; a scoring-only backend may
        instead override :meth:`token_nll`.

        Returns:
            ``(logits [B, K, T, card], mask [B, K, T] bool)``; logits may be
            anything (audiocraft: NaN) where ``mask`` is ``False``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} implements neither `lm_logits` nor `token_nll`; a backend needs one of"
            " them (`lm_logits` to be fine-tuned by MusicGenLightningModule)."
        )

    def token_nll(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token negative log-likelihood of ``codes`` under the LM.

        :meth:`lm_logits` then :func:`~lightning_noiseprobe.functional.losses.token_nll_from_logits`:
        log-softmax in float32 even under autocast; invalid positions (delay
        pattern) hold 0 in ``nll`` and ``False`` in ``mask`` (never NaN).
        Differentiable; wrap in ``torch.no_grad()`` for probing.

        Args:
            codes: ``[B, K, T]`` long codes.
            descriptions: one text per item (``None`` = unconditional), or
                ``None`` for all-unconditional.

        Returns:
            ``(nll, mask)``, both ``[B, K, T]``; ``nll`` float32, ``mask`` bool.
        """
        from lightning_noiseprobe.functional.losses import token_nll_from_logits

        logits, mask = self.lm_logits(codes, descriptions)
        return token_nll_from_logits(logits, codes.to(logits.device), mask)

    # -- optional fast paths (inference only; defaults fall back to token_nll) --
    def token_nll_fast(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
        score_from: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`token_nll` for scoring under ``torch.no_grad()``: same values and mask.

        Backends may override it with a cheaper computation (e.g. one that never
        materialises log-probabilities over the whole vocabulary); the result
        must equal :meth:`token_nll` up to float rounding on frames from
        ``score_from`` on (earlier frames are known to the caller and may hold
        anything). The default calls :meth:`token_nll`.
        """
        return self.token_nll(codes, descriptions)

    @property
    def supports_prefix_sharing(self) -> bool:
        """Whether :meth:`token_nll_shared_prefix` reuses the shared prefix (default ``False``)."""
        return False

    def token_nll_shared_prefix(
        self,
        codes: torch.Tensor,
        variants: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
        *,
        shared_frames: int = 0,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token NLL of clean sequences and variants that copy their first frames.

        Every ``variants[b, p]`` must equal ``codes[b]`` on the frames
        ``[0, shared_frames)`` (all codebooks). A backend that supports prefix
        sharing runs that prefix once per clean sequence and scores only the
        rest of each variant; the values equal separate :meth:`token_nll` calls
        up to float rounding. This default scores every sequence in full.

        Args:
            codes: ``[B, K, T]`` clean codes.
            variants: ``[B, P, K, T]`` variants of each clean sequence.
            descriptions: one text per clean sequence (shared by its variants), or ``None``.
            shared_frames: frames every variant shares with its clean sequence
                (``0``: nothing shared).
            batch_size: most sequences per forward pass (``None``: all at once).

        Returns:
            ``(nll, mask)``, both ``[B, 1 + P, K, T]``: index 0 along dim 1 is
            the clean sequence, ``1 + p`` the variant ``p``.
        """
        B, P, K, T = variants.shape
        rows = torch.cat([codes[:, None].to(variants.device), variants], dim=1)
        rows = rows.reshape(B * (1 + P), K, T)
        descs = None if descriptions is None else [d for d in descriptions for _ in range(1 + P)]
        size = rows.shape[0] if batch_size is None else max(1, int(batch_size))
        nll_parts, mask_parts = [], []
        for i in range(0, rows.shape[0], size):
            nll, mask = self.token_nll_fast(
                rows[i : i + size], None if descs is None else descs[i : i + size]
            )
            nll_parts.append(nll.float())
            mask_parts.append(mask)
        shape = (B, 1 + P, K, T)
        return torch.cat(nll_parts).reshape(shape), torch.cat(mask_parts).reshape(shape)

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
    from lightning_noiseprobe._errors import NoiseProbeError

    _ensure_builtin_backends()
    if name not in _REGISTRY:
        raise NoiseProbeError(
            f"Expected argument `backend` to be one of {sorted(_REGISTRY)} but got {name!r}."
        )
    return _REGISTRY[name](**kwargs)
