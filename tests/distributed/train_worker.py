"""Train a tiny model on fixed weighted samples; run alone or under `python -m torch.distributed.run`.

python tests/distributed/train_worker.py OUT PER_PROCESS_BATCH [STRATEGY]
"""

import sys

import torch

from riselm.models import build_char_tokenizer, build_tiny_model
from riselm.settings import TrainSettings
from riselm.training.samples import TrainingSample
from riselm.training.trainer import train_weighted


def samples() -> list[TrainingSample]:
    out = []
    for i in range(8):
        messages = [
            {"role": "user", "content": f"What is {i}+{i}?"},
            {"role": "assistant", "content": f"{i}+{i}={2 * i} \\boxed{{{2 * i}}}"},
        ]
        out.append(TrainingSample(messages, reward=float(i % 2), weight=[1.0, 12.2, 0.3, 2.0][i % 4], episode_id=f"p{i}", turn=0))
    return out


if __name__ == "__main__":
    out, batch = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=0)
    settings = TrainSettings(
        batch_size=batch,
        grad_accum=1,
        max_steps=3,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        save_steps=1000,
        logging_steps=1000,
        share_prefixes=False,
        precision="fp32",  # the test compares weights closely: bf16 (auto on a CPU with AVX512-BF16) rounds
    )
    train_weighted(model, samples(), out, settings, tokenizer=tokenizer, show_progress=False)
