"""Logical axis names of every parameter of the TRACE models, by parameter path.

The trainer maps these names onto mesh axes with the config's logical axis rules
(`config.sharding.rules`, see trace_jax/train/sharding.py). Names live here, by path, rather
than as boxed metadata on each parameter, so parameters stay plain arrays everywhere
(checkpoints, exports, tests) and the same table also names the Adam moments, whose paths end
with their parameter's path.

Names: `embed` the model width d; `mlp` the FFN hidden width; `heads` the attention width split
into heads; `text_embed` the frozen text encoder's width; `channels` rows of the CIT table;
None a dimension that is never split (patch length, class count, small feature widths).
"""

from __future__ import annotations

import re

# (regex searched in the '/'-joined path, logical names of the leaf's dimensions).
# Vectors and scalars (biases, norms, tokens, the temperature) need no entry: they replicate.
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"attention/(query|key|value)/kernel$", ("embed", "heads")),
    (r"attention/out/kernel$", ("heads", "embed")),
    (r"mlp/fc1/kernel$", ("embed", "mlp")),
    (r"mlp/fc2/kernel$", ("mlp", "embed")),
    (r"cross_attention/(query|key|value)/kernel$", ("embed", "heads")),
    (r"cross_attention/out/kernel$", ("heads", "embed")),
    (r"channel_identity/embedding$", ("channels", "embed")),
    (r"(patch_embed|level_embed)/kernel$", (None, "embed")),
    (r"text_proj/kernel$", ("text_embed", "embed")),
    (r"series_proj/kernel$", ("embed", None)),
    (r"(reconstruction|classifier)/kernel$", ("embed", None)),
    # Downstream heads (trace_jax/forecast): small, whole on every device.
    (r"(head|rag_projection|trend|seasonal)/kernel$", (None, None)),
)


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """The logical names of a parameter's dimensions; raises for an unnamed matrix.

    An unnamed matrix would silently stay replicated on every device, the costly mistake a
    new layer makes; vectors and scalars replicate by design.
    """
    if re.search(r"(^|/)blocks/", path):  # scanned blocks: a leading layer axis, never split
        return (None,) + logical_axes(path.replace("blocks/", "blocks_layer/", 1), ndim - 1)
    for pattern, names in PARAM_AXES:
        if re.search(pattern, path):
            if len(names) != ndim:
                raise ValueError(f"{path} has {ndim} dimensions, PARAM_AXES names {names}")
            return names
    if ndim <= 1:
        return (None,) * ndim
    raise ValueError(
        f"parameter {path} (rank {ndim}) has no logical axes: add it to "
        "trace_jax/model/partitioning.py PARAM_AXES"
    )
