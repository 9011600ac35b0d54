"""Time-MMD builder: loading layer on the real data, hand-checked rows, leakage, end to end.

Every expected value here was read off the CSVs in ../shared/data/time_mmd (line numbers are
1-based file lines, header = line 1).
"""

import collections
import csv
import datetime
import hashlib
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

from tests.helpers import SHARED_DATA, missing_shared_data
from tests.test_record_source import assert_same_examples
from trace_jax.data import time_mmd as tm

ROOT = SHARED_DATA / "time_mmd"
pytestmark = pytest.mark.skipif(missing_shared_data(ROOT), reason=f"real Time-MMD not at {ROOT}")

D = np.datetime64


class FakeEncoder:
    """Deterministic stand-in for the text tower; records what it was asked to embed."""

    model_id = "fake-sha256-384"
    dim = 384

    def __init__(self):
        self.calls = []

    def embed(self, texts):
        self.calls.append(list(texts))
        out = np.stack(
            [
                np.frombuffer(hashlib.sha256(t.encode()).digest() * 12, np.uint8)[:384].astype(
                    np.float32
                )
                - 127.5
                for t in texts
            ]
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def real():
    """All ten domains through the loading layer, with one shared build log."""
    log = tm.BuildLog()
    data = {d: tm.load_domain(ROOT, d, log) for d in tm.DOMAINS}
    return data, log


@pytest.fixture(scope="module")
def retrieval(real):
    data, _ = real
    log = tm.BuildLog()
    return {
        d: tm.retrieval_examples(s, f, tm.DEFAULT_WINDOW_STEPS[s.frequency], 96, log)
        for d, (s, f) in data.items()
    }, log


# ------------------------------------------------------------------------------ real counts

# domain: (CSV rows kept, grid steps, usable facts, (train, validation, test) examples)
EXPECTED = {
    "Agriculture": (532, 532, 596, (410, 57, 117)),
    "Climate": (1272, 1272, 582, (399, 58, 113)),
    "Economy": (447, 447, 434, (305, 43, 86)),
    "Energy": (1622, 1622, 353, (247, 35, 71)),
    "Environment": (15979, 15979, 132, (97, 10, 24)),
    "Health_AFR": (1458, 1476, 39, (27, 4, 8)),
    "Health_US": (1384, 1389, 486, (340, 49, 97)),
    "Security": (309, 309, 0, (0, 0, 0)),
    "SocialGood": (916, 916, 217, (152, 22, 43)),
    "Traffic": (651, 651, 358, (251, 35, 72)),
}


def test_real_counts_per_domain_and_split(real, retrieval):
    data, _ = real
    examples, _ = retrieval
    for d, (rows, steps, facts, splits) in EXPECTED.items():
        series, fs = data[d]
        counts = collections.Counter(e["split"] for e in examples[d])
        got = (series.num_rows, series.num_steps, len(fs), tuple(counts[s] for s in tm.SPLITS))
        assert got == (rows, steps, facts, splits), d
    totals = collections.Counter(e["split"] for ex in examples.values() for e in ex)
    assert (totals["train"], totals["validation"], totals["test"]) == (2228, 313, 631)


def test_every_report_row_is_accounted_for(real):
    """usable + skipped (per reason) == rows in the file, for every domain: nothing silent."""
    data, log = real
    fact_reasons = (
        "empty fact",
        "NA fact",
        "LLM refusal / no information",
        "duplicate report (same end_date and fact)",
        "report end_date before start_date",
    )
    for d in tm.DOMAINS:
        with open(tm.report_path(ROOT, d), newline="", encoding="utf-8") as f:
            n_rows = sum(1 for _ in csv.reader(f)) - 1
        skipped = sum(n for r, n in log.skipped_for(d).items() if r in fact_reasons)
        assert len(data[d][1]) + skipped == n_rows, d
    summary = log.summary()
    for d in tm.DOMAINS:
        assert f"  {d}:" in summary
    assert "Security:\n    skipped: empty fact: 19569" in summary


def test_channel_vocabulary():
    assert len(tm.DOMAINS) == 10 and tm.MAX_CHANNELS == 11
    assert len(tm.CHANNEL_VOCAB) == 38 and tm.PAD_CHANNEL_ID == 38 and tm.NUM_CHANNEL_IDS == 39
    assert sorted(tm.CHANNEL_VOCAB.values()) == list(range(38))
    assert tm.CHANNEL_VOCAB[("Agriculture", "OT")] == 0
    assert tm.CHANNEL_VOCAB[("Energy", "OT")] == 12
    assert tm.CHANNEL_VOCAB[("Health_US", "OT")] == 24
    assert tm.CHANNEL_VOCAB[("Traffic", "OT")] == 37
    for d in tm.DOMAINS:
        assert tm.CHANNELS[d][0] == "OT"
        with open(tm.numeric_path(ROOT, d), newline="", encoding="utf-8") as f:
            header = next(csv.reader(f))
        # Every column of the real file is a channel, a date column or a documented exclusion.
        for h in header:
            assert h in tm.CHANNELS[d] or h in tm._DATE_COLUMNS or h in tm.EXCLUDED_COLUMNS[d], (
                d,
                h,
            )


def test_no_unknown_columns_in_real_files(real):
    _, log = real
    assert not [k for k in log.notes if k[1].startswith("unknown column")]


# ------------------------------------------------------------------------ hand-verified rows


def test_hand_verified_energy_report_window(retrieval):
    # textual/Energy/Energy_report.csv line 2: index 0, 2011-12-19..2011-12-23.
    # numerical/Energy/Energy.csv line 978: 2011-12-19,3.29,3.346,... (last row <= 2011-12-23);
    # 48 weekly steps back: line 931, 2011-01-24, OT 3.163.
    (ex,) = [e for e in retrieval[0]["Energy"] if e["example_id"] == "Energy/report/0"]
    assert ex["text"] == (
        "The national average retail regular gasoline price increased to $3.258 per gallon on "
        "December 26, 2011, $0.029 per gallon more than last week and $0.206 above a year ago."
    )
    assert ex["label"] == tm.DOMAINS.index("Energy") == 3
    assert ex["series"].shape == (11, 96) and ex["num_steps"] == 48
    assert ex["end_time"] == tm.unix_seconds("2011-12-26")  # end of the 2011-12-19 week
    assert ex["start_time"] == tm.unix_seconds("2011-01-24")
    assert ex["series"][0, -1] == np.float32(3.29)  # OT on 2011-12-19
    assert ex["series"][1, -1] == np.float32(3.346)  # East Coast on 2011-12-19
    assert ex["series"][0, 96 - 48] == np.float32(3.163)  # OT on 2011-01-24
    assert ex["observed"][:9, 48:].all() and not ex["observed"][:, :48].any()
    assert not ex["observed"][9:].any()  # padding channels
    assert list(ex["channel_ids"]) == list(range(12, 21)) + [38, 38]
    assert ex["report_end_time"] == tm.unix_seconds("2011-12-23")
    assert not ex["channel_text_valid"].any() and ex["num_texts"] == 1
    assert ex["split"] == "train"


def test_hand_verified_health_afr_inf_masked_gaps_and_missing_start_date(real):
    s, _ = real[0]["Health_AFR"]
    # No start_date column: the first `date` column is the row date.
    # Lines 2-4 (1996-01-01..15) have an empty OT: trimmed; line 5 is 1996-01-22, OT 0.0.
    assert s.dates[0] == D("1996-01-22") and s.observed[0, 0] and s.values[0, 0] == 0.0
    # Line 74: 1997-05-19 OT inf -> masked, not dropped; neighbours are real values.
    i = s.index_of("1997-05-19")
    assert not s.observed[0, i] and s.values[0, i] == 0.0
    assert s.observed[0, i - 1] and s.values[0, i - 1] == pytest.approx(0.3333333333333333)
    assert s.observed[0, i + 1] and s.values[0, i + 1] == 0.0  # line 75
    # Lines 95-96 jump 1997-10-13 -> 1997-12-22: 9 missing weeks kept as unobserved grid steps.
    j = s.index_of("1997-10-13")
    assert s.dates[j + 10] == D("1997-12-22") and s.observed[0, j + 10]
    assert not s.observed[0, j + 1 : j + 10].any()
    assert s.values[0, j] == pytest.approx(0.2222222222222222)


def test_hand_verified_health_us_duplicate_date_keeps_last(real):
    s, _ = real[0]["Health_US"]
    # Lines 15/16 both dated 1997-12-29: week 53 of 1997 (OT 3.7185) and week 1 of 1998
    # (OT 3.59225, % WEIGHTED ILI 4.37398). The last row (week 1) is kept.
    i = s.index_of("1997-12-29")
    assert s.values[0, i] == pytest.approx(3.59225)
    assert s.values[1, i] == pytest.approx(4.37398)
    assert s.dates[i + 1] == D("1998-01-05") and s.values[0, i + 1] == pytest.approx(3.68922)
    # `X` is missing: AGE 25-49 is X on line 16 and observed later (2020-12-21 line 1214: 6627).
    c = s.columns.index("AGE 25-49")
    assert not s.observed[c, i]
    k = s.index_of("2020-12-21")
    assert s.observed[c, k] and s.values[c, k] == 6627
    # Line 36: 1998-05-18 (week 21) is all zeros, 0 providers and 0 patients: masked, not 0%;
    # line 35 (1998-05-11): OT 0.605216. 95 such off-season rows in 1998-2002.
    p = s.index_of("1998-05-18")
    assert not s.observed[:, p].any() and s.values[0, p - 1] == pytest.approx(0.605216)
    _, log = real
    assert (
        log.masked[
            (
                "Health_US",
                "all-zero placeholder row (0 providers, 0 patients), all channels masked",
            )
        ]
        == 95
    )
    # Lines 171/172 jump 2000-12-18 -> 2001-01-01: the missing week is an unobserved step.
    g = s.index_of("2000-12-25")
    assert not s.observed[:, g].any() and s.values[0, g + 1] == pytest.approx(3.2288)


def test_out_of_order_domains_are_sorted(real):
    data, log = real
    climate, _ = data["Climate"]  # stored newest first; last line is 20000104 ... OT 57.29
    assert np.all(np.diff(climate.dates.astype(np.int64)) == 7)
    assert climate.dates[0] == D("2000-01-04") and climate.values[0, 0] == pytest.approx(57.29)
    assert climate.dates[-1] == D("2024-05-14") and climate.values[0, -1] == pytest.approx(73.61)
    economy, _ = data["Economy"]  # line 437: January 1987,17345.9,30798.5,-13452.6
    assert economy.dates[0] == D("1987-01-01")
    assert list(economy.values[:, 0]) == pytest.approx([-13452.6, 17345.9, 30798.5])
    assert economy.columns == ("OT", "Exports", "Imports")
    assert ("Climate", "rows out of date order (sorted)") in log.notes and (
        "Economy",
        "rows out of date order (sorted)",
    ) in log.notes


def test_socialgood_future_rows_trimmed(real):
    s, _ = real[0]["SocialGood"]
    _, log = real
    assert s.dates[-1] == D("2024-04-01") and s.values[0, -1] == pytest.approx(3.5)
    assert log.skipped_for("SocialGood")["trailing row with no observed value"] == 8


# ---------------------------------------------------------------------------- text faults


def test_fact_filters_on_real_rows(real):
    data, _ = real
    assert data["Security"][1] == []  # no usable report text at all

    def raw_fact(domain, row_id):
        with open(tm.report_path(ROOT, domain), newline="", encoding="utf-8") as f:
            return next(r[3] for r in csv.reader(f) if r[0] == row_id)

    cases = {
        ("Health_US", "0"): "NA fact",  # NA
        ("Health_AFR", "0"): "NA fact",
        ("Climate", None): None,
        ("Agriculture", "283"): "LLM refusal / no information",  # "does not provide direct ..."
        ("Health_AFR", "4"): "LLM refusal / no information",
        ("Environment", "22"): "LLM refusal / no information",
        ("Economy", "277"): "LLM refusal / no information",  # "... it does not provide ..."
    }
    for (d, rid), want in cases.items():
        if rid is not None:
            assert tm.fact_problem(tm.clean_fact(raw_fact(d, rid))) == want, (d, rid)
    # Security: every fact cell is empty.
    with open(tm.report_path(ROOT, "Security"), newline="", encoding="utf-8") as f:
        assert all(
            tm.fact_problem(tm.clean_fact(r[3])) == "empty fact" for r in list(csv.reader(f))[1:]
        )
    for text, want in [
        ("", "empty fact"),
        ("NA", "NA fact"),
        ("  NA\n", "NA fact"),
        ("NA (No relevant information found in the provided excerpt)", "NA fact"),
        (
            "Please provide a valid excerpt from the Weekly Overview, and I'll be happy to assist.",
            "LLM refusal / no information",
        ),
        (
            "I'm sorry, but the search results do not contain the data.",
            "LLM refusal / no information",
        ),
        (
            "The report does not provide information on the trade balance.",
            "LLM refusal / no information",
        ),
        ("There is no mention of influenza in the report.", "LLM refusal / no information"),
        ("Not applicable, as there is no mention of influenza in the report.", "NA fact"),
        ("None mentioned in the report.", "NA fact"),  # SocialGood
        ("None of the ten regions reported ILI above baseline.", None),
        ("NASA reported a dry month.", None),
    ]:
        assert tm.fact_problem(tm.clean_fact(text)) == want, text
    usable = [f.text for f in data["Energy"][1]] + [f.text for f in data["Health_AFR"][1]]
    # Real facts that merely contain negative words stay usable.
    assert any("Motor Gasoline - Regular is not available" in t for t in usable)
    assert any("there are no confirmed cases of the 2019-nCoV" in t for t in usable)


def test_fact_cleaning_strips_llm_header_and_markdown(real):
    data, _ = real
    # SocialGood: ": Objective facts about the influenza situation**\n\n* The unemployment ..."
    # (an off-topic header over real unemployment facts): header and bullets go, facts stay.
    texts = [f.text for f in data["SocialGood"][1]]
    assert any(
        t.startswith(
            "The unemployment rate declined by 0.5 percentage points to 7.9% in September 2020."
        )
        for t in texts
    )
    assert not any(
        "Objective facts" in t or "**" in t
        for d in tm.DOMAINS
        for t in (f.text for f in data[d][1])
    )
    assert tm.clean_fact("Objective facts about the X situation:**\n* a\n* b\n\n**") == "a b"


def test_duplicate_reports_and_end_date_repair(real):
    data, log = real
    for d in tm.DOMAINS:
        keys = [(f.end_date, f.text) for f in data[d][1]]
        assert len(keys) == len(set(keys)), d
    assert log.skipped_for("Agriculture")["duplicate report (same end_date and fact)"] == 126
    # Traffic lines with end < start, e.g. index 294: 2021-12-27 .. 2021-01-02 (week 52).
    (f,) = [f for f in data["Traffic"][1] if f.row_id == "294"]
    assert (f.start_date, f.end_date) == (datetime.date(2021, 12, 27), datetime.date(2022, 1, 2))
    assert log.notes[("Traffic", "report end_date year repaired (+1 year)")] == 3


# ---------------------------------------------------------------------------- errors


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_unparseable_value_names_file_line_and_column(tmp_path):
    p = _write(
        tmp_path / "Security.csv",
        "date,OT,start_date,end_date\n1998-09-01,5,1998-09-01,1998-09-30\n"
        "1998-10-01,12abc,1998-10-01,1998-10-31\n",
    )
    with pytest.raises(ValueError, match=r"Security\.csv, line 3, column 'OT'.*12abc"):
        tm.read_numeric(p, "Security")
    p = _write(
        tmp_path / "S2.csv", "date,OT,start_date,end_date\n1998-09-01,5,1998-9-x,1998-09-30\n"
    )
    with pytest.raises(ValueError, match=r"S2\.csv, line 2, column 'start_date'"):
        tm.read_numeric(p, "Security")
    p = _write(
        tmp_path / "r.csv", ',start_date,end_date,fact,preds\n0,2020-01-01,2020-13-01,"a",\n'
    )
    with pytest.raises(ValueError, match=r"r\.csv, line 2, column 'end_date'"):
        tm.read_reports(p, "Security")


def test_layout_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="numerical/Energy/Energy.csv"):
        tm.load_domain(tmp_path, "Energy")
    p = _write(tmp_path / "numerical/Energy/Energy.csv", "date,start_date,end_date,price\n")
    with pytest.raises(ValueError, match=r"expected columns \['OT'"):
        tm.read_numeric(p, "Energy")
    p = _write(tmp_path / "w.csv", "date,OT,start_date,end_date\n1998-09-01,5,1998-09-01,x\n")
    with pytest.raises(ValueError, match=r"w\.csv, line 2, column 'end_date'"):
        tm.read_numeric(p, "Health_AFR")
    p = _write(
        tmp_path / "e.csv",
        "date,OT,start_date,end_date\n1998-09-01,5,1998-09-01,"
        "1998-09-07\n1998-09-09,6,1998-09-09,1998-09-15\n",
    )
    with pytest.raises(ValueError, match=r"e\.csv, line 3.*not on the weekly grid"):
        tm.read_numeric(p, "Health_AFR")
    p = _write(
        tmp_path / "m.csv", "date,OT,start_date,end_date\n1998-09-02,5,1998-09-02,1998-09-30\n"
    )
    with pytest.raises(ValueError, match=r"m\.csv, line 2.*not the first of a month"):
        tm.read_numeric(p, "Security")
    p = _write(tmp_path / "n.csv", "date,OT,start_date,end_date\n1998-09-01,5,1998-09-01\n")
    with pytest.raises(ValueError, match=r"n\.csv, line 2: 3 cells, expected 4"):
        tm.read_numeric(p, "Security")
    with pytest.raises(ValueError, match="unknown Time-MMD domain"):
        tm.read_numeric(p, "Weather")


# ---------------------------------------------------------------------------- splits


def test_retrieval_splits_are_chronological(retrieval):
    for d, ex in retrieval[0].items():
        by = {s: [e["report_end_time"] for e in ex if e["split"] == s] for s in tm.SPLITS}
        if by["validation"]:
            assert max(by["train"]) < min(by["validation"]), d
        if by["test"]:
            assert max(by["validation"] or by["train"]) < min(by["test"]), d
        assert len({e["example_id"] for e in ex}) == len(ex)


def test_chronological_split_keeps_ties_together():
    dates = np.array(
        ["2020-01-01"] * 6 + ["2020-01-02", "2020-01-03"] + ["2020-01-04"] * 2, "datetime64[D]"
    )
    assert list(tm.chronological_split(dates)) == [0] * 7 + [1] + [2] * 2
    # The 70% cut would fall between two reports of 2020-01-02: both go to train.
    dates = np.array(["2020-01-01"] * 6 + ["2020-01-02"] * 2 + ["2020-01-03"] * 2, "datetime64[D]")
    assert list(tm.chronological_split(dates)) == [0] * 8 + [2] * 2
    dates = np.array(["2020-01-01"] * 8 + ["2020-01-03"] * 2, "datetime64[D]")
    assert list(tm.chronological_split(dates)) == [0] * 8 + [2] * 2
    assert tm.time_split_bounds(1389) == (972, 1112)


# ---------------------------------------------------------------------------- forecasting


def test_context_rule_pure_function_on_real_energy_rows(real):
    # Energy report index 0 ends Friday 2011-12-23 and quotes the price "on December 26, 2011":
    # the Monday that starts the next numeric week. "end_date < forecast start" alone admits it
    # for a forecast starting 2011-12-26; the weekly gap rejects it.
    assert tm.context_allowed("2011-12-23", "2011-12-26", gap_days=0)
    assert not tm.context_allowed("2011-12-23", "2011-12-26", gap_days=7)
    assert tm.context_allowed("2011-12-16", "2011-12-26", gap_days=7)
    assert not tm.context_allowed("2011-12-26", "2011-12-26", gap_days=0)
    assert tm.DEFAULT_CONTEXT_GAP_DAYS["Energy"] == 7
    s, facts = real[0]["Energy"]
    out, _ = tm.forecast_examples(s, facts, 96, 12)
    (ex,) = [
        e
        for s_ in tm.SPLITS
        for e in out[s_]
        if e["example_id"] == "Energy/forecast/L96_H12/2011-12-26"
    ]
    assert ex["has_context"] and ex["context_end_time"][0] == tm.unix_seconds("2011-12-16")
    assert "$3.229 per gallon on December 19, 2011" in ex["context_text"][0]
    assert "December 26" not in ex["context_text"][0]


def _check_no_leak(series, facts, out, gap):
    ends = np.array([f.end_date for f in facts], "datetime64[D]")
    n_ctx = 0
    for split in tm.SPLITS:
        for e in out[split]:
            start = np.datetime64(e["forecast_start_time"], "s").astype("datetime64[D]")
            hist = np.datetime64(e["start_time"], "s").astype("datetime64[D]")
            allowed = [
                i for i, x in enumerate(ends) if tm.context_allowed(x, start, gap) and x >= hist
            ]
            if not allowed:
                assert not e["has_context"] and e["context_text"][0] == ""
                continue
            n_ctx += 1
            end = np.datetime64(int(e["context_end_time"][0]), "s").astype("datetime64[D]")
            assert end < start and end + np.timedelta64(gap, "D") < start
            assert e["context_text"][0] == facts[allowed[-1]].text  # the most recent allowed
    return n_ctx


def test_forecast_no_leakage_energy_and_health_us(real):
    for d in ("Energy", "Health_US"):
        s, facts = real[0][d]
        out, meta = tm.forecast_examples(s, facts, 96, 12)
        assert meta["context_gap_days"] == 7
        assert _check_no_leak(s, facts, out, 7) > 300, d
    # Health_US: the week-49 report (index 278, 2007-12-03..2007-12-08) is not context for the
    # forecast starting 2007-12-10 (line 534); the week-48 report (index 277, ends 12-01) is.
    s, facts = real[0]["Health_US"]
    out, _ = tm.forecast_examples(s, facts, 96, 12)
    (ex,) = [e for e in out["train"] if e["example_id"] == "Health_US/forecast/L96_H12/2007-12-10"]
    assert ex["context_text"][0].startswith("During week 48, a low level of influenza activity")
    assert ex["context_end_time"][0] == tm.unix_seconds("2007-12-01")


def test_forecast_scaler_fitted_on_train_only(real):
    s, facts = real[0]["Health_US"]
    out, meta = tm.forecast_examples(s, facts, 96, 48)
    # Independent: OT of the CSV rows before the validation start (2016-05-16), duplicates
    # resolved by keeping the later line, read with the csv module.
    ot = {}
    with open(tm.numeric_path(ROOT, "Health_US"), newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["start_date"] < "2016-05-16":
                ot[r["start_date"]] = float(r["OT"]) if r["TOTAL PATIENTS"] != "0" else None
    ot = {k: v for k, v in ot.items() if v is not None}  # the 95 all-zero off-season rows
    vals = np.array(list(ot.values()))
    assert meta["split_start_dates"]["validation"] == "2016-05-16"
    assert meta["scaler"]["mean"] == pytest.approx(vals.mean())
    assert meta["scaler"]["std"] == pytest.approx(vals.std())
    full = s.values[0][s.observed[0]]
    assert abs(full.mean() - vals.mean()) > 0.05  # the test part would have shifted it
    assert len(out["train"]) == 972 - 96 - 48 + 1 - 0
    assert (len(out["validation"]), len(out["test"])) == (140 - 48 + 1, 277 - 48 + 1)
    e = out["test"][0]
    assert e["scaler_mean"] == meta["scaler"]["mean"]
    # history/target de-standardise to the raw OT values.
    t0 = s.index_of(str(np.datetime64(e["forecast_start_time"], "s").astype("datetime64[D]")))
    assert t0 == 1112
    raw = s.values[0, t0 : t0 + 48]
    np.testing.assert_allclose(e["target"] * e["scaler_std"] + e["scaler_mean"], raw, rtol=1e-5)
    # Stride 1: consecutive windows start one week apart.
    starts = [x["forecast_start_time"] for x in out["test"]]
    assert set(np.diff(starts)) == {7 * 86400}


def test_config_validation():
    with pytest.raises(ValueError, match="unknown or no domains"):
        tm.TimeMmdConfig(name="x", domains=("Weather",))
    with pytest.raises(ValueError, match="exactly one domain"):
        tm.TimeMmdConfig(name="x", kind="forecast", domains=("Energy", "Climate"))
    with pytest.raises(ValueError, match="window_steps"):
        tm.TimeMmdConfig(name="x", domains=("Energy",), window_steps=(("daily", 10),))
    with pytest.raises(ValueError, match="lookback and horizon"):
        tm.forecast_config("Energy", 0, 12)
    cfg = tm.TimeMmdConfig(name="x", window_steps=(("daily", 30), ("weekly", 52), ("monthly", 12)))
    assert cfg.series_length == 52
    assert tm.TimeMmd.DEFAULT_BUILDER_CONFIG_NAME == tm.TimeMmd.BUILDER_CONFIGS[0].name


def test_forecast_masks_and_config_names(real):
    s, facts = real[0]["Health_AFR"]
    out, _ = tm.forecast_examples(s, facts, 24, 4)
    i = s.index_of("1997-05-19")  # inf on line 74
    (e,) = [e for e in out["train"] if e["forecast_start_time"] == tm.unix_seconds(s.dates[i])]
    assert not e["target_observed"][0] and e["target"][0] == 0.0 and e["target_observed"][1]
    cfg = tm.config_from_name("forecast_Health_US_L36_H24")
    assert (cfg.kind, cfg.domains, cfg.lookback, cfg.horizon) == (
        "forecast",
        ("Health_US",),
        36,
        24,
    )
    assert tm.config_from_name("forecast_Nowhere_L36_H24") is None
    names = {c.name for c in tm.TimeMmd.BUILDER_CONFIGS}
    assert {
        "retrieval",
        "forecast_Health_US_L96_H12",
        "forecast_Health_US_L96_H48",
        "forecast_Energy_L96_H12",
        "forecast_Energy_L96_H48",
        "forecast_Environment_L96_H48",
        "forecast_Environment_L96_H336",
    } <= names


# ---------------------------------------------------------------------------- embeddings


def test_each_distinct_text_embedded_once(tmp_path):
    from trace_jax.data.text_cache import TextEmbeddingCache

    enc = FakeEncoder()
    cache = TextEmbeddingCache(tmp_path, encoder_factory=lambda: enc)
    got = tm.embed_texts(cache, ["b", "a", "b", "a", "c"])
    assert enc.calls == [["a", "b", "c"]]
    np.testing.assert_array_equal(got["b"], enc.embed(["b"])[0])
    tm.embed_texts(TextEmbeddingCache(tmp_path, encoder_factory=lambda: enc), ["a", "c"])
    assert len(enc.calls) == 2  # the second call (test's own) only; the cache hit re-embeds nothing


# ---------------------------------------------------------------------------- end to end


def _small_manual_dir(tmp_path):
    """Energy (reports trimmed to 60 rows), Health_AFR (120 rows), Security (50 rows)."""
    root = tmp_path / "manual"
    for d, n in (("Energy", 60), ("Health_AFR", 120), ("Security", 50)):
        dst = tm.numeric_path(root, d)
        dst.parent.mkdir(parents=True)
        shutil.copy(tm.numeric_path(ROOT, d), dst)
        with open(tm.report_path(ROOT, d), newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[: n + 1]
        dst = tm.report_path(root, d)
        dst.parent.mkdir(parents=True)
        with open(dst, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    return root


def test_builder_end_to_end(tmp_path):
    import tensorflow_datasets as tfds

    manual = _small_manual_dir(tmp_path)
    data_dir = tmp_path / "data"
    enc = FakeEncoder()
    cfg = tm.TimeMmdConfig(name="retrieval_small", domains=("Energy", "Health_AFR", "Security"))
    b = tm.TimeMmd(
        data_dir=str(data_dir),
        config=cfg,
        text_cache_dir=str(tmp_path / "cache"),
        text_encoder_factory=lambda: enc,
    )
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert "Security" in b.build_log.summary()

    ds = tfds.data_source("time_mmd/retrieval_small", data_dir=str(data_dir))
    counts = {s: len(ds[s]) for s in tm.SPLITS}
    for s in tm.SPLITS:
        assert_same_examples(ds[s])
    # Loading layer on the same trimmed files gives the same examples.
    log = tm.BuildLog()
    ref = []
    for d in cfg.domains:
        s, f = tm.load_domain(manual, d, log)
        ref += tm.retrieval_examples(s, f, tm.DEFAULT_WINDOW_STEPS[s.frequency], 96, log)
    assert counts == {s: sum(e["split"] == s for e in ref) for s in tm.SPLITS}
    assert sum(counts.values()) == len(ref) > 50
    # Each distinct text went to the encoder exactly once.
    sent = [t for call in enc.calls for t in call]
    assert sorted(sent) == sorted({e["text"] for e in ref})

    by_id = {e["example_id"]: e for e in ref}
    seen_labels = set()
    for s in tm.SPLITS:
        for i in range(len(ds[s])):
            x = ds[s][i]
            want = by_id[x["example_id"].decode()]
            assert want["split"] == s
            np.testing.assert_array_equal(x["series"], want["series"])
            np.testing.assert_array_equal(x["observed"], want["observed"])
            np.testing.assert_array_equal(x["channel_ids"], want["channel_ids"])
            assert x["text"].decode() == want["text"]
            np.testing.assert_allclose(
                x["text_embedding"][0], enc.embed([want["text"]])[0], rtol=1e-6
            )
            assert x["series"].shape == (11, 96) and x["channel_text_embedding"].shape == (11, 384)
            assert not x["channel_text_valid"].any() and x["num_texts"] == 1
            seen_labels.add(int(x["label"]))
    assert seen_labels == {3, 5}  # Energy, Health_AFR (Security has no text)
    meta = json.loads((pathlib.Path(b.data_dir) / "metadata.json").read_text())
    assert meta["build_log"]["skipped"]["Security"]["empty fact"] == 50
    assert meta["channel_vocabulary"][12] == "Energy/OT" and meta["pad_channel_id"] == 38

    # A forecasting config by name (not predefined), read back through tfds.data_source.
    b = tm.TimeMmd(
        data_dir=str(data_dir),
        config="forecast_Energy_L24_H4",
        text_cache_dir=str(tmp_path / "cache"),
        text_encoder_factory=lambda: enc,
    )
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    fds = tfds.data_source("time_mmd/forecast_Energy_L24_H4", data_dir=str(data_dir))
    s, f = tm.load_domain(manual, "Energy")
    out, fmeta = tm.forecast_examples(s, f, 24, 4)
    assert {k: len(fds[k]) for k in tm.SPLITS} == {k: len(out[k]) for k in tm.SPLITS}
    for k in tm.SPLITS:
        assert_same_examples(fds[k])
    x = fds["test"][0]
    assert x["history"].shape == (24,) and x["target"].shape == (4,)
    assert x["context_embedding"].shape == (1, 384)
    assert x["scaler_mean"] == pytest.approx(fmeta["scaler"]["mean"])
    if x["has_context"]:
        np.testing.assert_allclose(
            x["context_embedding"][0], enc.embed([x["context_text"][0].decode()])[0], rtol=1e-6
        )
        assert x["context_end_time"][0] < x["forecast_start_time"]
    assert "tensorflow" not in sys.modules


def test_builder_missing_manual_files_is_a_clear_error(tmp_path):
    import tensorflow_datasets as tfds

    (tmp_path / "manual" / "numerical").mkdir(parents=True)
    b = tm.TimeMmd(
        data_dir=str(tmp_path / "data"),
        config="forecast_Energy_L24_H4",
        text_cache_dir=str(tmp_path / "cache"),
        text_encoder_factory=FakeEncoder,
    )
    with pytest.raises(FileNotFoundError, match=r"textual/Energy/Energy_report\.csv"):
        b.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))
        )
