"""A self-describing export of a trained alignment model (no pickle anywhere).

    DIR/config.json                 encoder config, input shapes, platforms, file names
    DIR/weights.safetensors         every parameter, keyed by its '/'-joined path
    DIR/embed_series.jax_export     `jax.export` of embed_series(params, series, observed,
                                    channel_ids) -> (b, d), batch size b symbolic, lowered for
                                    every platform in config.json (cpu, cuda, tpu by default)

The serialized function takes the parameters as its first argument, so the weights are stored
once; `load_embed_series` pairs them again. C and T are fixed at export time (the patch grid
and the CIT rows depend on them); b is free. It is lowered with attention_impl='xla' for every
platform, cuda included: the 'pallas' kernel is Triton IR, which has no compatibility guarantee
and which jax.export therefore refuses to serialize; 'xla' computes the same function.
config.json holds the model's encoder config unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from trace_jax.api import EXPORT_CONFIG, EXPORT_WEIGHTS, TraceModel, _unflatten
from trace_jax.model.heads import AlignModel

EXPORT_FUNCTION = "embed_series.jax_export"
PLATFORMS = ("cpu", "cuda", "tpu")


def _embed_series_fn(model: AlignModel):
    def embed_series(params, series, observed, channel_ids):
        out = model.apply({"params": params}, series, observed, channel_ids, method="embed_series")
        return out["sample"]

    return embed_series


def export_model(
    model: TraceModel,
    directory,
    *,
    channels: int,
    time_steps: int,
    platforms: Sequence[str] = PLATFORMS,
) -> pathlib.Path:
    """Writes the three files; returns the directory."""
    directory = model.save(directory)
    (b,) = jax.export.symbolic_shape("b")
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model.params)
    args = (
        params,
        jax.ShapeDtypeStruct((b, channels, time_steps), jnp.float32),
        jax.ShapeDtypeStruct((b, channels, time_steps), jnp.bool_),
        jax.ShapeDtypeStruct((b, channels), jnp.int32),
    )
    config = model.encoder_config
    if config.attention_impl != "xla":
        logging.info(
            "exporting %s with attention_impl='xla' in place of %r: the same function, and "
            "jax.export cannot serialize the Pallas kernel",
            model.source,
            config.attention_impl,
        )
        config = dataclasses.replace(config, attention_impl="xla")
    embed_series = jax.jit(_embed_series_fn(AlignModel(config)))
    exported = jax.export.export(embed_series, platforms=platforms)(*args)
    (directory / EXPORT_FUNCTION).write_bytes(exported.serialize())
    meta = json.loads((directory / EXPORT_CONFIG).read_text())
    meta["embed_series"] = {
        "file": EXPORT_FUNCTION,
        "platforms": list(platforms),
        "inputs": {
            "series": ["b", channels, time_steps, "float32"],
            "observed": ["b", channels, time_steps, "bool"],
            "channel_ids": ["b", channels, "int32"],
        },
        "output": ["b", model.dim, "float32"],
    }
    (directory / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2))
    return directory


def load_embed_series(directory) -> Callable[..., np.ndarray]:
    """The serialized embed_series with its weights bound: (series, observed, channel_ids)."""
    directory = pathlib.Path(directory)
    exported = jax.export.deserialize(bytearray((directory / EXPORT_FUNCTION).read_bytes()))
    params = jax.device_put(_unflatten(load_file(str(directory / EXPORT_WEIGHTS))))

    def embed_series(series, observed, channel_ids) -> np.ndarray:
        return np.asarray(
            exported.call(
                params,
                jnp.asarray(series, jnp.float32),
                jnp.asarray(observed, bool),
                jnp.asarray(channel_ids, jnp.int32),
            )
        )

    return embed_series
