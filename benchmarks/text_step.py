"""MiniLM fine-tuning step: one padded batch vs length buckets vs cached lower layers.

A training batch of B captions is padded to its longest caption; Flickr8k captions average
14 tokens while the longest of 128 averages ~29, so half the transformer's work is padding.
``model.text.length_buckets: k`` sorts the batch by length and runs k groups, each padded to
its own longest caption (same embeddings). ``train_layers: 2`` trains only the top 2 of the 6
layers; ``cache_lower_layers`` then computes the fixed lower 4 once per caption and each step
runs only the top 2. This script times one fine-tuning step (batch → MiniLM → mean pooling →
projection → a loss → backward → AdamW) on the same random training batches of the Flickr8k
pack for each setting, in one run, and asserts that every setting's evaluation embeddings agree
with one padded batch (the padding trimmed is masked out, so only float rounding differs).
The one-off cost of the cache (all training captions) is printed too.

    python benchmarks/text_step.py                        # B = 128, 8 timed steps each
    python benchmarks/text_step.py --steps 3 --threads 1  # quicker
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from vsekit.data.dataset import RetrievalSplit
from vsekit.data.formats.flickr8k import Flickr8kParams, load_flickr8k
from vsekit.models import TEXT_ENCODERS, ModelContext
from vsekit.models.text import HFEncoder

SETTINGS = {
    "one padded batch": {"length_buckets": 1},
    "length_buckets 4": {"length_buckets": 4},
    "train_layers 2, buckets 4": {"train_layers": 2},
    "train_layers 2, cached lower 4": {"train_layers": 2, "cache_lower_layers": True},
}


def build_encoder(setting: dict) -> HFEncoder:
    """Trainable MiniLM + 512-d projection, seeded so every setting starts from the same
    weights."""
    torch.manual_seed(0)
    name, params = TEXT_ENCODERS.parse({"type": "hf", "max_length": 48, **setting},
                                       "model.text")
    return TEXT_ENCODERS.build(name, params, context=ModelContext(embed_dim=512,
                                                                  image_kind="features"))


def eval_embeddings(encoder: HFEncoder, split: RetrievalSplit, rows: np.ndarray
                    ) -> torch.Tensor:
    """Eval-mode embeddings [len(rows), 512] of captions ``rows``."""
    encoder.eval()
    with torch.no_grad():
        embeddings = encoder(**encoder.prepare(split, rows))
    encoder.train()
    return embeddings


def time_steps(encoder: HFEncoder, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """Seconds of each training step (forward, loss, backward, AdamW) over ``batches``."""
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5)
    encoder.train()
    seconds = []
    for tokens in batches:
        start = time.perf_counter()
        emb = torch.nn.functional.normalize(encoder(**tokens), dim=-1)
        loss = (emb @ emb.T).logsumexp(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/flickr8k", help="the Flickr8k pack")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train = load_flickr8k(Flickr8kParams(root=args.root, caption_features=False,
                                         splits=["train"]))["train"]
    rng = np.random.default_rng(0)
    rows = [rng.choice(len(train.captions), args.batch, replace=False)
            for _ in range(args.steps + 1)]
    probe = rows[0][:64]
    times, one_off = {}, {}
    reference = None
    for label, setting in SETTINGS.items():
        encoder = build_encoder(setting)
        start = time.perf_counter()
        batches = [encoder.prepare(train, r) for r in rows]
        one_off[label] = time.perf_counter() - start
        emb = eval_embeddings(encoder, train, probe)
        reference = emb if reference is None else reference
        gap = float((emb - reference).abs().max())
        assert gap < 1e-4, f"{label}: embeddings differ from one padded batch by {gap}"
        times[label] = statistics.median(time_steps(encoder, batches)[1:])
        if label == "one padded batch":
            padded = statistics.mean(b["attention_mask"].numel() for b in batches)
            tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), batch {args.batch}, {args.steps} timed steps each")
    print(f"real tokens per batch {tokens:.0f}, padded to one length {padded:.0f}")
    base = times["one padded batch"]
    for label, t in times.items():
        print(f"{label:32s} {t:.3f} s/step   speed-up {base / t:.2f}x")
    print(f"cache of all {len(train.captions)} training captions: "
          f"{one_off['train_layers 2, cached lower 4']:.1f} s once")


if __name__ == "__main__":
    main()
