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
    "ADAPTER_WEIGHTS",
    "adapter_folder_message",
    "check_adapter_weights",
    "is_adapter_folder",
    "recorded_base",
]

#: The file that makes a folder a PEFT adapter folder.
ADAPTER_CONFIG = "adapter_config.json"
#: The adapter's weight files, in the order peft looks for them.
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


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


def check_adapter_weights(folder: str | os.PathLike[str]) -> str:
    """The path of the adapter folder's weight file, read through once, safely.

    ``adapter_model.safetensors`` is read with safetensors; ``adapter_model.bin`` (used
    only when there is no ``.safetensors``, as peft does) with ``torch.load(...,
    weights_only=True)``, so a pickle that would run code is refused, never run.
    Adapter files are small: reading them twice costs little.

    Raises:
        NoiseProbeError: naming the file and the problem, if there is no weight file or
            it is empty, truncated, not a weight file, or needs more than
            ``weights_only`` loading.
    """
    from lightning_noiseprobe._errors import NoiseProbeError

    paths = [os.path.join(folder, name) for name in ADAPTER_WEIGHTS]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        raise NoiseProbeError(
            f"Expected the PEFT adapter folder {str(folder)!r} to hold {' or '.join(ADAPTER_WEIGHTS)}"
            " but it has neither. Save the adapter with `peft_model.save_pretrained(folder)`."
        )
    if os.path.getsize(path) == 0:
        raise NoiseProbeError(
            f"Expected the adapter weights {path!r} to hold tensors but the file is empty."
            " Save the adapter again with `peft_model.save_pretrained(folder)`."
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            load_file(path, device="cpu")
        else:
            import torch

            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors' and pickle's errors share no base class
        hint = (
            " It may hold pickled code, which is never run here: save the adapter with"
            " `peft_model.save_pretrained(folder)` (safetensors)."
            if path.endswith(".bin")
            else " It is truncated or not a safetensors file: save the adapter again with"
            " `peft_model.save_pretrained(folder)`."
        )
        raise NoiseProbeError(
            f"Expected the adapter weights {path!r} to be a readable"
            f" {'safetensors' if path.endswith('.safetensors') else 'torch (weights_only)'} file"
            f" but reading it failed ({type(err).__name__}: {str(err)[:200]}).{hint}"
        ) from err
    return path
