"""transformers' own format: ``save_pretrained`` folders (writing them atomically, loading them) and the hub.

transformers is imported inside the functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lightning_noiseprobe._errors import NoiseProbeError
from lightning_noiseprobe.backends._common import hf_offline, looks_like_path
from lightning_noiseprobe.backends.adapters import (
    adapter_folder_message,
    check_adapter_weights,
    is_adapter_folder,
)

__all__ = ["CONFIG_FILE", "load_adapter", "load_pretrained", "save_pretrained"]

_HUB_SHORT_NAMES = {
    "small": "facebook/musicgen-small",
    "medium": "facebook/musicgen-medium",
    "large": "facebook/musicgen-large",
}

#: The file every ``save_pretrained`` folder holds.
CONFIG_FILE = "config.json"


def save_pretrained(model: Any, tokenizer: Any, folder: str | os.PathLike[str]) -> Path:
    """Write ``model`` (and ``tokenizer`` unless ``None``) with ``save_pretrained``, atomically.

    Written to a temporary folder beside ``folder`` and renamed into place
    (:func:`lightning_noiseprobe._io.atomic_dir`), so a reader never sees a
    half-written model; an earlier save at ``folder`` is replaced.

    Returns:
        The folder, as a :class:`~pathlib.Path`.

    Raises:
        NoiseProbeError: if ``folder`` exists and is not an earlier save
            (a file, or a non-empty folder without ``config.json``).
    """
    folder = Path(folder)
    if folder.exists() and (
        not folder.is_dir() or (any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file())
    ):
        raise NoiseProbeError(
            f"Expected argument `folder` to be a new or empty folder, or an earlier save, "
            f"but {str(folder)!r} exists and holds something else. Choose another folder."
        )
    from lightning_noiseprobe._io import atomic_dir
    from lightning_noiseprobe.backends.transformers.hf_folder import save_hf_folder

    with atomic_dir(folder) as tmp:  # + processor files, the codec's name (a real HF folder)
        save_hf_folder(model, tokenizer, tmp, str(folder.resolve()))
    return folder


def load_pretrained(model: str, dropout: float | None, base: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` (CPU, float32) from a ``save_pretrained`` folder or the hub.

    ``tokenizer`` is ``None`` when the source has no tokenizer files
    (unconditional scoring only). ``dropout`` (unless ``None``) replaces the
    decoder's three dropout rates.

    A PEFT adapter folder is loaded onto ``base`` (the CLI's ``--base``) with
    :func:`load_adapter`; without one it is refused with a message saying how.

    Raises:
        NoiseProbeError: if the folder holds no (complete) MusicGen or the hub
            id cannot be loaded (offline, not cached).
    """
    from transformers import (
        MusicgenConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyForConditionalGeneration,
    )

    from lightning_noiseprobe.backends.transformers.compat import load_tokenizer

    if os.path.isdir(model) and is_adapter_folder(model):
        if base is None:
            raise NoiseProbeError(adapter_folder_message(model, "transformers"))
        return load_adapter(model, base, dropout)
    if os.path.isdir(model):
        folder = model
        config_path = os.path.join(folder, CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise NoiseProbeError(
                f"Expected the model folder {folder!r} to hold a transformers MusicGen "
                f"written by `save_pretrained` but {CONFIG_FILE!r} is missing. Write one "
                "with `TransformersBackend.save` or `model.save_pretrained`."
            )
        model_type = _read_model_type(config_path)
        if model_type not in _CLASSES:
            raise NoiseProbeError(
                f"Expected the model folder {folder!r} to hold a MusicGen (model_type "
                f"{' or '.join(map(repr, _CLASSES))}) but its {CONFIG_FILE} says {model_type!r}."
            )
        source, local_only, kind = folder, True, model_type
    elif os.path.exists(model) or looks_like_path(model):
        raise NoiseProbeError(
            f"Expected argument `model` to be 'tiny', an existing folder written by "
            f"`save_pretrained`, or a hub id, but {model!r} is not a folder."
        )
    else:
        source, local_only, kind = _HUB_SHORT_NAMES.get(model, model), hf_offline(), None

    classes: dict[str, tuple[Any, Any]] = {
        "musicgen": (MusicgenConfig, MusicgenForConditionalGeneration),
        "musicgen_melody": (MusicgenMelodyConfig, MusicgenMelodyForConditionalGeneration),
    }
    try:
        kind = kind or _hub_model_type(source, local_only)
    except (OSError, ValueError) as err:  # offline or not cached
        raise NoiseProbeError(_load_message(source, local_only, err)) from err
    if kind not in classes:
        raise NoiseProbeError(
            f"Expected hub id {source!r} to be a MusicGen (model_type "
            f"{' or '.join(map(repr, _CLASSES))}) but its config says {kind!r}."
        )
    config_class, model_class = classes[kind]
    try:
        config = config_class.from_pretrained(source, local_files_only=local_only)
        if dropout is not None:
            config.decoder.dropout = dropout
            config.decoder.attention_dropout = dropout
            config.decoder.activation_dropout = dropout
        loaded = model_class.from_pretrained(
            source, config=config, local_files_only=local_only, dtype=torch.float32
        )
    except (OSError, ValueError) as err:  # missing/corrupt files; offline or not cached
        raise NoiseProbeError(_load_message(source, local_only, err)) from err
    return loaded, load_tokenizer(source, local_only)  # None: unconditional scoring only


def load_adapter(adapter: str, base: str, dropout: float | None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: the PEFT adapter folder ``adapter`` on its ``base``.

    ``base`` (a ``save_pretrained`` folder or hub id) is loaded as by
    :func:`load_pretrained`, with its tokenizer; the adapter is injected into it
    with ``PeftModel.from_pretrained`` and left active, not merged. The returned
    model is the base model object with the adapter layers inside.

    Raises:
        NoiseProbeError: if ``base`` is itself an adapter folder or cannot be
            loaded, peft is missing, or the adapter does not fit the base.
    """
    if os.path.isdir(base) and is_adapter_folder(base):
        raise NoiseProbeError(
            f"Expected the base of the PEFT adapter folder {adapter!r} to be a full transformers"
            f" MusicGen (a `save_pretrained` folder or hub id) but {base!r} is itself an adapter folder."
        )
    model, tokenizer = load_pretrained(base, dropout)
    try:
        from peft import PeftModel
    except ImportError as err:
        raise NoiseProbeError(
            f"Loading the PEFT adapter folder {adapter!r} needs peft, which is not installed:"
            " `pip install 'lightning-noiseprobe[peft]'` (or `pip install peft`)."
        ) from err
    check_adapter_weights(adapter)  # a damaged file: one message naming it, before peft reads it
    try:
        wrapped = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        raise NoiseProbeError(
            f"Expected the PEFT adapter folder {adapter!r} to load onto the base {base!r} but"
            f" it failed ({type(err).__name__}: {err}). Check that the adapter was trained on"
            " this base (its adapter_config.json records base_model_name_or_path)."
        ) from err
    return wrapped.get_base_model(), tokenizer


#: The composite models this backend loads, by their config's ``model_type``.
_CLASSES = ("musicgen", "musicgen_melody")


def _hub_model_type(source: str, local_only: bool) -> Any:
    """The ``model_type`` of hub id ``source``'s config (``AutoConfig`` picks the class)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, local_files_only=local_only).model_type


def _read_model_type(config_path: str) -> Any:
    try:
        with open(config_path, encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError) as err:
        raise NoiseProbeError(
            f"Expected {config_path!r} to be a readable JSON transformers config but "
            f"reading it failed ({type(err).__name__}: {err})."
        ) from err


def _load_message(source: str, local_only: bool, err: Exception) -> str:
    if os.path.isdir(source):
        return (
            f"Expected the model folder {source!r} to hold a complete transformers MusicGen "
            f"but loading it failed ({type(err).__name__}: {err}). Write it with "
            "`TransformersBackend.save` or `model.save_pretrained`."
        )
    why = "HF_HUB_OFFLINE is set and it is not cached" if local_only else "it is not cached"
    return (
        f"Expected argument `model` to be 'tiny', a local folder or a reachable hub id but "
        f"hub id {source!r} could not be loaded: the hub cannot be reached (offline?) or "
        f"{why} ({type(err).__name__}: {err}). Pass instead a local folder written by "
        "`save_pretrained` (e.g. `TransformersBackend.save`), or 'tiny'."
    )
