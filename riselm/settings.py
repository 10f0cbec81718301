"""Every setting of riselm, one pydantic model per stage, all named `*Settings`.

The sections of a run config (`riselm run CONFIG.yaml`) are these models, the library functions take
them (`collect(..., CollectSettings())`, `evaluate(..., EvalSettings())`, `train_weighted(..., TrainSettings())`)
and the CLI takes its defaults from them, so a default lives in exactly one place. Every model forbids
unknown keys (a typo is an error naming the key) and checks its numbers once, here.

Seeds are not settings of a stage: a run has one seed (`RunSettings.seed`, `--seed`), and every
sampled conversation is seeded from it with the problem's id, the episode's sample index and the
turn (riselm.rollout.engine.conversation_seed).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from riselm.generation.base import DEFAULT_BATCH_SIZE, SamplingParams
from riselm.hardware import local_backend


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every float finite


class SamplingSettings(_Settings):
    """How responses are sampled (shared by collection, evaluation and online rollouts)."""

    temperature: float = Field(1.0, ge=0)  # the paper samples at 1.0; 0 is greedy
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)

    def params(self, n: int = 1) -> SamplingParams:
        """The backend's per-call parameters for `n` samples per conversation."""
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens)


class TaskSettings(_Settings):
    name: str = "gsm8k"  # a task of `riselm tasks`
    options: dict[str, Any] = {}  # task constructor options (e.g. unparsable_reward: -1, digits: 3)
    train_split: str = "train"  # problems for boosting and collection
    train_data: str | None = None  # your own JSON/JSONL file (or hub id) instead of the shipped train split
    train_limit: int | None = Field(None, ge=1)  # only the first N training problems
    eval_split: str | None = None  # default: the task's test split
    eval_data: str | None = None
    eval_limit: int | None = Field(None, ge=1)


class GeneratorSettings(_Settings):
    """A generation backend for a model (the learner, or an expert improver)."""

    # auto: vllm where it is installed, else hf (riselm.hardware.local_backend), decided when the settings are read,
    # so that the run's config.yaml and riselm.json record the backend that generated
    backend: Literal["auto", "hf", "vllm", "openai"] = "hf"
    model: str | None = None  # model spec; for the learner it is set by the pipeline to the current checkpoint
    base_url: str | None = None  # backend openai: the server's URL
    api_key_env: str = "OPENAI_API_KEY"  # backend openai: the variable holding the key
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)  # backend hf: sequences generated together
    # backends hf, and vllm on a CPU: the weights' dtype for generation (auto: bf16 where the hardware has it
    # natively, riselm.hardware); an explicit options.dtype wins
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    options: dict[str, Any] = {}  # more backend options (e.g. tensor_parallel_size for vllm, send_seed for openai)

    @field_validator("backend")
    @classmethod
    def _resolve_auto(cls, backend: str) -> str:
        return local_backend() if backend == "auto" else backend


REFERENCE = "reference"  # the improver that answers with the task's gold solution (nothing is generated)


class ScheduleStep(_Settings):
    """Who proposes the action of a turn in collection: a model's best of n candidates, or the reference."""

    model: str = "learner"  # "learner", the name of an expert, or "reference" (the task's gold solution)
    n: int = Field(1, ge=1)  # candidates; the best by reward is kept
    # what the candidates are sampled from: the episode so far, or after a wrong turn the question alone
    # ("fresh": a new attempt placed after the history as the turn's action, so that the model learns to
    # re-solve rather than repeat; the turn records context "fresh"). After a right turn
    # (collect.continue_after_correct) candidates always see the history: it shows keeping the answer.
    context: Literal["history", "fresh"] = "history"

    @model_validator(mode="after")
    def _reference_is_one_answer(self) -> ScheduleStep:
        if self.model == REFERENCE and (self.n != 1 or self.context != "history"):
            raise ValueError("the reference improver gives one answer, the gold solution: use n 1 and no context")
        return self


def check_schedule(schedule: list[ScheduleStep], known: list[str], where: str = "collect.schedule") -> None:
    """The one check of an improver schedule: every model it names is known (ValueError naming them)."""
    unknown = sorted({step.model for step in schedule} - {*known, REFERENCE})
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise ValueError(
            f"{where} names model(s) {names}, which {'is' if len(unknown) == 1 else 'are'} not defined; known: {', '.join(known)}"
        )


class CollectSettings(_Settings):
    """RISE data collection (spec section 2): on-policy turn 1, best-of-N improvements after wrong turns."""

    limit: int | None = Field(None, ge=1)  # roll out N training problems each iteration (default: all)
    # which N: "rotate" takes iteration k's slice of N problems (k-th, wrapping around), "first" the first N every time
    limit_slices: Literal["rotate", "first"] = "rotate"
    max_turns: int = Field(5, ge=1)  # the most actions per episode; an episode stops at its first correct one
    window: int | None = Field(None, ge=1)  # context window in attempts: the question plus the last window-1 (None: all)
    schedule: list[ScheduleStep] = Field(
        default_factory=lambda: [ScheduleStep(model="learner", n=1), ScheduleStep(model="learner", n=16)],
        min_length=1,
    )  # per-turn improver; the last entry serves every later turn
    sampling: SamplingSettings = SamplingSettings()
    chunk_size: int = Field(256, ge=1)  # problems rolled out (and saved) together
    episodes_per_problem: int = Field(1, ge=1)  # independent episodes per problem (the single-turn baselines sample several)
    # turns still collected after an episode's first correct one (up to max_turns), so that the data show
    # "right -> retry -> right again": evaluation sends the retry message after right answers too. The
    # paper stops at the first correct action (0).
    continue_after_correct: int = Field(0, ge=0)


class SamplesSettings(_Settings):
    """From collected episodes to weighted training samples (spec section 3)."""

    tau: float = Field(0.4, gt=0)  # weight = exp(reward / tau)
    # scales the weight of every turn that is not correct: a wrong (reward 0) turn weighs wrong_weight
    # (the paper: exp(0 / tau) = 1), an unparsable one (-1) wrong_weight * exp(-1 / tau); 0 trains them not at all
    wrong_weight: float = Field(1.0, ge=0)
    # divide every weight by the data's mean weight, so that tau and wrong_weight change the mix of the
    # samples and not the size of the steps (the loss is not normalised by the weights otherwise)
    normalize: bool = False
    filter: Literal["all", "better", "best", "success"] = "all"
    dedup: bool = True


class LoraSettings(_Settings):
    r: int = Field(16, ge=1)  # adapter rank
    alpha: int = Field(32, ge=1)  # adapter scaling numerator (scale = alpha / r)
    dropout: float = Field(0.05, ge=0, lt=1)  # dropout on the adapter input
    target_modules: list[str] | str = "all-linear"  # module names to adapt, or "all-linear"
    merge: bool = True  # save final/ as a merged full model (False: the adapter alone)


class TrainSettings(_Settings):
    """Reward-weighted fine-tuning (the `train:` and `boost.train:` sections)."""

    # -- optimisation
    learning_rate: float = Field(1e-5, gt=0)  # paper: 1e-5
    lr_scheduler: str = "cosine"  # paper: cosine decay
    warmup_ratio: float = Field(0.04, ge=0, lt=1)  # paper: the first 4% of the steps warm up linearly
    weight_decay: float = Field(0.0, ge=0)  # paper: 0
    epochs: float = Field(1.0, gt=0)  # passes over the samples (the paper does not state it)
    max_steps: int = Field(-1, ge=-1)  # stop after this many optimizer steps (-1: run all epochs)
    optimizer: str = "adamw_torch"  # a transformers optimizer name ("adamw_torch", "sgd", …)
    max_grad_norm: float = Field(1.0, ge=0)  # gradient clipping (0 turns it off)
    # -- batches: effective batch = batch_size × grad_accum × processes (paper: 64)
    batch_size: int = Field(8, ge=1)  # samples (not rows) per process per forward pass, with or without share_prefixes
    grad_accum: int = Field(8, ge=1)  # micro-batches accumulated per optimizer step
    max_length: int = Field(2048, ge=2)  # tokens per sample; longer contexts are cut from the left (paper: 2048)
    packing: bool = False  # one padding-free row per micro-batch; pays with flash_attention_2 (slower with sdpa)
    # the turns of an episode that fall in one batch share a row: the same samples, steps and loss, the
    # shared context computed once (batches are cut from a seeded order that keeps an episode's samples together)
    share_prefixes: bool = True
    # -- precision and memory
    # bf16: autocast with float32 master weights; auto: bf16 where the hardware has it natively (riselm.hardware)
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory (paper: on, for 7B)
    attn_implementation: str | None = "sdpa"  # "sdpa", "eager", "flash_attention_2"; None: transformers' choice
    lora: LoraSettings | None = None  # train LoRA adapters instead of all weights (paper: full fine-tuning)
    # -- bookkeeping
    seed: int = 0  # data order, dropout, new weights
    logging_steps: int = Field(10, ge=1)  # log loss and learning rate every this many steps
    report_to: list[str] | str = []  # "tensorboard", "wandb"; empty: no logging service
    save_steps: int = Field(500, ge=1)  # write a resumable checkpoint every this many steps
    save_total_limit: int | None = Field(2, ge=1)  # keep at most this many checkpoints
    resume: bool = True  # continue from the last complete checkpoint found in the output dir


class BoostSettings(_Settings):
    """Supervised fine-tuning on gold solutions before the first iteration (spec section 4)."""

    enabled: bool = False
    history_turns: int = Field(0, ge=0)  # prepend up to this many wrong attempts (+ retry message) before the gold solution
    every_depth: bool = True  # one sample per number of attempts 0..history_turns (False: one, drawn at random)
    limit: int | None = Field(None, ge=1)  # gold solutions used (default: all training problems)
    # the wrong attempts in front of the gold solution: the gold solution with a corrupted answer, or the
    # starting model's own wrong answers ("own": `own_samples` first answers a problem are sampled first,
    # into boost/collect/; a problem the model never gets wrong falls back to a corrupted solution)
    wrong_attempts: Literal["corrupt", "own"] = "corrupt"
    own_samples: int = Field(2, ge=1)
    train: TrainSettings = TrainSettings()


class EvalSettings(_Settings):
    """Multi-turn evaluation (spec section 5): K sequential turns and k parallel first turns."""

    turns: int = Field(5, ge=1)  # sequential turns K; the retry message follows every turn, right or wrong
    parallel_samples: int = Field(5, ge=0)  # k independent first turns per problem, for mk@t1 (0: none)
    window: int | None = Field(None, ge=1)  # context window: the question plus the last window-1 attempts
    sampling: SamplingSettings = SamplingSettings()
    chunk_size: int = Field(256, ge=1)  # problems generated (and saved) together
    system: str | None = None  # an optional system message before the prompt
    # what follows a turn: the task's retry message (RISE), or Self-Refine (the model writes feedback on
    # its own answer, then is asked to improve it using that feedback)
    feedback: Literal["retry", "self_refine"] = "retry"
    base: bool = False  # run config only: also evaluate the starting model
    boost: bool = True  # run config only: evaluate the boosted model too (false: its time goes to the next stage's row)


class CreditSettings(_Settings):
    """How per-turn rewards become per-turn advantages (see the module docstring for the formulas)."""

    # "return_to_go": credit a turn with the (discounted) shaped rewards of itself and every later turn
    # of its episode; "reward": with its own shaped reward only.
    returns: Literal["reward", "return_to_go"] = "return_to_go"
    # γ of the return-to-go; 1 keeps the policy gradient of the undiscounted sum of rewards.
    discount: float = Field(1.0, ge=0.0, le=1.0)
    # α of SCoRe's shaping r'_t = r_t + α·(r_t − r_{t−1}) for t > 1: rewards improving over the last turn.
    improvement_bonus: float = Field(0.0, ge=0.0)
    # β subtracted from r'_t when turn t−1 was correct and turn t is not (a right answer made wrong).
    regression_penalty: float = Field(0.0, ge=0.0)
    # A reward at or above this counts as correct for the regression penalty (tasks give 1 for correct).
    correct_threshold: float = 1.0
    # "leave_one_out": subtract the mean return at the same turn of the problem's other episodes that
    # reached it (unbiased), or of the turn's other candidates when it sampled several (`online.candidates`);
    # "none": the raw return (REINFORCE).
    baseline: Literal["leave_one_out", "none"] = "leave_one_out"
    # Divide by the std of those peers' returns (at least 2 peers); re-weights problems, see above.
    scale_by_std: bool = False
    # Peers' std at or below eps counts as zero: no scaling, rather than dividing by almost nothing.
    eps: float = Field(1e-6, ge=0.0)


class OnlineSettings(_Settings):
    """Online multi-turn RL (`method: online`): roll out with the live policy, credit every turn, update.

    Each step takes `problems_per_step` training problems, rolls out `episodes_per_problem` episodes
    of each (the retry message after every turn, `turns` turns, or until the first correct one), gives
    every turn an advantage (`credit`; a turn that sampled n > 1 candidates credits them against each
    other, as they share one state) and updates the policy on each turn's action tokens only.

    Sampling must be plain temperature sampling (temperature > 0, top_p 1): the importance ratios
    compare the trained policy, softmax(logits / temperature), with the log-probs the sampler recorded,
    and a nucleus-truncated sampler is another policy (every ratio below 1, clipped as if stale).
    """

    steps: int = Field(100, ge=1)  # optimizer updates of the policy (times updates_per_batch)
    problems_per_step: int = Field(32, ge=1)  # B: training problems rolled out per step
    episodes_per_problem: int = Field(4, ge=1)  # G: independent episodes per problem (each other's baseline)
    turns: int = Field(5, ge=1)  # K: the most actions per episode
    stop_when_correct: bool = False  # end an episode at its first correct turn (RISE collection) or run all K
    window: int | None = Field(None, ge=1)  # context window: the question plus the last window-1 attempts
    candidates: list[int] = Field(default_factory=lambda: [1], min_length=1)  # samples per turn; the last repeats
    # what a turn after a wrong one is sampled from: the episode so far (on-policy), or the question alone
    # ("fresh", collection's `context: fresh` online: new attempts, trained after the history, so that the
    # policy learns to re-solve instead of repeating its failed attempt; after a right turn candidates see
    # the history). Fresh actions are not the policy's samples in the history context, so they need
    # objective awr: a policy gradient's importance ratios to them vanish
    context: Literal["history", "fresh"] = "history"
    # train every candidate of a turn (credited against each other) or only the chosen one (the best, which
    # the episode continues with): with credit {returns: reward, baseline: none} and objective awr, the
    # latter is RISE's own loss, online
    train_candidates: Literal["all", "chosen"] = "all"
    sampling: SamplingSettings = SamplingSettings()
    credit: CreditSettings = CreditSettings()
    # -- objective
    objective: Literal["pg", "awr"] = "pg"  # clipped policy gradient, or advantage-weighted regression exp(A/tau)
    clip_eps: float = Field(0.2, gt=0)  # pg: the ratio is clipped to [1-eps, 1+eps]
    kl_coef: float = Field(0.0, ge=0)  # KL penalty to the model the online stage starts from
    monitor_kl: bool = True  # report that KL every step even when kl_coef is 0 (one more forward pass per batch)
    awr_tau: float = Field(0.4, gt=0)  # awr: weight exp(A / tau)
    awr_max_weight: float | None = Field(20.0, gt=0)  # awr: weights are clamped to this
    reduction: Literal["token_mean", "turn_mean"] = "token_mean"  # how token losses are averaged (pg)
    # -- optimisation
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)  # 0: no clipping
    warmup_steps: int = Field(0, ge=0)  # linear warm-up, then a constant rate
    updates_per_batch: int = Field(1, ge=1)  # passes over each batch (every pass: ratios against the sampler's log-probs)
    minibatches: int = Field(1, ge=1)  # optimizer steps per pass: the batch's actions split into this many groups
    micro_batch: int = Field(64, ge=1)  # turns per forward/backward pass (gradients accumulate over the batch)
    # -- bookkeeping
    eval_every: int = Field(0, ge=0)  # evaluate every this many steps (0: only at the end)
    save_every: int = Field(10, ge=1)  # write a resumable checkpoint every this many steps
    report_to: list[Literal["tensorboard"]] = []  # also log each step's metrics there
    sync_every: int = Field(1, ge=1)  # vllm backend: hand the engine new weights every this many steps

    @model_validator(mode="after")
    def _samples_the_policy_it_trains(self) -> OnlineSettings:
        if self.sampling.top_p < 1:
            raise ValueError(
                f"online.sampling.top_p must be 1 (got {self.sampling.top_p}): online RL trains softmax(logits / "
                "temperature) and takes its ratios against the sampled tokens' log-probs; a top-p sampler is another policy"
            )
        if self.sampling.temperature <= 0:
            raise ValueError("online.sampling.temperature must be above 0: online RL samples its actions (greedy has no policy to train)")
        if self.context == "fresh" and self.objective != "awr":
            raise ValueError(
                f"online.context fresh needs online.objective awr (got {self.objective}): fresh actions are sampled "
                "from the question alone, so the policy gradient's importance ratios in the history context vanish"
            )
        return self


class DistributedSettings(_Settings):
    """Processes of one run (riselm.distributed): collection and evaluation sharded, training data-parallel."""

    processes: int | None = Field(None, ge=1)  # per node (None: one per visible GPU; one on a machine without)
    strategy: Literal["ddp", "fsdp", "zero3"] = "ddp"  # how training shards the model (fsdp, zero3: GPUs only)
    nodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)  # this node's index (0 for the node at main_address)
    main_address: str = "127.0.0.1"  # the address of node 0
    main_port: int = Field(29500, ge=1, le=65535)
    timeout_s: int = Field(1800, ge=1)  # the longest a process waits for the others at a barrier

    @model_validator(mode="after")
    def _node_rank_in_range(self) -> DistributedSettings:
        if self.node_rank >= self.nodes:
            raise ValueError(f"distributed.node_rank {self.node_rank} must be below distributed.nodes ({self.nodes})")
        return self


class RunSettings(_Settings):
    """A whole `riselm run`: boost -> iteration 1 -> iteration 2 ..."""

    out: str = "runs/rise"  # the run directory; running again resumes there
    # what follows the boost: RISE's iterations; RISE trained on successful turns only (the paper's Fig. 3
    # ablation); the single-turn baselines filtered SFT on the learner's own correct first turns
    # (STaR/RFT) and reward-weighted training on its correct and wrong first turns; or online RL
    method: Literal["rise", "rise_success", "filtered_sft", "single_turn_rwr", "online"] = "rise"
    task: TaskSettings = TaskSettings()
    model: str = "smollm2"  # the starting learner (local dir, hub id, .gguf, or a named model)
    train_model: str | None = None  # weak-to-strong: train this model on data collected by `model`
    learner: GeneratorSettings = GeneratorSettings()  # how the learner generates
    experts: dict[str, GeneratorSettings] = {}  # improvers other than the learner, by name
    boost: BoostSettings = BoostSettings()
    iterations: int = Field(2, ge=0)
    init_from: Literal["previous", "base"] = "previous"  # each iteration trains from the last model or the base
    aggregate: bool = False  # train each iteration on the data of all iterations so far
    collect: CollectSettings = CollectSettings()
    samples: SamplesSettings = SamplesSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    online: OnlineSettings = OnlineSettings()  # method: online
    distributed: DistributedSettings = DistributedSettings()  # several processes (one per GPU), several nodes
    seed: int = Field(0, ge=0)  # the run seed: every sampled conversation, the boost data and the demo model
    threads: int | None = Field(None, ge=1)  # torch CPU threads, at most the usable CPUs (None: torch's default)

    @model_validator(mode="after")
    def _improvers_known(self) -> RunSettings:
        check_schedule(self.collect.schedule, ["learner", *self.experts])
        for name, expert in self.experts.items():
            if expert.model is None:
                raise ValueError(f"experts.{name}.model is required")
            if expert.backend == "openai" and not expert.base_url:
                raise ValueError(f"experts.{name}: backend openai needs base_url")
        return self


def default(settings: type[BaseModel], field: str) -> Any:
    """The default of a settings field (the CLI takes its option defaults from here)."""
    info = settings.model_fields[field]
    return info.get_default(call_default_factory=True)
