r"""Export a trained alignment run: weights (safetensors), config (JSON) and a `jax.export` of
embed_series with a symbolic batch size, lowered for cpu, cuda and tpu.

  python -m trace_jax.main --config=configs/export.py --workdir=runs/align \
      --config.export.output=exports/align

C and T of the exported function are those of the run's data set (read from its saved config),
unless --config.export.channels and --config.export.time_steps are given. Load the result with
`trace_jax.load("exports/align")` or `trace_jax.export.load_embed_series`.
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.stage = "export"
    c.export = ml_collections.ConfigDict()
    c.export.output = ""  # '' = WORKDIR/export
    c.export.channels = 0  # 0 = the run's data set
    c.export.time_steps = 0
    c.export.platforms = ("cpu", "cuda", "tpu")
    return c
