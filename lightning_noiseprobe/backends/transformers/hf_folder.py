"""The tiny transformers MusicGens as real Hugging Face folders (tokenizer, processor, configs).

transformers' ``MusicgenProcessor`` accepts only a T5 tokenizer, and a
folder needs the feature extractor's config for ``AutoProcessor``
(``preprocessor_config.json`` in transformers 4, nested in ``processor_config.json``
in 5: ``MusicgenProcessor.save_pretrained`` writes the installed one's). Everything
here is built offline: the tiny model's tokenizer is a ``T5TokenizerFast``
over a small Unigram vocabulary made with the ``tokenizers`` library (no
sentencepiece file, no download), and the feature extractor is an
``EncodecFeatureExtractor`` matching the codec. transformers is imported
only inside functions.
"""

from __future__ import annotations

import math
import os
import string
from typing import Any

__all__ = ["TINY_TEXT_VOCAB_SIZE", "processor_for", "save_hf_folder", "tiny_t5_tokenizer"]

#: Rows of the tiny T5's embedding table (that of the former ByT5 tokenizer, so
#: the seeded weights stay the same); the tokenizer uses the first ids.
TINY_TEXT_VOCAB_SIZE = 384

#: A few whole words a music description uses, beside single characters.
_WORDS = [
    "piano",
    "organ",
    "guitar",
    "violin",
    "drums",
    "bass",
    "choir",
    "voice",
    "chorale",
    "bach",
    "calm",
    "slow",
    "fast",
    "loud",
    "soft",
    "happy",
    "sad",
    "music",
    "song",
    "with",
    "and",
    "the",
    "a",
    "of",
    "in",
    "for",
]


def tiny_t5_tokenizer() -> Any:
    """A ``T5TokenizerFast`` over a tiny Unigram vocabulary, built offline and deterministically.

    Ids 0, 1, 2 are ``<pad>``, ``</s>``, ``<unk>`` (as T5's); then ``▁``-prefixed
    words, then single characters (so any ASCII text tokenizes without
    ``<unk>``). ``</s>`` is appended to every text, as T5 does.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    pieces = ["▁" + w for w in _WORDS] + ["▁"]
    pieces += [c for c in string.ascii_lowercase + string.ascii_uppercase + string.digits]
    pieces += ["▁" + c for c in string.ascii_lowercase]
    pieces += list(string.punctuation)
    # longer pieces are more likely: the Viterbi split prefers whole words
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, -10.0 / (1 + len(p)) - math.log(len(pieces))) for p in pieces]
    assert len(vocab) <= TINY_TEXT_VOCAB_SIZE
    tok = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(" {2,}", " "), normalizers.Strip(right=False)]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )


def processor_for(model: Any, tokenizer: Any) -> Any:
    """A ``MusicgenProcessor`` for ``model``'s codec, or ``None`` if ``tokenizer`` is not a T5 one.

    The feature extractor is an ``EncodecFeatureExtractor`` at the codec's
    rate, without chunking (as the codec's config), for audio of the decoder's
    channels (a stereo model takes 2-channel audio though its EnCodec is mono). A melody model
    gets a ``MusicgenMelodyProcessor``, whose ``MusicgenMelodyFeatureExtractor``
    (the melody's chroma) has the model's ``num_chroma`` and the codec's rate.
    """
    from transformers import (
        EncodecFeatureExtractor,
        MusicgenProcessor,
        T5Tokenizer,
        T5TokenizerFast,
    )
    from transformers.models.musicgen_melody.feature_extraction_musicgen_melody import (
        MusicgenMelodyFeatureExtractor,
    )
    from transformers.models.musicgen_melody.processing_musicgen_melody import (
        MusicgenMelodyProcessor,
    )

    if not isinstance(tokenizer, (T5Tokenizer, T5TokenizerFast)):
        return None
    codec = model.config.audio_encoder
    if model.config.model_type == "musicgen_melody":
        chroma = MusicgenMelodyFeatureExtractor(
            feature_size=int(model.config.num_chroma),
            num_chroma=int(model.config.num_chroma),
            sampling_rate=int(codec.sampling_rate),
        )
        return MusicgenMelodyProcessor(feature_extractor=chroma, tokenizer=tokenizer)
    features = EncodecFeatureExtractor(
        feature_size=int(model.config.decoder.audio_channels),
        sampling_rate=int(codec.sampling_rate),
        padding_value=0.0,
        chunk_length_s=codec.chunk_length_s,
        overlap=codec.overlap,
    )
    return MusicgenProcessor(feature_extractor=features, tokenizer=tokenizer)


def save_hf_folder(model: Any, tokenizer: Any, tmp: str | os.PathLike[str], final: str) -> None:
    """Write ``model`` (and tokenizer, processor) with ``save_pretrained`` into ``tmp``.

    ``config.audio_encoder._name_or_path`` names ``final`` (the folder the
    save ends up in, which holds the codec's feature extractor config) instead
    of staying empty, so code that loads the feature extractor from it works.
    """
    codec_config = model.config.audio_encoder
    before = codec_config._name_or_path
    if not before:
        codec_config._name_or_path = str(final)
    try:
        model.save_pretrained(tmp)
    finally:
        codec_config._name_or_path = before
    if tokenizer is None:
        return
    _drop_call_padding(tokenizer)
    processor = processor_for(model, tokenizer)
    if processor is not None:
        processor.save_pretrained(tmp)  # tokenizer files + the feature extractor's config
    else:
        tokenizer.save_pretrained(tmp)


def _drop_call_padding(tokenizer: Any) -> None:
    """Forget the padding a ``tokenizer(..., padding=True)`` call left on a fast tokenizer.

    The Rust tokenizer keeps the last call's padding, ``save_pretrained`` writes
    it into ``tokenizer.json``, and a tokenizer loaded from there carries
    ``pad_to_multiple_of`` in its init kwargs, which ``MusicgenProcessor`` passes on
    to ``EncodecFeatureExtractor`` (``TypeError`` for ``processor(audio=..., text=...)``).
    Harmless to the live tokenizer: every call sets its own padding again.
    """
    backend: Any = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and getattr(backend, "padding", None) is not None:
        backend.no_padding()
