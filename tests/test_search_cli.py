"""The search command end to end on a tiny synthetic run: table, figure, CSV queries, channel
ids, the cached index and its split, errors."""

import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from tests.helpers import REPO
from trace_jax.api import read_series_csv
from trace_jax.data.sources import load_sources
from trace_jax.retrieval.index import META, Index


@pytest.fixture(scope="module")
def workdir(aligned_workdir, tmp_path_factory):
    """A copy of the shared tiny run: the search command caches its index inside."""
    import shutil

    copy = tmp_path_factory.mktemp("search") / "align"
    shutil.copytree(aligned_workdir, copy)
    return copy


def search(*args):
    return subprocess.run(
        [sys.executable, "-m", "trace_jax.search", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_text_and_series_queries(workdir, tmp_path):
    png = tmp_path / "hits.png"
    out = search(
        f"--model={workdir}", "--query=a rising series with a spike", "--k=3", f"--png={png}"
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line[:4].strip().isdigit()]
    assert [int(r.split()[0]) for r in rows] == [1, 2, 3]
    assert png.stat().st_size > 10_000  # a real figure
    assert (workdir / "index_validation" / "index.json").exists()  # cached for the next query

    csv = tmp_path / "window.csv"
    window = np.random.default_rng(0).normal(size=(96, 5))
    lines = ["a,b,c,d,e"] + [",".join(f"{v:.3f}" for v in row) for row in window]
    lines[10] = ",".join(["", *lines[10].split(",")[1:]])  # one unobserved cell
    csv.write_text("\n".join(lines))
    query = [f"--model={workdir}", f"--series={csv}", "--k=2", "--target=text", "--png="]
    out = search(*query)
    assert out.returncode == 0, out.stderr
    assert "text results" in out.stdout
    same = search(*query, "--channel_ids=0,1,2,3,4")  # the synthetic windows' own ids
    assert same.returncode == 0, same.stderr
    assert same.stdout == out.stdout


def test_split_train_indexes_the_training_windows_and_replaces_a_stale_cache(workdir):
    stale = Index(
        series_embeddings=np.eye(2, dtype=np.float32),
        text_embeddings=np.zeros((2, 2), np.float32),
        has_text=np.zeros(2, bool),
        channel_ids=np.zeros((2, 1), np.int32),
        ids=["a", "b"],
        texts=["", ""],
        model_source=f"{workdir}@1",
        model_fingerprint="another checkpoint",
    )
    stale.save(workdir / "index_train")
    out = search(f"--model={workdir}", "--query=a flat series", "--split=train", "--png=")
    assert out.returncode == 0, out.stderr
    assert "rebuilding the cached index" in out.stdout
    ids = json.loads((workdir / "index_train" / META).read_text())["ids"]
    assert len(ids) == 64 and all(i.startswith("synthetic-train-") for i in ids)


def test_synthetic_splits_answer_to_their_names(text_cache_dir):
    data = ml_collections.ConfigDict(
        dict(
            name="synthetic",
            num_synthetic_train=6,
            num_synthetic_validation=4,
            text_cache_dir=text_cache_dir,
            train_split="validation",
            validation_split="train",
        )
    )
    first, second = load_sources(data)
    assert (len(first), len(second)) == (4, 6)
    assert first[0]["example_id"].startswith("synthetic-validation-")
    data.validation_split = "test"  # its one held-out split, as configs/forecast.py names it
    assert load_sources(data)[1][0]["example_id"] == first[0]["example_id"]
    data.validation_split = "dev"
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_sources(data)


def test_bad_queries_fail_with_a_message(workdir, tmp_path):
    out = search(f"--model={workdir}", "--query=   ", "--png=")
    assert out.returncode != 0 and "empty" in out.stderr
    csv = tmp_path / "wrong.csv"
    csv.write_text("\n".join(["1,2"] * 96))
    out = search(f"--model={workdir}", f"--series={csv}", "--png=")
    assert out.returncode != 0 and "series query must be" in out.stderr
    csv.write_text("\n".join(["1,2,3,4,5"] * 96))
    out = search(f"--model={workdir}", f"--series={csv}", "--png=", "--channel_ids=0,1,2,3,99")
    assert out.returncode != 0 and "channel_ids must lie in [0, 64)" in out.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset=synthetic"], "--dataset=synthetic: choose one of"),
        (["--dataset=weather"], "choose one of ['time_mmd', 'weather_captioned']"),
        (["--channel_ids=0,1"], "--channel_ids are a --series query's"),
        (["--series=x.csv", "--channel_ids=0,x"], "--channel_ids must be integers"),
    ],
)
def test_bad_flags_are_usage_errors(workdir, flags, message):
    if not any(f.startswith("--series") for f in flags):
        flags = ["--query=rain", *flags]
    out = search(f"--model={workdir}", *flags)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr


def test_read_series_csv(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("t,p\n1,2\n,4\n5,6\n")
    np.testing.assert_array_equal(read_series_csv(path), [[1, np.nan, 5], [2, 4, 6]])
    path.write_text("1,2\n3,x\n")
    with pytest.raises(ValueError, match="x.csv:2"):
        read_series_csv(path)
