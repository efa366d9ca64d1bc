"""``python -m lightning_noiseprobe.cli``: the ``noiseprobe`` command."""

import sys

from lightning_noiseprobe.cli import main

sys.exit(main())
