"""Time-MMD (github.com/AdityaLab/Time-MMD) as a TFDS builder: retrieval and forecasting.

  python -m trace_jax.data.build --dataset=time_mmd \
      --manual_dir=../shared/data/time_mmd --data_dir=data_dir            # retrieval (default)
  python -m trace_jax.data.build --dataset=time_mmd --builder_config=forecast_Energy_L96_H12 ...

Two layers:

* A pure loading layer (no TFDS, fast, testable): `read_numeric` reads
  `numerical/<D>/<D>.csv` onto a regular calendar grid, `read_reports` reads
  `textual/<D>/<D>_report.csv` (the sample texts; `_search.csv` has the same columns and can be
  read with the same function, but its web-search snippets are not used here), and the example
  functions (`retrieval_examples`, `forecast_examples`) turn both into plain dicts.
* `TimeMmd`, a `tfds.core.GeneratorBasedBuilder` writing ArrayRecord files, readable with
  `tfds.data_source` / `builder.as_data_source()` without TensorFlow.

Cleaning rules (each fault below is in the real upstream files):

* Rows are sorted by date (Climate and Economy are stored newest first / out of order).
  The row date is `start_date`, or the first `date` column where there is no `start_date`
  (Health_AFR: `date, date, end_date, OT`, read by position; pandas would call them date/date.1).
* Every domain is put on a regular grid (daily; weekly from the first date; calendar months
  starting on the 1st). Missing grid steps are kept as unobserved steps, never interpolated
  (Health_AFR has three gaps: 9, 8 and 1 missing weeks; Health_US has five missing weeks).
  A date off the grid is an error naming file and line.
* Duplicate dates: the LAST row in file order is kept and the earlier ones are counted as
  skipped. Health_US's five duplicates are MMWR week 53 and week 1 of the next year mapped to the
  same Monday by upstream; keeping the last keeps week 1, which continues into the following rows
  (week 2, 3, ...). Averaging would mix two different weeks, so it is not done.
* Missing values: empty, `X` (Health_US), `NA`, `N/A`, `nan`, and non-finite numbers (`inf` in
  Health_AFR OT) are masked (observed=False, value 0.0), never dropped; counts per domain are
  in the build log. Any other unparseable cell raises ValueError naming file, line and column.
* Health_US weeks 21-39 of 1998-2002 (95 rows) are all zeros (0 providers, 0 patients, OT 0.0):
  CDC did not collect off-season then, so those rows are masked in every channel, not zeros.
* Leading and trailing rows with no observed value in any channel are trimmed and counted
  (SocialGood's 8 future months with empty OT; Health_AFR's 3 empty first weeks).
* Non-numeric and bookkeeping columns are not channels (see `EXCLUDED_COLUMNS`): date columns,
  Climate MapDate/AreaOfInterest/ValidStart/ValidEnd/StatisticFormatID, Economy Month,
  Environment CBSA/CBSA Code/Category/Defining Parameter/Defining Site, Health_US REGION TYPE/
  REGION/YEAR/WEEK/YEAR_WEEK, Agriculture and Traffic Date.
* Report facts: markdown (`**`, bullets) and the LLM's "Objective facts about ... situation:"
  header are removed and whitespace is collapsed. A fact is unusable when it is empty, `NA`
  (also "NA (no information ...)", "Not applicable", "None"), or an LLM refusal / statement that
  the source holds no information ("does not provide information", "there is no mention",
  "Please provide ...", "I'm sorry", ...: `_REFUSAL`). Security has no usable text at all.
  SocialGood and Traffic contain off-topic "Objective facts about the influenza situation"
  answers: refusals are dropped; the few that do carry unemployment facts are kept.
* Exact duplicate reports (same end_date, same cleaned fact) are kept once (Agriculture,
  Environment and Health_AFR repeat rows).
* A report whose end_date is before its start_date (3 Traffic rows: week 52/53 reports with the
  end year one too small, e.g. 2022-12-26..2022-01-01) is repaired by adding one year to the end
  when that puts it within 31 days after the start (counted as repaired); otherwise skipped.

Every skipped or masked record is counted per domain and reason in a `BuildLog`, summarised at
the end of a build (absl log) and stored in the data set's metadata.json.

Retrieval examples (config `retrieval`, the default): one per usable report fact. The window has
`window_steps[frequency]` grid steps and ends at the last grid step whose start date is <= the
report's end_date (reports before the series start or after its end are skipped). Defaults:
daily 96 steps (~3 months), weekly 48 (~11 months), monthly 24 (2 years). All examples share one
`series` shape (MAX_CHANNELS, max window_steps): a shorter window is right-aligned and the
leading steps are unobserved padding (`num_steps` gives the real length). Channels are the
domain's numeric columns, OT first, then in file order, padded to MAX_CHANNELS=11 with
observed=False. `channel_ids` index `CHANNEL_VOCAB`, one id per (domain, column), so a column
of a domain always has the same CIT id: Agriculture 0-2, Climate 3-8 (OT, D0-D4), Economy 9-11,
Energy 12-20, Environment 21-22, Health_AFR 23, Health_US 24-34, Security 35, SocialGood 36,
Traffic 37 (each OT first, then `CHANNELS` order); padding channels get PAD_CHANNEL_ID = 38;
NUM_CHANNEL_IDS = 39. No channel texts (channel_text_valid False). Label = index in DOMAINS.
Splits: chronological 70/10/20 per domain by report end_date; reports sharing an end_date stay
in one split.

Forecasting examples (configs `forecast_<Domain>_L<lookback>_H<horizon>`, any domain/lookback/
horizon by name, see `forecast_config`; predefined: the paper's Health_US and Energy H=12/48,
Environment H=48/336, all with lookback 96): univariate, target OT only (other channels are not
inputs: the paper's Time-MMD task is univariate OT). The time axis (the cleaned grid) is split
70/10/20 (train = int(0.7 T), test = int(0.2 T), validation = the rest). The scaler (mean and
population std of observed OT) is fitted on the training part only; it is stored in every
example and in the metadata. Windows slide with stride 1; a window's target lies entirely in
its split and its history may reach back into earlier splits (past data only). `history` and
`target` are standardised, 0.0 where unobserved, with observed masks. Windows with no observed
target or no observed history are skipped and counted. Context: the `context_facts` most recent
usable facts whose end_date + gap < the forecast's first date (`context_allowed`), and (by
default) whose end_date is not before the history's first date; `has_context` says whether any
exists. The gap (`DEFAULT_CONTEXT_GAP_DAYS`) is 7 days for the weekly-cadence report domains:
Energy reports end on a Friday and quote the price of the following Monday, which is the first
forecast step when the forecast starts that Monday, so "end_date < forecast start" alone leaks.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import os
import pathlib
import re
from typing import Callable, Iterable, Sequence

from absl import logging
import numpy as np

from trace_jax.data.text_cache import TextEmbeddingCache

DOMAINS = [
    "Agriculture",
    "Climate",
    "Economy",
    "Energy",
    "Environment",
    "Health_AFR",
    "Health_US",
    "Security",
    "SocialGood",
    "Traffic",
]
FREQUENCY = {
    "Agriculture": "monthly",
    "Climate": "weekly",
    "Economy": "monthly",
    "Energy": "weekly",
    "Environment": "daily",
    "Health_AFR": "weekly",
    "Health_US": "weekly",
    "Security": "monthly",
    "SocialGood": "monthly",
    "Traffic": "monthly",
}
FREQUENCIES = ("daily", "weekly", "monthly")
DEFAULT_WINDOW_STEPS = {"daily": 96, "weekly": 48, "monthly": 24}

_ENERGY_REGIONS = [
    "East Coast",
    "New England (PADD 1A)",
    "Central Atlantic (PADD 1B)",
    "Lower Atlantic (PADD 1C)",
    "Midwest",
    "Gulf Coast",
    "Rocky Mountain",
    "West Coast",
]
# The channels of each domain, OT first, then in upstream file order. This order defines the
# global channel vocabulary: never reorder, only append.
CHANNELS: dict[str, tuple[str, ...]] = {
    "Agriculture": (
        "OT",
        "Wholesale broiler composite",
        "Retail-wholesale spread for broiler composite",
    ),
    "Climate": ("OT", "D0", "D1", "D2", "D3", "D4"),
    "Economy": ("OT", "Exports", "Imports"),
    "Energy": ("OT",)
    + tuple(
        f"Weekly {r} All Grades All Formulations Retail Gasoline Prices  (Dollars per Gallon)"
        for r in _ENERGY_REGIONS
    ),
    "Environment": ("OT", "Number of Sites Reporting"),
    "Health_AFR": ("OT",),
    "Health_US": (
        "OT",
        "% WEIGHTED ILI",
        "AGE 0-4",
        "AGE 25-49",
        "AGE 25-64",
        "AGE 5-24",
        "AGE 50-64",
        "AGE 65",
        "ILITOTAL",
        "NUM. OF PROVIDERS",
        "TOTAL PATIENTS",
    ),
    "Security": ("OT",),
    "SocialGood": ("OT",),
    "Traffic": ("OT",),
}
_DATE_COLUMNS = frozenset({"date", "Date", "date.1", "start_date", "end_date"})
EXCLUDED_COLUMNS: dict[str, dict[str, str]] = {
    "Agriculture": {"Date": "date"},
    "Climate": {
        "MapDate": "date as YYYYMMDD",
        "AreaOfInterest": "text (always 'Total')",
        "ValidStart": "date",
        "ValidEnd": "date",
        "StatisticFormatID": "format code (constant)",
    },
    "Economy": {"Month": "text date"},
    "Energy": {},
    "Environment": {
        "CBSA": "text (area name)",
        "CBSA Code": "area code (constant)",
        "Category": "text (AQI category of OT)",
        "Defining Parameter": "text",
        "Defining Site": "text (site id)",
    },
    "Health_AFR": {},
    "Health_US": {
        "REGION TYPE": "text",
        "REGION": "text (always X)",
        "YEAR": "calendar",
        "WEEK": "calendar",
        "YEAR_WEEK": "text",
    },
    "Security": {},
    "SocialGood": {},
    "Traffic": {"Date": "date"},
}
# Global channel vocabulary: (domain, column) -> CIT id, in DOMAINS then CHANNELS order.
CHANNEL_VOCAB: dict[tuple[str, str], int] = {
    (d, c): i for i, (d, c) in enumerate((d, c) for d in DOMAINS for c in CHANNELS[d])
}
PAD_CHANNEL_ID = len(CHANNEL_VOCAB)  # 38: padding channels (masked anyway)
NUM_CHANNEL_IDS = PAD_CHANNEL_ID + 1  # size of the CIT table this data set needs
MAX_CHANNELS = max(len(c) for c in CHANNELS.values())  # 11 (Health_US)
EMBED_DIM = 384
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)

# Report domains with a weekly cadence: their reports may quote the value of the week after
# their end_date (Energy: report ends Friday, quotes the next Monday's price).
DEFAULT_CONTEXT_GAP_DAYS = {
    "Agriculture": 7,
    "Climate": 7,
    "Energy": 7,
    "Health_AFR": 7,
    "Health_US": 7,
    "Economy": 0,
    "Environment": 0,
    "Security": 0,
    "SocialGood": 0,
    "Traffic": 0,
}

URL_ROOT = "https://raw.githubusercontent.com/AdityaLab/Time-MMD/main"
HOMEPAGE = "https://github.com/AdityaLab/Time-MMD"
CITATION = """@article{liu2024timemmd,
  title={Time-MMD: Multi-Domain Multimodal Dataset for Time Series Analysis},
  author={Liu, Haoxin and Xu, Shangqing and Zhao, Zhiyuan and Kong, Lingkai and Kamarthi, Harshavardhan and Sasanur, Aditya B. and Sharma, Megha and Cui, Jiaming and Wen, Qingsong and Zhang, Chao and Prakash, B. Aditya},
  journal={arXiv preprint arXiv:2406.08627},
  year={2024}
}"""
MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Clone https://github.com/AdityaLab/Time-MMD (or copy its files) and pass the clone's root as
manual_dir. The builder needs, for each domain <D> of the config:
  <manual_dir>/numerical/<D>/<D>.csv
  <manual_dir>/textual/<D>/<D>_report.csv
Domains: """ + ", ".join(DOMAINS) + "."


def numeric_path(root, domain: str) -> pathlib.Path:
    return pathlib.Path(root) / "numerical" / domain / f"{domain}.csv"


def report_path(root, domain: str, kind: str = "report") -> pathlib.Path:
    return pathlib.Path(root) / "textual" / domain / f"{domain}_{kind}.csv"


def numeric_url(domain: str) -> str:
    return f"{URL_ROOT}/numerical/{domain}/{domain}.csv"


def report_url(domain: str) -> str:
    return f"{URL_ROOT}/textual/{domain}/{domain}_report.csv"


def check_layout(root, domains: Iterable[str] = DOMAINS) -> None:
    """Raises FileNotFoundError listing every expected file that is missing under `root`."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Time-MMD directory {root} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    missing = [
        str(p)
        for d in domains
        for p in (numeric_path(root, d), report_path(root, d))
        if not p.is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{root} is not in the Time-MMD layout; missing: "
            + ", ".join(missing)
            + f"\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )


# ----------------------------------------------------------------------------------------
# Build log: every skipped, masked or repaired record is counted.


@dataclasses.dataclass
class BuildLog:
    """Counts per (domain, reason): skipped records, masked cells, repairs and notes."""

    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    masked: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def skip(self, domain: str, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[(domain, reason)] += n

    def mask(self, domain: str, reason: str, n: int = 1) -> None:
        if n:
            self.masked[(domain, reason)] += n

    def note(self, domain: str, what: str, n: int = 1) -> None:
        if n:
            self.notes[(domain, what)] += n

    def skipped_for(self, domain: str) -> dict[str, int]:
        return {r: n for (d, r), n in sorted(self.skipped.items()) if d == domain}

    def as_dict(self) -> dict:
        out = {}
        for name in ("skipped", "masked", "notes"):
            per = collections.defaultdict(dict)
            for (d, r), n in sorted(getattr(self, name).items()):
                per[d][r] = int(n)
            out[name] = dict(per)
        return out

    def summary(self) -> str:
        lines = ["Time-MMD build log (per domain and reason):"]
        domains = sorted(
            {d for c in (self.skipped, self.masked, self.notes) for d, _ in c},
            key=lambda d: (DOMAINS.index(d) if d in DOMAINS else 99, d),
        )
        for d in domains:
            lines.append(f"  {d}:")
            for title, counter in (
                ("skipped", self.skipped),
                ("masked", self.masked),
                ("note", self.notes),
            ):
                items = [(r, n) for (dd, r), n in sorted(counter.items()) if dd == d]
                if items:
                    lines.append(f"    {title}: " + "; ".join(f"{r}: {n}" for r, n in items))
        if len(lines) == 1:
            lines.append("  nothing skipped")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Numeric series.

_MISSING_TOKENS = {
    "": "empty",
    "X": "X",
    "NA": "NA",
    "N/A": "NA",
    "nan": "NaN",
    "NaN": "NaN",
    "NAN": "NaN",
}


@dataclasses.dataclass(frozen=True)
class DomainSeries:
    """A domain's numeric channels on a regular grid (after cleaning)."""

    domain: str
    frequency: str
    columns: tuple[str, ...]  # channel names, OT first
    dates: np.ndarray  # (T,) datetime64[D]: first day of each grid step
    values: np.ndarray  # (C, T) float64, 0.0 where unobserved
    observed: np.ndarray  # (C, T) bool
    num_rows: int  # CSV rows kept (T minus grid gaps)

    @property
    def num_steps(self) -> int:
        return len(self.dates)

    @property
    def step_ends(self) -> np.ndarray:
        """(T,) datetime64[D]: exclusive end of each step (first day of the next step)."""
        return step_end(self.dates, self.frequency)

    @property
    def channel_ids(self) -> np.ndarray:
        return np.array([CHANNEL_VOCAB[(self.domain, c)] for c in self.columns], np.int32)

    def index_of(self, date) -> int:
        """Grid index of `date` (must be a grid date)."""
        i = int(np.searchsorted(self.dates, np.datetime64(date, "D")))
        if i >= len(self.dates) or self.dates[i] != np.datetime64(date, "D"):
            raise KeyError(f"{self.domain}: {date} is not a grid date")
        return i


def step_end(dates: np.ndarray, frequency: str) -> np.ndarray:
    dates = np.asarray(dates, "datetime64[D]")
    if frequency == "daily":
        return dates + np.timedelta64(1, "D")
    if frequency == "weekly":
        return dates + np.timedelta64(7, "D")
    if frequency == "monthly":
        return (dates.astype("datetime64[M]") + 1).astype("datetime64[D]")
    raise ValueError(f"unknown frequency {frequency!r}")


def unix_seconds(date) -> int:
    return int(np.datetime64(date, "D").astype("datetime64[s]").astype(np.int64))


def _parse_date(value: str, path, line: int, column: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{path}, line {line}, column {column!r}: cannot parse {value!r} as a YYYY-MM-DD date"
        ) from None


def _parse_number(value: str, path, line: int, column: str) -> tuple[float, str | None]:
    """Returns (value, None) or (nan, reason-it-is-missing)."""
    v = value.strip()
    if v in _MISSING_TOKENS:
        return float("nan"), _MISSING_TOKENS[v]
    try:
        x = float(v)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}, column {column!r}: cannot parse {value!r} as a number"
        ) from None
    if np.isnan(x):
        return x, "NaN"
    if not np.isfinite(x):
        return float("nan"), "inf"
    return x, None


def _read_csv(path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (first line number, cells) of every record; handles multi-line cells."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected Time-MMD file {path} (does not exist)")
    records = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected a CSV header") from None
        except csv.Error as e:
            raise ValueError(f"{path}, line 1: {e}") from None
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ValueError(f"{path}, line {start}: {e}") from None
            if row:  # csv yields [] for blank lines
                if len(row) != len(header):
                    raise ValueError(
                        f"{path}, line {start}: {len(row)} cells, expected {len(header)} (header {header})"
                    )
                records.append((start, row))
            start = reader.line_num + 1
    return header, records


def _dedupe_header(header: list[str]) -> list[str]:
    """pandas-style names for repeated columns: date, date -> date, date.1."""
    seen = collections.Counter()
    out = []
    for h in header:
        h = h.strip()
        out.append(h if not seen[h] else f"{h}.{seen[h]}")
        seen[h] += 1
    return out


_PLACEHOLDER = "zero placeholder"


def read_numeric(path, domain: str, log: BuildLog | None = None) -> DomainSeries:
    """Reads `numerical/<D>/<D>.csv` onto the domain's regular grid (see module docstring)."""
    if domain not in CHANNELS:
        raise ValueError(f"unknown Time-MMD domain {domain!r}; expected one of {DOMAINS}")
    log = log if log is not None else BuildLog()
    header, records = _read_csv(path)
    header = _dedupe_header(header)
    columns = CHANNELS[domain]
    date_col = "start_date" if "start_date" in header else "date"
    required = [date_col, "end_date", *columns]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(
            f"{path}: expected columns {missing} for domain {domain} (a Time-MMD numerical file "
            f"has start_date or date, end_date, OT and the channels {list(columns)}); "
            f"found {header}"
        )
    for h in header:
        if h not in columns and h not in _DATE_COLUMNS and h not in EXCLUDED_COLUMNS[domain]:
            log.note(domain, f"unknown column ignored: {h}")
            logging.warning("%s: column %r is not a known channel of %s; ignored", path, h, domain)
    if not records:
        raise ValueError(f"{path}: no data rows")
    di, ci = header.index(date_col), [header.index(c) for c in columns]
    ei = header.index("end_date")
    frequency = FREQUENCY[domain]

    dates, vals, mask_reasons = [], [], []
    for line, row in records:
        d = _parse_date(row[di], path, line, date_col)
        _parse_date(row[ei], path, line, "end_date")
        if frequency == "monthly" and d.day != 1:
            raise ValueError(
                f"{path}, line {line}, column {date_col!r}: monthly date {d} is not "
                "the first of a month"
            )
        parsed = [_parse_number(row[j], path, line, c) for j, c in zip(ci, columns)]
        dates.append(np.datetime64(d, "D"))
        vals.append([x for x, _ in parsed])
        mask_reasons.append([r for _, r in parsed])
    lines = np.array([ln for ln, _ in records])
    dates = np.array(dates, "datetime64[D]")
    vals = np.array(vals, np.float64).T  # (C, n)

    if np.any(dates[1:] < dates[:-1]):
        log.note(domain, "rows out of date order (sorted)")
    order = np.argsort(dates, kind="stable")
    dates, vals, lines = dates[order], vals[:, order], lines[order]
    mask_reasons = [mask_reasons[i] for i in order]

    # Duplicate dates: keep the last row in file order (the sort is stable, so it is the later one).
    keep = np.ones(len(dates), bool)
    keep[:-1] = dates[:-1] != dates[1:]
    log.skip(domain, "duplicate date (kept the last row)", int((~keep).sum()))
    dates, vals, lines = dates[keep], vals[:, keep], lines[keep]
    mask_reasons = [m for m, k in zip(mask_reasons, keep) if k]

    # Grid positions.
    if frequency == "daily":
        pos = (dates - dates[0]).astype(np.int64)
    elif frequency == "weekly":
        delta = (dates - dates[0]).astype(np.int64)
        off = np.nonzero(delta % 7)[0]
        if len(off):
            raise ValueError(
                f"{path}, line {lines[off[0]]}, column {date_col!r}: {dates[off[0]]} is "
                f"not on the weekly grid starting {dates[0]}"
            )
        pos = delta // 7
    else:
        months = dates.astype("datetime64[M]")
        pos = (months - months[0]).astype(np.int64)
    num_steps = int(pos[-1]) + 1
    if frequency == "monthly":
        grid = (dates[0].astype("datetime64[M]") + np.arange(num_steps)).astype("datetime64[D]")
    else:
        step = 7 if frequency == "weekly" else 1
        grid = dates[0] + (np.arange(num_steps) * step).astype("timedelta64[D]")
    gaps = num_steps - len(dates)
    log.note(domain, "missing grid steps (unobserved)", gaps)

    values = np.zeros((len(columns), num_steps), np.float64)
    observed = np.zeros((len(columns), num_steps), bool)
    finite = np.isfinite(vals)
    values[:, pos] = np.where(finite, vals, 0.0)
    observed[:, pos] = finite
    why = np.full((len(columns), num_steps), "", dtype=object)  # why a cell is masked
    why[:, pos] = np.array([[r or "" for r in m] for m in mask_reasons], dtype=object).T
    if domain == "Health_US":
        # Off-season weeks 21-39 of 1998-2002 are all-zero rows (0 providers, 0 patients, OT 0.0):
        # nothing was reported, so every channel is masked rather than read as a real 0%.
        pi = columns.index("NUM. OF PROVIDERS")
        ti = columns.index("TOTAL PATIENTS")
        empty = observed[pi] & observed[ti] & (values[pi] == 0) & (values[ti] == 0)
        why[:, empty] = np.where(observed[:, empty], _PLACEHOLDER, why[:, empty])
        observed[:, empty] = False
        values[:, empty] = 0.0

    # Trim leading / trailing steps without any observation (e.g. SocialGood's future months).
    any_obs = observed.any(axis=0)
    if not any_obs.any():
        raise ValueError(f"{path}: no observed numeric value in any channel of {domain}")
    first = int(np.argmax(any_obs))
    last = num_steps - 1 - int(np.argmax(any_obs[::-1]))
    row_at = np.zeros(num_steps, bool)
    row_at[pos] = True
    log.skip(domain, "leading row with no observed value", int(row_at[:first].sum()))
    log.skip(domain, "trailing row with no observed value", int(row_at[last + 1 :].sum()))
    sl = slice(first, last + 1)
    for j, c in enumerate(columns):  # masked cells inside the kept span
        for r, n in sorted(collections.Counter(w for w in why[j, sl] if w).items()):
            if r != _PLACEHOLDER:
                log.mask(domain, f"{r} cell in {c}", n)
    log.mask(
        domain,
        "all-zero placeholder row (0 providers, 0 patients), all channels masked",
        int((why[:, sl] == _PLACEHOLDER).any(axis=0).sum()),
    )
    return DomainSeries(
        domain=domain,
        frequency=frequency,
        columns=tuple(columns),
        dates=grid[sl],
        values=values[:, sl],
        observed=observed[:, sl],
        num_rows=int(row_at[sl].sum()),
    )


# ----------------------------------------------------------------------------------------
# Report facts.

_HEADER = re.compile(r"^[\s:*#>\-]*objective\s+facts?\b[^\n:]*:?", re.I)
_BULLET = re.compile(r"^\s*(?:[*\-\u2022]|\d+\.)\s+", re.M)
_NA = re.compile(
    r"^\W*(?:(?:NA|N/A|null|nan)\b|(?:none|not\s+applicable)"
    r"(?:\s*[.,;:(]|\s*$|\s+mentioned\b))",
    re.I,
)
_QUAL = r"(?:any|direct|specific|explicit|objective|relevant|useful|further|detailed)"
_REFUSAL = re.compile(
    "|".join(
        [
            # "The report / article / excerpt does not provide (specific) data ..."
            r"\b(?:report|article|excerpt|text|document|source|passage|results?|information|it|they|"
            r"data|statement|communiqu\w*)\s+(?:does|do|did)\s+not\s+(?:\w+\s+)?(?:provide|contain|"
            r"mention|include|give|have|specify|discuss|offer|state|report)\b",
            rf"\b(?:does|do|did)\s+not\s+(?:directly\s+|explicitly\s+|specifically\s+)?(?:provide|"
            rf"mention|contain|include|give)\s+(?:{_QUAL}\s+)*(?:information|data|facts?|details|"
            rf"mention)\b",
            r"\bbut\s+does\s+not\s+(?:directly\s+)?(?:provide|mention|contain)\b",
            # "There is no (direct) information / mention ..."
            r"\bthere\s+(?:is|are|was|were)\s+no\s+(?:\w+\s+){0,2}(?:information|data|mention|facts?|"
            r"details|objective|relevant|direct|specific)\b",
            # "No (direct) information is provided ..."
            r"\bno\s+(?:\w+\s+){0,2}(?:information|data|mention|facts?|details)\s+(?:is\s+|are\s+|was\s+|"
            r"were\s+|can\s+be\s+|could\s+be\s+)?(?:provided|available|found|mentioned|given|extracted|"
            r"present|related|about|on|in)\b",
            r"\bno\s+mention\s+of\b",
            r"\bnot\s+(?:explicitly\s+|specifically\s+|directly\s+)?(?:mentioned|provided|stated)\s+in\b",
            r"\bplease\s+provide\b",
            r"\bI\s+(?:am|'m)\s+(?:sorry|unable)\b",
            r"\bI\s+apologi[sz]e\b",
            r"\b(?:cannot|can't|could\s+not|couldn't|unable\s+to)\s+(?:find|provide|extract|determine|"
            r"identify|access|answer|make)\b",
            r"\bnot\s+applicable\b",
        ]
    ),
    re.I,
)


def clean_fact(raw: str) -> str:
    """Removes markdown, bullets and the LLM's 'Objective facts about ...:' header."""
    t = raw.replace("\r\n", "\n").replace("\r", "\n").replace("**", "")
    t = _HEADER.sub("", t, count=1)
    t = _BULLET.sub("", t)
    return " ".join(t.split())


def fact_problem(text: str) -> str | None:
    """Why a cleaned fact is unusable ('empty fact', 'NA fact', 'LLM refusal'), or None."""
    if not text:
        return "empty fact"
    if _NA.match(text):
        return "NA fact"
    if _REFUSAL.search(text):
        return "LLM refusal / no information"
    return None


@dataclasses.dataclass(frozen=True)
class Fact:
    domain: str
    row_id: str  # upstream index column (unique per file)
    line: int  # first line of the record in the CSV
    start_date: datetime.date
    end_date: datetime.date
    text: str  # cleaned


def read_reports(path, domain: str, log: BuildLog | None = None) -> list[Fact]:
    """Usable facts of `textual/<D>/<D>_report.csv`, sorted by (end_date, start_date, line).

    Also reads `_search.csv` files (same columns), which this builder does not use.
    """
    log = log if log is not None else BuildLog()
    header, records = _read_csv(path)
    header = [h.strip() for h in header]
    missing = [c for c in ("start_date", "end_date", "fact") if c not in header]
    if missing:
        raise ValueError(
            f"{path}: expected columns {missing} (a Time-MMD report file has "
            f"start_date, end_date, fact, preds); found {header}"
        )
    si, ei, fi = header.index("start_date"), header.index("end_date"), header.index("fact")
    ii = 0 if header[0] == "" else None
    facts, seen, used_ids = [], set(), set()
    for line, row in records:
        start = _parse_date(row[si], path, line, "start_date")
        end = _parse_date(row[ei], path, line, "end_date")
        text = clean_fact(row[fi])
        problem = fact_problem(text)
        if problem:
            log.skip(domain, problem)
            continue
        if end < start:
            fixed = (
                end.replace(year=end.year + 1) if not (end.month == 2 and end.day == 29) else None
            )
            if fixed is not None and start <= fixed <= start + datetime.timedelta(days=31):
                log.note(domain, "report end_date year repaired (+1 year)")
                end = fixed
            else:
                log.skip(domain, "report end_date before start_date")
                continue
        key = (end, text)
        if key in seen:
            log.skip(domain, "duplicate report (same end_date and fact)")
            continue
        seen.add(key)
        row_id = row[ii].strip() if ii is not None and row[ii].strip() else f"line{line}"
        if row_id in used_ids:  # ids must stay unique (example ids); upstream's always are
            row_id = f"line{line}"
        used_ids.add(row_id)
        facts.append(Fact(domain, row_id, line, start, end, text))
    facts.sort(key=lambda f: (f.end_date, f.start_date, f.line))
    return facts


def load_domain(root, domain: str, log: BuildLog | None = None) -> tuple[DomainSeries, list[Fact]]:
    """Numeric series and usable report facts of one domain of a local copy at `root`."""
    check_layout(root, [domain])
    return (
        read_numeric(numeric_path(root, domain), domain, log),
        read_reports(report_path(root, domain), domain, log),
    )


# ----------------------------------------------------------------------------------------
# Splits.


def chronological_split(dates: Sequence, fractions=SPLIT_FRACTIONS) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) for sorted `dates`; equal dates stay together."""
    dates = np.asarray(dates, "datetime64[D]")
    n = len(dates)
    if np.any(dates[1:] < dates[:-1]):
        raise ValueError("dates must be sorted")

    def cut(c):
        while 0 < c < n and dates[c] == dates[c - 1]:
            c += 1
        return c

    c1 = cut(int(round(n * fractions[0])))
    c2 = max(cut(int(round(n * (fractions[0] + fractions[1])))), c1)
    out = np.zeros(n, np.int8)
    out[c1:c2] = 1
    out[c2:] = 2
    return out


def time_split_bounds(num_steps: int, fractions=SPLIT_FRACTIONS) -> tuple[int, int]:
    """(end of train, end of validation) on a time axis: train=int(0.7T), test=int(0.2T)."""
    n_train = int(num_steps * fractions[0])
    n_test = int(num_steps * fractions[2])
    return n_train, num_steps - n_test


# ----------------------------------------------------------------------------------------
# Retrieval examples.


def window_end_index(series: DomainSeries, end_date) -> int | None:
    """Last grid step starting on or before `end_date`; None if outside the series span."""
    d = np.datetime64(end_date, "D")
    if d < series.dates[0] or d >= series.step_ends[-1]:
        return None
    return int(np.searchsorted(series.dates, d, side="right")) - 1


def retrieval_window(series: DomainSeries, end_index: int, steps: int, length: int):
    """(series (MAX_CHANNELS, length), observed, channel_ids, start step) right-aligned."""
    if steps > length:
        raise ValueError(f"window_steps {steps} > series length {length}")
    c = len(series.columns)
    out = np.zeros((MAX_CHANNELS, length), np.float32)
    obs = np.zeros((MAX_CHANNELS, length), bool)
    start = end_index - steps + 1
    lo = max(start, 0)
    k = end_index + 1 - lo  # steps available
    out[:c, length - k :] = series.values[:, lo : end_index + 1]
    obs[:c, length - k :] = series.observed[:, lo : end_index + 1]
    ids = np.full(MAX_CHANNELS, PAD_CHANNEL_ID, np.int32)
    ids[:c] = series.channel_ids
    return out, obs, ids, start


def retrieval_examples(
    series: DomainSeries,
    facts: Sequence[Fact],
    window_steps: int,
    length: int,
    log: BuildLog | None = None,
    fractions=SPLIT_FRACTIONS,
) -> list[dict]:
    """One example per usable fact (text embeddings not filled in); each has a 'split' key."""
    log = log if log is not None else BuildLog()
    d = series.domain
    kept = []
    for f in facts:
        end = window_end_index(series, f.end_date)
        if end is None:
            where = (
                "before series start"
                if np.datetime64(f.end_date) < series.dates[0]
                else "after series end"
            )
            log.skip(d, f"report {where}")
            continue
        x, obs, ids, start = retrieval_window(series, end, window_steps, length)
        if not obs.any():
            log.skip(d, "no observed value in window")
            continue
        kept.append((f, x, obs, ids, start, end))
    split = chronological_split([f.end_date for f, *_ in kept], fractions)
    ends = series.step_ends
    out = []
    for (f, x, obs, ids, start, end), s in zip(kept, split):
        # Start of the window on the grid, also where it reaches before the series start.
        if series.frequency == "monthly":
            first = (series.dates[0].astype("datetime64[M]") + start).astype("datetime64[D]")
        else:
            first = series.dates[0] + np.timedelta64(
                start * (7 if series.frequency == "weekly" else 1), "D"
            )
        out.append(
            dict(
                series=x,
                observed=obs,
                channel_ids=ids,
                text=f.text,
                channel_texts=np.array([""] * MAX_CHANNELS, dtype=object),
                channel_text_embedding=np.zeros((MAX_CHANNELS, EMBED_DIM), np.float32),
                channel_text_valid=np.zeros(MAX_CHANNELS, bool),
                num_texts=np.int32(1),
                label=np.int32(DOMAINS.index(d)),
                start_time=unix_seconds(first),
                end_time=unix_seconds(ends[end]),
                example_id=f"{d}/report/{f.row_id}",
                domain=d,
                num_steps=np.int32(window_steps),
                report_start_time=unix_seconds(f.start_date),
                report_end_time=unix_seconds(f.end_date),
                split=SPLITS[int(s)],
            )
        )
    return out


# ----------------------------------------------------------------------------------------
# Forecasting examples.


def context_allowed(report_end, forecast_start, gap_days: int = 0) -> bool:
    """True iff a report ending `report_end` may be context for a forecast starting then.

    The report must end strictly before the forecast's first date, with `gap_days` to spare:
    report_end + gap_days < forecast_start.
    """
    return np.datetime64(report_end, "D") + np.timedelta64(gap_days, "D") < np.datetime64(
        forecast_start, "D"
    )


def select_context(
    fact_ends: np.ndarray, forecast_start, gap_days: int, k: int, not_before=None
) -> list[int]:
    """Indices of the k most recent allowed facts (most recent first); `fact_ends` sorted."""
    fact_ends = np.asarray(fact_ends, "datetime64[D]")
    bound = np.datetime64(forecast_start, "D") - np.timedelta64(gap_days, "D")
    hi = int(np.searchsorted(fact_ends, bound, side="left"))  # ends < bound
    idx = list(range(hi - 1, max(hi - k, 0) - 1, -1))
    if not_before is not None:
        nb = np.datetime64(not_before, "D")
        idx = [i for i in idx if fact_ends[i] >= nb]
    return idx


def fit_scaler(values: np.ndarray, observed: np.ndarray) -> tuple[float, float]:
    """Mean and population std of the observed values (std 1.0 when degenerate)."""
    v = np.asarray(values, np.float64)[np.asarray(observed, bool)]
    if v.size == 0:
        raise ValueError("no observed value to fit the scaler on")
    mean, std = float(v.mean()), float(v.std())
    return mean, (std if std > 0 else 1.0)


def forecast_examples(
    series: DomainSeries,
    facts: Sequence[Fact],
    lookback: int,
    horizon: int,
    *,
    context_facts: int = 1,
    gap_days: int | None = None,
    context_within_history: bool = True,
    fractions=SPLIT_FRACTIONS,
    log: BuildLog | None = None,
) -> tuple[dict[str, list[dict]], dict]:
    """Sliding (stride 1) univariate OT windows per split, and metadata (scaler, bounds)."""
    log = log if log is not None else BuildLog()
    d = series.domain
    gap = DEFAULT_CONTEXT_GAP_DAYS[d] if gap_days is None else gap_days
    t = series.num_steps
    n_train, n_trval = time_split_bounds(t, fractions)
    y, m = series.values[0], series.observed[0]
    mean, std = fit_scaler(y[:n_train], m[:n_train])
    z = np.where(m, (y - mean) / std, 0.0).astype(np.float32)
    ends = series.step_ends
    fact_ends = np.array([np.datetime64(f.end_date, "D") for f in facts], "datetime64[D]")
    ranges = {
        "train": (lookback, n_train - horizon),
        "validation": (n_train, n_trval - horizon),
        "test": (n_trval, t - horizon),
    }
    out = {s: [] for s in SPLITS}
    k = context_facts
    for split, (lo, hi) in ranges.items():
        for t0 in range(max(lo, lookback), hi + 1):
            hm, tm = m[t0 - lookback : t0], m[t0 : t0 + horizon]
            if not tm.any():
                log.skip(d, f"forecast window with no observed target ({split})")
                continue
            if not hm.any():
                log.skip(d, f"forecast window with no observed history ({split})")
                continue
            start = series.dates[t0]
            idx = select_context(
                fact_ends,
                start,
                gap,
                k,
                series.dates[t0 - lookback] if context_within_history else None,
            )
            texts = np.array([facts[i].text for i in idx] + [""] * (k - len(idx)), dtype=object)
            cend = np.array(
                [unix_seconds(facts[i].end_date) for i in idx] + [0] * (k - len(idx)), np.int64
            )
            out[split].append(
                dict(
                    history=z[t0 - lookback : t0],
                    history_observed=hm.copy(),
                    target=z[t0 : t0 + horizon],
                    target_observed=tm.copy(),
                    scaler_mean=np.float64(mean),
                    scaler_std=np.float64(std),
                    start_time=unix_seconds(series.dates[t0 - lookback]),
                    forecast_start_time=unix_seconds(start),
                    end_time=unix_seconds(ends[t0 + horizon - 1]),
                    context_text=texts,
                    context_valid=np.arange(k) < len(idx),
                    num_context=np.int32(len(idx)),
                    has_context=bool(idx),
                    context_end_time=cend,
                    label=np.int32(DOMAINS.index(d)),
                    domain=d,
                    example_id=f"{d}/forecast/L{lookback}_H{horizon}/{start}",
                )
            )
    meta = dict(
        domain=d,
        lookback=lookback,
        horizon=horizon,
        num_steps=t,
        scaler={
            "mean": mean,
            "std": std,
            "fitted_on_steps": [0, n_train],
            "fitted_on_dates": [str(series.dates[0]), str(series.dates[n_train - 1])],
        },
        split_steps={"train": [0, n_train], "validation": [n_train, n_trval], "test": [n_trval, t]},
        split_start_dates={
            "train": str(series.dates[0]),
            "validation": str(series.dates[n_train]),
            "test": str(series.dates[n_trval]),
        },
        context_gap_days=gap,
        context_facts=k,
        context_within_history=context_within_history,
    )
    return out, meta


# ----------------------------------------------------------------------------------------
# Text embeddings.


def embed_texts(cache, texts: Iterable[str]) -> dict[str, np.ndarray]:
    """Embeds each distinct text once through a TextEmbeddingCache; text -> (EMBED_DIM,)."""
    unique = sorted(set(texts))
    if not unique:
        return {}
    emb = np.asarray(cache.embed(unique), np.float32)
    if emb.shape != (len(unique), EMBED_DIM):
        raise ValueError(
            f"text encoder returned {emb.shape}, expected ({len(unique)}, {EMBED_DIM})"
        )
    return dict(zip(unique, emb))


# ----------------------------------------------------------------------------------------
# TFDS builder.

try:  # The loading layer above works without tensorflow_datasets.
    import tensorflow_datasets as tfds
except ImportError:  # pragma: no cover
    tfds = None


def _config_base():
    return tfds.core.BuilderConfig if tfds is not None else object


@dataclasses.dataclass(eq=False)
class TimeMmdConfig(_config_base()):
    """kind='retrieval' (one example per report fact) or 'forecast' (one domain's OT)."""

    kind: str = "retrieval"
    domains: tuple[str, ...] = tuple(DOMAINS)
    # Retrieval window length per frequency class, as ((frequency, steps), ...).
    window_steps: tuple[tuple[str, int], ...] = tuple(DEFAULT_WINDOW_STEPS.items())
    lookback: int = 96
    horizon: int = 12
    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS
    context_facts: int = 1
    context_gap_days: int | None = None  # None: DEFAULT_CONTEXT_GAP_DAYS[domain]
    context_within_history: bool = True

    def __post_init__(self):
        if self.kind not in ("retrieval", "forecast"):
            raise ValueError(
                f"{self.name}: kind must be 'retrieval' or 'forecast', got {self.kind!r}"
            )
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or not self.domains:
            raise ValueError(
                f"{self.name}: unknown or no domains {unknown}; expected some of " f"{DOMAINS}"
            )
        steps = self.window_steps_dict
        need = {FREQUENCY[d] for d in self.domains}
        if not need <= set(steps) or any(int(v) < 1 for v in steps.values()):
            raise ValueError(
                f"{self.name}: window_steps {steps} must give a positive length for "
                f"each of {sorted(need)}"
            )
        if self.kind == "forecast":
            if len(self.domains) != 1:
                raise ValueError(f"{self.name}: a forecasting config has exactly one domain")
            if self.lookback < 1 or self.horizon < 1 or self.context_facts < 1:
                raise ValueError(f"{self.name}: lookback, horizon and context_facts must be >= 1")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-9:
            raise ValueError(f"{self.name}: split_fractions must be 3 numbers summing to 1")

    @property
    def window_steps_dict(self) -> dict[str, int]:
        return dict(self.window_steps)

    @property
    def series_length(self) -> int:
        return max(self.window_steps_dict.values())


_FORECAST_NAME = re.compile(r"forecast_(?P<domain>.+)_L(?P<lookback>\d+)_H(?P<horizon>\d+)")


def forecast_config(domain: str, lookback: int = 96, horizon: int = 12, **kwargs) -> TimeMmdConfig:
    """Config `forecast_<domain>_L<lookback>_H<horizon>` (kwargs: other TimeMmdConfig fields)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown Time-MMD domain {domain!r}; expected one of {DOMAINS}")
    if lookback < 1 or horizon < 1:
        raise ValueError("lookback and horizon must be positive")
    return TimeMmdConfig(
        name=f"forecast_{domain}_L{lookback}_H{horizon}",
        kind="forecast",
        domains=(domain,),
        lookback=lookback,
        horizon=horizon,
        description=f"Time-MMD {domain}: univariate OT forecasting, lookback {lookback}, horizon "
        f"{horizon}, chronological 70/10/20, scaler fitted on train, report context without "
        "leakage.",
        **kwargs,
    )


def config_from_name(name: str) -> TimeMmdConfig | None:
    m = _FORECAST_NAME.fullmatch(name)
    if m and m["domain"] in DOMAINS:
        return forecast_config(m["domain"], int(m["lookback"]), int(m["horizon"]))
    return None


# Paper Table 4 settings (lookback 96, our default: the paper does not give one).
PAPER_FORECAST = (
    ("Health_US", 12),
    ("Health_US", 48),
    ("Energy", 12),
    ("Energy", 48),
    ("Environment", 48),
    ("Environment", 336),
)

if tfds is not None:

    class TimeMmd(tfds.core.GeneratorBasedBuilder):
        """Time-MMD: ten domains of numeric series with LLM-extracted report facts."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Initial release."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
        BUILDER_CONFIGS = [
            TimeMmdConfig(
                name="retrieval",
                description=(
                    "One example per usable report fact of all ten domains: the window ending at the "
                    "report, the fact as text, the domain as label. Chronological 70/10/20 per domain."
                ),
            ),
        ] + [forecast_config(d, 96, h) for d, h in PAPER_FORECAST]
        DEFAULT_BUILDER_CONFIG_NAME = "retrieval"

        def __init__(
            self,
            *,
            data_dir=None,
            config=None,
            text_cache_dir: str | None = None,
            text_encoder_factory: Callable | None = None,
            **kwargs,
        ):
            if isinstance(config, str) and config.split(":")[0] not in {
                c.name for c in self.BUILDER_CONFIGS
            }:
                parsed = config_from_name(config.split(":")[0])
                if parsed is not None:
                    config = parsed
            kwargs.setdefault("file_format", "array_record")
            super().__init__(data_dir=data_dir, config=config, **kwargs)
            self._text_cache_dir = text_cache_dir
            self._encoder_factory = text_encoder_factory
            self.build_log: BuildLog | None = None

        # -- features ------------------------------------------------------------------------
        def _info(self):
            cfg = self.builder_config
            f = tfds.features
            if cfg.kind == "retrieval":
                c, t = MAX_CHANNELS, cfg.series_length
                features = {
                    "series": f.Tensor(shape=(c, t), dtype=np.float32),
                    "observed": f.Tensor(shape=(c, t), dtype=np.bool_),
                    "channel_ids": f.Tensor(shape=(c,), dtype=np.int32),
                    "text": f.Text(),
                    "text_embedding": f.Tensor(shape=(1, EMBED_DIM), dtype=np.float32),
                    "num_texts": f.Scalar(dtype=np.int32),
                    "channel_texts": f.Tensor(shape=(c,), dtype=np.str_),
                    "channel_text_embedding": f.Tensor(
                        shape=(c, EMBED_DIM), dtype=np.float32, encoding=f.Encoding.ZLIB
                    ),
                    "channel_text_valid": f.Tensor(shape=(c,), dtype=np.bool_),
                    "label": f.Scalar(dtype=np.int32),
                    "start_time": f.Scalar(dtype=np.int64),
                    "end_time": f.Scalar(dtype=np.int64),
                    "example_id": f.Text(),
                    "domain": f.Text(),
                    "num_steps": f.Scalar(dtype=np.int32),
                    "report_start_time": f.Scalar(dtype=np.int64),
                    "report_end_time": f.Scalar(dtype=np.int64),
                }
            elif cfg.kind == "forecast":
                lk, h, k = cfg.lookback, cfg.horizon, cfg.context_facts
                features = {
                    "history": f.Tensor(shape=(lk,), dtype=np.float32),
                    "history_observed": f.Tensor(shape=(lk,), dtype=np.bool_),
                    "target": f.Tensor(shape=(h,), dtype=np.float32),
                    "target_observed": f.Tensor(shape=(h,), dtype=np.bool_),
                    "scaler_mean": f.Scalar(dtype=np.float64),
                    "scaler_std": f.Scalar(dtype=np.float64),
                    "start_time": f.Scalar(dtype=np.int64),
                    "forecast_start_time": f.Scalar(dtype=np.int64),
                    "end_time": f.Scalar(dtype=np.int64),
                    "context_text": f.Tensor(shape=(k,), dtype=np.str_),
                    "context_embedding": f.Tensor(
                        shape=(k, EMBED_DIM), dtype=np.float32, encoding=f.Encoding.ZLIB
                    ),  # mostly zeros
                    "context_valid": f.Tensor(shape=(k,), dtype=np.bool_),
                    "num_context": f.Scalar(dtype=np.int32),
                    "has_context": f.Scalar(dtype=np.bool_),
                    "context_end_time": f.Tensor(shape=(k,), dtype=np.int64),
                    "label": f.Scalar(dtype=np.int32),
                    "domain": f.Text(),
                    "example_id": f.Text(),
                }
            else:
                raise ValueError(f"unknown Time-MMD config kind {cfg.kind!r}")
            return tfds.core.DatasetInfo(
                builder=self,
                description=__doc__,
                features=f.FeaturesDict(features),
                homepage=HOMEPAGE,
                citation=CITATION,
                metadata=tfds.core.MetadataDict(),
            )

        # -- sources -------------------------------------------------------------------------
        def _source_paths(self, dl_manager) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
            domains = list(self.builder_config.domains)
            try:
                root = dl_manager.manual_dir  # raises when absent or empty
            except AssertionError:
                root = None
            if root is not None:
                root = pathlib.Path(os.fspath(root))
                check_layout(root, domains)
                return {d: (numeric_path(root, d), report_path(root, d)) for d in domains}
            urls = {
                f"{d}/{kind}": (numeric_url(d) if kind == "numeric" else report_url(d))
                for d in domains
                for kind in ("numeric", "report")
            }
            try:
                files = dl_manager.download(urls)
            except Exception as e:  # pylint: disable=broad-except
                raise RuntimeError(
                    f"could not download Time-MMD from {URL_ROOT} ({e}); without a network pass a "
                    f"local copy as manual_dir (none found at "
                    f"{getattr(dl_manager, '_manual_dir', None)}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
                ) from e
            return {
                d: (
                    pathlib.Path(os.fspath(files[f"{d}/numeric"])),
                    pathlib.Path(os.fspath(files[f"{d}/report"])),
                )
                for d in domains
            }

        def _cache(self):
            if self._encoder_factory is not None:
                return TextEmbeddingCache(
                    self._text_cache_dir, encoder_factory=self._encoder_factory
                )
            return TextEmbeddingCache(self._text_cache_dir)

        # -- generation ----------------------------------------------------------------------
        def _split_generators(self, dl_manager):
            cfg = self.builder_config
            paths = self._source_paths(dl_manager)
            log = self.build_log = BuildLog()
            loaded = {
                d: (read_numeric(paths[d][0], d, log), read_reports(paths[d][1], d, log))
                for d in cfg.domains
            }
            meta = {
                "config": cfg.name,
                "kind": cfg.kind,
                "domains": list(cfg.domains),
                "split_fractions": list(cfg.split_fractions),
            }
            by_split = {s: [] for s in SPLITS}
            if cfg.kind == "retrieval":
                steps = cfg.window_steps_dict
                per_domain = {}
                for d, (series, facts) in loaded.items():
                    ex = retrieval_examples(
                        series,
                        facts,
                        steps[series.frequency],
                        cfg.series_length,
                        log,
                        cfg.split_fractions,
                    )
                    for e in ex:
                        by_split[e.pop("split")].append(e)
                    per_domain[d] = {
                        "frequency": series.frequency,
                        "window_steps": steps[series.frequency],
                        "rows": series.num_rows,
                        "steps": series.num_steps,
                        "first_date": str(series.dates[0]),
                        "last_date": str(series.dates[-1]),
                        "channels": list(series.columns),
                        "usable_facts": len(facts),
                        "examples": {s: sum(e["domain"] == d for e in by_split[s]) for s in SPLITS},
                    }
                texts = embed_texts(self._cache(), (e["text"] for s in SPLITS for e in by_split[s]))
                for s in SPLITS:
                    for e in by_split[s]:
                        e["text_embedding"] = texts[e["text"]][None]
                meta.update(
                    window_steps=steps,
                    series_length=cfg.series_length,
                    max_channels=MAX_CHANNELS,
                    channel_vocabulary=[f"{d}/{c}" for (d, c) in CHANNEL_VOCAB],
                    pad_channel_id=PAD_CHANNEL_ID,
                    num_channel_ids=NUM_CHANNEL_IDS,
                    per_domain=per_domain,
                )
            else:
                ((d, (series, facts)),) = loaded.items()
                by_split, fmeta = forecast_examples(
                    series,
                    facts,
                    cfg.lookback,
                    cfg.horizon,
                    context_facts=cfg.context_facts,
                    gap_days=cfg.context_gap_days,
                    context_within_history=cfg.context_within_history,
                    fractions=cfg.split_fractions,
                    log=log,
                )
                texts = embed_texts(
                    self._cache(),
                    (t for s in SPLITS for e in by_split[s] for t in e["context_text"] if t),
                )
                zero = np.zeros(EMBED_DIM, np.float32)
                for s in SPLITS:
                    for e in by_split[s]:
                        e["context_embedding"] = np.stack(
                            [
                                texts[t] if v else zero
                                for t, v in zip(e["context_text"], e["context_valid"])
                            ]
                        )
                meta.update(
                    fmeta,
                    rows=series.num_rows,
                    usable_facts=len(facts),
                    examples={s: len(by_split[s]) for s in SPLITS},
                )
            meta["build_log"] = log.as_dict()
            self.info.metadata.update(meta)
            return {s: self._generate_examples(by_split[s]) for s in SPLITS}

        def _generate_examples(self, examples):
            for e in examples:
                yield e["example_id"], e

        def download_and_prepare(self, *args, **kwargs):
            super().download_and_prepare(*args, **kwargs)
            if self.build_log is not None:
                logging.info("%s", self.build_log.summary())
