"""Fused scoring of audiocraft LMs: per-token NLL without the full logits, shared prefixes run once.

:class:`FusedScoring` is the part of
:class:`~lightning_noiseprobe.backends.audiocraft.AudiocraftBackend` that
makes probing fast (inference only, same values as ``token_nll`` up to float
rounding): :meth:`~FusedScoring.token_nll_fast` takes each codebook's
cross-entropy on its output head at the positions that score its frames, and
:meth:`~FusedScoring.token_nll_shared_prefix` continues the variants of a
clean sequence from its kept keys and values (:mod:`.prefix`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends._common import (
    delayed_heads_nll,
    outside_inference_mode,
)
from lightning_noiseprobe.backends.audiocraft.prefix import (
    continuable_attentions,
    continuing,
    self_attention_keys_values,
)
from lightning_noiseprobe.backends.base import ProbeBackend

__all__ = ["FusedScoring"]


class FusedScoring(ProbeBackend):
    """The fused scoring paths of an audiocraft MusicGen backend (see the module docstring).

    Subclasses provide the loaded model (:meth:`_require_loaded`, ``lm``),
    :attr:`device` and the condition tensors of a batch (:meth:`_condition_tensors`).
    """

    @property
    @abstractmethod
    def lm(self) -> Any:  # audiocraft's LMModel (typed loosely: audiocraft has no stubs)
        """The audiocraft ``LMModel``."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the LM's weights are."""

    @abstractmethod
    def _require_loaded(self) -> Any:
        """The loaded audiocraft ``MusicGen``; raises if not loaded."""

    @abstractmethod
    def _condition_tensors(self, batch: int, descriptions: Sequence[str | None] | None) -> Any:
        """The condition provider's output for ``descriptions`` (``batch`` items)."""

    @property
    @abstractmethod
    def is_loaded(self) -> bool:
        """Whether :meth:`load` has run."""

    # -- fast scoring (inference) ---------------------------------------------
    def _plain_delays(self) -> list[int] | None:
        """The codebook delays if the fused scoring paths apply, else ``None``.

        They apply to an unmodified ``LMModel`` (no FSDP wrapper, stock
        ``forward``) with a plain delay pattern (``flatten_first = 0``,
        ``empty_initial = 0``), conditions fused through cross-attention or
        prepended to the sequence (a melody model's chroma and text), and
        absolute (sinusoidal) positions without RoPE; otherwise callers fall
        back to :meth:`token_nll`.
        """
        from audiocraft.models.lm import LMModel
        from audiocraft.modules.codebooks_patterns import DelayedPatternProvider

        lm = self._require_loaded().lm
        provider = lm.pattern_provider
        if (
            type(lm).forward is not LMModel.forward
            or getattr(lm, "_fsdp", None) is not None
            or type(provider) is not DelayedPatternProvider
            or provider.flatten_first != 0
            or provider.empty_initial != 0
            or any(lm.fuser.fuse2cond.get(op) for op in ("sum", "input_interpolate"))
            or getattr(lm.transformer, "positional_embedding", "sin") != "sin"
        ):
            return None
        return [int(d) for d in provider.delays]

    def _delayed_sequence(self, codes: torch.Tensor, delays: list[int]) -> torch.Tensor:
        """The LM's input ``[B, K, T]``: position ``p`` of codebook ``q`` holds frame ``p - 1 - d_q``.

        The first ``T`` steps of ``pattern.build_pattern_sequence`` (the last
        step only feeds logits that no code uses).
        """
        T = codes.shape[-1]
        seq = torch.full_like(codes, self.cardinality)  # the special token
        for q, d in enumerate(delays):
            if T - 1 - d > 0:
                seq[:, q, 1 + d :] = codes[:, q, : T - 1 - d]
        return seq

    def _delay_mask(self, batch: int, frames: int, delays: list[int]) -> torch.Tensor:
        """``[B, K, T]`` bool: frame ``t`` of codebook ``k`` is scored iff ``t < T - d_k``."""
        limit = torch.tensor([frames - d for d in delays], device=self.device)
        mask = torch.arange(frames, device=self.device) < limit[:, None]
        return mask[None].expand(batch, -1, -1)

    def _nll_at_positions(
        self,
        sequence: torch.Tensor,
        codes: torch.Tensor,
        condition_tensors: Any,
        delays: list[int],
        start: int,
        first_frame: int = 0,
    ) -> torch.Tensor:
        """Per-token NLL from the LM run on delayed positions ``[start, start + L)``.

        Frames before ``first_frame`` are not scored (their output heads and
        cross-entropy, most of a small model's cost, are skipped; they hold 0).

        ``sequence`` ``[B, K, L]`` is that slice of the delayed input (under
        ``lm.streaming()`` the positions before ``start`` come from the
        streaming state). Position ``p`` of codebook ``k`` scores frame
        ``p - d_k``; the result ``[B, K, T]`` float32 holds those frames and 0
        elsewhere. The cross-entropy runs per codebook on its output head, in
        float32, without stacking or reverting the ``[B, K, L, card]`` logits,
        over chunks of rows (positions x batch) whose logits stay in cache.

        Prepended conditions in ``condition_tensors`` go before the sequence,
        as in ``LMModel.forward`` (which drops their outputs); a continuation
        passes none (its streaming state already holds them).
        """
        lm = self.lm
        K, L = sequence.shape[1], sequence.shape[2]
        x = sum(lm.emb[k](sequence[:, k]) for k in range(K))
        x, cross = lm.fuser(x, condition_tensors)
        out = lm.transformer(x, cross_attention_src=cross)
        out = out[:, out.shape[1] - L :]  # outputs at the prepended conditions score nothing
        if lm.out_norm is not None:
            out = lm.out_norm(out)
        return delayed_heads_nll(out, lm.linears, codes, delays, start, first_frame)

    def _check_codes(self, codes: torch.Tensor, name: str = "codes") -> None:
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise NoiseProbeError(
                f"Expected argument `{name}` of shape [B, {self.num_codebooks}, T] "
                f"but got {tuple(codes.shape)}."
            )

    def token_nll_fast(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
        score_from: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`token_nll` without audiocraft's logits bookkeeping, for scoring.

        Runs the LM on the delayed sequence and takes the cross-entropy of each
        codebook's head at the positions that score its frames (frame ``t`` of
        codebook ``k`` is scored at delayed position ``t + d_k``), instead of
        reverting, NaN-filling and log-softmaxing the full ``[B, K, T, card]``
        logits as ``compute_predictions`` + :func:`token_nll_from_logits` do.
        Same values (float32 rounding, about 1e-6) and the same mask as
        :meth:`token_nll`; falls back to it for LMs it does not cover (see
        :meth:`_plain_delays`). Differentiable, but meant for ``torch.no_grad()``.

        Args:
            codes: ``[B, K, T]`` long codes.
            descriptions: one text per item (``None`` = unconditional), or ``None``.
            score_from: frames before it need no score (the caller knows them); they
                may hold anything. Skips their output heads and cross-entropy.

        Returns:
            ``(nll, mask)``, both ``[B, K, T]``; ``nll`` float32 (0 where invalid).
        """
        self._require_loaded()
        self._check_codes(codes)
        delays = self._plain_delays()
        if delays is None:
            return self.token_nll(codes, descriptions)
        codes = codes.to(self.device, torch.long)
        B, _, T = codes.shape
        with outside_inference_mode():
            condition_tensors = self._condition_tensors(B, descriptions)
            sequence = self._delayed_sequence(codes, delays)
            nll = self._nll_at_positions(
                sequence, codes, condition_tensors, delays, 0, first_frame=max(0, int(score_from))
            )
        return nll, self._delay_mask(B, T, delays)

    @property
    def supports_prefix_sharing(self) -> bool:
        """``True`` when the LM is covered by the fused, streaming scoring path."""
        return self.is_loaded and self._plain_delays() is not None

    def token_nll_shared_prefix(
        self,
        codes: torch.Tensor,
        variants: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
        *,
        shared_frames: int = 0,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token NLL of clean sequences and their variants, running each shared prefix once.

        The delayed input at position ``p`` holds frames ``p - 1 - d_q`` (all
        ``< p``) and position ``p`` scores frame ``p - d_k`` (``<= p``), so a
        position ``p < shared_frames`` reads and scores only shared frames: the
        transformer's states there, and the losses, are the same for a clean
        sequence and all its variants (``p = shared_frames`` already scores a
        differing frame of codebook 0). One position of margin is kept: with
        ``split = shared_frames - 1``, each clean sequence runs in full once,
        and its self-attention keys and values at positions ``< split`` are
        kept; each variant then runs only positions ``>= split``, attending to
        those keys and values and to its own (PyTorch's fused attention with an
        offset causal mask, positions continued through the transformer's
        streaming offsets). Frame ``t`` of codebook ``k`` (position ``t + d_k``)
        takes its value from the clean pass when ``t + d_k < split`` and from
        the continuation otherwise, so the result equals full scoring up to
        float rounding while the variants' prefixes (transformer and output
        heads) are never computed. Conditions prepended to the sequence (a
        melody model's chroma and text) are part of the shared prefix: their
        keys and values are kept with it and the variants attend to them
        without running them again (positions continue after them).

        The LM is left as found (no streaming state, no hook, its own
        attention). Falls back to full scoring when the LM is not covered (see
        :meth:`_plain_delays` and :func:`.prefix.continuable_attentions`) or is
        already streaming. Each call makes one clean pass and
        ``ceil(B * P / batch_size)`` continuation passes, whatever the data.

        Args:
            codes: ``[B, K, T]`` clean codes.
            variants: ``[B, P, K, T]``; ``variants[b, p, :, :shared_frames] == codes[b, :, :shared_frames]``.
            descriptions: one text per clean sequence, or ``None``.
            shared_frames: frames every variant shares with its clean sequence.
            batch_size: most variant rows per continuation pass (``None``: all at once).

        Returns:
            ``(nll, mask)``, both ``[B, 1 + P, K, T]`` (index 0: clean).
        """
        self._require_loaded()
        self._check_codes(codes)
        B, P, K, T = variants.shape
        if codes.shape != (B, K, T):
            raise NoiseProbeError(
                f"Expected argument `variants` of shape [{codes.shape[0]}, P, {codes.shape[1]}, "
                f"{codes.shape[2]}] (P variants of each clean sequence) but got {tuple(variants.shape)}."
            )
        lm = self.lm
        delays = self._plain_delays()
        attentions = continuable_attentions(self.lm)
        # One position of margin; keep at least one position to continue with. With
        # nothing shared (split 0) the variants still run as a continuation, so the
        # passes made never depend on the data (sharded models gather per pass).
        split = max(0, min(int(shared_frames) - 1, T - 1))
        if delays is None or attentions is None or lm._is_streaming or P == 0:
            return super().token_nll_shared_prefix(
                codes, variants, descriptions, shared_frames=0, batch_size=batch_size
            )
        device = self.device
        codes = codes.to(device, torch.long)
        rows = variants.to(device, torch.long).reshape(B * P, K, T)
        owner = torch.arange(B, device=device).repeat_interleave(P)  # clean sequence of each row
        size = rows.shape[0] if batch_size is None else max(1, int(batch_size))
        past: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        prepend = set(lm.fuser.fuse2cond.get("prepend", []))

        with outside_inference_mode():
            condition_tensors = self._condition_tensors(B, descriptions)
            # positions the prepended conditions take before the sequence, kept with the prefix
            kept = split + sum(
                int(pair[0].shape[1]) for name, pair in condition_tensors.items() if name in prepend
            )

            def keep_prefix_keys_values(module: Any, args: tuple[Any, ...]) -> None:
                # inside the layer's forward, where a sharded (FSDP) layer has its weights
                past[module] = self_attention_keys_values(module, args[0][:, :kept])

            hooks = [m.register_forward_pre_hook(keep_prefix_keys_values) for m in attentions]
            try:
                clean_nll = self._nll_at_positions(
                    self._delayed_sequence(codes, delays), codes, condition_tensors, delays, 0
                )
            finally:
                for hook in hooks:
                    hook.remove()
            # what the variants share: frames scored before position `split`
            limit = torch.tensor([split - d for d in delays], device=device)
            before = torch.arange(T, device=device) < limit[:, None]  # [K, T]
            prefix_nll = clean_nll * before
            sequence = self._delayed_sequence(rows, delays)[..., split:]
            parts: list[torch.Tensor] = []
            for i in range(0, rows.shape[0], size):
                index = owner[i : i + size]
                conditions = {  # the prepended ones are in `past` already
                    name: tuple(t.index_select(0, index) for t in pair)
                    for name, pair in condition_tensors.items()
                    if name not in prepend
                }
                with continuing(lm.transformer, past, index, kept):
                    suffix_nll = self._nll_at_positions(
                        sequence[i : i + size], rows[i : i + size], conditions, delays, split
                    )
                # disjoint frames, zero elsewhere: the sum is exact
                parts.append(prefix_nll.index_select(0, index) + suffix_nll)
        nll = torch.cat([clean_nll[:, None], torch.cat(parts).reshape(B, P, K, T)], dim=1)
        mask = self._delay_mask(B * (1 + P), T, delays).reshape(B, 1 + P, K, T)
        return nll, mask
