"""Bulk text-embedding throughput of the MiniLM text tower (what the data builders run).

Run from the repository root:

    .venv/bin/python benchmarks/text_embedding.py
    .venv/bin/python benchmarks/text_embedding.py --baseline       # also the old settings
    .venv/bin/python benchmarks/text_embedding.py --full           # all Weather-Captioned texts

The sample mirrors what the builders embed: ``--captions`` Weather-Captioned captions (the real
v1-v3 captions: each block's sentences from ``date2hash/wm_messages_vN.json`` resolved through
``hash2text/hashtable.json`` and joined by spaces, ~7 sentences, 46-122 tokens), ``--channel``
channel sentences (the temperature, wind, pressure and humidity sentences of the v1 captions,
7-40 tokens) and every distinct Time-MMD report fact (``textual/*/*_report.csv``, column
``fact``, 'NA' dropped; up to 256 tokens). ``--full`` embeds every distinct Weather-Captioned
text instead (captions of all three versions plus channel sentences, ~23,700 texts).

What is printed:
  lengths     the token-length percentiles (special tokens included) and the total of real
              tokens, which is what tokens/s counts (padding is not counted);
  plan        per configuration: the buckets it pads to, batches, distinct batch shapes (each
              compiles once) and the share of the computed tokens that are real;
  cold        the first call of a fresh encoder: tokenising, compiling each shape, computing;
  warm        the same texts again (`--repeats` times, the best kept): compute only;
  cpu tok/s   real tokens per CPU second of this process (user + system, all threads). On a
              shared machine wall time swings with other jobs' load while CPU time mostly does
              not, so compare configurations on both; load is the 1-minute load average.
With ``--baseline`` the old settings (buckets 16/32/64/128/256, 64 rows per batch, every bucket
a text needs) run first in the same process, and the speed-up line follows.

The last line is ``text_embed_tokens_per_s=<value>``: real tokens per wall second of the warm
run with the default settings.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import pathlib
import random
import time

import numpy as np

from trace_jax.text import TextEncoder
from trace_jax.text import embed as embed_mod

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
OLD_SETTINGS = dict(batch_size=64, buckets=(16, 32, 64, 128, 256))


def weather_texts(root: pathlib.Path) -> tuple[list[str], list[str]]:
    """(captions of v1-v3, v1 channel sentences): distinct, sorted."""
    table = json.loads((root / "hash2text" / "hashtable.json").read_text(encoding="utf-8"))
    sentence = {h: " ".join(s.split()) for s, h in table.items()}
    captions, channel = set(), set()
    for version in (1, 2, 3):
        path = root / "date2hash" / f"wm_messages_v{version}.json"
        for hashes in json.loads(path.read_text(encoding="utf-8")).values():
            sents = [sentence[h] for h in hashes if h in sentence]
            if sents:
                captions.add(" ".join(sents))
            if version == 1 and len(sents) == 7:
                channel.update(s for s in sents[3:] if s)  # temperature .. humidity
    return sorted(captions), sorted(channel)


def time_mmd_facts(root: pathlib.Path) -> list[str]:
    facts = set()
    for path in sorted(glob.glob(str(root / "textual" / "*" / "*_report.csv"))):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                fact = (row.get("fact") or "").strip()
                if fact and fact.upper() != "NA":
                    facts.add(fact)
    return sorted(facts)


def describe_plan(encoder: TextEncoder, lengths: list[int]) -> str:
    _, batches = encoder.plan(lengths)
    padded = sum(length * rows for _, _, length, rows in batches)
    shapes = sorted({(rows, length) for _, _, length, rows in batches}, key=lambda s: s[1])
    return (
        f"buckets {[s[1] for s in shapes]}, {len(batches)} batches, {len(shapes)} shapes, "
        f"real tokens {sum(lengths) / padded:.1%} of computed"
    )


def run(
    name: str, base: TextEncoder, settings: dict, texts: list[str], real: int, repeats: int
) -> float:
    encoder = TextEncoder(base.params, base.tokenizer, base.sha256, **settings)
    lengths = [len(x) for x in encoder.tokenizer.encode(texts)[0]]
    print(f"[{name}] {settings}: {describe_plan(encoder, lengths)}", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    first = encoder.embed(texts, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"[{name}] cold {wall:6.1f} s (cpu {cpu:6.1f} s, {encoder.trace_count} compilations)"
        f"  {len(texts) / wall:7.1f} texts/s  {real / wall:7.0f} tok/s"
        f"  load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    best = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = encoder.embed(texts, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best = wall if best is None else min(best, wall)
        print(
            f"[{name}] warm {wall:6.1f} s (cpu {cpu:6.1f} s)"
            f"  {len(texts) / wall:7.1f} texts/s  {real / wall:7.0f} tok/s"
            f"  {real / cpu:7.0f} cpu tok/s  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        assert np.array_equal(out, first), "a second call gave other embeddings"
    return real / best if best else real / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captions", type=int, default=3000)
    ap.add_argument("--channel", type=int, default=3000)
    ap.add_argument("--no-facts", action="store_true", help="leave the Time-MMD facts out")
    ap.add_argument(
        "--full", action="store_true", help="embed every distinct Weather-Captioned text (no facts)"
    )
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also run the old settings (buckets 16..256, 64 rows) first",
    )
    ap.add_argument("--repeats", type=int, default=1, help="warm runs per configuration")
    ap.add_argument("--tokens-per-batch", type=int, default=None)
    ap.add_argument("--data", type=pathlib.Path, default=SHARED)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    captions, channel = weather_texts(args.data / "weather_captioned")
    facts = [] if args.no_facts or args.full else time_mmd_facts(args.data / "time_mmd")
    if args.full:
        texts = sorted(set(captions) | set(channel))
        what = f"all {len(texts)} distinct Weather-Captioned texts"
    else:
        rng = random.Random(args.seed)
        texts = (
            rng.sample(captions, min(args.captions, len(captions)))
            + rng.sample(channel, min(args.channel, len(channel)))
            + facts
        )
        rng.shuffle(texts)
        what = (
            f"{min(args.captions, len(captions))} captions + "
            f"{min(args.channel, len(channel))} channel sentences + {len(facts)} facts"
        )

    base = TextEncoder.load()
    t0 = time.perf_counter()
    lengths = np.array([len(x) for x in base.tokenizer.encode(texts)[0]])
    tok_s = time.perf_counter() - t0
    real = int(lengths.sum())
    pct = np.percentile(lengths, [0, 10, 50, 90, 99, 100]).astype(int).tolist()
    print(
        f"sample: {what} = {len(texts)} texts, {real} real tokens "
        f"(tokenised in {tok_s:.1f} s); {os.cpu_count()} CPUs, "
        f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"lengths: mean {lengths.mean():.1f}, percentiles 0/10/50/90/99/100: {pct}")

    settings = {}
    if args.tokens_per_batch is not None:
        settings["tokens_per_batch"] = args.tokens_per_batch
    old = None
    if args.baseline:
        # The old code padded to every bucket a text needed: no compile-cost trade-off.
        saved, embed_mod.COMPILE_COST_TOKENS = embed_mod.COMPILE_COST_TOKENS, 0
        try:
            old = run("old", base, OLD_SETTINGS, texts, real, args.repeats)
        finally:
            embed_mod.COMPILE_COST_TOKENS = saved
    new = run("new", base, settings, texts, real, args.repeats)
    if old is not None:
        print(f"speed-up (warm, wall): {new / old:.2f}x")
    print(f"text_embed_tokens_per_s={new:.0f}")


if __name__ == "__main__":
    main()
