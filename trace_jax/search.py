r"""Search series by text, text by series, series by series, from the command line.

  python -m trace_jax.search --model=runs/wc_full --query="heavy rain and strong wind" --k=5
  python -m trace_jax.search --model=runs/wc_full --series=window.csv --k=5 [--target=text]

The bank: --index (a saved index, see trace_jax/retrieval/index.py; it must have been embedded
by --model), else the split --split of the training run's own data set (built once, then cached
in WORKDIR/index_<split> until the run's latest checkpoint changes), or of a built data set
--dataset/--data_dir. Prints a ranked table and writes a PNG (--png) with the top-k windows and
their texts.

--series: a CSV file with one row per time step and one column per channel, in the channel
order of the data set (an optional header row is skipped); empty cells are unobserved. It is
embedded with the channel ids of the index's windows, or with --channel_ids, one per column,
where those differ between windows (a Time-MMD index over several domains), e.g. Time-MMD's
Energy: --channel_ids=12,13,14,15,16,17,18,19,20,38,38 (38: padding columns, left empty).
"""

from __future__ import annotations

import pathlib
import textwrap

from absl import app
from absl import flags
import numpy as np

from trace_jax.data import registry

_MODEL = flags.DEFINE_string("model", None, "A training workdir or an export.")
_QUERY = flags.DEFINE_string("query", None, "Text query.")
_SERIES = flags.DEFINE_string("series", None, "CSV file of a window (rows: steps, cols: channels).")
_K = flags.DEFINE_integer("k", 5, "How many results.")
_TARGET = flags.DEFINE_enum("target", "series", ["series", "text"], "What to retrieve.")
_INDEX = flags.DEFINE_string("index", None, "A saved index directory.")
_CHANNEL_IDS = flags.DEFINE_list(
    "channel_ids", None, "--series's channel ids, one per column (default: the index's)."
)
_DATASET = flags.DEFINE_string(
    "dataset", None, f"Index this built data set instead, one of {sorted(registry.BUILDERS)}."
)
_DATA_DIR = flags.DEFINE_string("data_dir", "data_dir", "Built TFDS data sets (with --dataset).")
_SPLIT = flags.DEFINE_string("split", "validation", "Split indexed when no --index is given.")
_PNG = flags.DEFINE_string("png", "search_results.png", "Figure of the results ('' = none).")


def build_or_load_index(model, index_dir, dataset, data_dir, split):
    """A saved index, or one built from a split (cached beside a workdir's checkpoints and
    rebuilt when other parameters embedded it, e.g. those of an earlier checkpoint)."""
    import ml_collections  # pylint: disable=g-import-not-at-top

    from trace_jax.data import sources  # pylint: disable=g-import-not-at-top
    from trace_jax.retrieval.index import (  # pylint: disable=g-import-not-at-top
        META,
        Index,
        StaleIndexError,
    )

    if index_dir:
        return Index.load(index_dir, model)
    cache = None
    if dataset:
        data = ml_collections.ConfigDict(
            dict(name=dataset, data_dir=data_dir, builder_config="", train_split=split)
        )
    elif model.run_config is not None:
        data = ml_collections.ConfigDict(model.run_config["data"])
        cache = pathlib.Path(model.source.rsplit("@", 1)[0]) / f"index_{split}"
        if (cache / META).exists():
            try:
                return Index.load(cache, model)
            except StaleIndexError as e:
                print(f"rebuilding the cached index: {e}")
    else:
        raise ValueError("an export carries no data set: pass --index or --dataset")
    data.validation_split = split
    _, source = sources.load_sources(data)
    print(f"indexing {len(source)} windows of split {split!r} ...")
    index = Index.from_examples(model, [source[i] for i in range(len(source))])
    if cache is not None:
        index.save(cache)
    return index


def parse_channel_ids(values: list[str]) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], np.int32)
    except ValueError:
        raise app.UsageError(f"--channel_ids must be integers, got {','.join(values)}") from None


def print_table(hits) -> None:
    print(f"{'rank':>4}  {'score':>6}  {'id':<28} text")
    for h in hits.items(0):
        text = textwrap.shorten(h["text"] or "(no text)", 90)
        print(f"{h['rank']:>4}  {h['score']:6.3f}  {h['id']:<28} {text}")


def plot(hits, query_label: str, path, query_series=None) -> None:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    items = hits.items(0)
    panels = [("query", query_series, query_label)] if query_series is not None else []
    for h in items:
        window = None if hits.index.series is None else hits.index.series[h["position"]]
        panels.append((f"#{h['rank']} {h['id']} ({h['score']:.3f})", window, h["text"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), squeeze=False)
    for ax, (title, window, text) in zip(axes[:, 0], panels):
        if window is not None:
            for c, channel in enumerate(window):
                # Channels z-scored for display: their units differ by orders of magnitude.
                z = (channel - np.nanmean(channel)) / (np.nanstd(channel) or 1.0)
                ax.plot(z, lw=1, label=f"ch {c}")
        ax.set_title(title, fontsize=9, loc="left")
        ax.text(
            0.0,
            -0.12,
            textwrap.fill(text or "(no text)", 150),
            transform=ax.transAxes,
            fontsize=7,
            va="top",
        )
        ax.set_yticks([])
    if query_series is None:
        fig.suptitle(textwrap.fill(f"query: {query_label}", 120), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    import trace_jax.api  # pylint: disable=g-import-not-at-top

    if (_QUERY.value is None) == (_SERIES.value is None):
        raise app.UsageError("give exactly one of --query and --series")
    if _CHANNEL_IDS.value is not None and _SERIES.value is None:
        raise app.UsageError("--channel_ids are a --series query's")
    if _DATASET.value is not None and _DATASET.value not in registry.BUILDERS:
        raise app.UsageError(
            f"--dataset={_DATASET.value}: choose one of {sorted(registry.BUILDERS)}; the "
            "synthetic set is indexed through a run trained on it (--model=WORKDIR, no "
            "--dataset), whose config sets its windows"
        )
    channel_ids = None if _CHANNEL_IDS.value is None else parse_channel_ids(_CHANNEL_IDS.value)
    model = trace_jax.load(_MODEL.value)
    index = build_or_load_index(model, _INDEX.value, _DATASET.value, _DATA_DIR.value, _SPLIT.value)
    query_series = None
    if _QUERY.value is not None:
        hits = index.search(_QUERY.value, k=_K.value, target=_TARGET.value)
        label = _QUERY.value
    else:
        query_series = trace_jax.api.read_series_csv(_SERIES.value)
        hits = index.search(query_series, k=_K.value, target=_TARGET.value, channel_ids=channel_ids)
        label = f"series from {_SERIES.value}"
    print(f"{_TARGET.value} results for {label!r} among {len(index)} windows ({model.source}):")
    print_table(hits)
    if _PNG.value:
        plot(hits, label, _PNG.value, query_series)
        print(f"figure: {_PNG.value}")


if __name__ == "__main__":
    flags.mark_flag_as_required("model")
    app.run(main)
