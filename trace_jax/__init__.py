"""TRACE: a time-series encoder grounded in text, in JAX/Flax.

`trace_jax.load(path)` returns a trained model for embedding and search (trace_jax/api.py).
"""


def __getattr__(name):
    # Lazy, so that `python -m trace_jax.main` can initialise jax.distributed before JAX loads.
    if name in ("load", "TraceModel"):
        from trace_jax import api  # pylint: disable=g-import-not-at-top

        return getattr(api, name)
    raise AttributeError(f"module 'trace_jax' has no attribute {name!r}")
