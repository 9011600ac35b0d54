"""Builds a TFDS data set (ArrayRecord files) from a local copy in the upstream layout.

  python -m trace_jax.data.build --dataset=weather_captioned \
      --manual_dir=../shared/data/weather_captioned --data_dir=data_dir
  python -m trace_jax.data.build --dataset=time_mmd \
      --manual_dir=../shared/data/time_mmd --data_dir=data_dir

Without --manual_dir the builder downloads from the upstream repository (needs a network).
Prints the number of examples per split when done.
"""

from __future__ import annotations

from absl import app
from absl import flags

from trace_jax.data.registry import BUILDERS, build

_DATASET = flags.DEFINE_enum("dataset", None, list(BUILDERS), "Which data set to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data_dir", "Where the built data set goes.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Local copy in the upstream layout; omit to download."
)
_CONFIG = flags.DEFINE_string("builder_config", None, "Builder config name (default: the first).")
_TEXT_CACHE = flags.DEFINE_string(
    "text_cache_dir", None, "Text-embedding cache (default ~/.cache/trace_jax)."
)


def main(argv):
    del argv
    builder = build(
        _DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value, _CONFIG.value, _TEXT_CACHE.value
    )
    print(f"{builder.name}/{builder.builder_config.name} built in {builder.data_dir}")
    for split, info in builder.info.splits.items():
        print(f"  {split}: {info.num_examples} examples")


if __name__ == "__main__":
    flags.mark_flag_as_required("dataset")
    app.run(main)
