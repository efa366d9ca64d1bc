"""Read the probe's metrics and figures back from TensorBoard event files.

python examples/read_tensorboard_metrics.py runs/demo/tensorboard/version_0
python examples/read_tensorboard_metrics.py runs/demo/tensorboard/version_0 --save-figures figs/
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("log_dir", help="a TensorBoard run folder (holds events.out.tfevents.*)")
    parser.add_argument(
        "--save-figures", metavar="DIR", help="also write the latest probe figures as PNG files"
    )
    args = parser.parse_args()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(args.log_dir, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = sorted(
        t for t in acc.Tags()["scalars"] if t.startswith("noiseprobe/") and t.count("/") == 1
    )
    if not scalars:
        raise SystemExit(
            f"no noiseprobe/ scalars in {args.log_dir}; is it a run with NoiseProbeCallback?"
        )
    steps = [e.step for e in acc.Scalars(scalars[0])]
    print("step      " + "  ".join(f"{t.split('/')[1][:14]:>14}" for t in scalars))
    for i, step in enumerate(steps):
        print(f"{step:<9d} " + "  ".join(f"{acc.Scalars(t)[i].value:>14.4f}" for t in scalars))
    if args.save_figures:
        out = Path(args.save_figures)
        out.mkdir(parents=True, exist_ok=True)
        for tag in acc.Tags()["images"]:
            image = acc.Images(tag)[-1]
            path = out / (tag.replace("/", "_") + ".png")
            path.write_bytes(image.encoded_image_string)
            print(f"wrote {path} (step {image.step})")


if __name__ == "__main__":
    main()
