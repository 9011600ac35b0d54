r"""Figure of example forecasts of a trained RAG run, with the retrieved windows and their texts.

  python -m trace_jax.forecast.plot --workdir=runs/forecast/forecast_Energy_L96_H48/series_text \
      --n=3 --out=docs/forecast_energy_h48.png

Each row: the query's history, its target and the forecast (first channel), then the retrieved
training windows (history and target, each ending before the query's forecast starts) with the
text they brought.
"""

from __future__ import annotations

import textwrap

from absl import app
from absl import flags
import numpy as np

_WORKDIR = flags.DEFINE_string("workdir", None, "A forecasting run (configs/forecast.py).")
_N = flags.DEFINE_integer("n", 3, "How many evaluation windows.")
_OUT = flags.DEFINE_string("out", "forecast_examples.png", "The figure.")
_SEED = flags.DEFINE_integer("seed", 0, "Which windows (random, with context).")


def context_text(example) -> str:
    from trace_jax.forecast.sources import (
        decode,
        is_time_mmd,
    )  # pylint: disable=g-import-not-at-top

    if is_time_mmd(example):
        return decode(example["context_text"][0]) if example["context_valid"][0] else ""
    return decode(example["text"]) if example["num_texts"] > 0 else ""


def main(argv):
    del argv
    import jax  # pylint: disable=g-import-not-at-top
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    from trace_jax.train.checkpoint import restore_params  # pylint: disable=g-import-not-at-top
    from trace_jax.train.forecast import ForecastTask  # pylint: disable=g-import-not-at-top
    from trace_jax.train.loop import (
        example_batch,
        task_sources,
    )  # pylint: disable=g-import-not-at-top

    import ml_collections  # pylint: disable=g-import-not-at-top

    from trace_jax.train.checkpoint import saved_config  # pylint: disable=g-import-not-at-top

    config = ml_collections.ConfigDict(saved_config(_WORKDIR.value)[1])
    if config.forecast.rag == "none" or config.forecast.model != "trace":
        raise app.UsageError("plot a TRACE run with retrieval (forecast.rag series or series_text)")
    task = ForecastTask(config)
    train, evaluation = task_sources(config, task)
    shapes = jax.eval_shape(task.init_params, jax.random.key(0), example_batch(evaluation))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes
    )
    params = restore_params(_WORKDIR.value, abstract)

    ids = evaluation.rag["rag_ids"]
    with_context = np.flatnonzero(
        [bool(context_text(train.source[i])) for i in np.maximum(ids[:, 0], 0)] & (ids[:, 0] >= 0)
    )
    pool = with_context if len(with_context) >= _N.value else np.flatnonzero(ids[:, 0] >= 0)
    chosen = np.random.default_rng(_SEED.value).choice(pool, _N.value, replace=False)
    r = ids.shape[1]
    fig, axes = plt.subplots(_N.value, 1 + r, figsize=(4 * (1 + r), 3.2 * _N.value), squeeze=False)
    for row, q in enumerate(chosen):
        x = evaluation[int(q)]
        batch = {k: np.asarray(v)[None] for k, v in x.items() if not isinstance(v, (str, bytes))}
        pred = np.asarray(task._predict(params, batch))[0, 0]  # pylint: disable=protected-access
        hist, target = x["series"][0], x["target"][0]
        ax = axes[row, 0]
        lh = len(hist)
        ax.plot(range(lh), np.where(x["observed"][0], hist, np.nan), "k", lw=1, label="history")
        ax.plot(range(lh, lh + len(target)), target, "g", lw=1, label="target")
        ax.plot(range(lh, lh + len(pred)), pred, "r--", lw=1, label="forecast")
        ax.set_title(f"query {q}", fontsize=9)
        ax.legend(fontsize=7)
        for j, b in enumerate(ids[q]):
            ax = axes[row, 1 + j]
            if b < 0:
                ax.set_axis_off()
                continue
            n = train[int(b)]
            series = np.concatenate([n["series"][0], n["target"][0]])
            ax.plot(series, "b", lw=1)
            ax.axvline(len(n["series"][0]), color="gray", lw=0.5)
            ax.set_title(f"retrieved #{j + 1}", fontsize=9)
            # "$" would start matplotlib's math mode (prices are quoted in dollars).
            text = (context_text(train.source[int(b)]) or "(no text)").replace("$", r"\$")
            ax.text(
                0,
                -0.15,
                textwrap.fill(text[:300], 60),
                transform=ax.transAxes,
                fontsize=6,
                va="top",
            )
    fig.tight_layout()
    fig.savefig(_OUT.value, dpi=90)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
