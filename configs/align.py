r"""Contrastive alignment of series with text (TRACE stage 2).

Zero-download default (the built-in synthetic captioned set):
  python -m trace_jax.main --config=configs/align.py:cpu --workdir=runs/align

Variants after ':': '' paper size (6 layers, d=384) for accelerators; cpu for a 2-core CPU;
tiny for tests. Weather-Captioned, after `python -m trace_jax.data.build --dataset=weather_captioned
--manual_dir=../shared/data/weather_captioned --data_dir=data_dir`:
  python -m trace_jax.main --config=configs/align.py:cpu --workdir=runs/align_wc \
      --config.data.name=weather_captioned --config.data.data_dir=data_dir
"""

import ml_collections

from trace_jax import presets


def get_config(arg=None):
    c = presets.base_config("align", arg)
    c.align = ml_collections.ConfigDict()
    c.align.temperature = 0.07
    c.align.learn_temperature = False
    c.align.channel_weight = 1.0  # lambda of the channel-level InfoNCE; 0 turns it off
    # Top-K cross-modal negatives per anchor; 0 = the whole batch. K=32 is the paper's, with
    # batches of 256 and more. At the cpu variant's batch of 64 it is half the batch, and a sweep
    # on Weather-Captioned (README) ranked the whole batch first on text<->series, then K=32,
    # K=16, and K=8 collapsed: that variant uses every in-batch negative.
    variant = presets.parse_arg(arg, ("", "cpu", "tiny"))
    c.align.hard_negatives = 0 if variant == "cpu" else 32
    # In-batch pairs with the same caption or series window as a pair (or, at the channel level,
    # the same channel text) are not its negatives. False: every other pair is, as in the paper,
    # though no model can rank one of two equal texts above the other.
    c.align.exclude_duplicates = True
    # Heads of the optional CIT <-> channel-text cross-attention before the channel loss;
    # 0 = off. Training only: retrieval embeddings never depend on text.
    c.align.cross_attention_heads = 0
    # Weight of a masked-patch reconstruction term (as in pretraining); 0 = off. While on,
    # training inputs are masked at mask_ratio (evaluation never masks).
    c.align.reconstruction_weight = 0.0
    c.align.mask_ratio = 0.3
    c.align.init_from = ""  # a pretraining workdir: starts the encoder (and reconstruction head)
    return c
