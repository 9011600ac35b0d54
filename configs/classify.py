r"""Window classification with a head on the TRACE encoder (Weather-Captioned condition labels).

Head on the frozen aligned encoder (an alignment workdir):
  python -m trace_jax.main --config=configs/classify.py:cpu --workdir=runs/cls_trace \
      --config.classify.encoder_from=runs/wc_full
The baseline, the same architecture at the `cpu` size trained from scratch:
  python -m trace_jax.main --config=configs/classify.py:cpu --workdir=runs/cls_scratch

Accuracy and macro-F1 on the validation split (2017), beside the majority class.
"""

import ml_collections

from trace_jax import presets


def get_config(arg=None):
    c = presets.base_config("classify", arg)
    c.data.name = "weather_captioned"
    c.data.data_dir = "data_dir"
    c.train.steps = {"": 5000, "cpu": 500, "tiny": 4}[arg or ""]
    c.train.eval_every = c.train.steps
    c.train.checkpoint_every = c.train.steps
    c.classify = ml_collections.ConfigDict()
    c.classify.encoder_from = ""  # '' = train the encoder from scratch (the baseline)
    c.classify.num_classes = 6  # CONDITION_CLASSES of trace_jax/data/weather_captioned.py
    c.classify.tune_last_blocks = 0
    return c
