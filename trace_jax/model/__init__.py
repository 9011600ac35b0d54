"""The TRACE time-series encoder."""

from trace_jax.model.encoder import EncoderConfig, TraceEncoder, check_inputs

__all__ = ["EncoderConfig", "TraceEncoder", "check_inputs"]
