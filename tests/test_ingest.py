"""Parsing, normalisation, identity and time: the rules of SPEC §1.3–§1.5, unit by unit."""

import datetime as dt
import json

import pytest

import sigsync
from conftest import START, signal_row

UTC = dt.timezone.utc


def z(text):
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- time ---------------------------------------------------------------------------------

@pytest.mark.parametrize("naive, utc", [
    # EST in winter, EDT in summer
    ("2025-12-15T09:42:00", "2025-12-15T14:42:00Z"),
    ("2025-07-01T09:42:00", "2025-07-01T13:42:00Z"),
    # spring forward, 2025-03-09: 02:00 EST jumps to 03:00 EDT
    ("2025-03-09T01:59:59", "2025-03-09T06:59:59Z"),   # last instant of EST
    ("2025-03-09T02:30:00", "2025-03-09T07:30:00Z"),   # does not exist: read as EST (= 03:30 EDT)
    ("2025-03-09T03:00:00", "2025-03-09T07:00:00Z"),   # first instant of EDT
    # fall back, 2025-11-02: 02:00 EDT goes back to 01:00 EST
    ("2025-11-02T00:59:59", "2025-11-02T04:59:59Z"),
    ("2025-11-02T01:30:00", "2025-11-02T05:30:00Z"),   # ambiguous: first occurrence (EDT)
    ("2025-11-02T02:00:00", "2025-11-02T07:00:00Z"),   # EST from here
])
def test_new_york_naive_times_convert_with_dst(naive, utc):
    moment, kind = sigsync.parse_time(naive, "event_timestamp")
    assert kind == "new_york"
    assert moment == z(utc)


@pytest.mark.parametrize("value, utc", [
    (1765809720000, "2025-12-15T14:42:00Z"),           # epoch ms as a number
    ("1765809720000", "2025-12-15T14:42:00Z"),         # ... and as a string
    ("2025-11-21T01:05:00Z", "2025-11-21T01:05:00Z"),   # Z taken as is
    ("2025-12-15T09:42:00-05:00", "2025-12-15T14:42:00Z"),
])
def test_epoch_ms_and_offset_times_are_taken_as_they_are(value, utc):
    assert sigsync.parse_time(value, "t")[0] == z(utc)


def test_naive_times_with_microseconds_are_new_york_too():
    assert sigsync.parse_time("2025-12-13T14:01:13.482913", "t") == (
        z("2025-12-13T19:01:13.482913Z"), "new_york")


def test_a_bars_naive_time_is_utc_while_an_events_naive_timestamp_is_new_york(db, clock):
    # SPEC §1.3: a BAR's time is "bar open, UTC ISO or epoch ms"; §1.4 names only
    # event_timestamp, timestamp and signal_time as New York wall clock
    bar = {"event_type": "BAR", "symbol": "MNQ1!", "timeframe": "1",
           "time": "2025-12-15T14:42:00", "open": 1, "high": 2, "low": 0.5, "close": 1.5}
    sigsync.ingest(db, json.dumps(bar).encode(), now=clock.now())
    assert db.query("SELECT time FROM bars") == [{"time": "2025-12-15T14:42:00.000Z"}]
    created = {"event_type": "SIGNAL_CREATED", "trade_id": "20251215_094200000_BULLISH",
               "direction": "Bullish", "event_timestamp": "2025-12-15T09:42:00"}
    sigsync.ingest(db, json.dumps(created).encode(), now=clock.now())
    assert json.loads(db.query("SELECT payload FROM events WHERE event_type = 'SIGNAL_CREATED'")[
        0]["payload"])["event_timestamp"] == "2025-12-15T14:42:00.000Z"


@pytest.mark.parametrize("timeframe", ["99999999999", "9" * 5000, "1H", "٥"])
def test_a_bar_whose_timeframe_is_no_usable_length_is_a_price_as_of_its_open(db, clock,
                                                                             timeframe):
    bar = {"event_type": "BAR", "symbol": "MNQ1!", "timeframe": timeframe,
           "time": "2025-12-15T13:42:00Z", "open": 1, "high": 2, "low": 0.5, "close": 1.5}
    sigsync.ingest(db, json.dumps(bar).encode(), now=clock.now())
    assert db.query("SELECT price, received_at FROM symbol_prices") == [
        {"price": 1.5, "received_at": "2025-12-15T13:42:00.000Z"}]


@pytest.mark.parametrize("timeframe, opened, as_of", [
    ("D", "2025-12-15T13:42:00Z", "2025-12-15T14:00:00.000Z"),     # not closed: its arrival
    ("1D", "2025-12-13T14:30:00Z", "2025-12-14T14:30:00.000Z"),    # closed: open + 1 day
    ("30S", "2025-12-15T13:42:00Z", "2025-12-15T13:42:30.000Z"),
    ("W", "2025-12-01T00:00:00Z", "2025-12-08T00:00:00.000Z")])
def test_a_bars_price_is_as_of_its_close_in_its_timeframe(db, clock, timeframe, opened, as_of):
    bar = {"event_type": "BAR", "symbol": "MNQ1!", "timeframe": timeframe, "time": opened,
           "open": 1, "high": 2, "low": 0.5, "close": 1.5}
    sigsync.ingest(db, json.dumps(bar).encode(), now=clock.now())      # at 14:00Z
    assert db.query("SELECT price, received_at FROM symbol_prices") == [
        {"price": 1.5, "received_at": as_of}]


@pytest.mark.parametrize("value", ["yesterday", "2025-13-01T00:00:00", "", True, {"a": 1},
                                   "{{time}}", 10**20])
def test_bad_times_are_rejected_naming_the_field(value):
    with pytest.raises(sigsync.Rejected) as e:
        sigsync.parse_time(value, "event_timestamp")
    assert e.value.message.startswith("event_timestamp")


def test_stored_times_are_utc_iso_with_milliseconds_and_z():
    assert sigsync.iso(z("2025-12-15T14:42:00.123456Z")) == "2025-12-15T14:42:00.123Z"


# --- identity -------------------------------------------------------------------------------

def test_trade_id_is_the_triangle_open_in_new_york():
    moment, direction = sigsync.parse_trade_id("20251215_094200000_BULLISH")
    assert moment == z("2025-12-15T14:42:00Z") and direction == "Bullish"
    moment, direction = sigsync.parse_trade_id("20250701_100300500_BEARISH")
    assert moment == z("2025-07-01T14:03:00.500Z") and direction == "Bearish"


def test_legacy_six_digit_trade_id_is_accepted():
    moment, _ = sigsync.parse_trade_id("20251105_100300_BEARISH")
    assert moment == z("2025-11-05T15:03:00Z")


@pytest.mark.parametrize("stamp, accepted", [
    # 1990-01-01 00:00 UTC is 1989-12-31 19:00 in New York (EST), 2100-01-01 00:00 UTC
    # 2099-12-31 19:00: the range is of UTC instants, at the millisecond
    ("19891231_185959999", False), ("19891231_190000000", True),
    ("20991231_185959999", True), ("20991231_190000000", False)])
def test_trade_ids_and_times_are_held_to_1990_2099_utc_at_the_boundary(stamp, accepted):
    naive = (f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:"
             f"{stamp[13:15]}.{stamp[15:]}")
    for parse in (lambda: sigsync.parse_trade_id(stamp + "_BULLISH")[0],
                  lambda: sigsync.parse_time(naive, "event_timestamp")[0]):
        if accepted:
            assert sigsync._TIME_MIN <= parse() < sigsync._TIME_MAX
        else:
            with pytest.raises(sigsync.Rejected, match="out of range .1990-01-01 to 2099-12-31"):
                parse()
    # with an offset the same instant is named in another year, and is held the same way
    assert sigsync.parse_time("2100-01-01T00:59:59+01:00", "t")[0] == z("2099-12-31T23:59:59Z")
    with pytest.raises(sigsync.Rejected):
        sigsync.parse_time("1990-01-01T00:30:00+01:00", "t")


@pytest.mark.parametrize("bad", ["2,025001110_083300_BULLISH", "20251332_094200000_BULLISH",
                                 "20251215_256200000_BULLISH", "20251215_094200000_LONG",
                                 "20251215_0942_BULLISH", "20251215_094200000_bullish", "",
                                 "TEST_LIFECYCLE_1765809720", 20251215])
def test_bad_trade_ids_are_rejected(bad):
    with pytest.raises(sigsync.Rejected) as e:
        sigsync.parse_trade_id(bad)
    assert e.value.code == "invalid_trade_id"


@pytest.mark.parametrize("ny, session", [
    ("05:59", "LONDON"), ("06:00", "NY PRE"), ("08:29", "NY PRE"), ("08:30", "NY AM"),
    ("11:59", "NY AM"), ("12:00", "NY LUNCH"), ("12:59", "NY LUNCH"), ("13:00", "NY PM"),
    ("15:59", "NY PM"), ("16:00", "AFTER_HOURS"), ("19:59", "AFTER_HOURS"), ("20:00", "ASIA"),
    ("23:59", "ASIA"), ("00:00", "LONDON"),
])
def test_sessions_at_their_boundaries(ny, session):
    for day in ("2025-12-15", "2025-07-01"):          # same wall clock in EST and EDT
        moment = sigsync.ny_local_to_utc(dt.datetime.fromisoformat(f"{day}T{ny}:00"))
        assert sigsync.session_of(moment) == session


# --- normalisation --------------------------------------------------------------------------

def normalise(body):
    return sigsync.normalise(json.loads(json.dumps(body)))


def test_event_aliases_map_to_one_vocabulary():
    for alias, canonical in [("EXIT_STOP_LOSS", "EXIT_SL"), ("signal_completed", "EXIT_SL"),
                             ("EXIT_BREAK_EVEN", "EXIT_BE"), ("CONFIRMED", "ENTRY"),
                             ("SIGNAL_CANCELLED", "CANCELLED"), ("mfe_update", "MFE_UPDATE"),
                             ("EXIT_TAKE_PROFIT", "EXIT_TP"), ("be_triggered", "BE_TRIGGERED")]:
        kind, [payload] = normalise({"event_type": alias,
                                     "trade_id": "20251215_094200000_BULLISH",
                                     "direction": "Bullish"})
        assert kind == payload["event_type"] == canonical


def test_field_aliases_keep_zero_as_a_value():
    _, [p] = normalise({"event_type": "MFE_UPDATE", "signal_id": "20251215_094200000_BULLISH",
                        "mae_global_R": 0, "be_mfe_R": "0", "no_be_mfe_R": 0.0,
                        "sl_price": "25645", "entry": 25683.5})
    assert p["trade_id"] == "20251215_094200000_BULLISH"
    assert p["mae_global_r"] == 0.0 and p["be_mfe"] == 0.0 and p["no_be_mfe"] == 0.0
    assert p["stop_loss"] == 25645.0 and p["entry_price"] == 25683.5


def test_alias_and_canonical_with_different_values_is_refused():
    with pytest.raises(sigsync.Rejected) as e:
        normalise({"event_type": "ENTRY", "trade_id": "20251215_094200000_BULLISH",
                   "direction": "Bullish", "entry": 1.0, "entry_price": 2.0})
    assert "entry" in e.value.message and e.value.code == "invalid_field"


def test_directions_are_stored_as_bullish_or_bearish():
    for sent, stored in [("LONG", "Bullish"), ("short", "Bearish"), ("BULLISH", "Bullish"),
                         ("Bearish", "Bearish")]:
        _, [p] = normalise({"event_type": "ENTRY", "trade_id": "20251215_094200000_BULLISH",
                            "direction": sent})
        assert p["direction"] == stored


def test_batch_expands_to_one_mfe_update_per_element_with_the_envelope_time():
    kind, payloads = normalise({"event_type": "MFE_UPDATE_BATCH",
                                "timestamp": "2025-12-15T10:05:00", "symbol": "MNQ1!",
                                "signals": [{"trade_id": "20251215_094200000_BULLISH",
                                             "no_be_mfe": 1.5},
                                            {"trade_id": "20251215_110200000_BEARISH",
                                             "no_be_mfe": 0}]})
    assert kind == "MFE_UPDATE_BATCH"
    assert [p["event_type"] for p in payloads] == ["MFE_UPDATE", "MFE_UPDATE"]
    assert [p["timestamp"] for p in payloads] == ["2025-12-15T15:05:00.000Z"] * 2
    assert payloads[1]["no_be_mfe"] == 0.0 and payloads[0]["symbol"] == "MNQ1!"


def test_signal_time_of_day_is_combined_with_signal_date_in_new_york():
    _, [p] = normalise({"event_type": "SIGNAL_CREATED", "direction": "Bullish",
                        "trade_id": "20251213_140113000_BULLISH", "signal_date": "2025-12-13",
                        "signal_time": "14:01:13"})
    assert p["signal_time"] == "2025-12-13T19:01:13.000Z"


def test_wrapped_attributes_body_is_unwrapped():
    kind, [p] = normalise({"message": "", "attributes": {
        "event_type": "ENTRY", "trade_id": "20250101_120000000_BULLISH", "direction": "Bullish",
        "mfe_R": 0, "mae_R": 0}})
    assert kind == "ENTRY" and p["no_be_mfe"] == 0.0 and p["mae_global_r"] == 0.0


# --- storage --------------------------------------------------------------------------------

def body(**fields):
    return json.dumps(fields).encode()


ENTRY = dict(event_type="ENTRY", trade_id="20251215_094200000_BULLISH", direction="Bullish",
             symbol="MNQ1!", entry_price=25683.5, stop_loss=25645, mae_global_r=0)


def test_raw_body_is_kept_byte_for_byte(db, clock):
    raw = b'{ "event_type" : "ENTRY",\n "trade_id":"20251215_094200000_BULLISH",' \
          b'"direction":"LONG", "entry_price":"25683.50" }'
    result = sigsync.ingest(db, raw, now=clock.now(), content_type="text/plain")
    rows = db.query("SELECT raw_body, content_type, received_at FROM requests")
    assert bytes(rows[0]["raw_body"]) == raw
    assert rows[0]["content_type"] == "text/plain"
    assert rows[0]["received_at"] == "2025-12-15T14:00:00.000Z"
    assert result.events[0]["duplicate"] is False


def test_secret_is_removed_from_the_payload_and_masked_in_the_raw_body(db, clock):
    raw = body(**ENTRY, secret="hunter2")
    sigsync.ingest(db, raw, now=clock.now())
    stored = bytes(db.query("SELECT raw_body FROM requests")[0]["raw_body"])
    assert b"hunter2" not in stored and b'"secret": "***"' in stored
    payload = json.loads(db.query("SELECT payload FROM events")[0]["payload"])
    assert "secret" not in payload


def test_a_secret_nested_anywhere_is_kept_out_of_the_event_as_out_of_the_raw_body(db, clock):
    """mask_secret hides a "secret" at any depth of the raw body; the payload kept the nested
    ones in clear before 0.5.7 (only the top level, the wrapper and batch elements were
    stripped)."""
    raw = json.dumps({"event_type": "MFE_UPDATE_BATCH", "secret": "top1", "signals": [
        {"trade_id": ENTRY["trade_id"], "no_be_mfe": 0.4, "setup": {"secret": "deep2"},
         "notes": [{"secret": "deeper3", "keep": 1}]}]}).encode()
    sigsync.ingest(db, raw, now=clock.now())
    stored = bytes(db.query("SELECT raw_body FROM requests")[0]["raw_body"])
    assert not any(s in stored for s in (b"top1", b"deep2", b"deeper3"))
    text = db.query("SELECT payload FROM events")[0]["payload"]
    assert not any(s in text for s in ("top1", "deep2", "deeper3", "secret")), text
    assert json.loads(text)["notes"] == [{"keep": 1}]


def test_identical_event_is_acknowledged_as_duplicate_and_not_counted_twice(db, clock):
    first = sigsync.ingest(db, body(**ENTRY), now=clock.now())
    clock.advance(5)
    again = sigsync.ingest(db, body(**ENTRY), now=clock.now())
    assert again.response() == {"ok": True, "event_id": first.events[0]["event_id"],
                                "trade_id": ENTRY["trade_id"], "duplicate": True}
    assert db.query("SELECT count(*) AS n FROM events")[0]["n"] == 1
    assert db.query("SELECT count(*) AS n FROM requests")[0]["n"] == 2   # both deliveries kept
    assert signal_row(db, ENTRY["trade_id"])["event_count"] == 1


def test_second_lifecycle_event_with_other_content_is_kept_and_flagged(db, clock):
    sigsync.ingest(db, body(**ENTRY), now=clock.now())
    sigsync.ingest(db, body(**{**ENTRY, "entry_price": 25690}), now=clock.now())
    row = signal_row(db, ENTRY["trade_id"])
    assert row["entry_price"] == 25683.5                         # the first received stands
    assert row["conflicts"]["entry_price"] == {"values": [25683.5, 25690.0]}
    assert row["conflicts"]["second_entry"]["event_ids"] == [1, 2]
    assert db.query("SELECT count(*) AS n FROM events")[0]["n"] == 2


def test_mfe_before_entry_is_kept_and_folded(db, clock):
    sigsync.ingest(db, body(event_type="MFE_UPDATE", trade_id=ENTRY["trade_id"], no_be_mfe=0.7,
                            be_mfe=0.7, mae_global_r=-0.2, current_price=25710), now=clock.now())
    row = signal_row(db, ENTRY["trade_id"])
    assert row["status"] == "ACTIVE" and row["has_entry"] == 0 and row["no_be_mfe"] == 0.7
    sigsync.ingest(db, body(**ENTRY), now=clock.now())
    row = signal_row(db, ENTRY["trade_id"])
    assert row["has_entry"] == 1 and row["entry_price"] == 25683.5
    assert row["no_be_mfe"] == 0.7 and row["mae"] == -0.2      # ENTRY's 0 lowers nothing


def test_exit_be_then_exit_sl_completes_the_trade_only_at_the_stop(db, clock):
    tid = ENTRY["trade_id"]
    sigsync.ingest(db, body(**ENTRY), now=clock.now())
    sigsync.ingest(db, body(event_type="BE_TRIGGERED", trade_id=tid, no_be_mfe=1.02),
                   now=clock.advance(60))
    assert signal_row(db, tid)["be_state"] == "TRIGGERED"
    sigsync.ingest(db, body(event_type="EXIT_BE", trade_id=tid, exit_price=25683.5),
                   now=clock.advance(60))
    row = signal_row(db, tid)
    assert (row["status"], row["be_state"]) == ("ACTIVE", "STOPPED")
    assert row["exit_be_at"] == "2025-12-15T14:02:00.000Z"
    sigsync.ingest(db, body(event_type="EXIT_STOP_LOSS", trade_id=tid, exit_price=25645),
                   now=clock.advance(60))
    row = signal_row(db, tid)
    assert (row["status"], row["exit_price"], row["exit_sl_at"]) == (
        "EXITED", 25645.0, "2025-12-15T14:03:00.000Z")


def test_direction_disagreeing_with_trade_id_is_a_conflict_not_a_rejection(db, clock):
    sigsync.ingest(db, body(**{**ENTRY, "direction": "Bearish"}), now=clock.now())
    row = signal_row(db, ENTRY["trade_id"])
    assert row["conflicts"]["direction_mismatch"] == {"values": ["Bearish", "Bullish"]}


def test_dead_letters_stay_within_their_bound(db, clock):
    for i in range(30):
        error = sigsync.Rejected(f"bad {i}", "invalid_json")
        sigsync.reject(db, b"x%d" % i, error, now=clock.now(), max_dead_letters=10)
    rows = db.query("SELECT raw_body FROM rejected ORDER BY rejected_id")
    assert [bytes(r["raw_body"]) for r in rows] == [b"x%d" % i for i in range(20, 30)]
    assert db.query("SELECT value FROM counters WHERE name = 'rejected:invalid_json'")[0][
        "value"] == 30
    assert dead_letter_bytes(db) == sum(len(r["raw_body"]) for r in rows)


def dead_letter_bytes(db):
    return db.query("SELECT value FROM counters WHERE name = 'dead_letter_bytes'")[0]["value"]


def test_dead_letters_stay_within_their_byte_bound_keeping_the_newest(db, clock):
    """Over the bound, the oldest go until the bodies hold 90 % of it (not one body less):
    whatever the sizes, what is kept is the newest ones, within the bound."""
    error = sigsync.Rejected("bad", "invalid_json")
    sent = [b"%03d" % i + b"x" * (40 + (i * 37) % 160) for i in range(120)]
    for i, raw in enumerate(sent):
        sigsync.reject(db, raw, error, now=clock.now(), max_dead_letter_bytes=1000)
        kept = [bytes(r["raw_body"]) for r in
                db.query("SELECT raw_body FROM rejected ORDER BY rejected_id")]
        total = sum(map(len, kept))
        assert kept == sent[i + 1 - len(kept):i + 1]               # the newest, in order
        assert total == dead_letter_bytes(db) <= 1000
        if len(kept) <= i:                                          # some were dropped
            assert total + len(sent[i - len(kept)]) > 900           # by the oldest, no more
    assert 5 < len(kept) < 20


def test_a_dead_letter_over_the_byte_bound_alone_is_kept_alone(db, clock):
    error = sigsync.Rejected("bad", "invalid_json")
    for raw in (b"a" * 300, b"b" * 300, b"c" * 2000):
        sigsync.reject(db, raw, error, now=clock.now(), max_dead_letter_bytes=1000)
    assert [bytes(r["raw_body"]) for r in db.query("SELECT raw_body FROM rejected")] == [
        b"c" * 2000]
    assert dead_letter_bytes(db) == 2000
    sigsync.reject(db, b"d" * 10, error, now=clock.now(), max_dead_letter_bytes=1000)
    assert [bytes(r["raw_body"]) for r in db.query("SELECT raw_body FROM rejected")] == [
        b"d" * 10]


def test_the_byte_count_follows_an_operators_delete(db, clock):
    error = sigsync.Rejected("bad", "invalid_json")
    for raw in (b"a" * 30, b"b" * 50, "é".encode() * 10):       # bytes, not characters
        sigsync.reject(db, raw, error, now=clock.now())
    assert dead_letter_bytes(db) == 100
    with db.write() as conn:
        conn.execute("DELETE FROM rejected WHERE body_size = 50")
    assert dead_letter_bytes(db) == 50


def test_event_log_is_append_only_through_ingest(db, clock):
    sigsync.ingest(db, body(**ENTRY), now=clock.now())
    before = db.query("SELECT * FROM events")
    for update in ({"entry_price": 1.0}, {"event_type": "CANCELLED"}, {"mae_global_r": -2}):
        sigsync.ingest(db, body(**{**ENTRY, **update}), now=clock.now())
    assert db.query("SELECT * FROM events WHERE event_id = 1") == before


@pytest.mark.parametrize("raw", [b'{"event_type": "HEARTBEAT", "note": "\\ud800"}',
                                 b'{"event_type": "HEARTBEAT", "\\udc00": 1}'])
def test_lone_surrogate_escapes_are_refused_with_400(db, clock, raw):
    with pytest.raises(sigsync.Rejected) as e:
        sigsync.ingest(db, raw, now=clock.now())
    assert e.value.status == 400 and "Unicode" in e.value.message
