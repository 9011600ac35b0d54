"""The search command end to end on a tiny synthetic run: table, figure, CSV queries, errors."""

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO
from trace_jax.api import read_series_csv


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
    out = search(f"--model={workdir}", f"--series={csv}", "--k=2", "--target=text", "--png=")
    assert out.returncode == 0, out.stderr
    assert "text results" in out.stdout


def test_bad_queries_fail_with_a_message(workdir, tmp_path):
    out = search(f"--model={workdir}", "--query=   ", "--png=")
    assert out.returncode != 0 and "empty" in out.stderr
    csv = tmp_path / "wrong.csv"
    csv.write_text("\n".join(["1,2"] * 96))
    out = search(f"--model={workdir}", f"--series={csv}", "--png=")
    assert out.returncode != 0 and "series query must be" in out.stderr


def test_read_series_csv(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("t,p\n1,2\n,4\n5,6\n")
    np.testing.assert_array_equal(read_series_csv(path), [[1, np.nan, 5], [2, 4, 6]])
    path.write_text("1,2\n3,x\n")
    with pytest.raises(ValueError, match="x.csv:2"):
        read_series_csv(path)
