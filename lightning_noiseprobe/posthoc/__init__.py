"""After training: a run's checkpoints on one probe set (``noiseprobe sweep``) and several models
side by side (``noiseprobe compare``), with the numbers the live callbacks log.

One module per concern: :mod:`~lightning_noiseprobe.posthoc.checkpoints` (finding checkpoints,
their step and epoch, loading them safely), :mod:`~lightning_noiseprobe.posthoc.sweep` and
:mod:`~lightning_noiseprobe.posthoc.compare` (the runs), :mod:`~lightning_noiseprobe.posthoc.output`
(their files and TensorBoard scalars), :mod:`~lightning_noiseprobe.posthoc.figures`.
"""
