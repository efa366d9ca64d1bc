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
    "load_pretrained",
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
        atomic_torch_save(package, folder / filename)
    if (
        codec_file is not None
        and Path(codec_file).resolve() != (folder / EXPORT_FILES[1]).resolve()
    ):
        from lightning_noiseprobe._io import atomic_path

        with atomic_path(folder / EXPORT_FILES[1]) as tmp:
            shutil.copyfile(codec_file, tmp)
    return folder


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
        raise NoiseProbeError(export_file_message(lm_file, _load_failure(err))) from err
    del package
    if "self_wav" in lm.condition_provider.conditioners:  # as MusicGen.get_pretrained
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return model, lm, codec, codec_file


def _read(path: Path) -> dict[str, Any]:
    """The checked export file ``path``, read into memory (``weights_only=True``)."""
    from lightning_noiseprobe.backends.audiocraft.loading import read_package

    try:
        return read_package(path)
    except Exception as err:  # a damaged member that the check (no data read) did not see
        problem = f"torch.load cannot read it ({type(err).__name__}: {one_line(str(err))})"
        raise NoiseProbeError(export_file_message(path, problem)) from err


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
