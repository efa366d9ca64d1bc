"""PEFT adapter folders (``adapter_config.json`` + ``adapter_model.safetensors``).

An adapter folder holds only the adapter's weights; it is probed on its base model
(``noiseprobe probe --backend transformers --model ADAPTER --base BASE``). Both
backends recognise such a folder passed as a model and say how to load it
(:func:`adapter_folder_message`); the transformers backend loads one onto the base
given as its ``base`` argument (the CLI's ``--base``).

peft itself is imported only by the loader
(:func:`lightning_noiseprobe.backends.transformers.export.load_adapter`).
"""

from __future__ import annotations

import json
import os

__all__ = [
    "ADAPTER_CONFIG",
    "adapter_folder_message",
    "is_adapter_folder",
    "recorded_base",
]

#: The file that makes a folder a PEFT adapter folder.
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding ``adapter_config.json``."""
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def recorded_base(folder: str | os.PathLike[str]) -> str | None:
    """The ``base_model_name_or_path`` recorded in the folder's adapter config (``None`` if absent or unreadable)."""
    try:
        with open(os.path.join(folder, ADAPTER_CONFIG), encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return str(base) if base else None


def adapter_folder_message(folder: str | os.PathLike[str], backend: str) -> str:
    """What an adapter folder given as a model is, and how to probe it."""
    base = recorded_base(folder)
    shown = repr(base) if base else "not recorded"
    command = (
        f"noiseprobe probe --backend transformers --model {folder} --base {base or '<base model>'}"
    )
    if backend == "transformers":
        how = (
            f"Load it onto its base model: `{command}` (the base: a transformers MusicGen folder"
            " written by `save_pretrained`, or a hub id), or in Python"
            " `PeftModel.from_pretrained(base_model, folder)` and probe that model."
        )
    else:
        how = (
            "The audiocraft backend loads no adapters: for an adapter on a transformers MusicGen"
            f" run `{command}`; for one on an audiocraft model, merge it (`merge_and_unload()`)"
            " and export the merged model with `save_audiocraft_export`."
        )
    return (
        f"Expected argument `model` to be a full model but {str(folder)!r} is a PEFT adapter folder"
        f" ({ADAPTER_CONFIG}, base {shown}), which holds only the adapter's weights. {how}"
    )
