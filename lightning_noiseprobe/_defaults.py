"""The paper's probe protocol, written once.

These are :class:`~lightning_noiseprobe.probe.spec.ProbeSpec`'s defaults and the defaults of
the callback, the engine, the perturbation functions, the CLI, the demo and the studies.
A leaf module (it imports nothing of the package), so the perturbations can use them without
importing the spec that applies them.
"""

__all__ = [
    "DEFAULT_CLIP_SECONDS",
    "DEFAULT_LEVEL_DBFS",
    "DEFAULT_MODE",
    "DEFAULT_NOISES",
    "DEFAULT_ONSET",
    "PAPER_LENGTHS",
]

#: Injection onset in tokens (5 s at 50 Hz).
DEFAULT_ONSET = 250
#: Injection lengths of the paper's protocol, in tokens (0.1 ... 4.0 s at 50 Hz).
PAPER_LENGTHS = (5, 10, 50, 100, 150, 200)
#: Noise colours.
DEFAULT_NOISES = ("white",)
#: Noise RMS per channel, in dBFS.
DEFAULT_LEVEL_DBFS = -30.0
#: Noise replaces the window (paper Eq. 2); ``"add"`` adds it.
DEFAULT_MODE = "replace"
#: Clips are cropped to this duration, in seconds.
DEFAULT_CLIP_SECONDS = 15.0
