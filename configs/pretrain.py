r"""Masked-patch reconstruction pretraining (TRACE stage 1).

  python -m trace_jax.main --config=configs/pretrain.py:cpu --workdir=runs/pretrain

Variants after ':': '' paper size for accelerators; cpu for a 2-core CPU; tiny for tests.
"""

import ml_collections

from trace_jax import presets


def get_config(arg=None):
    c = presets.base_config("pretrain", arg)
    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.mask_ratio = 0.3
    # Auxiliary classification of `label` from [CLS] (examples with label -1 are skipped):
    # the number of classes of the data set (0: off) and the weight of the term.
    c.pretrain.num_classes = 0
    c.pretrain.label_weight = 1.0
    return c
