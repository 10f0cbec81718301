"""Fine-tuning settings of `riselm train` and of the training stages of `riselm run`.

The field names match the `train:` section of the run config (riselm.config.TrainSection), so a
section validates into a TrainConfig as it is; the extra fields here have defaults. Defaults follow
the RISE reference run (spec §3) where it states them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)  # adapter rank
    alpha: int = 32  # adapter scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the adapter input
    target_modules: list[str] | str = "all-linear"  # module names to adapt, or "all-linear"
    merge: bool = True  # save final/ as a merged full model (False: the adapter alone)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # -- optimisation
    learning_rate: float = 1e-5  # paper: 1e-5
    lr_scheduler: str = "cosine"  # paper: cosine decay
    warmup_ratio: float = Field(0.04, ge=0, lt=1)  # paper: the first 4% of the steps warm up linearly
    weight_decay: float = 0.0  # paper: 0
    epochs: float = 1.0  # passes over the samples (the paper does not state it)
    max_steps: int = -1  # stop after this many optimizer steps (-1: run all epochs)
    optimizer: str = "adamw_torch"  # a transformers optimizer name ("adamw_torch", "sgd", …)
    max_grad_norm: float = 1.0  # gradient clipping (0 turns it off)
    # -- batches: effective batch = batch_size × grad_accum × processes (paper: 64)
    batch_size: int = Field(8, ge=1)  # samples per process per forward pass
    grad_accum: int = Field(8, ge=1)  # micro-batches accumulated per optimizer step
    max_length: int = Field(2048, ge=2)  # tokens per sample; longer contexts are cut from the left (paper: 2048)
    packing: bool = False  # one padding-free row per micro-batch; pays with flash_attention_2 (slower with sdpa)
    share_prefixes: bool = True  # all turns of an episode in one row: same loss, shared context computed once (batch_size then counts rows)
    # -- precision and memory
    bf16: bool | None = None  # bf16 mixed precision; None: on when the GPU supports it (never on CPU)
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory (paper: on, for 7B)
    attn_implementation: str | None = "sdpa"  # "sdpa", "eager", "flash_attention_2"; None: transformers' choice
    lora: LoraSettings | None = None  # train LoRA adapters instead of all weights (paper: full fine-tuning)
    # -- bookkeeping
    seed: int = 0  # data order, dropout, new weights
    logging_steps: int = 10  # log loss and learning rate every this many steps
    report_to: list[str] | str = []  # "tensorboard", "wandb"; empty: no logging service
    save_steps: int = 500  # write a resumable checkpoint every this many steps
    save_total_limit: int | None = 2  # keep at most this many checkpoints
    resume: bool = True  # continue from the last checkpoint found in the output dir

    @classmethod
    def from_settings(cls, settings: Any) -> "TrainConfig":
        """A TrainConfig from None (defaults), a TrainConfig, a dict, or a pydantic model with these field names."""
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        if isinstance(settings, BaseModel):
            settings = settings.model_dump()
        return cls.model_validate(settings)
