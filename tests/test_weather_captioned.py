"""Weather-Captioned: cell parsers, real-data counts, hand-verified blocks, faults, builder.

The hand-verified numbers below were read directly from
../shared/data/weather_captioned/raw_data/weather_report/hourly_weather_raw_YYYY.csv (line
numbers given) and date2hash/hash2text, not produced by the code under test.
"""

import calendar
import collections
import hashlib
import json
import math
import shutil

import numpy as np
import pytest

from tests.helpers import SHARED_DATA, missing_shared_data
from tests.test_record_source import assert_same_batches, assert_same_examples
from trace_jax.data import weather_captioned as wc

SOURCE = SHARED_DATA / "weather_captioned"
needs_data = pytest.mark.skipif(
    missing_shared_data(SOURCE / wc.CSV_DIR), reason=f"real data not at {SOURCE}"
)

TEMP, SPEED, SIN, COS, PRES, HUM = range(6)


def utc(*args):
    return calendar.timegm((*args, 0)[:6] if len(args) == 5 else args)


def step(window_end, t):
    """Window index (48 steps ending at window_end) of the step holding UTC time t."""
    return 48 - (window_end - (t // 1800) * 1800) // 1800


# ----------------------------------------------------------------------------- cell parsers


def test_cell_parsers():
    assert wc.parse_temperature("0°C") == 0.0
    assert wc.parse_temperature("-22°C") == -22.0
    assert wc.parse_temperature("50°F") == pytest.approx(10.0)
    assert wc.parse_temperature("N/A") is None and wc.parse_temperature("") is None
    assert wc.parse_wind_speed("7 km/h") == (7.0, False)
    assert wc.parse_wind_speed("No wind") == (0.0, True)
    assert wc.parse_wind_speed("Calm") == (0.0, True)
    assert wc.parse_wind_speed("5 m/s") == (pytest.approx(18.0), False)
    assert wc.parse_wind_speed("N/A") == (None, False)
    assert wc.parse_wind_direction("Wind blowing from 190° South to North") == (190.0, "ok")
    assert wc.parse_wind_direction("Wind blowing from -128° North to South") == (None, "sentinel")
    assert wc.parse_wind_direction("Wind blowing from 90° North to South") == (
        90.0,
        "compass_mismatch",
    )
    assert wc.parse_wind_direction("N/A") == (None, "missing")
    assert wc.parse_pressure("1025 mbar") == 1025.0
    assert wc.parse_pressure("1013 hPa") == 1013.0
    assert wc.parse_humidity("93%") == 93.0
    for fn, bad in [
        (wc.parse_temperature, "12 K"),
        (wc.parse_wind_speed, "fast"),
        (wc.parse_wind_direction, "from the west"),
        (wc.parse_pressure, "1025 psi"),
        (wc.parse_humidity, "93"),
        (wc.parse_wind_direction, "Wind blowing from 400°"),
    ]:
        with pytest.raises(ValueError):
            fn(bad)


def test_local_time_matches_zoneinfo():
    zoneinfo = pytest.importorskip("zoneinfo")
    import datetime  # pylint: disable=g-import-not-at-top

    try:
        berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tz database")
    for stamp in [
        "201401010020",
        "201603270150",
        "201603270320",
        "201610300150",
        "201610300320",
        "202306151220",
        "202310280250",
        "201712312350",
    ]:
        d = datetime.datetime.strptime(stamp, "%Y%m%d%H%M").replace(tzinfo=berlin)
        assert wc.local_to_utc(stamp) == (int(d.timestamp()), "ok"), stamp
    # Every 10 minutes around each transition of 2014-2023, both folds.
    for year in range(2014, 2024):
        for month in (3, 10):
            last = max(d for d in range(25, 32) if datetime.date(year, month, d).weekday() == 6)
            start = datetime.datetime(year, month, last - 1)
            for k in range(3 * 24 * 6):
                naive = start + datetime.timedelta(minutes=10 * k)
                stamp = naive.strftime("%Y%m%d%H%M")
                for fold in (0, 1):
                    got, status = wc.local_to_utc(stamp, fold)
                    aware = naive.replace(tzinfo=berlin, fold=fold)
                    roundtrip = aware.astimezone(datetime.timezone.utc).astimezone(berlin)
                    if roundtrip.replace(tzinfo=None) != naive:
                        assert status == "nonexistent", stamp
                    else:
                        assert got == int(aware.timestamp()), (stamp, fold)
                        assert wc.utc_to_local_stamp(got) == stamp
    # Autumn repeat: fold 0 is summer time (first in the file), fold 1 winter time.
    d = datetime.datetime(2016, 10, 30, 2, 20, tzinfo=berlin)
    assert wc.local_to_utc("201610300220", 0) == (int(d.timestamp()), "ambiguous")
    assert wc.local_to_utc("201610300220", 1) == (int(d.replace(fold=1).timestamp()), "ambiguous")
    assert wc.local_to_utc("201603270220") == (None, "nonexistent")
    assert wc.block_span("201610300000") == (utc(2016, 10, 29, 22, 0), utc(2016, 10, 30, 5, 0))
    assert wc.utc_to_local_stamp(utc(2016, 10, 30, 1, 20)) == "201610300220"


# Every weather_text phrase that occurs in 2014-2017 and 2019-2023, with its class.
PHRASES = {
    "clear": ["Clear", "Sunny", "Passing clouds"],
    "cloudy": [
        "Partly sunny",
        "Scattered clouds",
        "Broken clouds",
        "Partly cloudy",
        "Overcast",
        "Mostly cloudy",
        "Low clouds",
        "More clouds than sun",
        "Cloudy",
    ],
    "fog": ["Fog", "Ice fog", "Light fog", "Dense fog", "Haze"],
    "rain": [
        "Light rain",
        "Sprinkles",
        "Drizzle",
        "Scattered showers",
        "Rain",
        "Rain showers",
        "Lots of rain",
        "Heavy rain",
    ],
    "snow": [
        "Light snow",
        "Snow flurries",
        "Snow",
        "Snow showers",
        "Heavy snow",
        "Sleet",
        "Light freezing rain",
        "Freezing rain",
        "Icy mix",
        "Mixture of precip",
        "Light mixture of precip",
        "Hail",
    ],
    "thunderstorm": [
        "Thundershowers",
        "Thunderstorms",
        "Strong thunderstorms",
        "Severe thunderstorms",
    ],
    None: [
        "Chilly",
        "Cool",
        "Quite cool",
        "Refreshingly cool",
        "Cold",
        "Frigid",
        "Mild",
        "Warm",
        "Pleasantly warm",
    ],
}


def test_condition_rules():
    for name, phrases in PHRASES.items():
        want = -1 if name is None else wc.CONDITION_CLASSES.index(name)
        for p in phrases:
            assert wc.condition_of(p + ".") == want, p
    assert wc.condition_of("Light snow. Partly cloudy.") == wc.CONDITION_CLASSES.index("snow")
    assert wc.condition_of("Severe thunderstorms. Fog.") == 5
    assert wc.condition_of("") == -1
    with pytest.raises(ValueError, match="Volcanic ash"):
        wc.condition_of("Volcanic ash.")


def test_channel_text_rule():
    seven = [
        "It's the evening of a day in April.",
        "The current weather is sunny.",
        "The weather is expected to remain clear.",
        "The temperature is rising.",
        "There is Light Breeze from NE.",
        "The atmospheric pressure is high.",
        "The air becomes drier over time.",
    ]
    s = wc.BuildSummary()
    assert wc.channel_texts_of(seven, s) == {
        "temperature": seven[3],
        "wind": seven[4],
        "pressure": seven[5],
        "humidity": seven[6],
    }
    assert s["channel_text:temperature:position"] == 1
    # 7 sentences, but the temperature slot is a refusal: invalid, counted.
    refused = seven[:3] + ["The temperature details are not provided."] + seven[4:]
    s = wc.BuildSummary()
    assert wc.channel_texts_of(refused, s)["temperature"] == ""
    assert s["channel_text:temperature:none"] == 1
    # 6 sentences (no trend): keyword assignment; a multi-channel summary sentence is skipped.
    six = (
        seven[:2]
        + ["Similarly, temperature, wind and humidity trends cannot be detailed."]
        + seven[4:]
    )
    s = wc.BuildSummary()
    got = wc.channel_texts_of(six, s)
    assert got == {"temperature": "", "wind": seven[4], "pressure": seven[5], "humidity": seven[6]}
    assert s["channel_text:wind:keyword"] == 1 and s["channel_text:temperature:none"] == 1
    assert wc.normalise_sentence("stay at -3\\u00b0C.  ") == "stay at -3°C."


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real():
    if missing_shared_data(SOURCE / wc.CSV_DIR):
        pytest.skip(f"real data not at {SOURCE}")
    return wc.parse_source(wc.discover(SOURCE))


@needs_data
def test_real_counts(real):
    s = real.summary
    assert real.years == [2014, 2015, 2016, 2017, 2019, 2020, 2021, 2022, 2023]
    assert real.captioned_years == [2014, 2015, 2016, 2017]
    per_year = collections.Counter(int(k[:4]) for k in real.captions[1])
    assert per_year == {2014: 1460, 2015: 1460, 2016: 1464, 2017: 1460}
    for v in (2, 3):
        assert set(real.captions[v]) == set(real.captions[1])
    rows = {
        2014: 17003,
        2015: 16933,
        2016: 17097,
        2017: 17353,
        2019: 17139,
        2020: 17196,
        2021: 17163,
        2022: 15794,
        2023: 15503,
    }
    for y, n in rows.items():
        assert s[f"rows:hourly_weather_raw_{y}.csv"] == n
    # Odd captions (after dropping hashes without a sentence).
    lengths = {v: collections.Counter(len(c) for c in real.captions[v].values()) for v in (1, 2, 3)}
    assert lengths[1] == {7: 5754, 6: 89, 4: 1}
    assert lengths[2] == {7: 5834, 6: 9, 8: 1}
    assert lengths[3] == {7: 5817, 6: 22, 8: 4, 5: 1}
    assert s["caption_length:v1:6"] == 89 and s["caption_length:v3:5"] == 1
    assert (
        s["caption_missing_hash:v1"],
        s["caption_missing_hash:v2"],
        s["caption_missing_hash:v3"],
    ) == (7, 2, 9)
    assert s["sentence_escape_decoded"] == 8
    # Cell faults.
    assert s["missing_cell:temp"] == 1 and s["missing_cell:barometer"] == 1
    assert s["missing_cell:humidity"] == 2 and s["missing_cell:wind_speed"] == 6
    assert s["wind_dir_sentinel"] == 7 and s["wind_calm"] == 352
    assert s["weather_text_missing"] == 41
    assert s["local_time_ambiguous"] == 33 and s["local_time_nonexistent"] == 0
    assert s["reading_off_grid"] == 128 and s["slot_collision"] == 107
    assert s["wind_compass_mismatch"] == 0 and s["duplicate_timestamp"] == 0
    assert sum(n for k, n in s.counts.items() if k.startswith("implausible")) == 0
    # Channel texts of all v1 captions.
    s2 = wc.BuildSummary()
    for sents in real.captions[1].values():
        wc.channel_texts_of(sents, s2)
    assert s2["channel_text:temperature:position"] == 5446
    assert s2["channel_text:temperature:none"] == 330
    assert s2["channel_text:wind:keyword"] == 88 and s2["channel_text:humidity:none"] == 2


@needs_data
def test_block_with_missing_cells(real):
    """2016-01-19 18-24h (CET): line 864 (22:20) has N/A temp/pressure/humidity; 21:50 missing."""
    b = real.captioned_block("201601191800")
    assert (b.start, b.end) == (utc(2016, 1, 19, 17, 0), utc(2016, 1, 19, 23, 0))
    assert b.texts[0] == (
        "It's the evening of a day in January. The current weather is clear. Without finer "
        "details, the weather trend is unspecified but initially clear. It's going to be very "
        "cold as temperatures are well below freezing. There is a Gentle Breeze from WSW. The "
        "atmospheric shows Very Low Pressure. The humidity is very high."
    )
    assert b.texts[1].startswith(
        "It's the evening of a day in January. The current weather is "
        "clear. The weather trend in the next 6 hours is not specified."
    )
    assert b.channel_texts == (
        "It's going to be very cold as temperatures are well below freezing.",
        *["There is a Gentle Breeze from WSW."] * 3,
        "The atmospheric shows Very Low Pressure.",
        "The humidity is very high.",
    )
    assert b.label == wc.CONDITION_CLASSES.index("clear")  # Clear./Passing clouds.
    series, observed = real.grid.window(b.end, 48)
    i = step(b.end, utc(2016, 1, 19, 21, 20))  # local 22:20, line 864
    assert i == 44
    assert observed[:, i].tolist() == [False, True, True, True, False, False]
    assert series[SPEED, i] == 26.0
    assert series[SIN, i] == pytest.approx(math.sin(math.radians(240)), abs=1e-6)
    assert series[COS, i] == pytest.approx(-0.5, abs=1e-6)
    assert not observed[:, 43].any()  # local 21:50: no reading
    assert series[:, 42].tolist() == pytest.approx(  # local 21:20, line 863
        [-10, 26, math.sin(math.radians(240)), math.cos(math.radians(240)), 1014, 85]
    )
    assert series[[TEMP, SPEED, PRES, HUM], 47].tolist() == [-8, 13, 1014, 86]  # line 867
    assert series[TEMP, 36] == -12.0  # local 18:20, line 857


@needs_data
def test_block_in_data_gap_with_refusal_caption(real):
    """2014-07-05 12-18h (CEST): no reading from 11:50 to 22:50; the caption says nothing."""
    b = real.captioned_block("201407051200")
    assert (b.start, b.end) == (utc(2014, 7, 5, 10, 0), utc(2014, 7, 5, 16, 0))
    assert b.label == -1
    assert b.channel_texts == ("",) * 6  # every role sentence is a refusal
    assert b.texts[0].startswith(
        "It's the afternoon of a day in July. The current weather information is not available."
    )
    assert b.texts[0].endswith("Humidity information is missing.")
    series, observed = real.grid.window(b.end, 48)
    assert step(b.end, utc(2014, 7, 5, 9, 50)) == 35
    assert series[:, 35].tolist() == pytest.approx(  # local 11:50, line 8632
        [24, 17, math.sin(math.radians(260)), math.cos(math.radians(260)), 1008, 50]
    )
    assert series[TEMP, 29] == 19.0 and series[HUM, 29] == 73.0  # local 08:50, line 8631
    assert not observed[:, 30:35].any() and not observed[:, 36:].any()
    assert observed[TEMP, :30].sum() > 20


@needs_data
def test_dst_fall_back_block(real):
    """2016-10-30 00-06h local is 7 hours; the repeated 02:20/02:50 land on distinct steps."""
    b = real.captioned_block("201610300000")
    assert (b.start, b.end) == (utc(2016, 10, 29, 22, 0), utc(2016, 10, 30, 5, 0))
    assert b.label == wc.CONDITION_CLASSES.index("cloudy")  # Overcast./Mostly cloudy.
    assert b.channel_texts[0] == "The temperature is steady around 6-7°C."
    assert b.channel_texts[1] == "There is a Moderate Breeze from W."
    series, _ = real.grid.window(b.end, 48)
    # Lines 14124-14127: 0220 (CEST), 0220 (CET), 0250 (CEST), 0250 (CET).
    assert [
        step(b.end, utc(2016, 10, 30, h, m)) for h, m in [(0, 20), (1, 20), (0, 50), (1, 50)]
    ] == [38, 40, 39, 41]
    assert series[PRES, 38] == 1031 and series[PRES, 40] == 1030
    assert series[SPEED, 39] == 13 and series[SPEED, 41] == 15
    assert series[SIN, 39] == pytest.approx(math.sin(math.radians(250)), abs=1e-6)
    assert series[PRES, 37] == 1031 and series[HUM, 37] == 93  # local 01:50 CEST, line 14123


@needs_data
def test_off_grid_readings_and_missing_hash(real):
    """2017-07-04 12:35/12:50/12:55 share a step: 12:50 (line 8730) wins.

    2014-01-21 00h: v1 lists 8 hashes, the last has no sentence -> 7 positional sentences.
    """
    b = real.captioned_block("201707041200")
    series, _ = real.grid.window(b.end, 48)
    i = step(b.end, utc(2017, 7, 4, 10, 50))
    assert i == 37
    assert series[SIN, i] == pytest.approx(math.sin(math.radians(290)), abs=1e-6)  # not 300°
    assert series[[TEMP, SPEED, PRES, HUM], i].tolist() == [21, 19, 1020, 57]
    assert series[HUM, 36] == 60  # 12:20, line 8728
    assert b.label == wc.CONDITION_CLASSES.index("cloudy")

    b = real.captioned_block("201401210000")
    assert len(real.captions[1]["201401210000"]) == 7
    assert b.channel_texts[0] == (
        "The temperature remains largely steady, with a slight "
        "fluctuation within the freezing range."
    )
    assert b.channel_texts[5] == "The humidity is extremely high, hitting saturation."
    assert b.label == wc.CONDITION_CLASSES.index("snow")  # Light freezing rain / Snow flurries
    series, observed = real.grid.window(b.end, 48)
    assert series[TEMP, 42] == -1.0  # local 03:20, line 932
    assert not observed[:, 43].any()  # local 03:50: no reading


@needs_data
def test_six_sentence_caption_keyword_roles(real):
    b = real.captioned_block("201504091800")
    assert len(real.captions[1]["201504091800"]) == 6
    assert b.channel_texts[0] == (
        "The temperature trend is not specified, but expect mild conditions between 11°C and 15°C."
    )
    assert b.channel_texts[1:] == ("There is Light Breeze from NE.",) * 3 + (
        "The atmospheric shows High Pressure.",
        "The humidity is average.",
    )


# ----------------------------------------------------------------------------- faults

HEADER = ",".join(wc.CSV_HEADER) + "\n"
GOOD = (
    "201601010020,0°C,Wind blowing from 190° South to North,7 km/h,Passing clouds.,1025 mbar,93%\n"
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_unparseable_value_names_file_line_column(tmp_path):
    bad = GOOD.replace("1025 mbar", "1025 psi").replace("0020", "0050")
    p = write(tmp_path / "hourly_weather_raw_2016.csv", HEADER + GOOD + bad)
    with pytest.raises(
        ValueError, match=r"hourly_weather_raw_2016\.csv:3: column 'barometer'.*" r"1025 psi"
    ):
        wc.read_weather_csv(p)
    p = write(tmp_path / "b.csv", HEADER + GOOD.replace("Passing clouds.", "Volcanic ash."))
    with pytest.raises(ValueError, match=r"b\.csv:2: column 'weather_text'"):
        wc.read_weather_csv(p)
    p = write(tmp_path / "c.csv", HEADER + GOOD.replace("201601010020", "2016010100"))
    with pytest.raises(ValueError, match=r"c\.csv:2: column 'time'"):
        wc.read_weather_csv(p)
    p = write(tmp_path / "d.csv", HEADER + GOOD.replace(",93%", ""))
    with pytest.raises(ValueError, match=r"d\.csv:2: 6 cells"):
        wc.read_weather_csv(p)
    p = write(tmp_path / "e.csv", "when,temp\n" + GOOD)
    with pytest.raises(ValueError, match=r"e\.csv:1: header"):
        wc.read_weather_csv(p)


def test_skipped_cells_are_counted(tmp_path):
    rows = [
        GOOD,
        "201601010050,N/A,Wind blowing from -128° North to South,N/A,,1025 mbar,93%\n",
        "201601010120,-3°C,Wind blowing from 0° North to South,No wind,Fog.,1026 mbar,140%\n",
        "201601010150,-3°C,Wind blowing from 0° North to South,4 km/h,Fog.,N/A,100%\n",
        "201601010155,-4°C,Wind blowing from 0° North to South,20 km/h,Snow.,1027 mbar,99%\n",
    ]
    s = wc.BuildSummary()
    r = wc.read_weather_csv(
        write(tmp_path / "hourly_weather_raw_2016.csv", HEADER + "".join(rows)), s
    )
    assert len(r) == 5
    assert (
        s["missing_cell:temp"],
        s["missing_cell:wind_speed"],
        s["wind_dir_sentinel"],
        s["weather_text_missing"],
        s["wind_calm"],
        s["wind_dir_variable"],
        s["implausible:humidity"],
        s["missing_cell:barometer"],
        s["reading_off_grid"],
    ) == (1, 1, 1, 1, 1, 1, 1, 1, 1)
    assert s.where["implausible:humidity"] == ["hourly_weather_raw_2016.csv:4 (140)"]
    assert np.isnan(r.values[1, [TEMP, SPEED, SIN, COS]]).all()
    assert r.values[2, SPEED] == 0 and np.isnan(r.values[2, SIN])  # calm: no direction
    assert np.isnan(r.values[3, SIN])  # 0° at 4 km/h: variable
    assert r.values[4, COS] == 1.0  # 0° at 20 km/h: north
    assert r.condition.tolist() == [0, -1, 2, 2, 4]
    g = wc.Grid.from_readings(r, s)
    assert s["slot_collision"] == 1  # 01:50 and 01:55 share a step; 01:50 wins
    series, observed = g.window(utc(2016, 1, 1, 1, 0), 4)
    assert series[TEMP].tolist() == [0, 0, -3, -3] and observed[TEMP].tolist() == [
        True,
        False,
        True,
        True,
    ]
    assert series[PRES, 3] == 1027 and observed[PRES, 3]  # per channel: 01:55 fills pressure
    assert "wind_calm: 1" in s.format()


def make_layout(root, years=(2016,), captions=None, hashtable=None):
    for y in years:
        write(
            root / wc.CSV_DIR / f"hourly_weather_raw_{y}.csv", HEADER + GOOD.replace("2016", str(y))
        )
    for v in (1, 2, 3):
        write(root / wc.CAPTION_FILES[v], json.dumps(captions or {}))
    write(root / wc.HASHTABLE_FILE, json.dumps(hashtable or {}))
    return root


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        wc.discover(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no raw_data/weather_report/hourly_weather_raw"):
        wc.discover(write(tmp_path / "empty" / "x.txt", "").parent)
    root = make_layout(tmp_path / "wc")
    (root / wc.HASHTABLE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"missing .*hash2text/hashtable\.json"):
        wc.discover(root)
    with pytest.raises(FileNotFoundError, match=r"did you mean .*parent/weather_captioned\?"):
        make_layout(tmp_path / "parent" / "weather_captioned")
        (tmp_path / "parent" / "other").mkdir()
        wc.discover(tmp_path / "parent")
    root = make_layout(
        tmp_path / "wc2", captions={"201501010000": ["a"]}, hashtable={"Hello.": "a"}
    )
    with pytest.raises(
        FileNotFoundError,
        match=r"captions exist for \[2015\].*" r"hourly_weather_raw_2015\.csv is missing",
    ):
        wc.parse_source(wc.discover(root))
    root = make_layout(tmp_path / "wc3", captions={"201601010300": ["a"]})
    with pytest.raises(ValueError, match="not a 6-hour block start"):
        wc.parse_source(wc.discover(root))


def test_odd_captions_counted(tmp_path):
    table = {f"S{i}.": f"h{i}" for i in range(8)}
    caps = {
        "201601010000": [f"h{i}" for i in range(7)] + ["gone"],  # 8 hashes, one missing
        "201601010600": [f"h{i}" for i in range(6)],
        "201601011200": ["gone"],
    }
    root = make_layout(tmp_path / "wc", captions=caps, hashtable=table)
    src = wc.parse_source(wc.discover(root))
    s = src.summary
    assert s["caption_missing_hash:v1"] == 2
    assert s["caption_length:v1:6"] == 1 and s["caption_length:v1:0"] == 1
    assert s["caption_empty:v1"] == 1 and s["caption_length:v1:7"] == 0
    assert src.captioned_block("201601011200").texts == ("", "", "")


def test_plan_splits():
    plan = wc.plan_splits(
        [2014, 2016, 2017, 2018, 2019],
        [2014, 2016, 2017, 2018],
        (2014, 2015, 2016),
        (2017,),
        (2019, 2020),
    )
    assert plan == {
        "train": ([2014, 2016], True),
        "validation": ([2017], True),
        "pretrain": ([2019], False),
        "year_2018": ([2018], True),
    }
    assert wc.plan_splits([2012], [], (2014,), (), ())["year_2012"] == ([2012], False)
    with pytest.raises(ValueError, match="both"):
        wc.plan_splits([2014], [2014], (2014,), (2014,), ())


# ----------------------------------------------------------------------------- builder


class FakeEncoder:
    model_id = "fake/test-encoder"
    dim = 384
    calls: list = []

    def embed(self, texts):
        FakeEncoder.calls.append(list(texts))
        return np.stack([fake_vector(t) for t in texts])


def fake_vector(text):
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(384).astype(np.float32)


@needs_data
def test_builder_end_to_end(tmp_path, capsys):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    # A small copy in the upstream layout: Dec 30-31 2016, Jan 1-2 2017, Jan 1 2019 (no captions).
    manual = tmp_path / "manual"
    days = {
        2016: ("20161230", "20161231"),
        2017: ("20170101", "20170102"),
        2019: ("20190101", "20190101"),
    }
    for y, (a, b) in days.items():
        lines = (
            (SOURCE / wc.CSV_DIR / f"hourly_weather_raw_{y}.csv")
            .read_text(encoding="utf-8")
            .splitlines(True)
        )
        write(
            manual / wc.CSV_DIR / f"hourly_weather_raw_{y}.csv",
            lines[0] + "".join(l for l in lines[1:] if a <= l[:8] <= b),
        )
    for v, rel in wc.CAPTION_FILES.items():
        d = json.loads((SOURCE / rel).read_text(encoding="utf-8"))
        write(
            manual / rel,
            json.dumps(
                {k: h for k, h in d.items() if any(a <= k[:8] <= b for a, b in days.values())}
            ),
        )
    (manual / "hash2text").mkdir()
    shutil.copy(SOURCE / wc.HASHTABLE_FILE, manual / wc.HASHTABLE_FILE)

    FakeEncoder.calls.clear()
    builder = wc.WeatherCaptioned(
        data_dir=tmp_path / "data",
        config=None,
        text_cache_dir=str(tmp_path / "cache"),
        text_encoder_factory=FakeEncoder,
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    assert "Weather-Captioned build summary" in capsys.readouterr().out
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 8,
        "validation": 8,
        "pretrain": 7,
    }  # 2019: blocks whose window touches Jan 1
    counts = builder.info.metadata["build_summary"]["counts"]
    assert counts["examples:train"] == 8
    assert counts["window_empty_skipped:pretrain"] == 365 * 4 - 7
    # Each distinct text was embedded exactly once.
    embedded = [t for call in FakeEncoder.calls for t in call]
    assert len(embedded) == len(set(embedded)) == builder.build_summary["unique_texts"]

    src = wc.parse_source(wc.discover(manual))
    for split in ["validation", "pretrain"]:
        ds = tfds.data_source(
            "weather_captioned", split=split, data_dir=tmp_path / "data", download=False
        )
        assert_same_examples(ds)
        if split == "validation":
            assert_same_batches(ds)
        by_id = {ex["example_id"].decode(): ex for ex in (ds[i] for i in range(len(ds)))}
        for eid, ex in by_id.items():
            key = eid.split("/")[1]
            b = src.captioned_block(key) if split == "validation" else src.plain_block(key)
            series, observed = src.grid.window(b.end, 48)
            np.testing.assert_array_equal(ex["series"], series)
            np.testing.assert_array_equal(ex["observed"], observed)
            assert (ex["start_time"], ex["end_time"], ex["label"]) == (
                b.end - 86400,
                b.end,
                b.label,
            )
            assert ex["channel_ids"].tolist() == list(range(6))
            if split == "pretrain":
                assert ex["num_texts"] == 0 and ex["text"] == b""
                assert not ex["channel_text_valid"].any() and not ex["text_embedding"].any()
                continue
            assert ex["num_texts"] == 3 and ex["text"].decode() == b.texts[0]
            assert [t.decode() for t in ex["texts"]] == list(b.texts)
            for row, t in zip(ex["text_embedding"], b.texts):
                np.testing.assert_array_equal(row, fake_vector(t))
            assert [t.decode() for t in ex["channel_texts"]] == list(b.channel_texts)
            assert ex["channel_text_valid"].tolist() == [bool(t) for t in b.channel_texts]
            for row, t in zip(ex["channel_text_embedding"], b.channel_texts):
                np.testing.assert_array_equal(row, fake_vector(t) if t else 0)
        assert len(by_id) == len(ds)
    # The window of the block 2017-01-01 00-06h (local) reaches back into the 2016 file.
    ds = builder.as_data_source(split="validation")
    ex = next(
        e
        for e in (ds[i] for i in range(len(ds)))
        if e["example_id"] == b"weather_captioned/201701010000"
    )
    assert ex["observed"][0, :36].sum() >= 30  # 2016-12-31 06:00-24:00 local
    assert ex["series"][0, 35] == -7.0  # 2016-12-31 23:50, the 2016 file's last line
    assert ex["series"][0, 36] == -7.0  # 2017-01-01 00:20, the 2017 file's first line


def test_download_mode_uses_upstream_urls(tmp_path):
    urls = wc.upstream_urls([2014, 2019])
    assert urls["csv_2014"] == (
        "https://raw.githubusercontent.com/VEWOXIC/Weather-Captioned/main/"
        "raw_data/weather_report/hourly_weather_raw_2014.csv"
    )
    assert urls["captions_v2"].endswith("/date2hash/wm_messages_v2.json")
    assert urls["hashtable"].endswith("/hash2text/hashtable.json")

    class FakeDownloadManager:
        _manual_dir = tmp_path / "manual"  # TFDS's default manual dir, absent here

        def download(self, url_dict):
            self.asked = dict(url_dict)
            return {k: tmp_path / k for k in url_dict}

    cfg = wc.WeatherCaptionedConfig(
        name="t", train_years=(2014,), validation_years=(), pretrain_years=(2019,)
    )
    builder = wc.WeatherCaptioned(data_dir=tmp_path / "data", config=cfg)
    dl = FakeDownloadManager()
    files = builder._source_files(dl)  # pylint: disable=protected-access
    assert set(dl.asked) == {
        "csv_2014",
        "csv_2019",
        "captions_v1",
        "captions_v2",
        "captions_v3",
        "hashtable",
    }
    assert files.csv_by_year == {2014: tmp_path / "csv_2014", 2019: tmp_path / "csv_2019"}
    assert files.hashtable == tmp_path / "hashtable"
