"""The backend contract: what the probe needs from a music language model.

A backend wraps a frozen audio codec and an autoregressive LM over its codes.
The probe only ever calls the methods below, so any MusicGen implementation
(audiocraft, Hugging Face transformers, ...) can be probed the same way.

Shapes follow audiocraft: waveforms ``[B, C, S]``, codes ``[B, K, T]`` (K
codebooks, T frames), per-token losses and masks ``[B, K, T]`` aligned with the
codes (no shift: ``nll[b, k, t]`` is ``-log p(codes[b, k, t] | past)``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError

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

    Subclasses set :attr:`name` and implement the abstract members. Those that
    can be fine-tuned by :class:`~lightning_noiseprobe.module.MusicGenLightningModule`
    also implement the training contract (see :attr:`supports_training`); the
    module has no backend-specific code. A backend may also offer a
    ``from_model`` classmethod wrapping a model already in memory without
    copying it (:meth:`AudiocraftBackend.from_model
    <lightning_noiseprobe.backends.audiocraft.AudiocraftBackend.from_model>`).
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

    # -- training contract (what MusicGenLightningModule needs) ------------------
    @property
    def supports_training(self) -> bool:
        """Whether this backend implements the training contract below (default ``False``).

        :class:`~lightning_noiseprobe.module.MusicGenLightningModule` fine-tunes
        only such backends. The contract: :meth:`lm_logits` (with gradients),
        :meth:`prepare_for_training` (with :meth:`frozen_lm_parts` and
        :meth:`trainable_parameters`), :meth:`enable_gradient_checkpointing`,
        :meth:`fsdp_units`, :meth:`to` and :meth:`export`.
        """
        return False

    #: A deeper name prefix of a trainable parameter, shown when a ``freeze`` prefix is unknown.
    freeze_example: str = "transformer.layers.0"

    def frozen_lm_parts(self) -> tuple[str, ...]:
        """Names of submodules of :attr:`lm` that never train (default: none).

        :meth:`prepare_for_training` turns their gradients off; the training
        module also keeps them in eval mode and float32, as it keeps the codec
        (e.g. a text encoder held inside the LM).
        """
        return ()

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The LM parameters that may train, by the names ``freeze`` prefixes use.

        Default: all of :attr:`lm`, by their names in it.
        """
        return dict(self.lm.named_parameters())

    def prepare_for_training(self, freeze: Sequence[str] = ()) -> None:
        """Turn gradients off for what must not train; leave modes and dtypes alone.

        Freezes (``requires_grad=False``) the codec, the submodules named by
        :meth:`frozen_lm_parts`, and each of :meth:`trainable_parameters` whose
        name equals a prefix in ``freeze`` or starts with it plus ``"."``.

        Args:
            freeze: name prefixes of trainable parameters to freeze.

        Raises:
            NoiseProbeError: if a prefix matches no trainable parameter
                (nothing is frozen by ``freeze`` then); the message lists the
                top-level names.
        """
        self.codec.requires_grad_(False)
        for name in self.frozen_lm_parts():
            self.lm.get_submodule(name).requires_grad_(False)
        params = self.trainable_parameters()
        prefixes = [p.rstrip(".") for p in freeze]
        unknown = [
            given
            for given, p in zip(freeze, prefixes, strict=True)
            if not p or not any(n == p or n.startswith(p + ".") for n in params)
        ]
        if unknown:
            top = sorted({n.split(".")[0] for n in params})
            raise NoiseProbeError(
                f"Expected argument `freeze` to hold name prefixes of LM parameters (top-level "
                f"names: {top}; deeper ones like {self.freeze_example!r}) but got unknown {unknown}."
            )
        for name, param in params.items():
            if any(name == p or name.startswith(p + ".") for p in prefixes):
                param.requires_grad_(False)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer layer in the backward pass (same numbers, less memory).

        Raises:
            NoiseProbeError: by default: the backend cannot.
        """
        raise NoiseProbeError(
            f"Expected a backend that supports gradient checkpointing but "
            f"{type(self).__name__} does not (it has no `enable_gradient_checkpointing`)."
        )

    def fsdp_units(self) -> list[torch.nn.Module]:
        """The modules to shard with FSDP2's ``fully_shard``, in the order to shard them.

        Nested units first (e.g. each transformer layer), then the modules
        holding the rest of the trainable weights. Frozen parts (codec, text
        encoder) are not listed: they stay whole on every rank.

        Raises:
            NoiseProbeError: by default: the backend cannot be sharded.
        """
        raise NoiseProbeError(
            f"Expected a backend that can be sharded with FSDP2 but {type(self).__name__} "
            "names no modules to shard (it has no `fsdp_units`)."
        )

    def to(self, device: str | torch.device) -> ProbeBackend:
        """Put the backend on ``device``: the LM, the codec and whatever it caches beside them.

        Cheap when they are there already (the training module calls it after
        each move of its weights, to bring the rest along). The default moves
        :attr:`lm` and :attr:`codec` when their weights are elsewhere.

        Returns:
            ``self``.
        """
        device = torch.device(device)
        for part in (self.lm, self.codec):
            param = next(part.parameters(), None)
            if param is not None and param.device != device:
                part.to(device)
        return self

    def export(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model in the backend's own format, so that loading ``folder`` gives it back.

        A reader never sees a half-written export (written through
        :func:`lightning_noiseprobe._io.atomic_dir`).

        Returns:
            The folder, as a :class:`~pathlib.Path`.

        Raises:
            NoiseProbeError: by default: the backend has no export format.
        """
        raise NoiseProbeError(
            f"Expected a backend with a native export format but {type(self).__name__} has "
            f"none (it has no `export`); cannot write {str(folder)!r}."
        )


#: The built-in backends: name -> ``"module:Class"``, imported on first use by
#: :func:`get_backend`, so that importing this module imports no backend.
_BUILTIN: dict[str, str] = {
    "audiocraft": "lightning_noiseprobe.backends.audiocraft:AudiocraftBackend",
    "transformers": "lightning_noiseprobe.backends.transformers:TransformersBackend",
}

#: Backends added with :func:`register_backend` (they take precedence over built-in names).
_REGISTRY: dict[str, Callable[..., ProbeBackend]] = {}


def register_backend(
    name: str,
) -> Callable[[Callable[..., ProbeBackend]], Callable[..., ProbeBackend]]:
    """Class decorator adding a backend factory to the registry under ``name``.

    Example:
        >>> @register_backend("mine")
        ... class MyBackend(ProbeBackend): ...
        >>> "mine" in available_backends()
        True
        >>> del _REGISTRY["mine"]
    """

    def wrap(factory: Callable[..., ProbeBackend]) -> Callable[..., ProbeBackend]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_backends() -> list[str]:
    """Names accepted by :func:`get_backend` (and the CLI's ``--backend``); imports nothing."""
    return sorted({*_BUILTIN, *_REGISTRY})


def _factory(name: str) -> Callable[..., ProbeBackend]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    import importlib

    module_name, _, attribute = _BUILTIN[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise NoiseProbeError(
            f"Expected backend {name!r} to be importable from {module_name!r} but importing it "
            f"failed ({type(err).__name__}: {err}). Reinstall lightning-noiseprobe."
        ) from err
    factory: Callable[..., ProbeBackend] = getattr(module, attribute)
    return factory


def get_backend(name: str, **kwargs: Any) -> ProbeBackend:
    """Construct a registered backend (cheap; call ``.load()`` to build weights).

    Built-in backends are imported here, on first use (they import their heavy
    library, audiocraft or transformers, only in ``load``).

    Raises:
        NoiseProbeError: if ``name`` is not registered; the message lists the choices.
    """
    if name not in _REGISTRY and name not in _BUILTIN:
        raise NoiseProbeError(
            f"Expected argument `backend` to be one of {available_backends()} but got {name!r}."
        )
    return _factory(name)(**kwargs)
