"""Built-in synthetic captioned data set: zero-download default and test fixture.

Never the source of reported results. Each example is a 96-hour window (hourly steps, T=96) of
C=5 named channels, in the schema of ``docs/data_schema.md``:

=====  ==============  ======  =================================
id     channel         unit    level (uniform) and scale per unit
=====  ==============  ======  =================================
0      temperature     degC    5..25, 1.0
1      humidity        %       30..50, 3.0
2      load            MW      300..600, 25.0
3      price           EUR/MWh 30..80, 5.0
4      wind speed      m/s     8..12, 0.8 (clipped at 0)
=====  ==============  ======  =================================

The relation between series and captions is real: every channel draws attributes, the series is
built from them (``series = level + scale * shape``) and the texts are rendered from the same
attributes by templates.

Attributes per channel (stored beside the schema as ``attr_*`` (C,) int32 features):

- ``attr_trend``: 0 flat (p=.4), 1 rising (p=.3), 2 falling (p=.3); a linear ramp of total
  height 4..7 scale units across the window.
- ``attr_shift``: 0 none, 1 steps up, 2 steps down (only for flat channels, p=.15 each); a level
  step of 2.5..4 units at 45..55 % of the window.
- ``attr_cycle``: 1 strong daily cycle (p=.5): a 24-step sine of amplitude 1.5..2.5 units whose
  peak hour depends on the channel; 0 none.
- ``attr_spike``: 0 none (p=.7), 1 at the start (steps 3..12), 2 in the middle (42..54),
  3 near the end (84..93), p=.1 each; a sharp 3-step spike of height 6..9 units.
- ``attr_noise``: 0 low (p=.6, sigma 0.15 units), 1 high (sigma 0.7 units).

Missing data: each channel has, with p=.25, one missing span of 6..18 steps that never covers the
spike (``observed`` False, ``series`` 0 there); with p=.08 an example has one fully unobserved
channel: its series is all 0, its channel text '' and invalid, and no text mentions it.

Texts. Every fact has three paraphrase templates. The sample text has V=3 paraphrases (template
0, 1, 2): the most salient fact (spike, else trend or level shift with the daily cycle, else the
cycle) of the two most salient observed channels (score: spike 3, trend or shift 2, daily cycle
1; ties broken at random), e.g. "Temperature rises steadily with a strong daily cycle while load
spikes sharply near the end." Each observed channel has one channel text, in a template picked
at random, describing all of its attributes, e.g. "Load holds steady with no daily cycle, and
shows a sudden spike late in the window. Noise is low." A fraction ``uncaptioned_fraction`` of
examples (default 0.1) has no texts at all (``num_texts`` 0). Distinct texts are bounded
(at most 1,200 channel texts and about 5,000 sample texts whatever the size; 2,000 examples use
about 2,700), so the text tower runs once per distinct text and a rebuild is a cache hit.

Label (3 classes, the net direction of the observed channels): with r the number of rising or
stepping-up channels and f the number of falling or stepping-down ones, 0 "upward" if r > f,
1 "downward" if f > r, 2 "balanced" otherwise.

Timestamps: consecutive, non-overlapping 96-hour windows from 2021-01-01T00:00Z; a split starts
at window ``first_window`` (``synthetic_splits`` puts validation after train).

Generation is per example (``numpy.random.default_rng([seed, split, k])``), so example k does not
depend on the number of examples; the train and validation splits draw from different streams.
All distinct texts are embedded once at construction through a ``TextEmbeddingCache``; the data
source then holds only numpy arrays (it is cheap to copy into Grain worker processes).
"""

from __future__ import annotations

import operator
from typing import Sequence

import numpy as np

from trace_jax.data.text_cache import TextEmbeddingCache

CHANNELS = ("temperature", "humidity", "load", "price", "wind speed")
UNITS = ("degC", "%", "MW", "EUR/MWh", "m/s")
NUM_CHANNELS = len(CHANNELS)
NUM_STEPS = 96
STEP_SECONDS = 3600
NUM_PARAPHRASES = 3
EMBEDDING_DIM = 384
EPOCH_START = 1_609_459_200  # 2021-01-01T00:00:00Z

LABELS = ("upward", "downward", "balanced")
SPLITS = {"train": 0, "validation": 1, "test": 2}

TREND_FLAT, TREND_RISING, TREND_FALLING = 0, 1, 2
SHIFT_NONE, SHIFT_UP, SHIFT_DOWN = 0, 1, 2
SPIKE_NONE, SPIKE_START, SPIKE_MIDDLE, SPIKE_END = 0, 1, 2, 3
NOISE_LOW, NOISE_HIGH = 0, 1

_LEVEL = ((5.0, 25.0), (30.0, 50.0), (300.0, 600.0), (30.0, 80.0), (8.0, 12.0))
_SCALE = (1.0, 3.0, 25.0, 5.0, 0.8)
_PEAK_HOUR = (15.0, 5.0, 18.0, 19.0, 14.0)  # hour of the daily maximum, per channel
_SPIKE_CENTRE = {SPIKE_START: (3, 12), SPIKE_MIDDLE: (42, 54), SPIKE_END: (84, 93)}
_NOISE_SIGMA = (0.15, 0.7)

# Three paraphrase templates per fact.
_TREND = {
    TREND_RISING: ("rises steadily", "climbs over the window", "trends upward"),
    TREND_FALLING: ("falls steadily", "declines over the window", "trends downward"),
    TREND_FLAT: ("holds steady", "stays roughly level", "shows no clear trend"),
}
_SHIFT = {
    SHIFT_UP: (
        "steps up abruptly halfway through",
        "jumps to a higher level midway",
        "shifts upward in the middle",
    ),
    SHIFT_DOWN: (
        "steps down abruptly halfway through",
        "drops to a lower level midway",
        "shifts downward in the middle",
    ),
}
_CYCLE_WITH = (
    "with a strong daily cycle",
    "with pronounced day-night swings",
    "following a clear 24-hour rhythm",
)
_NO_CYCLE_WITH = ("with no daily cycle", "without a daily pattern", "with no regular daily swing")
_CYCLE_VERB = (
    "cycles strongly through the day",
    "swings between day and night",
    "follows a clear 24-hour rhythm",
)
_SPIKE = {
    SPIKE_START: (
        "spikes sharply at the start",
        "shows a sudden spike early on",
        "has a brief surge at the beginning",
    ),
    SPIKE_MIDDLE: (
        "spikes sharply in the middle",
        "shows a sudden spike midway",
        "has a brief surge mid-window",
    ),
    SPIKE_END: (
        "spikes sharply near the end",
        "shows a sudden spike late in the window",
        "has a brief surge at the end",
    ),
}
_NOISE = {
    NOISE_LOW: ("The signal is smooth.", "Noise is low.", "Fluctuations are small."),
    NOISE_HIGH: ("The signal is noisy.", "Noise is high.", "It fluctuates erratically."),
}
_JOIN = ("{a} while {b}.", "{a}; meanwhile, {b}.", "{a}, whereas {b}.")


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def _movement(trend: int, shift: int, v: int) -> str | None:
    """The trend or level-shift phrase, None for a flat channel without a shift."""
    if trend != TREND_FLAT:
        return _TREND[trend][v]
    if shift != SHIFT_NONE:
        return _SHIFT[shift][v]
    return None


def channel_text(c: int, trend: int, shift: int, cycle: int, spike: int, noise: int, v: int) -> str:
    """Full description of one channel in template v (0..2)."""
    movement = _movement(trend, shift, v) or _TREND[TREND_FLAT][v]
    text = f"{_capitalise(CHANNELS[c])} {movement} {(_CYCLE_WITH if cycle else _NO_CYCLE_WITH)[v]}"
    if spike != SPIKE_NONE:
        text += f", and {_SPIKE[spike][v]}"
    return f"{text}. {_NOISE[noise][v]}"


def channel_fragment(c: int, trend: int, shift: int, cycle: int, spike: int, v: int) -> str:
    """The most salient fact of one channel as a clause, for the sample text: its spike if any,
    else its trend or level shift (with the daily cycle if any), else the cycle, else "flat"."""
    if spike != SPIKE_NONE:
        phrase = _SPIKE[spike][v]
    elif (movement := _movement(trend, shift, v)) is not None:
        phrase = f"{movement} {_CYCLE_WITH[v]}" if cycle else movement
    else:
        phrase = _CYCLE_VERB[v] if cycle else _TREND[TREND_FLAT][v]
    return f"{CHANNELS[c]} {phrase}"


def salience(trend: int, shift: int, cycle: int, spike: int) -> int:
    return 3 * (spike != SPIKE_NONE) + 2 * (trend != TREND_FLAT or shift != SHIFT_NONE) + int(cycle)


def _draw_example(rng: np.random.Generator, captioned_p: float) -> dict:
    """Draws the attributes, series, mask and texts of one example."""
    c_n, t_n = NUM_CHANNELS, NUM_STEPS
    t = np.arange(t_n, dtype=np.float64)
    trend = rng.choice(3, size=c_n, p=(0.4, 0.3, 0.3))
    shift = np.where(trend == TREND_FLAT, rng.choice(3, size=c_n, p=(0.7, 0.15, 0.15)), SHIFT_NONE)
    cycle = (rng.random(c_n) < 0.5).astype(np.int64)
    spike = rng.choice(4, size=c_n, p=(0.7, 0.1, 0.1, 0.1))
    noise = (rng.random(c_n) < 0.4).astype(np.int64)

    series = np.zeros((c_n, t_n), np.float64)
    observed = np.ones((c_n, t_n), bool)
    for c in range(c_n):
        shape = np.zeros(t_n)
        if trend[c] != TREND_FLAT:
            sign = 1.0 if trend[c] == TREND_RISING else -1.0
            shape += sign * rng.uniform(4.0, 7.0) * (t / (t_n - 1) - 0.5)
        if shift[c] != SHIFT_NONE:
            at = int(rng.integers(int(0.45 * t_n), int(0.55 * t_n) + 1))
            height = rng.uniform(2.5, 4.0) * (1.0 if shift[c] == SHIFT_UP else -1.0)
            shape += np.where(t >= at, height / 2, -height / 2)
        if cycle[c]:
            peak = _PEAK_HOUR[c] + rng.uniform(-2.0, 2.0)
            shape += rng.uniform(1.5, 2.5) * np.cos(2 * np.pi * (t - peak) / 24.0)
        centre = -100
        if spike[c] != SPIKE_NONE:
            lo, hi = _SPIKE_CENTRE[int(spike[c])]
            centre = int(rng.integers(lo, hi + 1))
            height = rng.uniform(6.0, 9.0)
            shape[centre] += height
            shape[centre - 1] += 0.4 * height
            shape[centre + 1] += 0.4 * height
        shape += rng.normal(0.0, _NOISE_SIGMA[noise[c]], t_n)
        values = rng.uniform(*_LEVEL[c]) + _SCALE[c] * shape
        if c == CHANNELS.index("wind speed"):
            values = np.maximum(values, 0.0)
        series[c] = values
        if rng.random() < 0.25:  # one missing span, never over the spike
            length = int(rng.integers(6, 19))
            for _ in range(10):
                start = int(rng.integers(0, t_n - length + 1))
                if not start - 2 <= centre < start + length + 2:
                    observed[c, start : start + length] = False
                    break
    if rng.random() < 0.08:
        observed[int(rng.integers(c_n))] = False
    series[~observed] = 0.0

    live = observed.any(axis=1)
    rising = ((trend == TREND_RISING) | (shift == SHIFT_UP)) & live
    falling = ((trend == TREND_FALLING) | (shift == SHIFT_DOWN)) & live
    r, f = int(rising.sum()), int(falling.sum())
    label = 0 if r > f else 1 if f > r else 2

    texts, channel_texts = [], [""] * c_n
    if rng.random() < captioned_p:
        tie = rng.random(c_n)
        score = np.array([salience(trend[c], shift[c], cycle[c], spike[c]) for c in range(c_n)])
        order = [c for c in np.lexsort((tie, -score)) if live[c]]
        head = sorted(order[:2])
        for v in range(NUM_PARAPHRASES):
            frags = [channel_fragment(c, trend[c], shift[c], cycle[c], spike[c], v) for c in head]
            if len(frags) == 1:
                texts.append(_capitalise(frags[0]) + ".")
            else:
                texts.append(_JOIN[v].format(a=_capitalise(frags[0]), b=frags[1]))
        variants = rng.integers(0, NUM_PARAPHRASES, c_n)
        for c in range(c_n):
            if live[c]:
                channel_texts[c] = channel_text(
                    c, trend[c], shift[c], cycle[c], spike[c], noise[c], int(variants[c])
                )
    return dict(
        series=series.astype(np.float32),
        observed=observed,
        texts=texts,
        channel_texts=channel_texts,
        label=label,
        attrs=np.stack([trend, shift, cycle, spike, noise]).astype(np.int32),
    )


class SyntheticCaptioned:
    """Random-access data source (Grain protocol) of synthetic captioned examples.

    ``source[i]`` returns the schema dict of docs/data_schema.md (numpy arrays and strings) plus
    ``attr_trend``, ``attr_shift``, ``attr_cycle``, ``attr_spike``, ``attr_noise`` (C,) int32.
    ``num_texts``, ``labels`` and ``attributes`` expose whole-set arrays without reading
    examples (the pipeline uses ``num_texts`` to filter uncaptioned examples cheaply).
    """

    def __init__(
        self,
        num_examples: int,
        seed: int,
        text_cache: TextEmbeddingCache | None = None,
        *,
        split: str = "train",
        first_window: int = 0,
        uncaptioned_fraction: float = 0.1,
    ):
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.seed, self.split, self.first_window = int(seed), split, int(first_window)
        n, c_n = int(num_examples), NUM_CHANNELS
        self.series = np.zeros((n, c_n, NUM_STEPS), np.float32)
        self.observed = np.zeros((n, c_n, NUM_STEPS), bool)
        self.labels = np.zeros((n,), np.int32)
        self.num_texts = np.zeros((n,), np.int32)
        attrs = np.zeros((n, 5, c_n), np.int32)
        texts: list[list[str]] = []
        channel_texts: list[list[str]] = []
        for k in range(n):
            rng = np.random.default_rng([self.seed, SPLITS[split], k])
            ex = _draw_example(rng, 1.0 - uncaptioned_fraction)
            self.series[k], self.observed[k], self.labels[k] = (
                ex["series"],
                ex["observed"],
                ex["label"],
            )
            self.num_texts[k] = len(ex["texts"])
            attrs[k] = ex["attrs"]
            texts.append(ex["texts"])
            channel_texts.append(ex["channel_texts"])
        self.attributes = {
            name: attrs[:, i]
            for i, name in enumerate(("trend", "shift", "cycle", "spike", "noise"))
        }

        distinct = sorted({s for row in texts + channel_texts for s in row if s})
        rows = {s: i for i, s in enumerate(distinct)}
        cache = text_cache if text_cache is not None else TextEmbeddingCache()
        table = cache.embed(distinct) if distinct else np.zeros((0, EMBEDDING_DIM), np.float32)
        # Row 0 of the table is all zeros: the embedding of "no text".
        self._table = np.concatenate([np.zeros((1, table.shape[1]), np.float32), table])
        self.distinct_texts = distinct
        self._text_rows = np.zeros((n, NUM_PARAPHRASES), np.int32)
        self._channel_rows = np.zeros((n, c_n), np.int32)
        self.texts = np.empty((n, NUM_PARAPHRASES), object)
        self.channel_texts = np.empty((n, c_n), object)
        for k in range(n):
            padded = texts[k] + [""] * (NUM_PARAPHRASES - len(texts[k]))
            self.texts[k] = padded
            self._text_rows[k] = [rows[s] + 1 if s else 0 for s in padded]
            self.channel_texts[k] = channel_texts[k]
            self._channel_rows[k] = [rows[s] + 1 if s else 0 for s in channel_texts[k]]
        self.channel_ids = np.arange(c_n, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> dict:
        k = operator.index(index)
        if not 0 <= k < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        start = EPOCH_START + (self.first_window + k) * NUM_STEPS * STEP_SECONDS
        ex = {
            "series": self.series[k].copy(),
            "observed": self.observed[k].copy(),
            "channel_ids": self.channel_ids.copy(),
            "text": str(self.texts[k, 0]),
            "text_embedding": self._table[self._text_rows[k]],
            "num_texts": np.int32(self.num_texts[k]),
            "channel_texts": self.channel_texts[k].copy(),
            "channel_text_embedding": self._table[self._channel_rows[k]],
            "channel_text_valid": self._channel_rows[k] > 0,
            "label": np.int32(self.labels[k]),
            "start_time": np.int64(start),
            "end_time": np.int64(start + NUM_STEPS * STEP_SECONDS),
            "example_id": f"synthetic-{self.split}-{self.seed}-{k:06d}",
            "texts": self.texts[k].copy(),
        }
        for name, values in self.attributes.items():
            ex[f"attr_{name}"] = values[k].copy()
        return ex

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return (
            f"SyntheticCaptioned(num_examples={len(self)}, seed={self.seed}, "
            f"split={self.split!r})"
        )


def synthetic_splits(
    num_train: int,
    num_validation: int,
    seed: int,
    text_cache: TextEmbeddingCache | None = None,
    **kwargs,
) -> dict[str, SyntheticCaptioned]:
    """Train and validation splits: different random streams, validation windows after train."""
    cache = text_cache if text_cache is not None else TextEmbeddingCache()
    return {
        "train": SyntheticCaptioned(num_train, seed, cache, split="train", **kwargs),
        "validation": SyntheticCaptioned(
            num_validation, seed, cache, split="validation", first_window=num_train, **kwargs
        ),
    }
