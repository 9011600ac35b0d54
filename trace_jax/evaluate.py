r"""Retrieval evaluation report: TRACE models and baselines side by side, markdown and JSON.

  python -m trace_jax.evaluate --models=TRACE=runs/align_wc,no_channel_loss=runs/ablation \
      --dataset=weather_captioned --manual_dir=../shared/data/weather_captioned \
      --data_dir=data_dir --split=validation --out=reports/weather_captioned_2017

--manual_dir is any directory in the upstream layout: the data set is built from it into
--data_dir first when not built there yet. --split is a split of the builder (`validation`, or
`year_YYYY` for any other year present in the source, see trace_jax/data/weather_captioned.py).

Directions and metrics:
  text->series, series->text  the exact pair among the split's captioned windows: hit@1/5/10,
                              MRR; and label P@1/P@5, label MRR when the windows have labels.
  series->series              label P@1/P@5, label MRR; the query's own window and every window
                              overlapping it in time (of the same series) are excluded, since
                              they share most of its points.
  text->channel, channel->text where windows have channel texts: a channel's text among the
                              same channel's in every window of the split, and back; every
                              copy of a repeated text is a right answer (hit@1, MRR, and a
                              random ranking's hit@1).
Time-MMD (label = domain): text<->series across domains (all candidates) and within the query's
domain (candidates of its domain only); series->series with the domain as label.
Baselines: random (each channel direction reports its hit@1 as chance_hit@1); z-normalised
Euclidean, DTW and SAX-VSM (series->series).
Split windows without text take part in series->series only.
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from trace_jax.eval.retrieval_metrics import (
    channel_text_metrics,
    identical_rows,
    series_series_metrics,
    text_series_metrics,
)

_MODELS = flags.DEFINE_list("models", [], "name=path pairs (workdir or export); path alone ok.")
_DATASET = flags.DEFINE_string("dataset", "weather_captioned", "weather_captioned or time_mmd.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data_dir", "Built TFDS data sets.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Upstream layout, built when needed.")
_BUILDER_CONFIG = flags.DEFINE_string("builder_config", None, "Builder config name.")
_SPLIT = flags.DEFINE_string("split", "validation", "Split to evaluate.")
_OUT = flags.DEFINE_string("out", "reports/eval", "Directory for report.md and report.json.")
_BASELINES = flags.DEFINE_list(
    "baselines", ["random", "euclidean", "dtw", "sax_vsm"], "Baselines to include."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random baseline.")


def load_split(dataset, data_dir, split, manual_dir=None, builder_config=None) -> dict:
    """Every example of a split as stacked arrays (series, texts, labels, spans, groups)."""
    from trace_jax.data.record_source import RecordSource  # pylint: disable=g-import-not-at-top
    from trace_jax.data.registry import build, builder_class  # pylint: disable=g-import-not-at-top

    builder = builder_class(dataset)(data_dir=data_dir, config=builder_config)
    if not builder.is_prepared():
        if not manual_dir:
            raise FileNotFoundError(
                f"{dataset} is not built under {data_dir}; pass --manual_dir (upstream layout)"
            )
        builder = build(dataset, data_dir, manual_dir, builder_config)
    if split not in builder.info.splits:
        raise ValueError(f"no split {split!r}; this build has {sorted(builder.info.splits)}")
    source = RecordSource(builder.as_data_source(split=split))
    examples = source.__getitems__(range(len(source)))
    if not examples:
        raise ValueError(f"split {split!r} is empty")
    stack = lambda k: np.stack([e[k] for e in examples])
    domains = [e.get("domain", b"") for e in examples]
    domains = [d.decode() if isinstance(d, bytes) else str(d) for d in domains]
    texts = [e["text"].decode() if isinstance(e["text"], bytes) else e["text"] for e in examples]
    return {
        "series": stack("series"),
        "observed": stack("observed"),
        "channel_ids": stack("channel_ids"),
        "text_embedding": stack("text_embedding")[:, 0],
        "channel_text_embedding": stack("channel_text_embedding"),
        "channel_text_valid": stack("channel_text_valid"),
        "has_text": stack("num_texts") > 0,
        "text": texts,
        "label": stack("label"),
        "start": stack("start_time"),
        "end": stack("end_time"),
        "group": np.unique(domains, return_inverse=True)[1],
    }


def overlap_exclusion(data) -> np.ndarray:
    """(N, N): the same window, or windows of the same series overlapping in time."""
    start, end, group = data["start"], data["end"], data["group"]
    overlap = (start[:, None] < end[None, :]) & (start[None, :] < end[:, None])
    return (overlap & (group[:, None] == group[None, :])) | np.eye(len(start), dtype=bool)


def same_group_mask(data):
    """(texts, texts) for the captioned windows: same series (domain); None for one series."""
    if len(np.unique(data["group"])) < 2:
        return None
    g = data["group"][data["has_text"]]
    return g[:, None] == g[None, :]


def same_pair_mask(data):
    """(texts, texts) for the captioned windows: pairs with the same text or the same observed
    series window (Time-MMD has up to 14 reports on one window): each as right as the other."""
    captioned = data["has_text"]
    observed = data["observed"][captioned]
    window = np.concatenate([np.where(observed, data["series"][captioned], 0.0), observed], axis=-1)
    return identical_rows(data["text_embedding"][captioned], window)


def evaluate_model(model, data) -> dict:
    t = time.time()
    encoded = model.encode(data["series"], data["observed"], data["channel_ids"])
    z_series = encoded["sample"]
    captioned = data["has_text"]
    result = {}
    if captioned.any():  # years without captions: series->series only
        z_text = model.project_text(data["text_embedding"][captioned])
        result = text_series_metrics(
            z_text @ z_series[captioned].T,
            data["label"][captioned],
            same_group_mask(data),
            same_pair_mask(data),
        )
    result.update(
        series_series_metrics(z_series @ z_series.T, data["label"], overlap_exclusion(data))
    )
    if data["channel_text_valid"].any():
        channel_text = data["channel_text_embedding"]
        z_channel_text = model.project_text(channel_text.reshape(-1, channel_text.shape[-1]))
        result.update(
            channel_text_metrics(
                encoded["channels"],
                z_channel_text.reshape(*channel_text.shape[:2], -1),
                encoded["channel_valid"] & data["channel_text_valid"],
                data["channel_ids"],
                channel_text,  # equal embeddings: the same text
            )
        )
    result["seconds"] = time.time() - t
    return result


def evaluate_baselines(names, data, seed: int) -> dict[str, dict]:
    from trace_jax.eval.baselines import SERIES_BASELINES, random_similarity

    out = {}
    exclude = overlap_exclusion(data)
    for name in names:
        t = time.time()
        if name == "random":
            n = int(data["has_text"].sum())
            result = {}
            if n:
                result = text_series_metrics(
                    random_similarity(n, n, seed),
                    data["label"][data["has_text"]],
                    same_group_mask(data),
                    same_pair_mask(data),
                )
            n_all = len(data["label"])
            result.update(
                series_series_metrics(
                    random_similarity(n_all, n_all, seed + 1), data["label"], exclude
                )
            )
        elif name in SERIES_BASELINES:
            sim = SERIES_BASELINES[name](data["series"], data["observed"])
            result = series_series_metrics(sim, data["label"], exclude)
        else:
            raise ValueError(
                f"unknown baseline {name!r}; choose random or {sorted(SERIES_BASELINES)}"
            )
        result["seconds"] = time.time() - t
        out[name] = result
        logging.info("baseline %s: %.1f s", name, result["seconds"])
    return out


def markdown(report: dict) -> str:
    """One table per direction: a row per method, a column per metric."""
    methods = report["methods"]
    directions = sorted(
        {d for m in methods.values() for d in m if d != "seconds"},
        key=lambda d: (d.split(" ")[0] != "text->series", d),
    )
    lines = [
        f"# Retrieval: {report['dataset']} / {report['split']}",
        "",
        f"{report['n_windows']} windows, {report['n_captioned']} with text. "
        f"Command: `{report['command']}`",
        "",
    ]
    for direction in directions:
        rows = {name: m[direction] for name, m in methods.items() if direction in m}
        keys = [k for k in next(iter(rows.values())) if k != "n_queries"]
        n = int(next(iter(rows.values()))["n_queries"])
        lines += [f"## {direction} ({n} queries)", ""]
        lines.append("| method | " + " | ".join(keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for name, m in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv):
    import sys  # pylint: disable=g-import-not-at-top

    del argv
    import trace_jax  # pylint: disable=g-import-not-at-top

    data = load_split(
        _DATASET.value, _DATA_DIR.value, _SPLIT.value, _MANUAL_DIR.value, _BUILDER_CONFIG.value
    )
    logging.info("%d windows, %d with text", len(data["label"]), int(data["has_text"].sum()))
    methods = {}
    for item in _MODELS.value:
        name, _, path = item.rpartition("=")
        name = name or pathlib.Path(path).name
        methods[name] = evaluate_model(trace_jax.load(path), data)
        logging.info("%s: %s", name, json.dumps(methods[name].get("text->series", {})))
    methods.update(evaluate_baselines(_BASELINES.value, data, _SEED.value))
    report = {
        "dataset": _DATASET.value,
        "split": _SPLIT.value,
        "n_windows": int(len(data["label"])),
        "n_captioned": int(data["has_text"].sum()),
        "command": "python -m trace_jax.evaluate " + " ".join(sys.argv[1:]),
        "methods": methods,
    }
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")


if __name__ == "__main__":
    app.run(main)
