"""The inference API: a trained alignment model that embeds series and text into one space.

    import trace_jax
    model = trace_jax.load("runs/align_wc")          # a workdir (latest checkpoint) or an export
    z_series = model.embed_series(series)            # (N, C, T) -> (N, d), L2-normalised
    z_channels, valid = model.embed_channels(series) # (N, C, d) and (N, C): per channel
    z_text = model.embed_text(["heavy rain and strong wind"])
    index = model.build_index(series, texts=captions)
    hits = index.search("heavy rain and strong wind", k=5)  # text -> series

Embeddings are computed with masking and dropout off. Series are embedded in fixed-size
batches (the last one padded), so one (C, T) shape compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import warnings
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from trace_jax import cpu_features, xla_options
from trace_jax.model import EncoderConfig
from trace_jax.model.heads import AlignModel

EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = "weights.safetensors"


def check_series(series, observed=None, channels: int | None = None):
    """(N, C, T) float32 series and bool observed mask; clear errors for unusable input.

    A single (C, T) window is accepted and gets a batch axis. NaN and inf count as unobserved.
    A window with no observed finite value has nothing to embed and is refused.
    """
    series = np.asarray(series, np.float32)
    if series.ndim == 2:
        series = series[None]
        observed = None if observed is None else np.asarray(observed)[None]
    if series.ndim != 3:
        raise ValueError(f"series must be (N, C, T) or (C, T), got shape {series.shape}")
    if channels is not None and series.shape[1] != channels:
        raise ValueError(f"series has {series.shape[1]} channels, expected {channels}")
    observed = np.ones(series.shape, bool) if observed is None else np.asarray(observed, bool)
    if observed.shape != series.shape:
        raise ValueError(f"observed has shape {observed.shape}, series has {series.shape}")
    observed = observed & np.isfinite(series)
    empty = np.flatnonzero(~observed.any((1, 2)))
    if empty.size:
        raise ValueError(
            f"{empty.size} series have no observed finite value (first: row {empty[0]}); "
            "there is nothing to embed"
        )
    return np.where(observed, series, 0.0).astype(np.float32), observed


def read_series_csv(path) -> np.ndarray:
    """(C, T) float32 from a CSV of T rows by C columns; empty cells -> NaN (unobserved)."""
    rows = [line.strip() for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} is empty")

    def parse(line, number):
        try:
            return [float(c) if c.strip() else np.nan for c in line.split(",")]
        except ValueError:
            if number == 0:
                return None  # a header
            raise ValueError(f"{path}:{number + 1}: not a number in {line!r}") from None

    values = [v for i, r in enumerate(rows) if (v := parse(r, i)) is not None]
    widths = {len(v) for v in values}
    if len(widths) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    return np.asarray(values, np.float32).T


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "/"))
        else:
            out[path] = np.asarray(value)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


@dataclasses.dataclass
class TraceModel:
    """Encoder config, alignment parameters and (lazily) the frozen text tower."""

    encoder_config: EncoderConfig
    params: dict  # AlignModel parameters
    source: str = ""  # where it was loaded from
    run_config: dict | None = None  # the training run's config, when loaded from a workdir
    batch_size: int = 256
    text_encoder: Any = None  # trace_jax.text.TextEncoder, loaded on first use

    def __post_init__(self):
        self.model = AlignModel(self.encoder_config)
        self.params = jax.device_put(self.params)
        self._encoder_outputs = jax.jit(
            lambda p, s, o, c: self.model.apply({"params": p}, s, o, c, method="embed_series"),
            compiler_options=xla_options.encoder_forward(self.encoder_config),
        )
        self._project_text = jax.jit(
            lambda p, t: self.model.apply({"params": p}, t, method="embed_text")
        )

    @property
    def dim(self) -> int:
        return self.encoder_config.d_model

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the parameters (paths, shapes, dtypes, values): which weights embedded
        something, wherever they were loaded from (a workdir and its export agree)."""
        digest = hashlib.blake2b(digest_size=16)
        for path, value in sorted(_flatten(jax.device_get(self.params)).items()):
            digest.update(f"{path}:{value.dtype}:{value.shape};".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        return digest.hexdigest()

    def channel_ids_for(self, n: int, c: int, channel_ids=None) -> np.ndarray:
        """(n, c) int32 CIT ids for n windows of c channels: `channel_ids` as (c,) for every
        window or (n, c), else 0..c-1. Checked here because under jit an id past the CIT table
        would become a zero embedding without a word (one_hot)."""
        table = self.encoder_config.num_channels
        if channel_ids is None:
            if c > table:
                raise ValueError(f"series has {c} channels, the model knows {table}")
            return np.broadcast_to(np.arange(c, dtype=np.int32), (n, c))
        ids = np.asarray(channel_ids)
        if ids.shape not in ((c,), (n, c)):
            raise ValueError(
                f"channel_ids must have shape ({c},) or ({n}, {c}) for {n} windows of {c} "
                f"channels, got {ids.shape}"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"channel_ids must be integers, got dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= table:
            raise ValueError(
                f"channel_ids must lie in [0, {table}) (the model's CIT table), got "
                f"[{ids.min()}, {ids.max()}]"
            )
        return np.broadcast_to(ids.astype(np.int32), (n, c))

    def embed_series(self, series, observed=None, channel_ids=None) -> np.ndarray:
        """(N, C, T) or (C, T) windows -> (N, d) float32 unit vectors (the [CLS] embedding).

        channel_ids: (C,) or (N, C) CIT ids (see channel_ids_for); None: 0..C-1.
        """
        return self.encode(series, observed, channel_ids)["sample"]

    def embed_channels(self, series, observed=None, channel_ids=None):
        """Per-channel embeddings in the shared space, for matching channel texts:
        ((N, C, d) float32 unit vectors, (N, C) bool: the channel has an observed point).
        Arguments as embed_series's; one encoder pass gives both (a channel's embedding sees
        the window's other channels through attention)."""
        out = self.encode(series, observed, channel_ids)
        return out["channels"], out["channel_valid"]

    def encode(self, series, observed=None, channel_ids=None) -> dict[str, np.ndarray]:
        """Both in one pass: {"sample": embed_series's, "channels" and "channel_valid":
        embed_channels'}."""
        series, observed = check_series(series, observed)
        n, c, _ = series.shape
        channel_ids = self.channel_ids_for(n, c, channel_ids)
        out = []
        # Powers of two up to batch_size: a single query is not padded to a full batch, and
        # only a handful of shapes ever compile.
        b = min(self.batch_size, 1 << (n - 1).bit_length())
        for start in range(0, n, b):
            rows = slice(start, min(start + b, n))
            pad = b - (rows.stop - rows.start)
            padded = [
                np.pad(x[rows], [(0, pad)] + [(0, 0)] * (x.ndim - 1))
                for x in (series, observed, channel_ids)
            ]
            padded[1][rows.stop - rows.start :, :, 0] = True  # padding rows: one observed zero
            batch = jax.device_get(self._encoder_outputs(self.params, *padded))
            out.append({k: v[: b - pad] for k, v in batch.items()})
        return {k: np.concatenate([o[k] for o in out]) for k in out[0]}

    def project_text(self, text_embeddings) -> np.ndarray:
        """Frozen text-tower embeddings (N, 384) -> (N, d) unit vectors in the shared space."""
        return np.asarray(self._project_text(self.params, jnp.asarray(text_embeddings)))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> (N, d) unit vectors; empty or blank strings are refused."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("no texts given")
        blank = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if blank:
            raise ValueError(f"texts {blank[:5]} are empty or not strings; nothing to embed")
        if self.text_encoder is None:
            from trace_jax.text import TextEncoder  # pylint: disable=g-import-not-at-top

            self.text_encoder = TextEncoder.load()
        return self.project_text(self.text_encoder.embed(texts, progress=len(texts) > 2000))

    def build_index(self, series, texts=None, **kwargs):
        """An index over windows (and their texts): see trace_jax.retrieval.index.Index.build."""
        from trace_jax.retrieval.index import Index  # pylint: disable=g-import-not-at-top

        return Index.build(self, series, texts=texts, **kwargs)

    # Persistence -----------------------------------------------------------------------

    def save(self, directory) -> pathlib.Path:
        """Weights (safetensors) and config (JSON): the parameters half of an export."""
        from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(_flatten(jax.device_get(self.params)), str(directory / EXPORT_WEIGHTS))
        meta = {"format": "trace_jax.export/1", "encoder": dataclasses.asdict(self.encoder_config)}
        (directory / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def from_export(cls, directory) -> "TraceModel":
        from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

        directory = pathlib.Path(directory)
        meta = json.loads((directory / EXPORT_CONFIG).read_text())
        params = _unflatten(load_file(str(directory / EXPORT_WEIGHTS)))
        return cls(EncoderConfig(**meta["encoder"]), params, source=str(directory))

    @classmethod
    def from_workdir(cls, workdir, step: int | None = None) -> "TraceModel":
        """The alignment parameters of a training workdir's latest (or given) checkpoint."""
        from trace_jax.train.checkpoint import (  # pylint: disable=g-import-not-at-top
            restore_params,
            saved_config,
        )

        step, config = saved_config(workdir, step)
        if config.get("stage") != "align":
            raise ValueError(
                f"{workdir} holds a {config.get('stage')!r} run; search needs an alignment run"
            )
        encoder_config = EncoderConfig.from_mapping(config["model"])
        # Parameters do not depend on the attention implementation, and 'pallas' traces only
        # on a GPU: their shapes come from 'xla' wherever this runs.
        model = AlignModel(dataclasses.replace(encoder_config, attention_impl="xla"))
        probe = {
            "series": jnp.zeros((1, 1, encoder_config.patch_len)),
            "observed": jnp.ones((1, 1, encoder_config.patch_len), bool),
            "channel_ids": jnp.zeros((1, 1), jnp.int32),
            "text_embedding": jnp.zeros((1, 384)),
            "channel_text_embedding": jnp.zeros((1, 1, 384)),
            "channel_text_valid": jnp.ones((1, 1), bool),
        }
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), probe)["params"])
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes
        )
        params = restore_params(workdir, {"model": abstract}, step)["model"]
        return cls(encoder_config, params, source=f"{workdir}@{step}", run_config=config)


def load(
    path, *, bf16_matmuls: bool | None = None, attention_impl: str | None = None
) -> TraceModel:
    """A workdir (its latest checkpoint) or an export directory.

    bf16_matmuls: embed with the encoder's matmuls in bfloat16 (True) or float32 (False)
    whatever the model was trained with (None: as trained). On a CPU with AVX512-BF16, bf16
    embeds about 1.4x faster (BENCHMARKS.md) at bfloat16's rounding of each matmul's operands;
    on a CPU without bfloat16 instructions it is slower, and a UserWarning says so.

    attention_impl: 'xla' or 'pallas' whatever the model was trained with (None: as trained,
    except that a 'pallas' model embeds with 'xla' off a GPU, where the Pallas kernel cannot
    run; both compute the same function).
    """
    path = pathlib.Path(path)
    if (path / EXPORT_CONFIG).exists():
        model = TraceModel.from_export(path)
    elif (path / "checkpoints").is_dir():
        model = TraceModel.from_workdir(path)
    else:
        raise FileNotFoundError(
            f"{path} is neither an export (no {EXPORT_CONFIG}) nor a training workdir "
            "(no checkpoints/)"
        )
    trained = model.encoder_config
    backend = jax.default_backend()
    if attention_impl is None and trained.attention_impl == "pallas" and backend != "gpu":
        logging.info(
            "%s was trained with attention_impl='pallas', which runs on a GPU only; "
            "embedding with 'xla' (the same function) on %r",
            path,
            backend,
        )
        attention_impl = "xla"
    overrides = {
        name: value
        for name, value in (("bf16_matmuls", bf16_matmuls), ("attention_impl", attention_impl))
        if value is not None and value != getattr(trained, name)
    }
    if overrides:
        config = dataclasses.replace(trained, **overrides)
        model = dataclasses.replace(model, encoder_config=config)
    if model.encoder_config.bf16_matmuls and backend == "cpu":
        if hint := cpu_features.bf16_matmul_hint():
            warnings.warn(hint, stacklevel=2)
    return model
