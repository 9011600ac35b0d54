"""Weather-Captioned (Jena weather station + GPT-4 captions) as a TFDS builder (ArrayRecord).

    python -m trace_jax.data.build --dataset=weather_captioned \
        --manual_dir=../shared/data/weather_captioned --data_dir=data_dir

Source layout (upstream github.com/VEWOXIC/Weather-Captioned, or any local copy of it)::

    raw_data/weather_report/hourly_weather_raw_YYYY.csv   one file per year
    date2hash/wm_messages_v{1,2,3}.json                   {"YYYYMMDDhhmm": [hash, ...]}
    hash2text/hashtable.json                              {sentence: hash}

The module has two layers: pure parsing functions (cells, CSV files, captions, grid, labels;
fast, no TFDS) and the `WeatherCaptioned` builder that turns their output into examples with
the shared schema (docs/data_schema.md).

Time
----
CSV timestamps and date2hash keys are *local* Jena time (Europe/Berlin, CET/CEST): the
readings skip 02:xx on the last Sunday of March and repeat 02:20/02:50 on the last Sunday of
October. They are converted to UTC with the EU rule (summer time from 01:00 UTC on the last
Sunday of March to 01:00 UTC on the last Sunday of October). The first occurrence of a
repeated autumn stamp is the summer-time reading, the second the winter-time one (the values
confirm it). Every time in an example is unix seconds UTC.

Grid
----
30-minute steps aligned to UTC; step k covers [k*1800, (k+1)*1800). A reading at time t goes
to step floor(t/1800) (readings come at :20 and :50; a few 2017 readings come at other
minutes). When several readings fall into one step, each channel takes the value of the
reading nearest the usual minute (20 minutes into the step) that has that channel; the others
are counted (``slot_collision``). Steps without a value stay unobserved: never interpolated.
Windows may reach into the previous year's file when it is present.

Channels (C=6, ``channel_ids`` 0..5): temp (°C), wind_speed (km/h), wind_dir_sin,
wind_dir_cos (of the direction the wind blows *from*, 0° = north, clockwise), pressure (mbar),
humidity (%).

Cell faults: skipped (that cell unobserved) and counted, or fatal
-----------------------------------------------------------------
Skipped and counted in the build summary:
  * ``missing_cell:<column>``: ``N/A`` or an empty cell.
  * ``wind_dir_sentinel``: a negative direction (the source writes ``-128°`` for "unknown").
  * ``wind_calm``: wind speed ``No wind``/``Calm``/0: speed 0 km/h, direction unobserved.
  * ``wind_dir_variable``: ``0°`` with a speed <= 6 km/h (3 kt). The source uses 0° both for
    north and for variable/light wind: at 2-6 km/h it is 5-20x more frequent than 10° or
    350°, so it is not taken as a direction there; 0° at higher speeds is kept as north.
  * ``implausible:<column>``: a parsed value outside a physical range (e.g. humidity > 100).
  * ``wind_compass_mismatch``: the compass words disagree with the degrees (degrees kept).
  * ``weather_text_missing``: empty ``weather_text`` (no condition for that reading).
  * ``local_time_ambiguous`` / ``local_time_nonexistent`` / ``duplicate_timestamp``: DST
    repeats (resolved as above), stamps inside the spring gap or seen a third time (dropped).
  * ``reading_off_grid``: a reading at a minute other than :20/:50 (kept, put on its step).
Fatal (``ValueError`` naming file, line and column): a value that cannot be parsed (unknown
unit or format), a malformed timestamp, a row with the wrong number of cells, a wrong header,
a ``weather_text`` phrase that no condition rule recognises. Missing files or a wrong layout
raise ``FileNotFoundError`` saying which path was expected.

Condition label (``CONDITION_CLASSES``, ordered by severity)
-------------------------------------------------------------
Each reading's ``weather_text`` is split into phrases ("Light snow. Partly cloudy."); each
phrase maps to a class by the first matching rule: thunder -> thunderstorm; snow, sleet,
freezing rain, hail, icy mix, mixed precipitation -> snow; fog, ice fog, haze, mist -> fog;
rain, drizzle, showers, sprinkles -> rain; clear, sunny, passing clouds -> clear; other clouds,
overcast, partly sunny -> cloudy. Temperature-only phrases ("Chilly.", "Mild.", "Warm.", ...)
carry no sky condition and are ignored. A reading's class is its most severe phrase; a block's
label is the most severe class among the readings inside the 6-hour block
[block start, block end); -1 when no reading there has a condition.

Captions and channel texts
--------------------------
A caption is the list of hashes for a block start in ``wm_messages_vN.json`` inverted through
``hashtable.json``. Sentences are normalised (literal ``\\u00b0`` escapes decoded, whitespace
collapsed) and joined by single spaces. Hashes with no sentence are dropped
(``caption_missing_hash``). The sample text is v1; ``text_embedding`` rows hold v1, v2, v3
(the existing ones, packed first; ``num_texts`` of them; ``texts`` holds the strings).
Channel texts come from the v1 caption, one per role (temperature -> temp; wind -> wind_speed,
wind_dir_sin, wind_dir_cos; pressure; humidity):
  1. With exactly 7 sentences (after dropping missing hashes) the roles are positional (time
     of day, current weather, trend, temperature, wind, pressure, humidity), provided the
     sentence at the role's position mentions that channel (keywords in ``_ROLE_KEYWORDS``),
     mentions at most one other channel and is not a refusal: a "cannot be determined / not
     available / lack of fine-grained data" sentence that states nothing else (no number, no
     "but ...", "expect ...").
  2. Otherwise (4, 5, 6 or 8 sentences, or a positional sentence failing the check) a role
     takes the sentences (after the first) that mention that channel only and are not
     refusals, joined in order.
  3. A role with no sentence has ``channel_text_valid`` False ('' text, zero embedding).
The summary counts each path per role (``channel_text:<role>:position|keyword|none``) and
the caption lengths per version (``caption_length:vN:<n>``). On the shipped data (v1):
5754 captions of 7 sentences, 89 of 6 (no trend sentence), 1 of 4; 7 blocks list a hash with
no sentence; 330 temperature slots are refusals and stay invalid.

Examples also carry two extra features: ``texts`` (V,) the caption strings behind the rows of
``text_embedding`` and ``block_start_time`` (the 6-hour block is [block_start_time,
end_time)). BuilderConfigs ``window_48`` (default), ``window_96`` and ``window_12`` differ in
``window_steps``; the split years are fields of the config too.

Splits
------
``train_years``/``validation_years``/``pretrain_years`` of the BuilderConfig, intersected with
the years present (``hourly_weather_raw_YYYY.csv`` in the source); any other year present
becomes a split ``year_YYYY`` (captioned if it has captions). Captioned splits: one example
per captioned 6-hour block (block starts 00/06/12/18 h local). Pretraining splits (and
uncaptioned years): one example per 6-hour block of the year, no text (``num_texts`` 0,
``channel_text_valid`` all False), with the condition label. A window is ``window_steps``
steps ending at the block end; windows without a single observation are skipped and counted.

Every build logs and prints the summary of skipped/odd records and stores it in the data
set's ``metadata.json`` (``build_summary``).
"""

from __future__ import annotations

import calendar
import collections
import csv
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from trace_jax.data import text_cache

# ----------------------------------------------------------------------------- constants

CHANNELS = ("temp", "wind_speed", "wind_dir_sin", "wind_dir_cos", "pressure", "humidity")
CHANNEL_UNITS = ("°C", "km/h", "", "", "mbar", "%")
NUM_CHANNELS = len(CHANNELS)
# Which caption sentence role describes each channel.
CHANNEL_ROLES = ("temperature", "wind", "wind", "wind", "pressure", "humidity")
SENTENCE_ROLES = (
    "time_of_day",
    "current_weather",
    "trend",
    "temperature",
    "wind",
    "pressure",
    "humidity",
)
TEXT_ROLES = ("temperature", "wind", "pressure", "humidity")

CONDITION_CLASSES = ("clear", "cloudy", "fog", "rain", "snow", "thunderstorm")

STEP_SECONDS = 1800
BLOCK_HOURS = 6
BLOCK_START_HOURS = (0, 6, 12, 18)
CAPTION_VERSIONS = (1, 2, 3)
NUM_VERSIONS = len(CAPTION_VERSIONS)
EMBED_DIM = 384
VARIABLE_WIND_MAX_KMH = 6.0

CSV_HEADER = ("time", "temp", "wind_dir", "wind_speed", "weather_text", "barometer", "humidity")
CSV_DIR = "raw_data/weather_report"
CSV_PATTERN = re.compile(r"^hourly_weather_raw_(\d{4})\.csv$")
CAPTION_FILES = {v: f"date2hash/wm_messages_v{v}.json" for v in CAPTION_VERSIONS}
HASHTABLE_FILE = "hash2text/hashtable.json"
# Raw files of the upstream repository (default branch).
UPSTREAM_BASE_URL = "https://raw.githubusercontent.com/VEWOXIC/Weather-Captioned/main"

_MISSING = frozenset({"", "n/a", "na", "-", "--", "nan", "null", "none"})
_PLAUSIBLE = {
    "temp": (-60.0, 60.0),
    "wind_speed": (0.0, 400.0),
    "barometer": (870.0, 1090.0),
    "humidity": (0.0, 100.0),
}
_COMPASS = (
    "north",
    "north-northeast",
    "northeast",
    "east-northeast",
    "east",
    "east-southeast",
    "southeast",
    "south-southeast",
    "south",
    "south-southwest",
    "southwest",
    "west-southwest",
    "west",
    "west-northwest",
    "northwest",
    "north-northwest",
)


# ----------------------------------------------------------------------------- summary


class BuildSummary:
    """Counts of skipped and odd records, with a few locations of each kind."""

    MAX_WHERE = 3

    def __init__(self):
        self.counts: collections.Counter[str] = collections.Counter()
        self.where: dict[str, list[str]] = collections.defaultdict(list)
        self.notes: dict[str, str] = {}

    def add(self, kind: str, where: str | None = None, n: int = 1) -> None:
        self.counts[kind] += n
        if where is not None and len(self.where[kind]) < self.MAX_WHERE:
            self.where[kind].append(where)

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]

    def to_dict(self) -> dict:
        return {
            "notes": dict(self.notes),
            "counts": dict(sorted(self.counts.items())),
            "examples": {k: list(v) for k, v in sorted(self.where.items())},
        }

    def format(self) -> str:
        lines = ["Weather-Captioned build summary (skipped / odd records):"]
        lines += [f"  {k}: {v}" for k, v in self.notes.items()]
        for k, n in sorted(self.counts.items()):
            where = self.where.get(k)
            lines.append(f"  {k}: {n}" + (f"  e.g. {', '.join(where)}" if where else ""))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- time


def _last_sunday_0100_utc(year: int, month: int) -> int:
    day = datetime.date(year, month, 31)  # March and October both have 31 days.
    day -= datetime.timedelta(days=(day.weekday() - 6) % 7)
    return calendar.timegm((day.year, day.month, day.day, 1, 0, 0))


def is_summer_time(utc: int) -> bool:
    """Whether Central European Summer Time is in force at `utc` (EU rule, 1996 on)."""
    year = time_tuple(utc).tm_year
    return _last_sunday_0100_utc(year, 3) <= utc < _last_sunday_0100_utc(year, 10)


def time_tuple(utc: int):
    return datetime.datetime.fromtimestamp(utc, datetime.timezone.utc).timetuple()


def parse_stamp(stamp: str) -> int:
    """'YYYYMMDDhhmm' -> the same wall-clock time as seconds since the epoch (naive)."""
    if not re.fullmatch(r"\d{12}", stamp):
        raise ValueError(f"timestamp {stamp!r} is not YYYYMMDDhhmm")
    try:
        dt = datetime.datetime(
            int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[8:10]), int(stamp[10:12])
        )
    except ValueError as e:
        raise ValueError(f"timestamp {stamp!r}: {e}") from None
    return calendar.timegm(dt.timetuple())


def local_to_utc(stamp: str, fold: int = 0) -> tuple[int | None, str]:
    """Jena local 'YYYYMMDDhhmm' -> (unix seconds UTC, status).

    status is 'ok', 'ambiguous' (autumn repeat: fold 0 gives the summer-time instant, fold 1 the
    winter-time one) or 'nonexistent' (inside the spring gap; the time is None).
    """
    naive = parse_stamp(stamp)
    as_winter, as_summer = naive - 3600, naive - 7200
    winter_ok, summer_ok = not is_summer_time(as_winter), is_summer_time(as_summer)
    if winter_ok and summer_ok:
        return (as_summer if fold == 0 else as_winter), "ambiguous"
    if winter_ok:
        return as_winter, "ok"
    if summer_ok:
        return as_summer, "ok"
    return None, "nonexistent"


def utc_to_local_stamp(utc: int) -> str:
    """Unix seconds UTC -> Jena local 'YYYYMMDDhhmm'."""
    offset = 7200 if is_summer_time(utc) else 3600
    return datetime.datetime.fromtimestamp(utc + offset, datetime.timezone.utc).strftime(
        "%Y%m%d%H%M"
    )


# ----------------------------------------------------------------------------- cells


def _number_unit(value: str, pattern: str, what: str) -> tuple[float, str]:
    m = re.fullmatch(r"\s*([+-]?\d+(?:[.,]\d+)?)\s*" + pattern + r"\s*", value, re.I)
    if not m:
        raise ValueError(f"cannot parse {value!r} as {what}")
    return float(m.group(1).replace(",", ".")), m.group(2).lower()


def is_missing(value: str) -> bool:
    return value.strip().lower() in _MISSING


def parse_temperature(value: str) -> float | None:
    """'0°C', '-7°C', '45°F' -> °C; None for a missing marker ('N/A', '')."""
    if is_missing(value):
        return None
    x, unit = _number_unit(value, r"°?\s*([CF])", "a temperature (°C or °F)")
    return (x - 32.0) * 5.0 / 9.0 if unit == "f" else x


_SPEED_FACTORS = {
    "km/h": 1.0,
    "kmh": 1.0,
    "kph": 1.0,
    "m/s": 3.6,
    "mph": 1.609344,
    "kt": 1.852,
    "kts": 1.852,
    "knots": 1.852,
}


def parse_wind_speed(value: str) -> tuple[float | None, bool]:
    """'7 km/h' -> (7.0, False); 'No wind'/'Calm' -> (0.0, True); missing -> (None, False)."""
    if is_missing(value):
        return None, False
    if value.strip().lower() in ("no wind", "calm"):
        return 0.0, True
    x, unit = _number_unit(value, r"(km/h|kmh|kph|m/s|mph|kts|kt|knots)", "a wind speed (km/h)")
    return x * _SPEED_FACTORS[unit], False


def parse_wind_direction(value: str) -> tuple[float | None, str]:
    """'Wind blowing from 190° South to North' -> (190.0, 'ok').

    Returns (None, 'missing') for a missing marker, (None, 'sentinel') for a negative
    direction (the source's -128° "unknown"), (None, 'variable') for 'Calm'/'Variable', and
    (degrees, 'compass_mismatch') when the compass words disagree with the degrees.
    """
    if is_missing(value):
        return None, "missing"
    if value.strip().lower() in ("calm", "variable", "no wind"):
        return None, "variable"
    m = re.fullmatch(
        r"\s*(?:wind blowing from\s+)?([+-]?\d+(?:\.\d+)?)\s*°\s*(.*?)\s*", value, re.I
    )
    if not m:
        raise ValueError(f"cannot parse {value!r} as a wind direction ('Wind blowing from N° ...')")
    deg, words = float(m.group(1)), m.group(2)
    if deg < 0:
        return None, "sentinel"
    if deg > 360:
        raise ValueError(f"wind direction {deg}° in {value!r} is above 360°")
    deg = deg % 360.0
    if words:
        frm = words.lower().split(" to ")[0].strip()
        if frm in _COMPASS and frm != _COMPASS[int(math.floor(deg / 22.5 + 0.5)) % 16]:
            return deg, "compass_mismatch"
    return deg, "ok"


_PRESSURE_FACTORS = {"mbar": 1.0, "mb": 1.0, "hpa": 1.0, "inhg": 33.8639, "mmhg": 1.333224}


def parse_pressure(value: str) -> float | None:
    """'1025 mbar' (also hPa, inHg, mmHg) -> mbar; None for a missing marker."""
    if is_missing(value):
        return None
    x, unit = _number_unit(value, r"(mbar|mb|hpa|inhg|mmhg)", "a pressure (mbar)")
    return x * _PRESSURE_FACTORS[unit]


def parse_humidity(value: str) -> float | None:
    """'93%' -> 93.0; None for a missing marker."""
    if is_missing(value):
        return None
    x, _ = _number_unit(value, r"(%)", "a relative humidity (%)")
    return x


# First matching rule wins within one phrase; None = no sky condition (temperature words).
_CONDITION_RULES: tuple[tuple[str | None, re.Pattern], ...] = tuple(
    (name, re.compile(p, re.I))
    for name, p in (
        ("thunderstorm", r"thunder|t-storm|tstorm"),
        ("snow", r"snow|sleet|freezing|hail|icy|ice pellet|precip|flurr|wintry"),
        ("fog", r"fog|haze|mist|smoke"),
        ("rain", r"rain|drizzle|shower|sprinkle"),
        ("clear", r"^(?:clear|sunny|mostly sunny|mostly clear|fair|passing clouds)$"),
        ("cloudy", r"cloud|overcast|partly sunny"),
        (
            None,
            r"^(?:(?:quite|refreshingly|pleasantly|very)\s+)?"
            r"(?:chilly|cool|cold|frigid|mild|warm|hot|scorching|pleasant|nice)$",
        ),
    )
)


def condition_of(weather_text: str) -> int:
    """'Light snow. Partly cloudy.' -> index into CONDITION_CLASSES (most severe phrase).

    -1 when the text has no sky condition (empty, or only temperature words). Raises ValueError
    for a phrase no rule recognises.
    """
    best = -1
    for phrase in weather_text.split("."):
        phrase = " ".join(phrase.split())
        if not phrase:
            continue
        for name, pattern in _CONDITION_RULES:
            if pattern.search(phrase):
                if name is not None:
                    best = max(best, CONDITION_CLASSES.index(name))
                break
        else:
            raise ValueError(f"unknown weather condition {phrase!r} in {weather_text!r}")
    return best


# ----------------------------------------------------------------------------- CSV files


@dataclasses.dataclass
class Readings:
    """Readings of one or more CSV files, sorted by time.

    times: (N,) int64 unix seconds UTC; values: (N, C) float32 in CHANNELS order, NaN where
    not observed; condition: (N,) int8 CONDITION_CLASSES index or -1; where: (N,) 'file:line'.
    """

    times: np.ndarray
    values: np.ndarray
    condition: np.ndarray
    where: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence["Readings"]) -> "Readings":
        if not parts:
            return cls(
                np.zeros(0, np.int64),
                np.zeros((0, NUM_CHANNELS), np.float32),
                np.zeros(0, np.int8),
                np.zeros(0, object),
            )
        r = cls(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls))
        )
        order = np.argsort(r.times, kind="stable")
        return cls(r.times[order], r.values[order], r.condition[order], r.where[order])

    def __len__(self) -> int:
        return len(self.times)


def _plausible(x: float | None, column: str, summary: BuildSummary, where: str) -> float | None:
    if x is None:
        return None
    lo, hi = _PLAUSIBLE[column]
    if not lo <= x <= hi:
        summary.add(f"implausible:{column}", f"{where} ({x:g})")
        return None
    return x


def parse_row(
    cells: Mapping[str, str], summary: BuildSummary, where: str
) -> tuple[list[float], int]:
    """One CSV row's cells -> (values in CHANNELS order, NaN where skipped; condition).

    Raises ValueError("column '<name>': ...") for a value that cannot be parsed.
    """
    column = ""
    try:
        column = "temp"
        temp = parse_temperature(cells[column])
        column = "wind_speed"
        speed, calm = parse_wind_speed(cells[column])
        column = "wind_dir"
        deg, dstatus = parse_wind_direction(cells[column])
        column = "barometer"
        pressure = parse_pressure(cells[column])
        column = "humidity"
        humidity = parse_humidity(cells[column])
        column = "weather_text"
        cond = condition_of(cells[column])
    except ValueError as e:
        raise ValueError(f"column '{column}': {e}") from None
    for name, x in [
        ("temp", temp),
        ("wind_speed", speed),
        ("barometer", pressure),
        ("humidity", humidity),
    ]:
        if x is None:
            summary.add(f"missing_cell:{name}", where)
    if not cells["weather_text"].strip():
        summary.add("weather_text_missing", where)
    temp = _plausible(temp, "temp", summary, where)
    speed = _plausible(speed, "wind_speed", summary, where)
    pressure = _plausible(pressure, "barometer", summary, where)
    humidity = _plausible(humidity, "humidity", summary, where)
    if dstatus in ("missing", "sentinel", "compass_mismatch"):
        summary.add(
            {
                "missing": "missing_cell:wind_dir",
                "sentinel": "wind_dir_sentinel",
                "compass_mismatch": "wind_compass_mismatch",
            }[dstatus],
            where,
        )
    calm = calm or speed == 0.0
    if calm:
        summary.add("wind_calm", where)
        deg = None  # no direction in calm air
    elif dstatus == "variable" or (
        deg == 0.0 and speed is not None and speed <= VARIABLE_WIND_MAX_KMH
    ):
        summary.add("wind_dir_variable", where)
        deg = None
    sin = cos = None
    if deg is not None:
        sin, cos = math.sin(math.radians(deg)), math.cos(math.radians(deg))
    values = [
        math.nan if x is None else float(x) for x in (temp, speed, sin, cos, pressure, humidity)
    ]
    return values, cond


def read_weather_csv(path: str | os.PathLike, summary: BuildSummary | None = None) -> Readings:
    """Parses one hourly_weather_raw_YYYY.csv file (see the module docstring for the faults)."""
    summary = BuildSummary() if summary is None else summary
    path = pathlib.Path(path)
    times, values, conds, wheres = [], [], [], []
    seen: collections.Counter[str] = collections.Counter()
    prev_stamp = ""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise ValueError(f"{path}:1: header {header} is not the expected {list(CSV_HEADER)}")
        for row in rows:
            line, where = rows.line_num, f"{path.name}:{rows.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(CSV_HEADER):
                raise ValueError(
                    f"{path}:{line}: {len(row)} cells, expected {len(CSV_HEADER)} "
                    f"({','.join(CSV_HEADER)})"
                )
            cells = dict(zip(CSV_HEADER, row))
            stamp = cells["time"].strip()
            seen[stamp] += 1
            try:
                utc, status = local_to_utc(stamp, fold=min(seen[stamp] - 1, 1))
            except ValueError as e:
                raise ValueError(f"{path}:{line}: column 'time': {e}") from None
            if stamp < prev_stamp:
                summary.add("row_out_of_order", where)
            prev_stamp = max(prev_stamp, stamp)
            if status == "nonexistent":
                summary.add("local_time_nonexistent", where)
                continue
            if seen[stamp] > (2 if status == "ambiguous" else 1):
                summary.add("duplicate_timestamp", where)
                continue
            if status == "ambiguous":
                summary.add("local_time_ambiguous", where)
            if stamp[-2:] not in ("20", "50"):
                summary.add("reading_off_grid", where)
            try:
                v, cond = parse_row(cells, summary, where)
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
            times.append(utc)
            values.append(v)
            conds.append(cond)
            wheres.append(where)
    summary.add(f"rows:{path.name}", n=len(times))
    return Readings.concat(
        [
            Readings(
                np.asarray(times, np.int64),
                np.asarray(values, np.float32).reshape(-1, NUM_CHANNELS),
                np.asarray(conds, np.int8),
                np.asarray(wheres, object),
            )
        ]
    )


# ----------------------------------------------------------------------------- grid


@dataclasses.dataclass
class Grid:
    """Values on the 30-minute UTC grid: values[k] is step first_step + k (NaN: unobserved)."""

    first_step: int
    values: np.ndarray  # (S, C) float32

    @classmethod
    def from_readings(cls, readings: Readings, summary: BuildSummary | None = None) -> "Grid":
        summary = BuildSummary() if summary is None else summary
        if not len(readings):
            return cls(0, np.zeros((0, NUM_CHANNELS), np.float32))
        steps = readings.times // STEP_SECONDS
        dist = np.abs(readings.times % STEP_SECONDS - 1200)
        order = np.lexsort((readings.times, dist, steps))
        steps_o, vals_o = steps[order], readings.values[order]
        first = int(steps_o.min())
        grid = np.full((int(steps_o.max()) - first + 1, NUM_CHANNELS), np.nan, np.float32)
        _, first_idx = np.unique(steps_o, return_index=True)
        extra = np.ones(len(order), bool)
        extra[first_idx] = False
        for i in np.flatnonzero(extra):
            summary.add("slot_collision", readings.where[order[i]])
        for c in range(NUM_CHANNELS):
            ok = ~np.isnan(vals_o[:, c])
            s, idx = np.unique(steps_o[ok], return_index=True)
            grid[s - first, c] = vals_o[ok, c][idx]
        return cls(first, grid)

    def window(self, end_utc: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(series (C, T) float32 with 0 where unobserved, observed (C, T) bool) ending at end_utc."""
        if end_utc % STEP_SECONDS:
            raise ValueError(f"window end {end_utc} is not on the 30-minute grid")
        out = np.full((steps, NUM_CHANNELS), np.nan, np.float32)
        lo = end_utc // STEP_SECONDS - steps - self.first_step
        a, b = max(lo, 0), min(lo + steps, len(self.values))
        if b > a:
            out[a - lo : b - lo] = self.values[a:b]
        observed = ~np.isnan(out)
        return np.where(observed, out, 0.0).T.astype(np.float32), observed.T.copy()


def block_label(readings: Readings, start_utc: int, end_utc: int) -> int:
    """Most severe condition among the readings in [start_utc, end_utc); -1 if none."""
    a, b = np.searchsorted(readings.times, [start_utc, end_utc], side="left")
    return int(readings.condition[a:b].max()) if b > a else -1


# ----------------------------------------------------------------------------- captions


def normalise_sentence(sentence: str) -> str:
    """Decodes literal '\\uXXXX' escapes and collapses whitespace."""
    s = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), sentence)
    return " ".join(s.split())


def load_hashtable(path: str | os.PathLike, summary: BuildSummary | None = None) -> dict[str, str]:
    """hashtable.json ({sentence: hash}) -> {hash: normalised sentence}."""
    summary = BuildSummary() if summary is None else summary
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object {{sentence: hash}}")
    inverse = {}
    for sentence, h in table.items():
        if not isinstance(h, str):
            raise ValueError(f"{path}: hash of {sentence[:60]!r} is {h!r}, expected a string")
        if h in inverse:
            summary.add("hashtable_duplicate_hash", f"{pathlib.Path(path).name}:{h}")
        norm = normalise_sentence(sentence)
        if norm != " ".join(sentence.split()):
            summary.add("sentence_escape_decoded", h)
        if not norm:
            summary.add("hashtable_empty_sentence", h)
        inverse[h] = norm
    return inverse


def load_caption_index(path: str | os.PathLike) -> dict[str, list[str]]:
    """wm_messages_vN.json -> {block start 'YYYYMMDDhhmm' (local): [hash, ...]} (validated)."""
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected a JSON object {{YYYYMMDDhhmm: [hash, ...]}}")
    for key, hashes in index.items():
        try:
            parse_stamp(key)
        except ValueError as e:
            raise ValueError(f"{path}: key {key!r}: {e}") from None
        if int(key[8:10]) not in BLOCK_START_HOURS or key[10:] != "00":
            raise ValueError(f"{path}: key {key!r} is not a 6-hour block start (00/06/12/18h)")
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            raise ValueError(f"{path}: key {key!r}: expected a list of hash strings")
    return index


def caption_sentences(
    hashes: Sequence[str],
    inverse: Mapping[str, str],
    version: int,
    summary: BuildSummary,
    where: str,
) -> list[str]:
    """Resolves a caption's hashes to its sentences, dropping (and counting) unknown hashes."""
    out = []
    for h in hashes:
        s = inverse.get(h)
        if s is None:
            summary.add(f"caption_missing_hash:v{version}", f"{where}:{h}")
        elif s:
            out.append(s)
    if len(out) != 7:
        summary.add(f"caption_length:v{version}:{len(out)}", where)
    return out


_ROLE_KEYWORDS = {
    "temperature": re.compile(r"temperat|°c\b|celsius|\bdegrees?\b", re.I),
    "wind": re.compile(r"\bwinds?\b|\bwindy\b|breez|\bgales?\b|\bgusts?\b|\bgusty\b", re.I),
    "pressure": re.compile(r"pressure|barometr|\bhpa\b|\bmbar\b", re.I),
    "humidity": re.compile(r"humid|moist|\bdry\b|\bdrier\b|saturat|\bdamp\b|\bdew\b", re.I),
}
_REFUSAL = re.compile(
    r"cannot|can't|can not|\bnot (?:be )?(?:available|specified|provided|determined|detailed)"
    r"|unspecified|unavailable|lack of|difficult to|challenging|\bno (?:detailed|specific|"
    r"fine-grained)|without (?:specific|fine-grained|detailed)|\b(?:is|are) missing\b",
    re.I,
)


# A refusal that goes on to state something ("..., but a slight drop is expected") is kept.
_HEDGED_CONTENT = re.compile(
    r"\d|\b(?:but|however|expect\w*|anticipat\w*|likely|assum\w*|probabl\w*|suggest\w*)\b", re.I
)


def sentence_channels(sentence: str) -> set[str]:
    return {role for role, p in _ROLE_KEYWORDS.items() if p.search(sentence)}


def is_refusal(sentence: str) -> bool:
    """A 'no data' sentence ('... cannot be detailed') that states nothing about the values."""
    return bool(_REFUSAL.search(sentence)) and not _HEDGED_CONTENT.search(sentence)


def channel_texts_of(
    sentences: Sequence[str], summary: BuildSummary | None = None, where: str | None = None
) -> dict[str, str]:
    """{role: text} for TEXT_ROLES ('' when none), by the rule in the module docstring."""
    summary = BuildSummary() if summary is None else summary
    out = {}
    for role in TEXT_ROLES:
        text, how = "", "none"
        if len(sentences) == 7:
            s = sentences[SENTENCE_ROLES.index(role)]
            m = sentence_channels(s)
            if role in m and len(m) <= 2 and not is_refusal(s):
                text, how = s, "position"
        if not text:
            picked = [
                s for s in sentences[1:] if sentence_channels(s) == {role} and not is_refusal(s)
            ]
            if picked:
                text, how = " ".join(picked), "keyword"
        summary.add(f"channel_text:{role}:{how}", None if how == "position" else where)
        out[role] = text
    return out


# ----------------------------------------------------------------------------- source files


@dataclasses.dataclass
class SourceFiles:
    csv_by_year: dict[int, pathlib.Path]
    captions: dict[int, pathlib.Path]  # version -> wm_messages_vN.json
    hashtable: pathlib.Path


def discover(root: str | os.PathLike) -> SourceFiles:
    """Finds the files of the upstream layout under `root` (clear errors when they are not)."""
    root = pathlib.Path(root)
    layout = (
        f"{CSV_DIR}/hourly_weather_raw_YYYY.csv, "
        f"{', '.join(CAPTION_FILES.values())}, {HASHTABLE_FILE}"
    )
    hint = ""
    if (root / "weather_captioned" / CSV_DIR).is_dir():
        hint = f" (did you mean {root / 'weather_captioned'}?)"
    if not root.is_dir():
        raise FileNotFoundError(
            f"Weather-Captioned directory {root} does not exist; expected a "
            f"directory holding {layout}"
        )
    csv_dir = root / CSV_DIR
    csvs = {}
    if csv_dir.is_dir():
        for p in sorted(csv_dir.iterdir()):
            m = CSV_PATTERN.match(p.name)
            if m:
                csvs[int(m.group(1))] = p
    if not csvs:
        raise FileNotFoundError(
            f"no {CSV_DIR}/hourly_weather_raw_YYYY.csv under {root}{hint}: expected the upstream "
            f"Weather-Captioned layout ({layout}); found {sorted(x.name for x in root.iterdir())}"
        )
    files = SourceFiles(
        csvs, {v: root / p for v, p in CAPTION_FILES.items()}, root / HASHTABLE_FILE
    )
    for p in [*files.captions.values(), files.hashtable]:
        if not p.is_file():
            raise FileNotFoundError(
                f"missing {p}: the Weather-Captioned layout under {root} needs " f"{layout}{hint}"
            )
    return files


def upstream_urls(years: Iterable[int], base: str = UPSTREAM_BASE_URL) -> dict[str, str]:
    urls = {f"csv_{y}": f"{base}/{CSV_DIR}/hourly_weather_raw_{y}.csv" for y in sorted(years)}
    urls.update({f"captions_v{v}": f"{base}/{p}" for v, p in CAPTION_FILES.items()})
    urls["hashtable"] = f"{base}/{HASHTABLE_FILE}"
    return urls


# ----------------------------------------------------------------------------- blocks


@dataclasses.dataclass
class Block:
    """One 6-hour block: its local key, UTC span, caption texts and label."""

    key: str  # local block start 'YYYYMMDDhhmm'
    start: int  # UTC seconds
    end: int  # UTC seconds (exclusive)
    texts: tuple[str, ...]  # (v1, v2, v3) captions, '' where missing
    channel_texts: tuple[str, ...]  # per CHANNELS, '' where none
    label: int

    @property
    def year(self) -> int:
        return int(self.key[:4])


def block_span(key: str) -> tuple[int, int]:
    """UTC [start, end) of the 6-hour local block starting at `key`."""
    start, _ = local_to_utc(key)
    end_local = datetime.datetime.fromtimestamp(
        parse_stamp(key), datetime.timezone.utc
    ) + datetime.timedelta(hours=BLOCK_HOURS)
    end, _ = local_to_utc(end_local.strftime("%Y%m%d%H%M"))
    return start, end


def year_block_keys(year: int) -> list[str]:
    day, out = datetime.date(year, 1, 1), []
    while day.year == year:
        out.extend(f"{day:%Y%m%d}{h:02d}00" for h in BLOCK_START_HOURS)
        day += datetime.timedelta(days=1)
    return out


@dataclasses.dataclass
class ParsedSource:
    """Everything the builder needs, parsed from the source files."""

    readings: Readings
    grid: Grid
    captions: dict[int, dict[str, list[str]]]  # version -> key -> sentences
    years: list[int]  # years with a CSV file
    captioned_years: list[int]  # years with captions
    summary: BuildSummary

    def captioned_block(self, key: str) -> Block:
        start, end = block_span(key)
        texts = tuple(" ".join(self.captions[v].get(key, [])) for v in CAPTION_VERSIONS)
        v1 = self.captions[1].get(key, [])
        roles = channel_texts_of(v1, self.summary, key)
        return Block(
            key,
            start,
            end,
            texts,
            tuple(roles[r] for r in CHANNEL_ROLES),
            block_label(self.readings, start, end),
        )

    def plain_block(self, key: str) -> Block:
        start, end = block_span(key)
        return Block(
            key,
            start,
            end,
            ("",) * NUM_VERSIONS,
            ("",) * NUM_CHANNELS,
            block_label(self.readings, start, end),
        )


def parse_source(files: SourceFiles, summary: BuildSummary | None = None) -> ParsedSource:
    """Parses all CSV years and the three caption versions."""
    summary = BuildSummary() if summary is None else summary
    readings = Readings.concat(
        [read_weather_csv(p, summary) for _, p in sorted(files.csv_by_year.items())]
    )
    grid = Grid.from_readings(readings, summary)
    inverse = load_hashtable(files.hashtable, summary)
    captions: dict[int, dict[str, list[str]]] = {}
    for v in CAPTION_VERSIONS:
        index = load_caption_index(files.captions[v])
        captions[v] = {
            k: caption_sentences(hs, inverse, v, summary, k) for k, hs in sorted(index.items())
        }
        for k, sents in captions[v].items():
            if not sents:
                summary.add(f"caption_empty:v{v}", k)
    all_keys = set().union(*captions.values())
    for v in CAPTION_VERSIONS:
        for k in sorted(all_keys - set(captions[v])):
            summary.add(f"caption_key_absent:v{v}", k)
    captioned_years = sorted({int(k[:4]) for k in all_keys})
    missing = [y for y in captioned_years if y not in files.csv_by_year]
    if missing:
        some = next(iter(files.csv_by_year.values())).parent
        raise FileNotFoundError(
            f"captions exist for {missing} but "
            f"{', '.join(str(some / f'hourly_weather_raw_{y}.csv') for y in missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing"
        )
    return ParsedSource(
        readings, grid, captions, sorted(files.csv_by_year), captioned_years, summary
    )


def plan_splits(
    years: Iterable[int],
    captioned_years: Iterable[int],
    train_years: Sequence[int],
    validation_years: Sequence[int],
    pretrain_years: Sequence[int],
) -> dict[str, tuple[list[int], bool]]:
    """{split: (years, captioned)} for the years present; unlisted years get 'year_YYYY'."""
    listed = {
        "train": list(train_years),
        "validation": list(validation_years),
        "pretrain": list(pretrain_years),
    }
    owner: dict[int, str] = {}
    for split, ys in listed.items():
        for y in ys:
            if y in owner:
                raise ValueError(f"year {y} is in both {owner[y]}_years and {split}_years")
            owner[y] = split
    years, captioned = sorted(set(years)), set(captioned_years)
    plan: dict[str, tuple[list[int], bool]] = {}
    for split, ys in listed.items():
        present = [y for y in ys if y in years]
        if present:
            plan[split] = (present, split != "pretrain")
    for y in years:
        if y not in owner:
            plan[f"year_{y}"] = ([y], y in captioned)
    for split, (ys, is_captioned) in plan.items():
        if is_captioned and not any(y in captioned for y in ys):
            raise ValueError(
                f"split {split} (years {ys}) is captioned but date2hash has no caption "
                f"for any of those years"
            )
    return plan


# ----------------------------------------------------------------------------- builder


@dataclasses.dataclass(eq=False)
class WeatherCaptionedConfig(tfds.core.BuilderConfig):
    """window_steps: 30-minute steps per window (ending at the block end); years per split."""

    window_steps: int = 48
    train_years: tuple[int, ...] = (2014, 2015, 2016)
    validation_years: tuple[int, ...] = (2017,)
    pretrain_years: tuple[int, ...] = (2019, 2020, 2021, 2022, 2023)


class WeatherCaptioned(tfds.core.GeneratorBasedBuilder):
    """Weather-Captioned: Jena weather (6 channels, 30 min) with per-block GPT-4 captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: v1-v3 captions, channel texts, condition labels."}
    BUILDER_CONFIGS = [
        WeatherCaptionedConfig(name="window_48", description="24-hour windows (48 steps)."),
        WeatherCaptionedConfig(
            name="window_96", description="48-hour windows (96 steps).", window_steps=96
        ),
        WeatherCaptionedConfig(
            name="window_12", description="6-hour windows (the block only).", window_steps=12
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "window_48"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Clone https://github.com/VEWOXIC/Weather-Captioned (or copy it) and pass its root as
  --manual_dir. The directory must hold
    {CSV_DIR}/hourly_weather_raw_YYYY.csv   (one per year; every year present is built)
    {CAPTION_FILES[1]}, {CAPTION_FILES[2]}, {CAPTION_FILES[3]}
    {HASHTABLE_FILE}
  Without --manual_dir the files are downloaded from {UPSTREAM_BASE_URL}.
  """

    def __init__(
        self,
        *,
        text_cache_dir: str | os.PathLike | None = None,
        text_encoder_factory: Callable[[], text_cache.Encoder] | None = None,
        **kwargs,
    ):
        self._text_cache_dir = text_cache_dir
        self._text_encoder_factory = text_encoder_factory
        self._manual_dir_given: str | os.PathLike | None = None
        self.build_summary: BuildSummary | None = None
        kwargs.setdefault("file_format", tfds.core.FileFormat.ARRAY_RECORD)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: WeatherCaptionedConfig = self.builder_config
        t, c, v = cfg.window_steps, NUM_CHANNELS, NUM_VERSIONS
        f = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Jena weather station readings (temp, wind speed, wind direction sin/cos, "
                "pressure, humidity; 30-minute steps) with GPT-4 captions per 6-hour block (three "
                "paraphrases), channel-level texts and a weather-condition label "
                f"({', '.join(CONDITION_CLASSES)})."
            ),
            features=f.FeaturesDict(
                {
                    "series": f.Tensor(shape=(c, t), dtype=np.float32),
                    "observed": f.Tensor(shape=(c, t), dtype=np.bool_),
                    "channel_ids": f.Tensor(shape=(c,), dtype=np.int32),
                    "text": f.Text(),
                    "text_embedding": f.Tensor(shape=(v, EMBED_DIM), dtype=np.float32),
                    "num_texts": f.Scalar(dtype=np.int32),
                    "channel_texts": f.Tensor(shape=(c,), dtype=np.str_),
                    "channel_text_embedding": f.Tensor(shape=(c, EMBED_DIM), dtype=np.float32),
                    "channel_text_valid": f.Tensor(shape=(c,), dtype=np.bool_),
                    "label": f.Scalar(dtype=np.int32),
                    "start_time": f.Scalar(dtype=np.int64),
                    "end_time": f.Scalar(dtype=np.int64),
                    "example_id": f.Text(),
                    # Extras: the paraphrases behind text_embedding's rows, and the block span start.
                    "texts": f.Tensor(shape=(v,), dtype=np.str_),
                    "block_start_time": f.Scalar(dtype=np.int64),
                }
            ),
            homepage="https://github.com/VEWOXIC/Weather-Captioned",
            metadata=tfds.core.MetadataDict(
                channels=list(CHANNELS),
                channel_units=list(CHANNEL_UNITS),
                condition_classes=list(CONDITION_CLASSES),
                window_steps=t,
                step_seconds=STEP_SECONDS,
            ),
            license="Apache-2.0",
        )

    def _download_and_prepare(
        self, dl_manager, download_config
    ):  # pylint: disable=arguments-differ
        self._manual_dir_given = download_config.manual_dir
        self.build_summary = BuildSummary()
        super()._download_and_prepare(dl_manager, download_config)
        self.info.metadata["build_summary"] = self.build_summary.to_dict()
        logging.info(
            "Weather-Captioned: %d kinds of skipped/odd records, stored in metadata.json "
            "(build_summary)",
            len(self.build_summary.counts),
        )
        print(self.build_summary.format(), flush=True)

    def _source_files(self, dl_manager) -> SourceFiles:
        if self._manual_dir_given:
            return discover(self._manual_dir_given)
        # TFDS's default manual dir (<download_dir>/manual) is used when it holds the layout.
        default_manual = getattr(dl_manager, "_manual_dir", None)
        if (
            default_manual is not None
            and (pathlib.Path(os.fspath(default_manual)) / CSV_DIR).is_dir()
        ):
            return discover(os.fspath(default_manual))
        cfg: WeatherCaptionedConfig = self.builder_config
        years = sorted({*cfg.train_years, *cfg.validation_years, *cfg.pretrain_years})
        paths = dl_manager.download(upstream_urls(years))
        return SourceFiles(
            {y: pathlib.Path(paths[f"csv_{y}"]) for y in years},
            {v: pathlib.Path(paths[f"captions_v{v}"]) for v in CAPTION_VERSIONS},
            pathlib.Path(paths["hashtable"]),
        )

    def _split_generators(self, dl_manager):
        cfg: WeatherCaptionedConfig = self.builder_config
        summary = self.build_summary if self.build_summary is not None else BuildSummary()
        self.build_summary = summary
        src = parse_source(self._source_files(dl_manager), summary)
        plan = plan_splits(
            src.years,
            src.captioned_years,
            cfg.train_years,
            cfg.validation_years,
            cfg.pretrain_years,
        )
        blocks: dict[str, list[Block]] = {}
        for split, (years, captioned) in plan.items():
            if captioned:
                keys = sorted(
                    {k for v in CAPTION_VERSIONS for k in src.captions[v] if int(k[:4]) in years}
                )
                blocks[split] = [src.captioned_block(k) for k in keys]
            else:
                blocks[split] = [src.plain_block(k) for y in years for k in year_block_keys(y)]
            summary.notes[f"split {split}"] = (
                f"years {', '.join(map(str, years))} ({'captioned' if captioned else 'no text'}), "
                f"{len(blocks[split])} blocks"
            )
        embed = self._embed_all(blocks)
        return {
            split: self._generate_examples(split, bs, src.grid, embed)
            for split, bs in blocks.items()
        }

    def _embed_all(self, blocks: Mapping[str, Sequence[Block]]) -> dict[str, np.ndarray]:
        texts = sorted(
            {t for bs in blocks.values() for b in bs for t in (*b.texts, *b.channel_texts) if t}
        )
        if not texts:
            return {}
        kwargs = {}
        if self._text_encoder_factory is not None:
            kwargs["encoder_factory"] = self._text_encoder_factory
        cache = text_cache.TextEmbeddingCache(self._text_cache_dir, **kwargs)
        emb = cache.embed(texts)
        if emb.shape != (len(texts), EMBED_DIM):
            raise ValueError(f"text encoder gave {emb.shape}, expected (n, {EMBED_DIM})")
        self.build_summary.add("unique_texts", n=len(texts))  # each embedded once (or cached)
        return dict(zip(texts, emb))

    def _generate_examples(
        self, split: str, blocks: Sequence[Block], grid: Grid, embed: Mapping[str, np.ndarray]
    ) -> Iterator[tuple[str, dict]]:
        summary = self.build_summary
        steps = self.builder_config.window_steps
        zeros = np.zeros(EMBED_DIM, np.float32)
        for b in blocks:
            series, observed = grid.window(b.end, steps)
            if not observed.any():
                summary.add(f"window_empty_skipped:{split}", b.key)
                continue
            texts = [t for t in b.texts if t]
            rows = texts + [""] * (NUM_VERSIONS - len(texts))
            summary.add(f"examples:{split}")
            summary.add(f"label:{split}:{CONDITION_CLASSES[b.label] if b.label >= 0 else 'none'}")
            yield b.key, {
                "series": series,
                "observed": observed,
                "channel_ids": np.arange(NUM_CHANNELS, dtype=np.int32),
                "text": texts[0] if texts else "",
                "text_embedding": np.stack([embed[t] if t else zeros for t in rows]),
                "num_texts": len(texts),
                "channel_texts": np.asarray(b.channel_texts, dtype=object),
                "channel_text_embedding": np.stack(
                    [embed[t] if t else zeros for t in b.channel_texts]
                ),
                "channel_text_valid": np.asarray([bool(t) for t in b.channel_texts]),
                "label": b.label,
                "start_time": b.end - steps * STEP_SECONDS,
                "end_time": b.end,
                "example_id": f"weather_captioned/{b.key}",
                "texts": np.asarray(rows, dtype=object),
                "block_start_time": b.start,
            }
