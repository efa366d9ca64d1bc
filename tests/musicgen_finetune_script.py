"""A MusicGen text-to-music fine-tune with transformers' ``Seq2SeqTrainer``, shaped like a
real public one (ylacombe/musicgen-dreamboothing, ``dreambooth_musicgen.py``) with the
README's two lines attached. Run by ``tests/test_trainer_script.py`` as a subprocess.

What it keeps of the original: ``HfArgumentParser`` over model, data and
``Seq2SeqTrainingArguments`` dataclasses; ``AutoProcessor`` + ``MusicgenForConditionalGeneration``
from a folder; audio read and encoded with the model's own codec into delay-pattern
labels (``build_delay_pattern_mask`` / ``apply_delay_pattern_mask``, the first BOS row
dropped); the text tokenized by the processor's tokenizer; its padding collator; a
``Seq2SeqTrainer`` subclass; frozen audio and text encoders; optional LoRA; the processor
given to the Trainer (``processing_class``, the original's ``tokenizer=processor``);
``train`` -> ``save_model`` -> ``save_metrics("train")`` -> ``save_state`` ->
``evaluate`` -> ``save_metrics("eval")``. What it drops: ``datasets`` (a folder of audio
files with ``.json`` sidecars instead), CLAP metrics, generation, W&B, the hub.

Added as a user would: ``--early_stopping_patience N`` (transformers'
``EarlyStoppingCallback``). Test-only flag: ``--fail_probe_at_evals 2,3`` makes the probe fail (a simulated out of
memory) at those evaluations, counted from 1, to exercise the failure policy.

Usage: python musicgen_finetune_script.py --model_name_or_path DIR --train_dir DIR
       --probe_dir DIR --output_dir DIR [Seq2SeqTrainingArguments ...]
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from transformers import (
    AutoProcessor,
    HfArgumentParser,
    MusicgenForConditionalGeneration,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from lightning_noiseprobe import NoiseProbeTrainerCallback

logger = logging.getLogger(__name__)


class MusicgenTrainer(Seq2SeqTrainer):
    """As in the original: pads ``[B, T, K]`` generated tensors (unused without generation)."""

    def _pad_tensors_to_max_len(self, tensor: torch.Tensor, max_length: int) -> torch.Tensor:
        pad_token_id = self.model.config.pad_token_id or 0
        padded = pad_token_id * torch.ones(
            (tensor.shape[0], max_length, tensor.shape[2]), dtype=tensor.dtype, device=tensor.device
        )
        length = min(max_length, tensor.shape[1])
        padded[:, :length] = tensor[:, :length]
        return padded


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "a save_pretrained folder"})
    freeze_text_encoder: bool = field(default=True)
    use_lora: bool = field(default=False)
    probe_dir: str = field(default="", metadata={"help": "clean probe clips"})
    probe_processor: bool = field(
        default=False, metadata={"help": "pass processor= to the callback"}
    )
    probe_onset: int = field(default=60)
    probe_lengths: str = field(default="5,20")
    probe_clip_seconds: float = field(default=4.0)
    early_stopping_patience: int = field(default=0, metadata={"help": "0: no early stopping"})
    fail_probe_at_evals: str = field(default="", metadata={"help": "test hook"})


@dataclass
class DataArguments:
    train_dir: str = field(metadata={"help": "audio files with .json sidecars (description)"})
    eval_dir: str = field(default="")
    max_duration_in_seconds: float = field(default=30.0)


@dataclass
class DataCollatorMusicGenWithPadding:
    """The original's collator: labels padded with -100, text with the tokenizer."""

    processor: Any

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = [torch.as_tensor(f["labels"]).transpose(0, 1) for f in features]
        labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
        input_ids = self.processor.tokenizer.pad(
            [{"input_ids": f["input_ids"]} for f in features], return_tensors="pt"
        )
        return {"labels": labels, **input_ids}


def read_folder(folder: str, processor: Any, model: Any, max_seconds: float) -> list[dict]:
    """The original's ``prepare_audio_features`` + ``apply_audio_decoder`` on a folder."""
    rate = processor.feature_extractor.sampling_rate
    num_codebooks = model.decoder.config.num_codebooks
    pad_id = model.config.decoder.pad_token_id
    pad_labels = torch.ones((1, 1, num_codebooks, 1)) * pad_id
    rows = []
    for path in sorted(Path(folder).glob("*.wav")):
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
        assert sr == rate, f"{path}: {sr} Hz (this script expects {rate})"
        audio = audio.mean(axis=1)[: int(max_seconds * rate)]
        description = json.loads(path.with_suffix(".json").read_text())["description"]
        inputs = processor.feature_extractor(audio, sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            codes = model.audio_encoder.encode(inputs["input_values"])["audio_codes"]
        labels = torch.cat([pad_labels.to(codes.dtype), codes], dim=-1)
        labels, delay_mask = model.decoder.build_delay_pattern_mask(
            labels.squeeze(0), pad_id, labels.shape[-1] + num_codebooks
        )
        labels = model.decoder.apply_delay_pattern_mask(labels, delay_mask)
        rows.append(
            {
                "input_ids": processor.tokenizer(description)["input_ids"],
                "labels": labels[:, 1:].cpu(),  # the first frame is all BOS
            }
        )
    return rows


def trainer_processing_class(processor: Any, model: Any) -> Any:
    """The processor, as the original passes it; on a transformers whose ``Trainer.train``
    aligns special tokens through ``config.get_text_config()`` (5.x, ``trainer_utils.
    align_special_tokens``), which raises for MusicGen (two text configs: T5 and the audio
    decoder), only its feature extractor: then the Trainer aligns nothing, and the
    tokenizer is the one saved beside the model (what a user on 5.x has to do)."""
    import transformers.trainer_utils

    if hasattr(transformers.trainer_utils, "align_special_tokens"):
        try:
            model.config.get_text_config()
        except ValueError:
            return processor.feature_extractor
    return processor


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.WARNING, handlers=[logging.StreamHandler(sys.stdout)])
    set_seed(training_args.seed)

    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    model = MusicgenForConditionalGeneration.from_pretrained(model_args.model_name_or_path)
    model.config.decoder.decoder_start_token_id = model.config.decoder.bos_token_id
    train = read_folder(data_args.train_dir, processor, model, data_args.max_duration_in_seconds)
    evals = read_folder(
        data_args.eval_dir or data_args.train_dir,
        processor,
        model,
        data_args.max_duration_in_seconds,
    )

    model.freeze_audio_encoder()
    if model_args.freeze_text_encoder:
        model.freeze_text_encoder()
    if model_args.use_lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, bias="none"
        )
        model = get_peft_model(model, config)

    trainer = MusicgenTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorMusicGenWithPadding(processor=processor),
        train_dataset=train,
        eval_dataset=evals,
        processing_class=trainer_processing_class(processor, model),
    )

    # --- the README's two lines (a short probe spec so the test runs in seconds) --------
    callback = NoiseProbeTrainerCallback(
        probe_audio=model_args.probe_dir,
        cache_dir="none",
        onset=model_args.probe_onset,
        lengths=tuple(int(x) for x in model_args.probe_lengths.split(",")),
        clip_seconds=model_args.probe_clip_seconds,
        **({"processor": processor} if model_args.probe_processor else {}),
    )
    trainer.add_callback(callback)
    if model_args.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(EarlyStoppingCallback(model_args.early_stopping_patience))
    if model_args.fail_probe_at_evals:
        fail_at = {int(x) for x in model_args.fail_probe_at_evals.split(",")}
        run, calls = callback.engine.run, [0]

        def failing_run(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] in fail_at:
                raise RuntimeError("out of memory (simulated by the test)")
            return run(*args, **kwargs)

        callback.engine.run = failing_run  # type: ignore[method-assign]

    train_result = trainer.train()
    trainer.save_model()
    metrics = train_result.metrics
    metrics["train_samples"] = len(train)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    metrics = trainer.evaluate()
    metrics["eval_samples"] = len(evals)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    print(f"best checkpoint: {trainer.state.best_model_checkpoint}")
    print(f"probe runs: {len(callback.history)}; failures: {len(callback.failures)}")


if __name__ == "__main__":
    main()
