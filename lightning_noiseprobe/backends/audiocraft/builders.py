"""The tiny audiocraft MusicGens, built offline with audiocraft's own builders.

Three, named as the ``model`` argument takes them (:data:`TINY_MODELS`), each
with the interface of a hub model, about a million weights, seeded; for tests
and demos:

* ``"tiny"``: as ``facebook/musicgen-small`` (32 kHz mono, 50 Hz, 4 codebooks
  x 2048, delay pattern ``[0, 1, 2, 3]``, text through cross-attention).
* ``"tiny-stereo"``: as ``facebook/musicgen-stereo-small``: the mono EnCodec
  inside audiocraft's ``InterleaveStereoCompressionModel`` (left and right
  codes interleaved: 8 codebooks, delays ``[0, 0, 1, 1, 2, 2, 3, 3]``).
* ``"tiny-melody"``: as ``facebook/musicgen-melody``: a chroma melody
  condition (``ChromaStemConditioner``) and the description both *prepended*
  to the sequence, no cross-attention. Its stem separator (demucs) is built
  only when a melody is given (:mod:`.conditioners`).

audiocraft is imported inside the functions.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends._common import TINY_SIZES, init_codebooks_from_audio
from lightning_noiseprobe.backends.audiocraft.configs import (
    CHROMA2MUSIC,
    ENCODEC_32KHZ,
    LM_BASE,
    STEREO,
    TEXT2MUSIC,
    merge_config,
)

if TYPE_CHECKING:
    from audiocraft.models.musicgen import MusicGen

__all__ = [
    "RANDOM_T5_DEFAULTS",
    "TINY_DEFAULTS",
    "TINY_MODELS",
    "build_tiny_musicgen",
    "build_tiny_parts",
    "save_random_t5",
]


#: Size knobs of the tiny model, accepted by :func:`build_tiny_musicgen`.
TINY_DEFAULTS: dict[str, Any] = {
    "dim": TINY_SIZES["dim"],  # transformer width
    "num_heads": TINY_SIZES["num_heads"],
    "num_layers": TINY_SIZES["num_layers"],
    "lut_bins": 64,  # text-conditioning lookup-table size (noop tokenizer: one bin per text)
    "lut_dim": 16,
    "n_filters": TINY_SIZES["n_filters"],  # SEANet base width of the codec
    "codec_dim": TINY_SIZES["codec_dim"],  # codec latent dimension
    "segment_duration": 30,  # seconds, MusicGen's training segment (sets max generation length)
}

#: The tiny LM: `facebook/musicgen-small`'s config (``configs.LM_BASE`` with
#: ``configs.TEXT2MUSIC``) at the tiny sizes (the ``{size}`` entries, filled from
#: TINY_DEFAULTS), built on the CPU with no codec checkpoint, its T5 description replaced
#: by a LUT with the `noop` tokenizer (one token per text, no download; `whitespace` needs
#: a spaCy model); no `interleave_stereo_codebooks` or `compression_model_n_q` entry, as
#: the tiny exports have always been written.
_LM_CFG: dict[str, Any] = {
    key: value
    for key, value in merge_config(
        merge_config(LM_BASE, TEXT2MUSIC),
        {
            "device": "cpu",
            "compression_model_checkpoint": None,
            "transformer_lm": {
                "dim": "{dim}",
                "num_heads": "{num_heads}",
                "num_layers": "{num_layers}",
            },
            "dataset": {"segment_duration": "{segment_duration}"},
        },
    ).items()
    if key not in ("interleave_stereo_codebooks", "compression_model_n_q")
}
_LM_CFG["conditioners"] = {
    "description": {
        "model": "lut",
        "lut": {"n_bins": "{lut_bins}", "dim": "{lut_dim}", "tokenizer": "noop"},
    }
}

#: The EnCodec of every MusicGen (``configs.ENCODEC_32KHZ``: 32 kHz, hop 640, 4 x 2048
#: RVQ codebooks) at the tiny widths, built on the CPU, without k-means initialisation
#: (with it the codebooks stay zero until trained); no `no_quant` entry, as the tiny
#: exports have always been written.
_CODEC_CFG: dict[str, Any] = {
    key: value
    for key, value in merge_config(
        ENCODEC_32KHZ,
        {
            "device": "cpu",
            "seanet": {"dimension": "{codec_dim}", "n_filters": "{n_filters}"},
            "rvq": {"kmeans_init": False},
        },
    ).items()
    if key != "no_quant"
}


#: What `conditioner=chroma2music` (``configs.CHROMA2MUSIC``, the config of
#: `facebook/musicgen-melody`) changes: a chroma melody condition (`self_wav`) and the
#: description, both prepended to the sequence, nothing through cross-attention. The
#: description keeps the tiny LUT (T5 needs a download; see `tests/test_t5_offline.py`
#: for the real T5 path).
_MELODY_LM: dict[str, Any] = {
    **{key: value for key, value in CHROMA2MUSIC.items() if key != "conditioners"},
    "conditioners": {"self_wav": CHROMA2MUSIC["conditioners"]["self_wav"]},
}

_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "tiny-stereo": STEREO,  # as `facebook/musicgen-stereo-small`
    "tiny-melody": _MELODY_LM,
}

#: The tiny models' names (the ``model`` argument of the backend, the module and the CLI).
TINY_MODELS: tuple[str, ...] = tuple(_VARIANTS)


def _fill(template: Any, values: dict[str, Any]) -> Any:
    """Replace ``"{key}"`` strings in a nested config template by ``values[key]``."""
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    if isinstance(template, str) and template.startswith("{") and template.endswith("}"):
        return values[template[1:-1]]
    return template


def check_tiny_model(model: str) -> None:
    """Raise unless ``model`` is one of :data:`TINY_MODELS`."""
    if model not in _VARIANTS:
        raise NoiseProbeError(
            f"Expected a tiny model name among {list(TINY_MODELS)} but got {model!r}."
        )


def build_tiny_musicgen(seed: int = 0, model: str = "tiny", **overrides: Any) -> MusicGen:
    """Build a tiny, randomly initialised MusicGen offline (CPU, float32, eval mode).

    ``model="tiny"``: the shapes and interface of ``facebook/musicgen-small``
    (EnCodec 32 kHz mono, 50 Hz, 4 codebooks x 2048, delay pattern
    ``[0, 1, 2, 3]``, text conditioning through cross-attention) but about
    1.2 M LM weights (mostly the 2048-way embeddings and heads) and 0.25 M
    codec weights, built with ``audiocraft.models.builders``. Text goes through a ``lut`` conditioner with the ``noop`` tokenizer (one learned embedding per
    distinct text, hashed into ``lut_bins`` bins). The codec is random too,
    except that its RVQ codebooks are drawn from its own latents of varied
    synthetic audio (no k-means, no training), so the codes follow the audio
    (noise uses hundreds of distinct codes per codebook, not a handful).

    ``model="tiny-stereo"``: the same mono codec inside audiocraft's
    ``InterleaveStereoCompressionModel`` (32 kHz stereo, 8 codebooks, delays
    ``[0, 0, 1, 1, 2, 2, 3, 3]``), as ``facebook/musicgen-stereo-small``.
    ``model="tiny-melody"``: a ``ChromaStemConditioner`` melody condition and
    the description prepended to the sequence, as ``facebook/musicgen-melody``
    (no cross-attention; demucs is built only when a melody is given).

    The same ``seed``, ``model`` and ``overrides`` give bitwise identical
    weights; the global RNG state is left untouched.

    Args:
        seed: seed for the weight initialisation.
        model: one of :data:`TINY_MODELS`.
        **overrides: size knobs, any of :data:`TINY_DEFAULTS`.

    Returns:
        An ``audiocraft.models.musicgen.MusicGen``; its ``lm.cfg`` and
        ``compression_model.cfg`` (for stereo: the wrapped mono codec's) hold
        the configs used (for export).

    Raises:
        NoiseProbeError: on an unknown model or override.

    Example:
        >>> stereo = build_tiny_musicgen(seed=0, model="tiny-stereo")
        >>> stereo.audio_channels, stereo.lm.num_codebooks, list(stereo.lm.pattern_provider.delays)
        (2, 8, [0, 0, 1, 1, 2, 2, 3, 3])
    """
    from audiocraft.models.musicgen import MusicGen

    lm, codec = build_tiny_parts(seed, overrides, model)
    return MusicGen(model, codec, lm)  # puts both in eval mode, wraps a stereo codec


def build_tiny_parts(seed: int, overrides: dict[str, Any], model: str = "tiny") -> tuple[Any, Any]:
    """``(lm, codec)`` of :func:`build_tiny_musicgen` (CPU, float32), each carrying its ``cfg``.

    The codec is the mono EnCodec also for ``"tiny-stereo"``: ``MusicGen``
    wraps it from the LM's config, as for a hub stereo model.
    """
    check_tiny_model(model)
    unknown = sorted(set(overrides) - set(TINY_DEFAULTS))
    if unknown:
        raise NoiseProbeError(
            f"Expected tiny-model overrides among {sorted(TINY_DEFAULTS)} but got {unknown}."
        )
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from lightning_noiseprobe.backends.audiocraft.conditioners import (
        building_lms,
        prepare_as_get_pretrained,
    )

    values = {**TINY_DEFAULTS, **overrides}
    lm_cfg = OmegaConf.create(_fill(merge_config(_LM_CFG, _VARIANTS[model]), values))
    codec_cfg = OmegaConf.create(_fill(_CODEC_CFG, values))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), building_lms():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        torch.manual_seed(seed)
        lm = builders.get_lm_model(lm_cfg)
        codec: Any = builders.get_compression_model(codec_cfg)
    layers = codec.quantizer.vq.layers
    init_codebooks_from_audio(
        codec.encoder, layers, [layer._codebook for layer in layers], codec.sample_rate, seed
    )
    lm.cfg = lm_cfg  # as audiocraft's loaders do; MusicGen reads it
    codec.cfg = codec_cfg
    prepare_as_get_pretrained(lm)
    return lm, codec


#: Size of a random T5 encoder written by :func:`save_random_t5` (``d_model``
#: comes from the model's name: audiocraft's ``T5Conditioner.MODELS_DIMS``).
RANDOM_T5_DEFAULTS: dict[str, Any] = {
    "num_layers": 1,
    "num_heads": 2,
    "d_kv": 8,
    "d_ff": 32,
}

#: What the random T5's sentencepiece vocabulary is trained on (a piece per word, then characters).
_T5_TEXT = (
    "piano organ guitar violin drums bass choir voice chorale bach calm slow fast loud soft "
    "happy sad music song with and the a of in for"
)


def save_random_t5(
    cache_dir: str | os.PathLike[str], name: str = "t5-base", seed: int = 0, **config: Any
) -> Path:
    """Write a random T5 encoder and its tokenizer into a Hugging Face hub cache as ``name``.

    For offline tests and benchmarks of checkpoints whose config asks for a T5
    text conditioner (``t5-base`` in every released MusicGen): audiocraft's
    unchanged ``T5Conditioner`` then loads it with ``T5Tokenizer`` and
    ``T5EncoderModel.from_pretrained(name)`` from ``cache_dir`` given as
    ``HF_HUB_CACHE`` (with ``HF_HUB_OFFLINE=1``). The encoder has the width
    audiocraft expects for ``name`` (768 for ``t5-base``) and the small sizes
    of :data:`RANDOM_T5_DEFAULTS` unless ``config`` changes them (any
    ``T5Config`` field); the tokenizer is a sentencepiece unigram model
    trained on a few music words and the ASCII letters and digits (so any
    ASCII text tokenizes), with T5's special ids (0 pad, 1 ``</s>``, 2
    ``<unk>``) and 100 extra ids. Deterministic for a given ``seed``; the
    global RNG state is left untouched.

    Args:
        cache_dir: the hub cache folder (created if missing), as ``HF_HUB_CACHE``.
        name: the model id audiocraft will ask for (a key of ``T5Conditioner.MODELS_DIMS``).
        seed: seed of the encoder's weights.
        **config: ``T5Config`` fields overriding the small defaults.

    Returns:
        The snapshot folder written (``models--<name>/snapshots/<revision>``).
    """
    import hashlib
    import io
    import string

    import sentencepiece as spm
    from audiocraft.modules.conditioners import T5Conditioner
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    if name not in T5Conditioner.MODELS_DIMS:
        raise NoiseProbeError(
            f"Expected argument `name` among audiocraft's T5 models "
            f"{sorted(T5Conditioner.MODELS_DIMS)} but got {name!r}."
        )
    words = _T5_TEXT.split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines.append(string.ascii_letters + string.digits + string.punctuation)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=proto,
        model_type="unigram",
        vocab_size=120,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    repo = Path(cache_dir) / f"models--{name.replace('/', '--')}"
    revision = hashlib.sha1(f"{name} random {seed} {sorted(config.items())}".encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "spiece.model").write_bytes(proto.getvalue())
    tokenizer = T5Tokenizer(vocab_file=str(snapshot / "spiece.model"), extra_ids=100, legacy=True)
    tokenizer.save_pretrained(snapshot)
    sizes = {**RANDOM_T5_DEFAULTS, "d_model": T5Conditioner.MODELS_DIMS[name], **config}
    t5_config = T5Config(vocab_size=len(tokenizer), **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = T5EncoderModel(t5_config)
    encoder.save_pretrained(snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
