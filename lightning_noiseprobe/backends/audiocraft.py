"""The audiocraft backend: MusicGen as trained and released by Meta.

Three sources, picked by ``model``:

* ``"tiny"``: a tiny MusicGen with MusicGen's real interface (32 kHz mono,
  50 Hz, 4 codebooks x 2048, delay pattern ``[0, 1, 2, 3]``) built offline
  from audiocraft's own builders, seeded. For tests and demos; no download.
* a local folder holding ``state_dict.bin`` and ``compression_state_dict.bin``
  in audiocraft's export format (see :func:`save_audiocraft_export`).
* a Hugging Face hub id such as ``facebook/musicgen-small``.

audiocraft is imported only inside functions, so importing this module (which
registers the backend) stays cheap.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends.base import ProbeBackend, register_backend

if TYPE_CHECKING:
    from audiocraft.models.musicgen import MusicGen

__all__ = [
    "EXPORT_FILES",
    "TINY_DEFAULTS",
    "AudiocraftBackend",
    "build_tiny_musicgen",
    "save_audiocraft_export",
]

#: The two files of an audiocraft export folder (LM, then codec).
EXPORT_FILES = ("state_dict.bin", "compression_state_dict.bin")

#: Rows (positions x batch) per output-head + cross-entropy chunk when scoring.
#: On CPU a chunk's float32 logits (1024 x 2048 x 4 B = 8 MiB) stay in cache: heads
#: + cross-entropy for a batch of 8 x 750 positions ran 1.9x faster than unchunked
#: on the 2-core benchmark machine. Accelerators take larger chunks (fewer launches).
_HEAD_ROWS_CPU = 1024
_HEAD_ROWS_ACCELERATOR = 16384

#: Size knobs of the tiny model, accepted by :func:`build_tiny_musicgen`.
TINY_DEFAULTS: dict[str, Any] = {
    "dim": 64,  # transformer width
    "num_heads": 4,
    "num_layers": 2,
    "lut_bins": 64,  # text-conditioning lookup-table size (noop tokenizer: one bin per text)
    "lut_dim": 16,
    "n_filters": 4,  # SEANet base width of the codec
    "codec_dim": 32,  # codec latent dimension
    "segment_duration": 30,  # seconds, MusicGen's training segment (sets max generation length)
}

# The parts of audiocraft's composed Hydra configs that its builders and loaders
# read. The audiocraft wheel does not ship its `config/` folder, so these are
# copied from `solver=musicgen/musicgen_base_32khz model/lm/model_scale=xsmall`
# and `solver=compression/encodec_musicgen_32khz` (audiocraft 1.3.0), with the
# T5 conditioner replaced by a LUT and the `{size}` entries filled in from
# TINY_DEFAULTS.
_LM_CFG: dict[str, Any] = {
    "device": "cpu",
    "dtype": "float32",
    "sample_rate": 32000,
    "channels": 1,
    "compression_model_checkpoint": None,
    "lm_model": "transformer_lm",
    "transformer_lm": {
        "dim": "{dim}",
        "num_heads": "{num_heads}",
        "num_layers": "{num_layers}",
        "hidden_scale": 4,
        "n_q": 4,
        "card": 2048,
        "dropout": 0.0,
        "emb_lr": None,
        "activation": "gelu",
        "norm_first": True,
        "bias_ff": False,
        "bias_attn": False,
        "bias_proj": False,
        "past_context": None,
        "causal": True,
        "custom": False,
        "memory_efficient": True,
        "attention_as_float32": False,
        "layer_scale": None,
        "positional_embedding": "sin",
        "xpos": False,
        "checkpointing": "none",
        "weight_init": "gaussian",
        "depthwise_init": "current",
        "zero_bias_init": True,
        "norm": "layer_norm",
        "cross_attention": False,
        "qk_layer_norm": False,
        "qk_layer_norm_cross": False,
        "attention_dropout": None,
        "kv_repeat": 1,
        "two_step_cfg": False,
    },
    "codebooks_pattern": {
        "modeling": "delay",
        "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0},
    },
    "attribute_dropout": {},
    "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
    "fuser": {
        "cross_attention_pos_emb": False,
        "cross_attention_pos_emb_scale": 1,
        "sum": [],
        "prepend": [],
        "cross": ["description"],
        "input_interpolate": [],
    },
    "conditioners": {
        "description": {
            "model": "lut",
            # `noop`: one token per text, no download (`whitespace` needs a spaCy model).
            "lut": {"n_bins": "{lut_bins}", "dim": "{lut_dim}", "tokenizer": "noop"},
        }
    },
    "dataset": {"segment_duration": "{segment_duration}"},
}

_CODEC_CFG: dict[str, Any] = {
    "device": "cpu",
    "dtype": "float32",
    "sample_rate": 32000,
    "channels": 1,
    "compression_model": "encodec",
    "encodec": {
        "autoencoder": "seanet",
        "quantizer": "rvq",
        "sample_rate": 32000,
        "channels": 1,
        "causal": False,
        "renormalize": False,
    },
    "seanet": {
        "dimension": "{codec_dim}",
        "channels": 1,
        "causal": False,
        "n_filters": "{n_filters}",
        "n_residual_layers": 1,
        "ratios": [8, 5, 4, 4],  # hop 640: 50 Hz at 32 kHz
        "activation": "ELU",
        "activation_params": {"alpha": 1.0},
        "norm": "weight_norm",
        "norm_params": {},
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 7,
        "dilation_base": 2,
        "pad_mode": "constant",
        "true_skip": True,
        "compress": 2,
        "lstm": 2,
        "disable_norm_outer_blocks": 0,
        "decoder": {
            "trim_right_ratio": 1.0,
            "final_activation": None,
            "final_activation_params": None,
        },
        "encoder": {},
    },
    "rvq": {
        "n_q": 4,
        "q_dropout": False,
        "bins": 2048,
        "decay": 0.99,
        "kmeans_init": False,  # with k-means init the codebooks stay zero until trained
        "kmeans_iters": 50,
        "threshold_ema_dead_code": 2,
        "orthogonal_reg_weight": 0.0,
        "orthogonal_reg_active_codes_only": False,
    },
}

_HUB_SHORT_NAMES = {
    "small": "facebook/musicgen-small",
    "medium": "facebook/musicgen-medium",
    "large": "facebook/musicgen-large",
    "melody": "facebook/musicgen-melody",
}


def _fill(template: Any, values: dict[str, Any]) -> Any:
    """Replace ``"{key}"`` strings in a nested config template by ``values[key]``."""
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    if isinstance(template, str) and template.startswith("{") and template.endswith("}"):
        return values[template[1:-1]]
    return template


def build_tiny_musicgen(seed: int = 0, **overrides: Any) -> MusicGen:
    """Build a tiny, randomly initialised MusicGen offline (CPU, float32, eval mode).

    Same shapes and interface as ``facebook/musicgen-small`` (EnCodec 32 kHz
    mono, 50 Hz, 4 codebooks x 2048, delay pattern ``[0, 1, 2, 3]``, text
    conditioning through cross-attention) but about 1.2 M LM weights (mostly
    the 2048-way embeddings and heads) and 0.25 M codec weights, built with ``audiocraft.models.builders``. Text goes through a
    ``lut`` conditioner with the ``noop`` tokenizer (one learned embedding per
    distinct text, hashed into ``lut_bins`` bins). The codec is random too,
    except that its RVQ codebooks are drawn from its own latents of varied
    synthetic audio (no k-means, no training), so the codes follow the audio
    (noise uses hundreds of distinct codes per codebook, not a handful).

    The same ``seed`` and ``overrides`` give bitwise identical weights; the
    global RNG state is left untouched.

    Args:
        seed: seed for the weight initialisation.
        **overrides: size knobs, any of :data:`TINY_DEFAULTS`.

    Returns:
        An ``audiocraft.models.musicgen.MusicGen``; its ``lm.cfg`` and
        ``compression_model.cfg`` hold the configs used (for export).

    Raises:
        NoiseProbeError: on an unknown override.
    """
    unknown = sorted(set(overrides) - set(TINY_DEFAULTS))
    if unknown:
        raise NoiseProbeError(
            f"Expected tiny-model overrides among {sorted(TINY_DEFAULTS)} but got {unknown}."
        )
    from audiocraft.models.musicgen import MusicGen

    lm, codec = _build_tiny_parts(seed, overrides)
    return MusicGen("tiny", codec, lm)  # puts both in eval mode


def _build_tiny_parts(seed: int, overrides: dict[str, Any]) -> tuple[Any, Any]:
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    values = {**TINY_DEFAULTS, **overrides}
    lm_cfg = OmegaConf.create(_fill(_LM_CFG, values))
    codec_cfg = OmegaConf.create(_fill(_CODEC_CFG, values))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        torch.manual_seed(seed)
        lm = builders.get_lm_model(lm_cfg)
        codec = builders.get_compression_model(codec_cfg)
    _init_codebooks_from_audio(codec, seed)
    lm.cfg = lm_cfg  # as audiocraft's loaders do; MusicGen reads it
    codec.cfg = codec_cfg
    return lm, codec


def _calibration_audio(
    clips: int, samples: int, sample_rate: int, g: torch.Generator
) -> torch.Tensor:
    """``[clips, 1, samples]`` of varied audio: coloured noise at random levels plus a sine."""
    freqs = torch.fft.rfftfreq(samples, d=1.0 / sample_rate).clamp_min(20.0)
    colour = torch.rand(clips, 1, generator=g) * 2.0  # 0 white, 1 pink, 2 brown
    spectrum = torch.randn(clips, freqs.numel(), dtype=torch.complex64, generator=g)
    noise = torch.fft.irfft(spectrum * freqs.pow(-colour / 2), n=samples)
    noise = noise / noise.pow(2).mean(-1, keepdim=True).sqrt()
    gain = 10 ** (torch.rand(clips, 1, generator=g) * 2.5 - 2.8)  # about -56 to -6 dBFS
    tone_freq = 10 ** (torch.rand(clips, 1, generator=g) * 2.0 + 1.7)  # 50 Hz to 5 kHz
    tone_amp = torch.rand(clips, 1, generator=g) * gain * 2
    t = torch.arange(samples) / sample_rate
    tone = tone_amp * torch.sin(2 * torch.pi * tone_freq * t)
    return (gain * noise + tone).unsqueeze(1)


def _init_codebooks_from_audio(
    codec: Any, seed: int, clips: int = 16, seconds: float = 1.5
) -> None:
    """Set each RVQ codebook to (jittered) residual latents of varied audio.

    Random (kaiming) codebooks are 4x larger than the tiny encoder's latents,
    so nearly every frame would map to the few smallest codewords and the
    codes would hardly depend on the audio. This is the first step of
    audiocraft's k-means initialisation (sample the data), without its
    iterations; deterministic for a given ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    wav = _calibration_audio(clips, int(seconds * codec.sample_rate), codec.sample_rate, g)
    with torch.no_grad():
        residual = codec.encoder(wav)  # [B, D, T]
        for layer in codec.quantizer.vq.layers:
            codebook = layer._codebook
            bins, dim = codebook.embed.shape
            frames = residual.transpose(1, 2).reshape(-1, dim)
            pick = torch.randint(frames.shape[0], (bins,), generator=g)
            jitter = 0.1 * frames.std(0) * torch.randn(bins, dim, generator=g)
            embed = frames[pick] + jitter
            codebook.embed.copy_(embed)
            codebook.embed_avg.copy_(embed)
            residual = residual - layer.decode(layer.encode(residual))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    from lightning_noiseprobe._io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_audiocraft_export(
    musicgen: Any, folder: str | os.PathLike[str], codec_file: str | os.PathLike[str] | None = None
) -> Path:
    """Write a MusicGen as an audiocraft export folder.

    Writes ``state_dict.bin`` (LM) and ``compression_state_dict.bin`` (codec),
    each ``{'xp.cfg': <YAML string>, 'best_state': state_dict, 'version',
    'exported': True}`` as ``audiocraft.utils.export`` does, so that
    ``MusicGen.get_pretrained(folder)`` and ``AudiocraftBackend(model=folder)``
    load it, with torch's safe ``weights_only=True`` loading. Each file is
    written to a temporary file and moved into place.

    Args:
        musicgen: an ``audiocraft`` ``MusicGen`` (or anything with ``.lm`` and
            ``.compression_model``) whose LM and codec carry their config as
            ``.cfg`` (true for :func:`build_tiny_musicgen`; for the LM also
            for audiocraft's loaders).
        folder: output folder, created if missing.
        codec_file: an existing ``compression_state_dict.bin`` to copy instead of
            serialising the codec (the codec is frozen during fine-tuning; models
            loaded from a folder or the hub keep no codec config to re-serialise).

    Returns:
        The folder, as a :class:`~pathlib.Path`.

    Raises:
        NoiseProbeError: if the LM or codec has no ``cfg``.
    """
    import shutil

    import audiocraft
    from omegaconf import OmegaConf

    folder = Path(folder)
    parts = {EXPORT_FILES[0]: musicgen.lm}
    if codec_file is None:
        parts[EXPORT_FILES[1]] = musicgen.compression_model
    packages = {}
    for filename, module in parts.items():
        cfg = getattr(module, "cfg", None)
        if cfg is None:
            raise NoiseProbeError(
                f"Expected the module for `{filename}` ({type(module).__name__}) to carry its "
                "audiocraft config as `.cfg` but it has none; only models built by "
                "`build_tiny_musicgen` or loaded by audiocraft's loaders can be exported."
            )
        state = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
        packages[filename] = {
            "xp.cfg": OmegaConf.to_yaml(cfg),
            "best_state": state,
            "version": audiocraft.__version__,
            "exported": True,
        }
    folder.mkdir(parents=True, exist_ok=True)
    for filename, package in packages.items():
        _atomic_torch_save(package, folder / filename)
    if (
        codec_file is not None
        and Path(codec_file).resolve() != (folder / EXPORT_FILES[1]).resolve()
    ):
        from lightning_noiseprobe._io import atomic_path

        with atomic_path(folder / EXPORT_FILES[1]) as tmp:
            shutil.copyfile(codec_file, tmp)
    return folder


@contextlib.contextmanager
def _outside_inference_mode() -> Iterator[None]:
    """Run under ``no_grad`` instead of ``inference_mode``.

    audiocraft caches the delay pattern's index tensors (``functools.lru_cache``
    in ``codebooks_patterns.py``). Built under ``inference_mode`` (as in
    ``trainer.validate()``), they are inference tensors, and a later training
    step at the same length fails with "Inference tensors cannot be saved for
    backward". Leaving inference mode keeps every cached tensor usable.
    """
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False), torch.no_grad():
            yield
    else:
        yield


def _hf_offline() -> bool:
    """Whether the hub must not be contacted (read at call time, unlike huggingface_hub)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return os.environ.get("AUDIOCRAFT_CACHE_DIR") or constants.HF_HUB_CACHE


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith((".", "/", "~", "\\"))
        or model.count("/") > 1
        or model.endswith((".bin", ".th", ".pt"))
        or (os.sep != "/" and os.sep in model)
    )


#: How ``torch.save``'s legacy (pre-zip) format begins: pickle protocol 2, then its magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _one_line(text: str, limit: int = 240) -> str:
    """``text`` on one line (whitespace runs collapsed, no final period), at most ``limit`` characters."""
    text = " ".join(text.split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _export_file_message(path: Path, problem: str) -> str:
    return (
        f"Expected '{path}' to be an audiocraft export file (torch.save of a dict with "
        f"'xp.cfg', a YAML string, and 'best_state', the weights) but {problem}. "
        "Re-export the model from a trusted environment with `save_audiocraft_export` or "
        "`audiocraft.utils.export`, or download it again."
    )


def _export_file_problem(path: Path) -> str | None:
    """What is wrong with one export file, or ``None`` if audiocraft's loader may try it.

    Checks what can be checked without audiocraft and without reading the
    weights (``torch.load`` with ``mmap=True``): the file is not empty, is a
    complete torch archive, loads with ``weights_only=True`` (no pickled code),
    holds ``xp.cfg`` as valid YAML and ``best_state`` as a dict of tensors.
    """
    import re
    import zipfile

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
        is_zip = zipfile.is_zipfile(path)
    except OSError as err:
        return f"it cannot be read ({type(err).__name__}: {_one_line(str(err))})"
    if size == 0:
        return "it is empty (0 bytes)"
    if not is_zip and head.startswith(b"PK"):
        return f"it is truncated or damaged: a zip archive of {size} bytes without its end record"
    if not is_zip and not head.startswith(_TORCH_LEGACY_MAGIC):
        return (
            f"it is not a torch file at all ({size} bytes starting with {head[:8].hex(' ')}, "
            "neither a zip archive nor torch's legacy format)"
        )
    try:
        package = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        # torch names the refused object: "Unsupported global: GLOBAL a.b" or "unsupported GLOBAL a.b"
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (`{refused.group(1)}`)" if refused else ""
        return (
            f"it holds pickled Python objects{what} that torch's safe `weights_only=True` "
            "loading refuses to run (an old export's `xp.cfg` is a pickled OmegaConf "
            "object; a hostile file may run code)"
        )
    except Exception as err:  # damaged archive members, unknown formats
        return f"torch.load cannot read it ({type(err).__name__}: {_one_line(str(err))})"
    if not isinstance(package, dict):
        return f"it holds a {type(package).__name__}, not a dict"
    if "pretrained" in package:  # a codec file naming a pretrained codec (audiocraft's format)
        return None
    missing = [key for key in ("xp.cfg", "best_state") if key not in package]
    if missing:
        return f"it has no {' or '.join(map(repr, missing))} entry (its keys: {sorted(map(str, package))})"
    cfg = package["xp.cfg"]
    if isinstance(cfg, str):
        from omegaconf import DictConfig, OmegaConf

        try:
            parsed = OmegaConf.create(cfg)  # what audiocraft's loaders do
        except Exception as err:
            return f"its 'xp.cfg' is not valid YAML ({type(err).__name__}: {_one_line(str(err))})"
        if not isinstance(parsed, DictConfig):
            return f"its 'xp.cfg' is YAML for a {type(parsed).__name__}, not a mapping of settings"
    elif not isinstance(cfg, dict):
        return f"its 'xp.cfg' is a {type(cfg).__name__}, not a YAML string"
    state = package["best_state"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "its 'best_state' is not a dict of tensors"
    return None


def _load_failure(err: BaseException) -> str:
    """The problem, in words, behind an exception of audiocraft's loader on a checked file."""
    text = str(err)
    if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in text:
        details = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        first = _one_line(details[0]) if details else ""
        more = f" and {len(details) - 1} more" if len(details) > 1 else ""
        return f"its 'best_state' does not fit the model its 'xp.cfg' describes ({first}{more})"
    return (
        f"audiocraft cannot build the model its 'xp.cfg' describes "
        f"({type(err).__name__}: {_one_line(str(err))})"
    )


@register_backend("audiocraft")
class AudiocraftBackend(ProbeBackend):
    """MusicGen through audiocraft: frozen EnCodec plus the LM that fine-tunes.

    The constructor only records its arguments; :meth:`load` imports
    audiocraft and builds or loads the weights.

    Loading from a folder or the hub goes through audiocraft's loaders with
    torch's default ``weights_only=True`` (torch >= 2.6): this backend never
    passes ``weights_only=False`` for files it did not write, because that
    would let a checkpoint run arbitrary code. Exports whose ``xp.cfg`` is a
    YAML string (``audiocraft.utils.export``, :func:`save_audiocraft_export`,
    the official hub checkpoints) load safely; files with a pickled OmegaConf
    config are refused with a message asking to re-export them.

    The LM is kept in ``dtype`` (float32 by default, also on CUDA, where
    audiocraft's own loader would cast it to float16 and make fine-tuning
    lossy). The codec is frozen: eval mode and ``requires_grad=False``.
    After :meth:`load` the LM is in eval mode; afterwards its train/eval mode
    belongs to the caller.

    Args:
        model: ``"tiny"``, a local export folder, or a hub id
            (``"facebook/musicgen-small"``; ``"small"``, ``"medium"``,
            ``"large"``, ``"melody"`` are short for the ``facebook/`` ones).
        device: device for the LM and the codec.
        dtype: floating dtype of the LM (the codec stays float32).
        seed: weight seed of the tiny model (ignored otherwise).
        tiny_config: size overrides of the tiny model, keys from
            :data:`TINY_DEFAULTS` (ignored otherwise).

    Example:
        >>> backend = AudiocraftBackend(model="tiny")  # cheap: nothing is built yet
        >>> backend.describe()["model"]
        'tiny'
    """

    name = "audiocraft"

    def __init__(
        self,
        model: str = "tiny",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        tiny_config: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model):
            raise NoiseProbeError(
                f"Expected argument `model` to be 'tiny', a folder or a hub id but got {model!r}."
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise NoiseProbeError(
                f"Expected argument `dtype` to be a floating torch.dtype but got {dtype!r}."
            )
        tiny_config = dict(tiny_config or {})
        unknown = sorted(set(tiny_config) - set(TINY_DEFAULTS))
        if unknown:
            raise NoiseProbeError(
                f"Expected keys of argument `tiny_config` among {sorted(TINY_DEFAULTS)} "
                f"but got {unknown}."
            )
        self.model = str(model)
        self._device = torch.device(device)
        self.dtype = dtype
        self.seed = int(seed)
        self.tiny_config = tiny_config
        self._musicgen: MusicGen | None = None
        #: The codec file a pretrained model was loaded from (``None`` for tiny).
        #: The codec is frozen, so exporting a fine-tune copies this file as is.
        self.codec_source: Path | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, device={str(self.device)!r}, "
            f"dtype={self.dtype}, loaded={self._musicgen is not None})"
        )

    # -- lifecycle ----------------------------------------------------------
    def load(self) -> AudiocraftBackend:
        """Build (``"tiny"``) or load the weights. Idempotent. Returns ``self``.

        Raises:
            NoiseProbeError: if a folder lacks the export files, a file is
                damaged (empty, truncated, not a torch file, no or invalid
                ``xp.cfg``, weights that do not fit its config) or holds pickled
                objects, or a hub id cannot be reached. The message names the file.
        """
        if self._musicgen is not None:
            return self
        if self.model == "tiny":
            name = "tiny"
            lm, codec = _build_tiny_parts(self.seed, self.tiny_config)
        else:
            name, lm, codec = self._load_pretrained()
        from audiocraft.models.musicgen import MusicGen

        lm = lm.to(device=self._device, dtype=self.dtype).eval()
        codec = codec.to(self._device).eval()
        codec.requires_grad_(False)
        if lm.condition_provider.has_joint_embed_conditions:
            raise NoiseProbeError(
                f"Expected a MusicGen conditioned on text (and melody) but {self.model!r} uses "
                f"joint-embedding conditions {lm.condition_provider.joint_embed_conditions}, "
                "which this backend does not support."
            )
        # Wrapped after the move, so that its `device` and autocast follow the LM.
        self._musicgen = MusicGen(name, codec, lm)
        return self

    def _load_pretrained(self) -> tuple[str, Any, Any]:
        """Load ``(name, lm, codec)`` on CPU in float32 from a folder or the hub.

        Each export file is checked first (:func:`_export_file_problem`, without
        importing audiocraft), then loaded by audiocraft's own loaders; any
        failure becomes one :class:`NoiseProbeError` naming the file and the problem.
        """
        model = self.model
        if os.path.isdir(model):
            folder = model
            missing = [f for f in EXPORT_FILES if not os.path.isfile(os.path.join(folder, f))]
            if missing:
                raise NoiseProbeError(
                    f"Expected the model folder {folder!r} to hold an audiocraft export "
                    f"({EXPORT_FILES[0]!r} and {EXPORT_FILES[1]!r}) but {missing} "
                    "is missing. Write one with `save_audiocraft_export` or "
                    "`audiocraft.utils.export`."
                )
            source = f"folder {folder!r}"
        elif os.path.exists(model) or _looks_like_path(model):
            raise NoiseProbeError(
                f"Expected argument `model` to be 'tiny', an existing folder holding "
                f"{EXPORT_FILES[0]!r} and {EXPORT_FILES[1]!r}, or a hub id, but {model!r} "
                "is not a folder."
            )
        else:
            model = _HUB_SHORT_NAMES.get(model, model)
            folder = self._download_from_hub(model)
            source = f"hub id {model!r}"
        lm_file, codec_file = (Path(folder) / f for f in EXPORT_FILES)
        for path in (lm_file, codec_file):
            problem = _export_file_problem(path)
            if problem is not None:
                raise NoiseProbeError(_export_file_message(path, problem))

        from audiocraft.models import loaders

        # Both loaders use torch.load's default weights_only=True (torch >= 2.6).
        try:
            lm = loaders.load_lm_model(folder, device="cpu")  # float32 on CPU
        except Exception as err:
            raise NoiseProbeError(_export_file_message(lm_file, _load_failure(err))) from err
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
                codec = loaders.load_compression_model(folder, device="cpu")
        except OSError as err:  # the codec may point at another hub model ('pretrained')
            raise NoiseProbeError(self._hub_message(source, err)) from err
        except Exception as err:
            raise NoiseProbeError(_export_file_message(codec_file, _load_failure(err))) from err
        if "self_wav" in lm.condition_provider.conditioners:  # as MusicGen.get_pretrained
            lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
            lm.condition_provider.conditioners["self_wav"]._use_masking = False
        self.codec_source = codec_file
        return model, lm, codec

    def _hub_message(self, source: str, err: BaseException) -> str:
        return (
            f"Expected to load {source} from the Hugging Face hub but it could not be reached "
            f"or is not cached ({type(err).__name__}: {err}). The hub cache is "
            f"{_hf_cache_dir()!r}"
            f"{' and HF_HUB_OFFLINE is set' if _hf_offline() else ''}. Pass instead a local "
            f"export folder holding {EXPORT_FILES[0]!r} and {EXPORT_FILES[1]!r}, or 'tiny'."
        )

    def _download_from_hub(self, repo_id: str) -> str:
        """Fetch (or find in the cache) the two export files; return their folder."""
        import audiocraft
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        offline = _hf_offline()
        paths = []
        for filename in EXPORT_FILES:
            try:
                paths.append(
                    hf_hub_download(
                        repo_id=repo_id,
                        filename=filename,
                        cache_dir=os.environ.get("AUDIOCRAFT_CACHE_DIR"),
                        local_files_only=offline,
                        library_name="audiocraft",
                        library_version=audiocraft.__version__,
                    )
                )
            except LocalEntryNotFoundError as err:  # offline, or connection failed: not cached
                raise NoiseProbeError(self._hub_message(f"hub id {repo_id!r}", err)) from err
            except (RepositoryNotFoundError, GatedRepoError, EntryNotFoundError) as err:
                raise NoiseProbeError(
                    f"Expected argument `model` to be 'tiny', a local export folder or a hub "
                    f"id of an audiocraft MusicGen export but {repo_id!r} has no {filename!r} "
                    f"on the hub ({type(err).__name__}). Pass a folder holding "
                    f"{EXPORT_FILES[0]!r} and {EXPORT_FILES[1]!r} instead."
                ) from err
            except (OSError, ValueError) as err:  # connection errors, HTTP errors
                raise NoiseProbeError(self._hub_message(f"hub id {repo_id!r}", err)) from err
        folders = {os.path.dirname(p) for p in paths}
        if len(folders) != 1:  # pragma: no cover - the hub keeps one snapshot per revision
            raise NoiseProbeError(
                f"Expected both export files of {repo_id!r} in one folder but got {paths}."
            )
        return folders.pop()

    def _require_loaded(self) -> MusicGen:
        if self._musicgen is None:
            raise RuntimeError(f"{self!r} is not loaded: call `.load()` first.")
        return self._musicgen

    @property
    def device(self) -> torch.device:
        """Where the LM's weights are: follows the model when Lightning (or you) move it."""
        if self._musicgen is None:
            return self._device
        param = next(self._musicgen.lm.parameters(), None)
        return param.device if param is not None else self._device

    # -- modules --------------------------------------------------------------
    @property
    def musicgen(self) -> MusicGen:
        """The audiocraft ``MusicGen`` object (generation API, ``.lm``, ``.compression_model``)."""
        return self._require_loaded()

    @property
    def lm(
        self,
    ) -> Any:  # audiocraft's LMModel, an nn.Module (typed loosely: audiocraft has no stubs)
        """The audiocraft ``LMModel`` (with its conditioners): the part that fine-tunes."""
        return self._require_loaded().lm

    @property
    def codec(self) -> torch.nn.Module:
        """The frozen audiocraft ``CompressionModel`` (EnCodec)."""
        return self._require_loaded().compression_model

    # -- static description -------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self._require_loaded().compression_model.sample_rate)

    @property
    def channels(self) -> int:
        return int(self._require_loaded().compression_model.channels)

    @property
    def frame_rate(self) -> float:
        return float(self._require_loaded().compression_model.frame_rate)

    @property
    def num_codebooks(self) -> int:
        return int(self._require_loaded().lm.num_codebooks)

    @property
    def cardinality(self) -> int:
        return int(self._require_loaded().lm.card)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description; works before :meth:`load` (model, device, dtype only)."""
        out: dict[str, Any] = {
            "backend": self.name,
            "model": self.model,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if self.model == "tiny":
            out["seed"] = self.seed
            out["tiny_config"] = {**TINY_DEFAULTS, **self.tiny_config}
        if self._musicgen is not None:
            out.update(super().describe())
        return out

    # -- compute --------------------------------------------------------------
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Tokenize audio with the frozen codec, exactly as audiocraft does.

        The same call as the MusicGen solver's and ``MusicGen``'s
        ``_prepare_tokens_and_attributes``: ``compression_model.encode(wav)``
        under ``torch.no_grad()``, outside autocast, refusing a codec that
        returns a scale. ``no_grad`` matters for more than memory: with grad
        mode on, PyTorch runs the codec's LSTM with oneDNN's forward-training
        kernel, whose float32 rounding differs from the inference kernel's, and
        near-tied codes flip (4 of 320 codes on an AMD EPYC).

        Codes are bitwise reproducible for the same input, batch shape, machine
        and thread count. Another thread count (1x1 convolutions switch between
        oneDNN and im2col+GEMM), batch shape (the LSTM kernel) or CPU changes the
        latents by about one ulp and may flip near-tied codes.

        Args:
            wav: ``[B, C, S]`` float waveform at :attr:`sample_rate` with :attr:`channels` channels.

        Returns:
            ``[B, K, T]`` long codes on the backend's device, ``T = ceil(S / hop)``
            (640 samples per frame for MusicGen).
        """
        musicgen = self._require_loaded()
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise NoiseProbeError(
                f"Expected argument `wav` of shape [B, {self.channels}, S] but got {tuple(wav.shape)}."
            )
        with torch.no_grad():
            codec = musicgen.compression_model
            codec_device = next(codec.parameters()).device
            # fp32 whatever the caller's autocast: codes must not depend on the trainer's precision
            with torch.autocast(codec_device.type, enabled=False):
                codes, scale = codec.encode(wav.to(codec_device, torch.float32))
        if scale is not None:  # audiocraft asserts the same: its LMs model unscaled codes
            raise NoiseProbeError(
                f"Expected a codec without renormalisation (MusicGen's) but {self.model!r} "
                "returns a scale per clip; such codecs are not supported with an LM."
            )
        return codes.long()

    def _condition_tensors(self, batch: int, descriptions: Sequence[str | None] | None) -> Any:
        provider = self.lm.condition_provider
        return provider(provider.tokenize(self._attributes(batch, descriptions)))

    def _attributes(self, batch: int, descriptions: Sequence[str | None] | None) -> list[Any]:
        """One ``ConditioningAttributes`` per item: its description, no melody."""
        from audiocraft.modules.conditioners import ConditioningAttributes, WavCondition

        if descriptions is None:
            descriptions = [None] * batch
        elif isinstance(descriptions, str) or len(descriptions) != batch:
            raise NoiseProbeError(
                f"Expected argument `descriptions` to be a sequence of {batch} texts or None "
                f"(one per item) but got {descriptions!r}."
            )
        provider = self.lm.condition_provider
        attributes = []
        for text in descriptions:
            # Unconditional = every attribute None, as audiocraft's CFG dropout does.
            attr = ConditioningAttributes(
                text={
                    name: (text if name == "description" else None)
                    for name in provider.text_conditions
                }
            )
            for name in provider.wav_conditions:  # no melody: a null waveform, as MusicGen does
                attr.wav[name] = WavCondition(
                    torch.zeros((1, 1, 1), device=self.device),
                    torch.tensor([0], device=self.device),
                    sample_rate=[self.sample_rate],
                    path=[None],
                )
            attributes.append(attr)
        return attributes

    def lm_logits(
        self,
        codes: torch.Tensor,
        descriptions: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM logits aligned with ``codes``, with gradients (training path).

        Runs ``lm.compute_predictions`` on the conditions of ``descriptions``
        with the LM's classifier-free-guidance and attribute dropout held in
        eval mode (the caller decides on dropout, as the MusicGen solver does),
        so no random number is drawn. The conditions are computed inside the
        LM's ``forward``, so a sharded LM (FSDP2 ``fully_shard``) gathers the
        condition provider's weights with the rest. The LM's train/eval mode is
        otherwise left as the caller set it.

        Args:
            codes: ``[B, K, T]`` long codes.
            descriptions: one text per item (``None`` = unconditional), or
                ``None`` for all-unconditional.

        Returns:
            ``(logits, mask)``: logits ``[B, K, T, card]`` in the LM's dtype,
            NaN where ``mask`` (``[B, K, T]`` bool) is ``False``.
        """
        self._require_loaded()
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise NoiseProbeError(
                f"Expected argument `codes` of shape [B, {self.num_codebooks}, T] "
                f"but got {tuple(codes.shape)}."
            )
        codes = codes.to(self.device, torch.long)
        lm = self.lm
        dropouts = [m for m in (lm.cfg_dropout, lm.att_dropout) if m.training]
        try:
            for m in dropouts:
                m.eval()
            with _outside_inference_mode():
                attributes = self._attributes(codes.shape[0], descriptions)
                out = lm.compute_predictions(codes, attributes)
        finally:
            for m in dropouts:
                m.train()
        return out.logits, out.mask.to(torch.bool)

    # -- fast scoring (inference) ---------------------------------------------
    def _plain_delays(self) -> list[int] | None:
        """The codebook delays if the fused scoring paths apply, else ``None``.

        They apply to an unmodified ``LMModel`` (no FSDP wrapper, stock
        ``forward``) with a plain delay pattern (``flatten_first = 0``,
        ``empty_initial = 0``), conditions fused only through cross-attention,
        and absolute (sinusoidal) positions without RoPE; otherwise callers
        fall back to :meth:`token_nll`.
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
            or any(lm.fuser.fuse2cond.get(op) for op in ("sum", "prepend", "input_interpolate"))
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
        """
        lm = self.lm
        B, K, L = sequence.shape
        T = codes.shape[-1]
        x = sum(lm.emb[k](sequence[:, k]) for k in range(K))
        x, cross = lm.fuser(x, condition_tensors)
        out = lm.transformer(x, cross_attention_src=cross)
        if lm.out_norm is not None:
            out = lm.out_norm(out)
        nll = torch.zeros(B, K, T, device=out.device, dtype=torch.float32)
        rows = _HEAD_ROWS_CPU if out.device.type == "cpu" else _HEAD_ROWS_ACCELERATOR
        for k, d in enumerate(delays):
            lo, hi = (
                max(start, d, first_frame + d),
                min(start + L, T),
            )  # delayed positions scoring a frame
            if lo >= hi:
                continue
            hidden = out[:, lo - start : hi - start].reshape(B * (hi - lo), -1)
            target = codes[:, k, lo - d : hi - d].reshape(-1)
            ce = [
                torch.nn.functional.cross_entropy(
                    lm.linears[k](hidden[i : i + rows]).float(),
                    target[i : i + rows],
                    reduction="none",
                )
                for i in range(0, hidden.shape[0], rows)
            ]
            nll[:, k, lo - d : hi - d] = torch.cat(ce).view(B, hi - lo)
        return nll

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
        with _outside_inference_mode():
            condition_tensors = self._condition_tensors(B, descriptions)
            sequence = self._delayed_sequence(codes, delays)
            nll = self._nll_at_positions(
                sequence, codes, condition_tensors, delays, 0, first_frame=max(0, int(score_from))
            )
        return nll, self._delay_mask(B, T, delays)

    @property
    def supports_prefix_sharing(self) -> bool:
        """``True`` when the LM is covered by the fused, streaming scoring path."""
        return self._musicgen is not None and self._plain_delays() is not None

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
        heads) are never computed.

        The LM is left as found (no streaming state, no hook, its own
        attention). Falls back to full scoring when the LM is not covered (see
        :meth:`_plain_delays` and :meth:`_continuable_attentions`) or is
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
        attentions = self._continuable_attentions()
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

        def keep_prefix_keys_values(module: Any, args: tuple[Any, ...]) -> None:
            # inside the layer's forward, where a sharded (FSDP) layer has its weights
            past[module] = _self_attention_keys_values(module, args[0][:, :split])

        with _outside_inference_mode():
            condition_tensors = self._condition_tensors(B, descriptions)
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
                conditions = {
                    name: tuple(t.index_select(0, index) for t in pair)
                    for name, pair in condition_tensors.items()
                }
                with _continuing(lm.transformer, past, index, split):
                    suffix_nll = self._nll_at_positions(
                        sequence[i : i + size], rows[i : i + size], conditions, delays, split
                    )
                # disjoint frames, zero elsewhere: the sum is exact
                parts.append(prefix_nll.index_select(0, index) + suffix_nll)
        nll = torch.cat([clean_nll[:, None], torch.cat(parts).reshape(B, P, K, T)], dim=1)
        mask = self._delay_mask(B * (1 + P), T, delays).reshape(B, 1 + P, K, T)
        return nll, mask

    def _continuable_attentions(self) -> list[Any] | None:
        """The LM's causal self-attention modules, if :meth:`token_nll_shared_prefix` can continue them.

        Covered: audiocraft's own attention (``custom``) with packed q/k/v
        projections (``kv_repeat == 1``), no RoPE, no q/k layer norm and no
        limited past context, as in every released MusicGen; else ``None``.
        """
        from audiocraft.modules.transformer import StreamingMultiheadAttention

        found = [
            m
            for m in self.lm.transformer.modules()
            if isinstance(m, StreamingMultiheadAttention) and not m.cross_attention
        ]
        if not found or not all(
            m.causal
            and m.custom
            and m.kv_repeat == 1
            and m.rope is None
            and not m.qk_layer_norm
            and m.past_context is None
            for m in found
        ):
            return None
        return found


def _self_attention_keys_values(module: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[B, heads, S, head_dim]`` of audiocraft self-attention for input ``x`` ``[B, S, dim]``.

    The packed projection audiocraft applies (``b t (p h d)``, p = q, k, v).
    """
    projected = torch.nn.functional.linear(x, module.in_proj_weight, module.in_proj_bias)
    B, S, _ = projected.shape
    heads = module.num_heads
    packed = projected.view(B, S, 3, heads, projected.shape[-1] // (3 * heads))
    return packed[:, :, 1].transpose(1, 2), packed[:, :, 2].transpose(1, 2)


@contextlib.contextmanager
def _continuing(
    transformer: Any,
    past: dict[Any, tuple[torch.Tensor, torch.Tensor]],
    index: torch.Tensor,
    split: int,
) -> Iterator[None]:
    """Run ``transformer`` on positions ``[split, ...)`` of rows whose earlier keys/values are ``past``.

    ``past[m]`` holds self-attention module ``m``'s keys and values at
    positions ``< split`` per clean sequence; row ``r`` uses sequence
    ``index[r]``. Positions continue through the transformer's streaming
    offsets (sinusoidal embeddings); each self-attention module's ``forward``
    is replaced for the block by a continuation with PyTorch's fused attention
    and restored afterwards, with the streaming state.
    """
    rows = index.shape[0]
    try:
        for module, (keys, values) in past.items():
            module.forward = _continuation_forward(
                module, keys.index_select(0, index), values.index_select(0, index)
            )
        with transformer.streaming():
            transformer.set_streaming_state(
                {"offsets": torch.full((rows,), split, dtype=torch.long, device=index.device)}
            )
            yield
    finally:
        for module in past:
            module.__dict__.pop("forward", None)


def _continuation_forward(module: Any, past_keys: torch.Tensor, past_values: torch.Tensor) -> Any:
    """A ``forward`` for audiocraft self-attention that attends to ``past_*`` then causally to itself."""

    def forward(query: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        projected = torch.nn.functional.linear(query, module.in_proj_weight, module.in_proj_bias)
        B, L, _ = projected.shape
        heads = module.num_heads
        q, k, v = projected.view(B, L, 3, heads, projected.shape[-1] // (3 * heads)).permute(
            2, 0, 3, 1, 4
        )
        k = torch.cat([past_keys.to(k.dtype), k], dim=2)
        v = torch.cat([past_values.to(v.dtype), v], dim=2)
        if module.attention_as_float32:
            q, k, v = q.float(), k.float(), v.float()
        S = k.shape[2]
        # query i sits at position S - L + i and sees keys 0 .. S - L + i
        mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=S - L)
        x = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=module.dropout if module.training else 0.0
        )
        x = x.to(query.dtype).transpose(1, 2).reshape(B, L, -1)
        return module.out_proj(x), None

    return forward
