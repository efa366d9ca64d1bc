"""audiocraft's export format: writing it, checking its files, loading it (folder or hub).

An export folder holds :data:`EXPORT_FILES`: ``state_dict.bin`` (the LM) and
``compression_state_dict.bin`` (the codec), each a ``torch.save`` of
``{'xp.cfg': <YAML string>, 'best_state': state_dict, ...}`` as
``audiocraft.utils.export`` writes them. Loading goes through audiocraft's
own loaders with torch's safe ``weights_only=True``, after a check of each
file that names what is wrong with it. audiocraft is imported inside the
functions.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends._common import (
    atomic_torch_save,
    hf_cache_dir,
    hf_offline,
    looks_like_path,
    one_line,
)
from lightning_noiseprobe.backends.adapters import adapter_folder_message, is_adapter_folder

__all__ = [
    "EXPORT_FILES",
    "export_file_message",
    "export_file_problem",
    "find_codec_file",
    "load_pretrained",
    "mono_codec",
    "save_audiocraft_export",
]

#: The two files of an audiocraft export folder (LM, then codec).
EXPORT_FILES = ("state_dict.bin", "compression_state_dict.bin")

_HUB_SHORT_NAMES = {
    "small": "facebook/musicgen-small",
    "medium": "facebook/musicgen-medium",
    "large": "facebook/musicgen-large",
    "melody": "facebook/musicgen-melody",
}


def save_audiocraft_export(
    musicgen: Any, folder: str | os.PathLike[str], codec_file: str | os.PathLike[str] | None = None
) -> Path:
    """Write a MusicGen as an audiocraft export folder, in the hub's layout.

    Writes ``state_dict.bin`` (LM) and ``compression_state_dict.bin`` (codec),
    each ``{'xp.cfg': <YAML string>, 'best_state': state_dict, 'version',
    'exported': True}`` as ``audiocraft.utils.export`` does, so that
    ``MusicGen.get_pretrained(folder)`` and ``AudiocraftBackend(model=folder)``
    load it, with torch's safe ``weights_only=True`` loading. Each file is
    written to a temporary file and moved into place.

    A stereo model's codec (``InterleaveStereoCompressionModel``) is written
    as the hub's stereo models hold it: the wrapped mono EnCodec, which
    ``MusicGen`` wraps again from the LM's config
    (``interleave_stereo_codebooks``). audiocraft's loaders keep no codec
    config, so a codec loaded by them (``MusicGen.get_pretrained``,
    ``loaders.load_compression_model``) is copied from the file it came from
    instead: ``codec_file``, else the ``compression_state_dict.bin`` of the
    folder or cached hub model that ``musicgen.name`` names (what
    ``MusicGen.get_pretrained(name)`` sets), used only if its weights are the
    codec's (a file naming a ``'pretrained'`` codec is taken as is). The codec
    is frozen during fine-tuning, so this is what a fine-tune needs.

    Args:
        musicgen: an ``audiocraft`` ``MusicGen`` (or anything with ``.lm`` and
            ``.compression_model``) whose LM carries its config as ``.cfg``
            (:func:`build_tiny_musicgen` and audiocraft's loaders set it).
        folder: output folder, created if missing.
        codec_file: an existing ``compression_state_dict.bin`` to copy instead of
            serialising the codec.

    Returns:
        The folder, as a :class:`~pathlib.Path`.

    Raises:
        NoiseProbeError: if the LM has no ``cfg``, or the codec has none and
            no file holding it is found.
    """
    import shutil

    import audiocraft
    from omegaconf import OmegaConf

    folder = Path(folder)
    codec = mono_codec(musicgen.compression_model)
    if codec_file is None and getattr(codec, "cfg", None) is None:
        codec_file = find_codec_file(musicgen)
    parts = {EXPORT_FILES[0]: musicgen.lm}
    if codec_file is None:
        parts[EXPORT_FILES[1]] = codec
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
        atomic_torch_save(package, folder / filename)
    if (
        codec_file is not None
        and Path(codec_file).resolve() != (folder / EXPORT_FILES[1]).resolve()
    ):
        from lightning_noiseprobe._io import atomic_path

        with atomic_path(folder / EXPORT_FILES[1]) as tmp:
            shutil.copyfile(codec_file, tmp)
    return folder


def mono_codec(codec: Any) -> Any:
    """The mono codec a stereo ``InterleaveStereoCompressionModel`` wraps, else ``codec`` itself."""
    from audiocraft.models.encodec import InterleaveStereoCompressionModel

    return codec.model if isinstance(codec, InterleaveStereoCompressionModel) else codec


def find_codec_file(musicgen: Any) -> Path:
    """The ``compression_state_dict.bin`` a loaded MusicGen's codec came from.

    Looked for where ``musicgen.name`` points (``MusicGen.get_pretrained``
    sets it to the folder or hub id it loaded): the folder, or the hub cache
    (``AUDIOCRAFT_CACHE_DIR`` or the default; never downloaded). Taken only if
    its weights are the codec's, or it names a ``'pretrained'`` codec.

    Raises:
        NoiseProbeError: if no such file is found.
    """
    codec = mono_codec(musicgen.compression_model)
    name = str(getattr(musicgen, "name", "") or "")
    candidate: Path | None = None
    if name and os.path.isdir(name):
        candidate = Path(name) / EXPORT_FILES[1]
    elif name and not looks_like_path(name) and not os.path.exists(name):
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(
                _HUB_SHORT_NAMES.get(name, name),
                EXPORT_FILES[1],
                cache_dir=os.environ.get("AUDIOCRAFT_CACHE_DIR"),
            )
        except Exception:  # not a valid hub id
            found = None
        candidate = Path(found) if isinstance(found, str) else None
    why = f"`musicgen.name` ({name!r}) names no folder or cached hub model holding one"
    if candidate is not None and candidate.is_file():
        why = f"'{candidate}' holds other codec weights"
        if _holds_codec(candidate, codec):
            return candidate
    raise NoiseProbeError(
        f"Expected the codec ({type(codec).__name__}) to carry its audiocraft config as "
        f"`.cfg`, or a {EXPORT_FILES[1]!r} holding its weights to copy, but it has no config "
        f"(audiocraft's loaders keep none) and {why}. Pass the file it was loaded from as "
        "`codec_file=` (`save_audiocraft_export`, `AudiocraftBackend.from_model`)."
    )


def _holds_codec(path: Path, codec: Any) -> bool:
    """Whether an export file holds ``codec``'s weights exactly (or names a pretrained codec)."""
    if export_file_problem(path) is not None:
        return False
    import zipfile

    package = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    if "pretrained" in package:  # audiocraft built the codec from that name
        return True
    saved = package["best_state"]
    state = codec.state_dict()
    return saved.keys() == state.keys() and all(
        saved[k].dtype == v.dtype and torch.equal(saved[k], v.detach().cpu())
        for k, v in state.items()
    )


#: How ``torch.save``'s legacy (pre-zip) format begins: pickle protocol 2, then its magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def export_file_message(path: Path, problem: str) -> str:
    return (
        f"Expected '{path}' to be an audiocraft export file (torch.save of a dict with "
        f"'xp.cfg', a YAML string, and 'best_state', the weights) but {problem}. "
        "Re-export the model from a trusted environment with `save_audiocraft_export` or "
        "`audiocraft.utils.export`, or download it again."
    )


def export_file_problem(path: Path) -> str | None:
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
        return f"it cannot be read ({type(err).__name__}: {one_line(str(err))})"
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
        return f"torch.load cannot read it ({type(err).__name__}: {one_line(str(err))})"
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
            return f"its 'xp.cfg' is not valid YAML ({type(err).__name__}: {one_line(str(err))})"
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
        first = one_line(details[0]) if details else ""
        more = f" and {len(details) - 1} more" if len(details) > 1 else ""
        return f"its 'best_state' does not fit the model its 'xp.cfg' describes ({first}{more})"
    return (
        f"audiocraft cannot build the model its 'xp.cfg' describes "
        f"({type(err).__name__}: {one_line(str(err))})"
    )


def load_pretrained(model: str, dtype: torch.dtype = torch.float32) -> tuple[str, Any, Any, Path]:
    """Load ``(name, lm, codec, codec_file)`` on CPU (LM in ``dtype``, codec float32).

    ``model`` is an export folder or a hub id (``"small"``, ``"medium"``,
    ``"large"``, ``"melody"`` are short for the ``facebook/`` ones);
    ``codec_file`` is the codec file loaded (the codec is frozen, so an export
    of a fine-tune copies it as is).

    Each export file is checked first (:func:`export_file_problem`, without
    importing audiocraft), then built with audiocraft's builders from its
    ``xp.cfg`` as audiocraft's loaders do, holding each weight once
    (:mod:`.loading`); any failure becomes one :class:`NoiseProbeError` naming
    the file and the problem.
    """
    if os.path.isdir(model) and is_adapter_folder(model):
        raise NoiseProbeError(adapter_folder_message(model, "audiocraft"))
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
    elif os.path.exists(model) or looks_like_path(model):
        raise NoiseProbeError(
            f"Expected argument `model` to be 'tiny', an existing folder holding "
            f"{EXPORT_FILES[0]!r} and {EXPORT_FILES[1]!r}, or a hub id, but {model!r} "
            "is not a folder."
        )
    else:
        model = _HUB_SHORT_NAMES.get(model, model)
        folder = _download_from_hub(model)
        source = f"hub id {model!r}"
    lm_file, codec_file = (Path(folder) / f for f in EXPORT_FILES)
    for path in (lm_file, codec_file):
        problem = export_file_problem(path)
        if problem is not None:
            raise NoiseProbeError(export_file_message(path, problem))

    from lightning_noiseprobe.backends.audiocraft.conditioners import (
        missing_t5_message,
        prepare_as_get_pretrained,
    )

    t5_source = f"{source}'s {EXPORT_FILES[0]!r}"
    if hf_offline():  # a T5 missing from the cache cannot be fetched: say so before building
        t5 = missing_t5_message(_saved_cfg(lm_file), t5_source)
        if t5 is not None:
            raise NoiseProbeError(t5)
    from audiocraft.models import loaders

    from lightning_noiseprobe.backends.audiocraft import loading

    # The codec first: its brief copy (random weights, then the file's) comes while the
    # process is small; the LM's weights are then held once (`loading.build_lm`).
    package = _read(codec_file)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            if "pretrained" in package:  # another hub model's codec: audiocraft's loader
                codec = loaders.load_compression_model(folder, device="cpu")
            else:
                codec = loading.build_codec(package["xp.cfg"], package.pop("best_state"))
    except OSError as err:  # the codec may point at another hub model ('pretrained')
        raise NoiseProbeError(_hub_message(source, err)) from err
    except Exception as err:
        raise NoiseProbeError(export_file_message(codec_file, _load_failure(err))) from err
    package = _read(lm_file)
    try:
        lm = loading.build_lm(package["xp.cfg"], package.pop("best_state"), dtype)
    except Exception as err:
        t5 = missing_t5_message(_saved_cfg(lm_file), t5_source)
        if t5 is not None:  # transformers' own error names neither the model nor the cache
            raise NoiseProbeError(t5) from err
        raise NoiseProbeError(export_file_message(lm_file, _load_failure(err))) from err
    del package
    prepare_as_get_pretrained(lm)
    return model, lm, codec, codec_file


def _read(path: Path) -> dict[str, Any]:
    """The checked export file ``path``, read into memory (``weights_only=True``)."""
    from lightning_noiseprobe.backends.audiocraft.loading import read_package

    try:
        return read_package(path)
    except Exception as err:  # a damaged member that the check (no data read) did not see
        problem = f"torch.load cannot read it ({type(err).__name__}: {one_line(str(err))})"
        raise NoiseProbeError(export_file_message(path, problem)) from err


def _saved_cfg(path: Path) -> Any:
    """The ``xp.cfg`` of a checked export file, parsed (``None`` if it cannot be read)."""
    from omegaconf import OmegaConf

    try:
        package = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return OmegaConf.create(package["xp.cfg"])
    except Exception:
        return None


def _hub_message(source: str, err: BaseException) -> str:
    return (
        f"Expected to load {source} from the Hugging Face hub but it could not be reached "
        f"or is not cached ({type(err).__name__}: {err}). The hub cache is "
        f"{hf_cache_dir()!r}"
        f"{' and HF_HUB_OFFLINE is set' if hf_offline() else ''}. Pass instead a local "
        f"export folder holding {EXPORT_FILES[0]!r} and {EXPORT_FILES[1]!r}, or 'tiny'."
    )


def _download_from_hub(repo_id: str) -> str:
    """Fetch (or find in the cache) the two export files; return their folder."""
    import audiocraft
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = hf_offline()
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
            raise NoiseProbeError(_hub_message(f"hub id {repo_id!r}", err)) from err
        except (RepositoryNotFoundError, GatedRepoError, EntryNotFoundError) as err:
            raise NoiseProbeError(
                f"Expected argument `model` to be 'tiny', a local export folder or a hub "
                f"id of an audiocraft MusicGen export but {repo_id!r} has no {filename!r} "
                f"on the hub ({type(err).__name__}). Pass a folder holding "
                f"{EXPORT_FILES[0]!r} and {EXPORT_FILES[1]!r} instead."
            ) from err
        except (OSError, ValueError) as err:  # connection errors, HTTP errors
            raise NoiseProbeError(_hub_message(f"hub id {repo_id!r}", err)) from err
    folders = {os.path.dirname(p) for p in paths}
    if len(folders) != 1:  # pragma: no cover - the hub keeps one snapshot per revision
        raise NoiseProbeError(
            f"Expected both export files of {repo_id!r} in one folder but got {paths}."
        )
    return folders.pop()
