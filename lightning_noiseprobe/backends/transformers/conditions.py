"""What a transformers MusicGen decoder is conditioned on: text through cross-attention, or prepended.

Two kinds of model, told apart by their config's ``model_type``:

* ``musicgen`` (``MusicgenForConditionalGeneration``, mono or stereo): T5 states,
  projected by ``enc_to_dec_proj`` and zeroed at padding, feed the decoder's
  cross-attention with their padding mask.
* ``musicgen_melody`` (``MusicgenMelodyForConditionalGeneration``): a chroma melody
  condition and the T5 states are *prepended* to the sequence (``[melody, text, codes]``),
  all attended, as ``MusicgenMelodyForConditionalGeneration.forward`` does. The probe's
  melody is always the null one: transformers' default, a one-hot chroma at bin 0
  projected by ``audio_enc_to_dec_proj`` and repeated to ``chroma_length`` (235 frames
  for 30 s) rows, which is exactly what audiocraft's ``ChromaStemConditioner`` makes of
  the authors' empty one-sample ``self_wav`` (``losscal/loss_cal_mgen-melody.py`` in
  YoEv/noiseloss); no description is one zero row (T5's ``""`` is one ``</s>`` token,
  masked), as transformers' ``MusicgenMelodyProcessor.get_unconditional_inputs`` and
  audiocraft's null ``T5Conditioner`` give.

transformers is never imported here: the model passed in brings its modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError

__all__ = ["Conditions", "condition_states", "is_melody"]


def is_melody(model: Any) -> bool:
    """Whether ``model`` (a composite MusicGen or its config) prepends its conditions (``musicgen_melody``)."""
    config = getattr(model, "config", model)
    return getattr(config, "model_type", None) == "musicgen_melody"


@dataclass(frozen=True)
class Conditions:
    """The condition states of a batch, in the decoder's width and dtype.

    Attributes:
        states: ``[B, L, dim]``.
        mask: ``[B, L]`` 0/1 cross-attention mask, or ``None`` when ``states`` are
            prepended to the sequence (all ``L`` rows attended, at positions ``0 .. L - 1``).
    """

    states: torch.Tensor
    mask: torch.Tensor | None

    @property
    def prepended(self) -> bool:
        """Whether the states are prepended to the sequence (melody) rather than cross-attended."""
        return self.mask is None

    @property
    def prefix_length(self) -> int:
        """Positions the states take before the first code (0 for cross-attention)."""
        return int(self.states.shape[1]) if self.prepended else 0

    def rows(self, index: torch.Tensor) -> Conditions:
        """The conditions of batch items ``index`` (a 1-D long tensor)."""
        mask = None if self.mask is None else self.mask.index_select(0, index)
        return Conditions(self.states.index_select(0, index), mask)


def _check_descriptions(descriptions: Sequence[str | None] | None, batch: int) -> list[str | None]:
    if descriptions is None:
        return [None] * batch
    if isinstance(descriptions, str) or len(descriptions) != batch:
        raise NoiseProbeError(
            f"Expected argument `descriptions` to be a sequence of {batch} texts or None "
            f"(one per item) but got {descriptions!r}."
        )
    return list(descriptions)


def condition_states(
    model: Any,
    tokenizer: Any,
    descriptions: Sequence[str | None] | None,
    batch: int,
    source: str,
) -> Conditions:
    """The :class:`Conditions` of ``batch`` items described by ``descriptions``.

    The frozen T5 encoder runs in eval mode without gradients; the projections
    (``enc_to_dec_proj``, and a melody model's ``audio_enc_to_dec_proj``) keep theirs,
    as they train. An unconditional item (``None``) of a cross-attending model
    attends to a single zero state, which is what audiocraft's null condition amounts
    to (the attention has no bias, so it adds exactly 0) and never leaves a row fully
    masked. For a melody model the rows of every item must have one length (prepended
    states set the positions of the codes): :func:`text_lengths` groups the items.

    Args:
        model: a ``MusicgenForConditionalGeneration`` or ``MusicgenMelodyForConditionalGeneration``.
        tokenizer: its text tokenizer, or ``None`` (then only ``None`` descriptions).
        descriptions: one text per item (``None`` = unconditional), or ``None`` for all.
        batch: the number of items.
        source: the model's name, for messages.

    Raises:
        NoiseProbeError: for descriptions that do not fit ``batch``, or texts without a tokenizer.
    """
    descriptions = _check_descriptions(descriptions, batch)
    decoder = model.decoder
    param = next(decoder.parameters())
    device, dtype = param.device, param.dtype
    dim = int(decoder.config.hidden_size)
    melody = is_melody(model)
    projects = model.text_encoder.config.hidden_size != dim and (
        melody or decoder.config.cross_attention_hidden_size is None
    )
    proj = model.enc_to_dec_proj if projects else None
    if all(text is None for text in descriptions):
        zeros = torch.zeros(batch, 1, dim, device=device, dtype=dtype)
        if proj is not None:  # touch the projection (times 0) so DDP sees it used in every step
            text_dim = int(model.text_encoder.config.hidden_size)
            null = torch.zeros(batch, 1, text_dim, device=device, dtype=proj.weight.dtype)
            zeros = zeros + 0.0 * proj(null).to(dtype)
        mask = torch.ones(batch, 1, device=device, dtype=torch.long)
        return _with_melody(model, zeros, batch) if melody else Conditions(zeros, mask)
    if tokenizer is None:
        raise NoiseProbeError(
            f"Expected no `descriptions` (or only None) for {source!r}, which has no "
            f"tokenizer files, but got {descriptions!r}. Save the tokenizer with "
            "the model (`tokenizer.save_pretrained(folder)`) to score with text."
        )
    texts = [text if text is not None else "" for text in descriptions]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    input_ids = tokens["input_ids"].to(device)
    mask = tokens["attention_mask"].to(device)
    text_encoder = model.text_encoder
    if text_encoder.training:
        text_encoder.eval()
    with torch.no_grad():
        hidden = text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
    if proj is not None:
        hidden = proj(hidden.to(proj.weight.dtype))
    hidden = hidden.to(dtype)
    uncond = torch.tensor([text is None for text in descriptions], device=device)
    mask = mask.masked_fill(uncond[:, None], 0)
    hidden = hidden * mask[..., None].to(dtype)  # zero at padding and for None items
    if melody:
        return _with_melody(model, hidden, batch)
    mask[:, 0] = mask[:, 0].masked_fill(uncond, 1)
    return Conditions(hidden, mask)


def text_lengths(
    tokenizer: Any, descriptions: Sequence[str | None] | None, batch: int
) -> list[int]:
    """Each item's number of text tokens (``None``: 1, the masked ``</s>`` of ``""``).

    A melody model prepends the text, so items whose texts differ in length are
    scored in separate passes (no padding between the melody, the text and the
    codes): each item's loss is then the one it gets alone, whatever the batch.
    """
    descriptions = _check_descriptions(descriptions, batch)
    if tokenizer is None or all(text is None for text in descriptions):
        return [1] * batch
    texts = [text if text is not None else "" for text in descriptions]
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


def _with_melody(model: Any, text: torch.Tensor, batch: int) -> Conditions:
    """``[null melody, text]`` prepended: the null chroma (one-hot at bin 0) projected,
    ``chroma_length`` rows, then ``text`` (``[B, L, dim]``)."""
    config = model.config
    chroma = torch.zeros(batch, 1, int(config.num_chroma), device=text.device, dtype=text.dtype)
    chroma[..., 0] = 1
    proj = getattr(model, "audio_enc_to_dec_proj", None)
    if proj is not None and int(config.num_chroma) != int(model.decoder.config.hidden_size):
        chroma = proj(chroma.to(proj.weight.dtype)).to(text.dtype)
    melody = chroma.expand(-1, int(config.chroma_length), -1)
    return Conditions(torch.cat([melody, text], dim=1), None)
