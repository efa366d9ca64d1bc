"""Print the versions an environment runs with, on one line: ``python scripts/versions.py LABEL``.

`.ci/run` prints it for each environment it tests (the pinned one, the newest releases).
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = (
    "torch",
    "torchaudio",
    "lightning",
    "pytorch-lightning",
    "torchmetrics",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "accelerate",
    "peft",
    "audiocraft",
    "xformers",
    "numpy",
    "scipy",
    "av",
    "jsonargparse",
    "tensorboard",
    "wandb",
    "mlflow-skinny",
    "pytest",
)


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else sys.prefix
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (absent)")
    print(f"versions [{label}]: python {platform.python_version()}, " + ", ".join(found))


if __name__ == "__main__":
    main()
