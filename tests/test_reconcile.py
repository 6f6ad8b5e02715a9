"""Reconciliation (SPEC §3.1–§3.3, §3.6): each tier and each precedence case, with a fixed clock."""

import datetime as dt
import json

import pytest

import sigsync
from conftest import START, derived_tables, rebuilt_from_scratch, signal_row, wipe_derived

BULL = "20251215_100000000_BULLISH"       # 10:00 New York = 15:00Z
BEAR = "20251215_100300000_BEARISH"       # 10:03
BULL2 = "20251215_100600000_BULLISH"      # 10:06


def send(db, clock, **fields):
    return sigsync.ingest(db, json.dumps(fields).encode(), now=clock.now())


def created(trade_id, symbol="MNQ1!", timeframe="1", **extra):
    direction = "Bullish" if trade_id.endswith("BULLISH") else "Bearish"
    stamp = f"2025-12-15T{trade_id[9:11]}:{trade_id[11:13]}:00"
    return dict(event_type="SIGNAL_CREATED", trade_id=trade_id, direction=direction,
                symbol=symbol, timeframe=timeframe, event_timestamp=stamp,
                htf_alignment={"daily": "Bullish", "h1": "Bullish"}, **extra)


def entry(trade_id, price=25680.0, stop=25640.0, **extra):
    direction = "Bullish" if trade_id.endswith("BULLISH") else "Bearish"
    return dict(event_type="ENTRY", trade_id=trade_id, direction=direction, symbol="MNQ1!",
                entry_price=price, stop_loss=stop, **extra)


def audit(db, trade_id=None):
    sql = "SELECT * FROM sync_audit_log" + (" WHERE trade_id = ?" if trade_id else "")
    return db.query(sql + " ORDER BY audit_id", (trade_id,) if trade_id else ())


def prov(row, field):
    return row["provenance"].get(field)


# --- Tier 3 and Tier 2 identities ------------------------------------------------------------

def test_tier3_fills_time_date_session_direction_from_the_trade_id(db, clock):
    send(db, clock, **entry(BULL))
    run = sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["signal_time"] == "2025-12-15T15:00:00.000Z"
    assert (row["signal_date"], row["session"]) == ("2025-12-15", "NY AM")
    assert prov(row, "signal_time") == ["trade_id", 0.9]
    assert prov(row, "direction") == ["indicator", 1.0]       # received: not overwritten
    fields = {a["field"]: a for a in audit(db, BULL)}
    assert fields["session"]["tier"] == "tier3" and fields["session"]["run_id"] == run["run_id"]
    assert json.loads(fields["session"]["new_value"]) == "NY AM"
    assert "direction" not in fields


def test_tier2_targets_extended_are_an_exact_identity(db, clock):
    send(db, clock, **entry(BEAR, price=25710.25, stop=25731.5))
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BEAR)
    assert row["targets_extended"] == {"1": 25689.0, "2": 25667.75, "3": 25646.5,
                                       "5": 25604.0, "10": 25497.75, "20": 25285.25}
    assert prov(row, "targets_extended") == ["calculated", 1.0]


def test_tier2_targets_follow_a_better_entry_and_stop(db, clock):
    """An MFE element's entry and stop give targets; the late ENTRY's own values replace them."""
    send(db, clock, event_type="MFE_UPDATE", trade_id=BULL, symbol="MNQ1!", direction="Bullish",
         entry_price=25700.0, stop_loss=25690.0, no_be_mfe=0.1, mae_global_r=-0.1)
    sigsync.sync_once(db, now=clock.advance(10))
    assert signal_row(db, BULL)["targets_extended"]["1"] == 25710.0
    send(db, clock, **entry(BULL))                  # 25680 / 25640: risk 40
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert (row["entry_price"], row["risk"]) == (25680.0, 40.0)
    assert row["targets_extended"] == {"1": 25720.0, "2": 25760.0, "3": 25800.0,
                                       "5": 25880.0, "10": 26080.0, "20": 26480.0}
    moves = [a for a in audit(db, BULL) if a["field"] == "targets_extended"]
    assert [json.loads(a["new_value"])["1"] for a in moves] == [25710.0, 25720.0]
    assert json.loads(moves[1]["old_value"])["1"] == 25710.0 and moves[1]["tier"] == "tier2"
    assert sigsync.sync_once(db, now=clock.advance(10))["changes"] == 0


def test_tier2_confirmation_time_is_bounded_by_the_entry_arrival(db, clock):
    clock.advance(180)
    send(db, clock, **entry(BULL))
    sigsync.sync_once(db, now=clock.advance(60))
    row = signal_row(db, BULL)
    assert row["confirmation_time"] == "2025-12-15T14:03:00.000Z"
    assert prov(row, "confirmation_time") == ["calculated", 0.8]


# --- precedence: estimates and received values ---------------------------------------------

def test_estimate_then_real_value_the_real_value_wins_and_is_audited(db, clock):
    send(db, clock, **entry(BULL))
    sigsync.sync_once(db, now=clock.now())
    assert prov(signal_row(db, BULL), "session") == ["trade_id", 0.9]
    send(db, clock, **created(BULL))                  # the SIGNAL_CREATED arrives late
    row = signal_row(db, BULL)
    assert row["signal_time"] == "2025-12-15T15:00:00.000Z"
    assert prov(row, "signal_time") == ["signal_created", 1.0]
    assert prov(row, "session") == ["signal_created", 1.0]
    # same values, better source: nothing to audit; a different received value is audited
    assert [a for a in audit(db, BULL) if a["tier"] == "ingest"] == []
    assert prov(row, "confirmation_time") == ["calculated", 0.8]
    send(db, clock, event_type="MFE_UPDATE", trade_id=BULL,
         confirmation_time="2025-12-15T09:59:00")      # a v3 batch element carries it
    row = signal_row(db, BULL)
    assert row["confirmation_time"] == "2025-12-15T14:59:00.000Z"
    assert prov(row, "confirmation_time") == ["indicator", 1.0]
    [superseded] = [a for a in audit(db, BULL) if a["tier"] == "ingest"]
    assert superseded["field"] == "confirmation_time" and superseded["run_id"] is None
    assert json.loads(superseded["old_value"]) == "2025-12-15T14:00:00.000Z"
    assert "supersedes the calculated estimate" in superseded["reason"]


def test_real_value_then_estimate_the_estimate_is_refused(db, clock):
    send(db, clock, **created(BULL))
    send(db, clock, **entry(BULL, confirmation_time="2025-12-15T10:02:00"))
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["confirmation_time"] == "2025-12-15T15:02:00.000Z"
    assert prov(row, "confirmation_time") == ["indicator", 1.0]
    assert prov(row, "session") == ["signal_created", 1.0]
    assert {a["field"] for a in audit(db, BULL)} == {"targets_extended"}


def test_received_mfe_supersedes_a_price_estimate(db, clock):
    send(db, clock, **entry(BULL))                   # entry 25680, stop 25640: risk 40
    send(db, clock, event_type="MFE_UPDATE", trade_id=BEAR, symbol="MNQ1!",
         current_price=25700.0, no_be_mfe=0.1)       # another trade, same symbol, fresh
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["no_be_mfe"] == 0.5 and prov(row, "no_be_mfe") == ["calculated", 0.8]
    send(db, clock, event_type="MFE_UPDATE", trade_id=BULL, no_be_mfe=0.3, mae_global_r=-0.1)
    row = signal_row(db, BULL)
    assert row["no_be_mfe"] == 0.3 and prov(row, "no_be_mfe") == ["indicator", 1.0]
    ingest_rows = [a for a in audit(db, BULL) if a["tier"] == "ingest"]
    assert [(a["field"], a["old_value"], a["new_value"]) for a in ingest_rows] == [
        ("no_be_mfe", "0.5", "0.3"), ("mae", "0.0", "-0.1")]


# --- cancellation by alternation -----------------------------------------------------------

def test_pending_then_opposite_signal_is_cancelled_at_that_signals_time(db, clock):
    send(db, clock, **created(BULL))
    clock.advance(3600)                               # the pass runs much later
    send(db, clock, **created(BEAR))
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["status"] == "CANCELLED"
    assert row["cancelled_at"] == "2025-12-15T15:03:00.000Z"   # not the time of the pass
    assert row["cancelled_by"] == BEAR and row["bars_pending"] == 3
    assert prov(row, "cancelled_at") == ["inferred", 0.95]
    assert signal_row(db, BEAR)["status"] == "PENDING"


def test_alternation_compares_markets_not_symbols_as_sent(db, clock):
    """'CME_MINI:MNQ1!' and 'MNQ1!' are one market (symbol_key): an opposite signal sent
    with the exchange prefix cancels a pending one sent without, and the other way round;
    another market cancels nothing."""
    send(db, clock, **created(BULL, symbol="MNQ1!"))
    send(db, clock, **created(BEAR, symbol="CME_MINI:MNQ1!"))
    send(db, clock, **created(BULL2, symbol="MNQ1!"))
    send(db, clock, **created("20251215_100100000_BEARISH", symbol="CME_MINI:MES1!"))
    clock.advance(600)
    sigsync.sync_once(db, now=clock.now())
    assert [signal_row(db, t)["cancelled_by"] for t in (BULL, BEAR, BULL2)] == [BEAR, BULL2, None]
    assert signal_row(db, "20251215_100100000_BEARISH")["status"] == "PENDING"


@pytest.mark.parametrize("timeframe, bars", [("1", 3), ("3", 1), ("5", 0), ("30S", 6),
                                             ("1D", 0), ("W", 0), ("M", 0), ("weird", None)])
def test_bars_pending_counts_bars_of_the_charts_timeframe(db, clock, timeframe, bars):
    send(db, clock, **created(BULL, timeframe=timeframe))
    send(db, clock, **created(BEAR, timeframe=timeframe))          # 3 minutes later
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["status"] == "CANCELLED" and row["bars_pending"] == bars


def test_bars_pending_counts_calendar_months_and_days():
    at = dt.datetime(2025, 1, 31, 15, tzinfo=dt.timezone.utc)
    assert sigsync.bars_between(at, dt.datetime(2025, 3, 3, 15, tzinfo=dt.timezone.utc),
                                sigsync.timeframe_step("M")) == 1       # Jan 31 + 1 month
    assert sigsync.bars_between(at, dt.datetime(2025, 3, 3, 14, tzinfo=dt.timezone.utc),
                                sigsync.timeframe_step("M")) == 0
    assert sigsync.bars_between(at, at + dt.timedelta(days=9), sigsync.timeframe_step("2D")) == 4
    assert sigsync.timeframe_step("0") is None and sigsync.timeframe_step("") is None


def test_explicit_cancelled_is_certain(db, clock):
    send(db, clock, **created(BULL))
    send(db, clock, event_type="CANCELLED", trade_id=BULL, cancelled_by=BEAR,
         cancelled_time="2025-12-15T10:03:00", bars_pending=3, cancel_reason="opposite")
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["status"] == "CANCELLED" and prov(row, "cancelled_at") == ["indicator", 1.0]
    assert row["cancelled_at"] == "2025-12-15T15:03:00.000Z" and row["bars_pending"] == 3


def test_inferred_cancellation_then_late_entry_is_retracted_and_audited(db, clock):
    send(db, clock, **created(BULL))
    send(db, clock, **created(BEAR))
    sigsync.sync_once(db, now=clock.now())
    assert signal_row(db, BULL)["status"] == "CANCELLED"
    send(db, clock, **entry(BULL))                   # it did confirm: the ENTRY was late
    row = signal_row(db, BULL)
    assert row["status"] == "ACTIVE"
    assert (row["cancelled_at"], row["cancelled_by"], row["bars_pending"]) == (None, None, None)
    retracted = [a for a in audit(db, BULL) if a["new_value"] is None]
    assert {a["field"] for a in retracted} == {"cancelled_at", "cancelled_by", "bars_pending",
                                               "cancel_reason"}
    assert all("inferred cancellation was wrong" in a["reason"] for a in retracted)
    sigsync.sync_once(db, now=clock.now())           # and the next pass does not re-infer it
    assert signal_row(db, BULL)["status"] == "ACTIVE"


def test_same_direction_neighbours_infer_nothing(db, clock):
    send(db, clock, **created(BULL))
    send(db, clock, **created(BULL2))
    sigsync.sync_once(db, now=clock.now())
    assert signal_row(db, BULL)["status"] == "PENDING"
    assert signal_row(db, BULL)["cancelled_at"] is None


def test_two_symbols_interleaved_infer_nothing_across_symbols(db, clock):
    send(db, clock, **created(BULL, symbol="MNQ1!"))
    send(db, clock, **created(BEAR, symbol="MES1!"))
    sigsync.sync_once(db, now=clock.now())
    assert signal_row(db, BULL)["status"] == "PENDING"
    send(db, clock, **created("20251215_100900000_BEARISH", symbol="MNQ1!"))
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["status"] == "CANCELLED" and row["cancelled_by"] == "20251215_100900000_BEARISH"


# --- lost ENTRY, prices and missed exits ---------------------------------------------------

def test_lost_entry_is_recovered_from_batch_elements(db, clock):
    send(db, clock, event_type="MFE_UPDATE_BATCH", timestamp="2025-12-15T10:05:00",
         signals=[{"trade_id": BULL, "direction": "Bullish", "entry_price": 25683.5,
                   "stop_loss": 25645, "no_be_mfe": 0.4, "be_mfe": 0.4, "mae_global_r": -0.1,
                   "current_price": 25699.0}])
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["has_entry"] == 0 and row["status"] == "ACTIVE"
    assert (row["entry_price"], row["stop_loss"]) == (25683.5, 25645.0)
    assert prov(row, "entry_price") == ["indicator", 1.0]
    assert row["targets_extended"]["1"] == 25722.0


def test_stale_price_of_another_symbol_is_ignored(db, clock):
    send(db, clock, event_type="MFE_UPDATE", trade_id=BEAR, symbol="MES1!",
         current_price=25000.0)                      # other symbol, far past the stop
    clock.advance(60)
    send(db, clock, **entry(BULL))
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25600.0)      # same symbol, past the stop...
    clock.advance(601)                                # ...but stale when the pass runs
    sigsync.sync_once(db, now=clock.now())
    row = signal_row(db, BULL)
    assert row["status"] == "ACTIVE" and row["exit_price"] is None
    assert row["no_be_mfe"] is None and row["mae"] is None


@pytest.mark.parametrize("age, inferred", [(599, True), (600, True), (601, False)])
def test_price_freshness_boundary(db, clock, age, inferred):
    send(db, clock, **entry(BULL))
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25630.0)
    sigsync.sync_once(db, now=clock.advance(age))
    assert (signal_row(db, BULL)["status"] == "EXITED") is inferred


def test_price_past_the_stop_infers_a_missed_exit_with_evidence(db, clock):
    send(db, clock, **entry(BULL))                   # stop 25640
    clock.advance(120)
    result = send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
                  symbol="CME_MINI:MNQ1!", current_price=25630.0)
    sigsync.sync_once(db, now=clock.advance(30))
    row = signal_row(db, BULL)
    assert row["status"] == "EXITED"
    assert (row["exit_price"], row["exit_sl_at"]) == (25640.0, "2025-12-15T14:02:00.000Z")
    assert prov(row, "exit_price") == ["inferred", 0.7]
    assert row["mae"] == -1.25 and prov(row, "mae") == ["calculated", 0.8]
    exit_audit = [a for a in audit(db, BULL) if a["field"] == "exit_price"][0]
    evidence = json.loads(exit_audit["evidence"])
    assert evidence["event_id"] == result.events[0]["event_id"]
    assert evidence["price"] == 25630.0 and evidence["symbol"] == "MNQ1!"
    send(db, clock, event_type="EXIT_SL", trade_id=BULL, exit_price=25639.5)
    row = signal_row(db, BULL)                        # the real exit supersedes the inference
    assert row["exit_price"] == 25639.5 and prov(row, "exit_price") == ["indicator", 1.0]


def status_sources(db, clock):
    """{trade_id: (status, status_source)} as the list and the detail answer."""
    listed = sigsync.list_signals(db, clock.now(), sigsync.SignalFilter())["signals"]
    out = {r["trade_id"]: (r["status"], r["status_source"]) for r in listed}
    for trade_id, (status, source) in out.items():
        detail = sigsync.signal_detail(db, clock.now(), trade_id)
        assert (detail["status"], detail["status_source"]) == (status, source)
    return out


def test_an_inferred_status_says_so_until_the_indicator_says_it(db, clock):
    """An exit inferred from a price and a cancellation inferred by alternation are listed as
    'inferred', never as news from the indicator; the received EXIT or CANCELLED makes them
    'received'."""
    send(db, clock, **entry(BULL))                   # stop 25640
    send(db, clock, **created(BEAR))
    send(db, clock, **created(BULL2))                # cancels BEAR by alternation
    clock.advance(120)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25630.0)      # past BULL's stop
    sigsync.sync_once(db, now=clock.advance(30))
    sources = status_sources(db, clock)
    assert sources[BULL] == ("EXITED", "inferred") and sources[BEAR] == ("CANCELLED", "inferred")
    assert sources[BULL2] == ("PENDING", "received")
    send(db, clock, event_type="EXIT_SL", trade_id=BULL, exit_price=25639.5)
    send(db, clock, event_type="CANCELLED", trade_id=BEAR, direction="Bearish", symbol="MNQ1!",
         cancelled_time="2025-12-15T10:06:00", cancel_reason="opposite")
    sources = status_sources(db, clock)
    assert sources[BULL] == ("EXITED", "received") and sources[BEAR] == ("CANCELLED", "received")


def bar(at, close, symbol="MNQ1!"):
    """A 1-minute BAR opening at `at` (UTC), as a plain TradingView alert sends it."""
    return dict(event_type="BAR", symbol=symbol, timeframe="1", time=sigsync.iso(at),
                open=close, high=close, low=close, close=close)


def test_a_bar_alone_past_the_stop_brings_its_open_trades_into_the_next_pass(db, clock):
    # The regular (incremental) pass: the BAR has no trade_id, so nothing but its market can
    # put the open trades of that market into the pass's work set.
    send(db, clock, **entry(BULL))                   # stop 25640
    sigsync.sync_once(db, now=clock.advance(60))     # BULL has been looked at
    send(db, clock, **bar(clock.now() - dt.timedelta(minutes=1), 25630.0,
                          symbol="CME_MINI:MNQ1!"))  # closes now; another spelling
    run = sigsync.sync_once(db, now=clock.advance(10))
    assert run["examined"] == 1
    row = signal_row(db, BULL)
    assert row["status"] == "EXITED" and prov(row, "exit_price") == ["inferred", 0.7]
    assert row["exit_sl_at"] == sigsync.iso(clock.now() - dt.timedelta(seconds=10))


def test_a_backfilled_old_bar_is_no_fresh_price(db, clock):
    send(db, clock, **entry(BULL))
    sigsync.sync_once(db, now=clock.advance(60))
    send(db, clock, **bar(clock.now() - dt.timedelta(days=300), 25630.0))   # arrives now
    assert db.query("SELECT received_at FROM symbol_prices") == [
        {"received_at": sigsync.iso(clock.now() - dt.timedelta(days=300, minutes=-1))}]
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert row["status"] == "ACTIVE" and row["exit_price"] is None and row["mae"] is None


def test_an_estimated_mfe_of_one_r_arms_the_break_even_leg_and_its_stop(db, clock):
    send(db, clock, **entry(BULL))                    # entry 25680, stop 25640: 1R = 40
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25724.0)       # +1.1R
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert (row["no_be_mfe"], row["be_state"]) == (1.1, "TRIGGERED")
    # `check` holds the row against the log, which has no excursion for this trade: the armed
    # leg follows from the estimate, so it is not a disagreement (it reported one before 0.5.7)
    report = sigsync.check(db, now=clock.now(), sample=1000)
    assert report["ok"] and report["signals_checked"] == 2, report["problems"]
    with db.write() as conn:           # but a state the estimate does not explain is reported
        conn.execute("UPDATE signals SET be_state = 'STOPPED' WHERE trade_id = ?", (BULL,))
    assert sigsync.check(db, now=clock.now(), sample=1000)["problems"] == [
        f"{BULL}.be_state: stored 'STOPPED', log says 'NONE'"]
    with db.write() as conn:
        conn.execute("UPDATE signals SET be_state = 'TRIGGERED' WHERE trade_id = ?", (BULL,))
    clock.advance(60)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25630.0)       # then past the stop: BE stop crossed first
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert (row["status"], row["be_state"], row["be_exit_price"]) == ("EXITED", "STOPPED",
                                                                     25680.0)
    assert prov(row, "be_exit_price") == ["inferred", 0.7]


def test_an_estimate_never_lowers_a_running_maximum(db, clock):
    send(db, clock, **entry(BULL))
    for price in (25720.0, 25690.0):                  # +1.0R then +0.25R
        send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
             symbol="MNQ1!", current_price=price)
        sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert row["no_be_mfe"] == 1.0 and row["mae"] == 0.0


# --- the pass itself -----------------------------------------------------------------------

def every_gap(db, clock):
    """A database with every kind of gap the tiers can see."""
    send(db, clock, **entry(BULL))                                        # no SIGNAL_CREATED
    send(db, clock, **created(BEAR))                                      # pending, cancellable
    send(db, clock, **created(BULL2))
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_111100000_BEARISH",
         entry_price=25700, stop_loss=25720, no_be_mfe=0.2, symbol="MNQ1!",
         current_price=25650.0)                                           # lost ENTRY
    send(db, clock, **entry("20251215_112000000_BULLISH", price=25660, stop=25655))
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25650.0)                           # past one stop
    send(db, clock, event_type="CANCELLED", trade_id="20251215_113000000_BULLISH")


def test_two_passes_without_new_events_change_nothing(db, clock):
    every_gap(db, clock)
    first = sigsync.sync_once(db, now=clock.now(), full=True)
    assert first["changes"] > 10
    before = db.query("SELECT * FROM signals ORDER BY trade_id")
    audit_rows = len(audit(db))
    for full in (False, True):
        again = sigsync.sync_once(db, now=clock.now(), full=full)
        assert again["outcome"] == "ok" and again["changes"] == 0
    assert db.query("SELECT * FROM signals ORDER BY trade_id") == before
    assert len(audit(db)) == audit_rows


def test_incremental_pass_looks_only_at_new_evidence(db, clock):
    every_gap(db, clock)
    sigsync.sync_once(db, now=clock.now())
    send(db, clock, **created("20251215_120000000_BULLISH", symbol="MES1!"))
    run = sigsync.sync_once(db, now=clock.now())
    assert run["examined"] == 1


def test_each_pass_is_recorded(db, clock):
    every_gap(db, clock)
    run = sigsync.sync_once(db, now=clock.now(), trigger="test")
    row = db.query("SELECT * FROM sync_runs WHERE run_id = ?", (run["run_id"],))[0]
    assert row["outcome"] == "ok" and row["trigger"] == "test"
    assert row["started_at"] == "2025-12-15T14:00:00.000Z" and row["finished_at"]
    assert json.loads(row["counts"]) == run["counts"] and run["counts"]["tier3"] > 0
    assert row["changes"] == len(audit(db)) - len([a for a in audit(db)
                                                   if a["run_id"] is None])


def test_a_failing_pass_is_recorded_and_the_next_one_runs(db, clock):
    send(db, clock, **entry(BULL))
    with db.write() as conn:                          # a corrupt derived row: the pass raises
        conn.execute("UPDATE signals SET provenance = '{broken' WHERE trade_id = ?", (BULL,))
    with pytest.raises(sigsync.SyncFailed) as failed:
        sigsync.sync_once(db, now=clock.now())
    row = db.query("SELECT outcome, error FROM sync_runs WHERE run_id = ?",
                   (failed.value.result["run_id"],))[0]
    assert row["outcome"] == "failed" and "JSONDecodeError" in row["error"]
    sigsync.rebuild(db, now=clock.now())              # the operator's repair
    again = sigsync.sync_once(db, now=clock.now())
    assert again["outcome"] == "ok"


def test_a_pass_stopped_between_chunks_keeps_its_chunk_and_the_next_pass_redoes_it(
        db, clock, monkeypatch):
    monkeypatch.setattr(sigsync, "SYNC_CHUNK", 2)
    trades = [f"20251215_10{m:02d}00000_BULLISH" for m in range(0, 50, 10)]
    for trade_id in trades:
        send(db, clock, **entry(trade_id))

    class StopAfterFirstChunk:                        # what serve's stop event says, per chunk
        checks = 0

        def is_set(self):
            self.checks += 1
            return self.checks > 1

    with pytest.raises(sigsync.SyncFailed) as failed:
        sigsync.sync_once(db, now=clock.now(), stop=StopAfterFirstChunk())
    row = db.query("SELECT outcome, error FROM sync_runs WHERE run_id = ?",
                   (failed.value.result["run_id"],))[0]
    assert row == {"outcome": "failed", "error": "PassInterrupted: the service is stopping"}
    filled = {a["trade_id"] for a in audit(db)}
    assert len(filled) == 2 and filled < set(trades)  # the first chunk is committed
    again = sigsync.sync_once(db, now=clock.now())
    assert again["outcome"] == "ok" and again["examined"] == len(trades)
    assert {a["trade_id"] for a in audit(db)} == set(trades)


def test_an_overlapping_pass_is_skipped_not_stacked(db, clock):
    with db.write() as conn:                          # a pass running in another process
        conn.execute("INSERT INTO sync_runs(started_at, outcome, trigger, from_event_id, "
                     "to_event_id) VALUES (?, 'running', 'schedule', 0, 0)",
                     (sigsync.iso(clock.now()),))
    run = sigsync.sync_once(db, now=clock.advance(60))
    assert run["outcome"] == "skipped"
    # a 'running' row older than 10 minutes is a crashed pass, not a running one
    assert sigsync.sync_once(db, now=clock.advance(600))["outcome"] == "ok"


# --- the loop in the real process ----------------------------------------------------------

def wait_for(predicate, seconds=20):
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def runs(db_path):
    from conftest import open_database
    with open_database(db_path) as db:
        return db.query("SELECT run_id, outcome, error FROM sync_runs ORDER BY run_id")


def test_a_failing_pass_in_the_server_is_recorded_and_the_loop_and_webhooks_go_on(server,
                                                                                   tmp_path):
    import apsw
    db_path = tmp_path / "loop.db"
    s = server("--sync-seconds", "1", db_path=db_path)
    assert s.post(entry(BULL))[0] == 200
    wait_for(lambda: any(r["outcome"] == "ok" for r in runs(db_path)))
    # a fault only the pass meets: a price sample that is not a number
    fault = apsw.Connection(str(db_path))
    fault.setbusytimeout(5000)
    fault.execute("INSERT OR REPLACE INTO symbol_prices VALUES ('MNQ1!', 'not a number', "
                  "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 hour'), 999, NULL)")
    assert s.post(entry(BULL, price=25681.0))[0] == 200      # touches the trade
    failed = wait_for(lambda: [r for r in runs(db_path) if r["outcome"] == "failed"])
    assert "TypeError" in failed[0]["error"]
    for i in range(5):                                        # webhooks still answered
        status, answer = s.post(created(f"20251215_1{i}0000000_BEARISH"))
        assert status == 200 and answer["ok"] is True
    status, health = s.get("/healthz")
    assert status == 200 and health["loop"]["last_failure"]["run_id"] == failed[0]["run_id"]
    fault.execute("DELETE FROM symbol_prices WHERE event_id = 999")
    fault.close()
    wait_for(lambda: [r for r in runs(db_path)
                      if r["run_id"] > failed[-1]["run_id"] and r["outcome"] == "ok"])
    assert any("what=sync outcome=failed" in line for line in s.log_lines)


def test_healthz_reports_a_late_loop(db, clock, config):
    from conftest import WsgiClient
    app = WsgiClient(sigsync.make_app(db, clock, config))
    response = app.get("/healthz")
    assert response.status == 200 and response.json()["loop"]["late"] is False
    clock.advance(2 * config.sync_seconds + 60)               # exactly at the deadline: not late
    assert app.get("/healthz").status == 200
    clock.advance(0.001)
    response = app.get("/healthz")
    assert response.status == 503 and response.json()["loop"]["late"] is True
    sigsync.sync_once(db, now=clock.now())
    assert app.get("/healthz").status == 200


def test_an_inferred_stop_exit_also_stops_an_armed_break_even_leg(db, clock):
    send(db, clock, **entry(BULL))                    # entry 25680, stop 25640
    send(db, clock, event_type="BE_TRIGGERED", trade_id=BULL, no_be_mfe=1.0)
    clock.advance(60)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25635.0)
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert (row["status"], row["be_state"]) == ("EXITED", "STOPPED")
    assert row["be_exit_price"] == 25680.0 and prov(row, "be_exit_price") == ["inferred", 0.7]


def test_a_price_older_than_the_trades_own_update_infers_nothing(db, clock):
    send(db, clock, **entry(BULL))
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25600.0)
    clock.advance(30)
    send(db, clock, event_type="MFE_UPDATE", trade_id=BULL, no_be_mfe=0.2, mae_global_r=-0.1)
    sigsync.sync_once(db, now=clock.advance(10))
    assert signal_row(db, BULL)["status"] == "ACTIVE"


def test_a_repeat_of_the_trades_own_update_withdraws_an_inferred_exit_as_rebuild_does(
        db, clock):
    """A repeat is the trade's own later update: like a new one, it shows the trade still open
    and withdraws an exit inferred from an older price. Live and rebuild agree."""
    own = dict(event_type="MFE_UPDATE", trade_id=BULL, symbol="MNQ1!", no_be_mfe=0.2,
               mae_global_r=-0.1)
    send(db, clock, **entry(BULL))
    send(db, clock, **own)
    clock.advance(30)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25630.0)      # past the stop, newer than `own`
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert row["status"] == "EXITED" and prov(row, "exit_price") == ["inferred", 0.7]
    clock.advance(20)
    assert send(db, clock, **own).events[0]["duplicate"]     # the same update, again
    row = signal_row(db, BULL)
    assert row["status"] == "ACTIVE" and row["exit_price"] is None
    assert row["last_update_at"] == sigsync.iso(clock.now())
    assert any("inferred exit was wrong" in a["reason"] for a in audit(db, BULL))
    sigsync.sync_once(db, now=clock.advance(10))     # the older price infers nothing now
    live = derived_tables(db)
    assert signal_row(db, BULL)["status"] == "ACTIVE"
    assert rebuilt_from_scratch(db, clock.now()) == live


def test_a_withdrawn_inferred_exit_takes_its_mae_estimate_with_it(db, clock):
    """The price that put the trade past its stop also gave its MAE estimate (-1.25R). The
    trade's own later update, with no MAE of its own, shows it open: the exit was wrong, and so
    is an MAE past the stop. Both are withdrawn, audited; the stale price re-makes neither."""
    send(db, clock, **entry(BULL))                    # entry 25680, stop 25640
    clock.advance(30)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25630.0)      # -1.25R for BULL
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert row["status"] == "EXITED" and (row["mae"], prov(row, "mae")) == (
        -1.25, ["calculated", 0.8])
    clock.advance(20)
    send(db, clock, event_type="MFE_UPDATE", trade_id=BULL, symbol="MNQ1!", no_be_mfe=0.2)
    row = signal_row(db, BULL)
    assert row["status"] == "ACTIVE" and row["mae"] is None and prov(row, "mae") is None
    withdrawn = {a["field"]: json.loads(a["old_value"]) for a in audit(db, BULL)
                 if a["tier"] == "ingest" and "inferred exit was wrong" in a["reason"]}
    assert withdrawn["mae"] == -1.25 and withdrawn["exit_price"] == 25640.0
    sigsync.sync_once(db, now=clock.advance(10))
    assert signal_row(db, BULL)["mae"] is None
    live = derived_tables(db)
    assert rebuilt_from_scratch(db, clock.now()) == live


def test_an_inferred_cancellation_follows_an_earlier_opposite_signal_that_arrives_late(
        db, clock):
    """SPEC 3.3: cancelled by the *next* opposite signal. Z 09:50 Bull, P 09:55 Bear, A 10:00
    and A2 10:02 Bull, C 10:10 Bear: a pass cancels Z by P, A and A2 by C. B 10:05 Bear arrives
    late: A and A2 now point at B (its time, 5 and 3 bars), audited; Z keeps P, and the pass
    does not even look at it. Rebuild agrees."""
    z, p, a, a2, c, b = ("20251215_095000000_BULLISH", "20251215_095500000_BEARISH",
                         "20251215_100000000_BULLISH", "20251215_100200000_BULLISH",
                         "20251215_101000000_BEARISH", "20251215_100500000_BEARISH")
    for trade_id in (z, p, a, a2, c):
        send(db, clock, **created(trade_id))
    sigsync.sync_once(db, now=clock.advance(10))
    assert signal_row(db, a)["cancelled_by"] == c and signal_row(db, z)["cancelled_by"] == p
    clock.advance(30)
    send(db, clock, **created(b))
    run = sigsync.sync_once(db, now=clock.advance(10))
    for trade_id, bars in ((a, 5), (a2, 3)):
        row = signal_row(db, trade_id)
        assert row["status"] == "CANCELLED"
        assert (row["cancelled_by"], row["cancelled_at"], row["bars_pending"]) == (
            b, "2025-12-15T15:05:00.000Z", bars)
        assert prov(row, "cancelled_by") == ["inferred", 0.95]
        moved = [x for x in audit(db, trade_id) if x["field"] == "cancelled_by"]
        assert [(x["old_value"], x["new_value"]) for x in moved] == [
            (None, json.dumps(c)), (json.dumps(c), json.dumps(b))]
        assert moved[-1]["run_id"] == run["run_id"]
    assert signal_row(db, z)["cancelled_by"] == p
    assert run["examined"] == 3                       # B, A and A2: not Z, not C
    live = derived_tables(db)
    assert rebuilt_from_scratch(db, clock.now()) == live


def test_the_work_set_of_a_backlog_costs_one_query_per_symbol_and_direction(db, clock):
    """A backlog of alternating pending signals (an import, a restart after downtime) must not
    cost one scan of the pending signals per touched signal: that made a 10k backlog take a
    minute. The work set is the same; the statements that find it grow with the touched
    signals (one lookup each), not with touched x pending."""
    for i in range(60):
        trade_id = f"20251215_{10 + i // 60:02d}{i % 60:02d}00000_" + \
            ("BULLISH" if i % 2 else "BEARISH")
        send(db, clock, **created(trade_id))
    reader = db.reader()
    statements = []
    reader.exec_trace = lambda cursor, sql, bindings: statements.append(sql) or True
    try:
        work = sigsync._work_set(reader, 0, 10 ** 9, False)
    finally:
        reader.exec_trace = None
    assert len(work) == 60
    scans = [s for s in statements if "status = 'PENDING'" in s]
    assert len(scans) == 2                     # MNQ1! x (Bullish, Bearish)
    late = [s for s in statements if "status = 'CANCELLED'" in s]
    assert len(late) == 60                     # one short range each (tested below)
    assert len(statements) <= 60 * 2 + 2 + 1 + 1   # lookups, scans, open trades, events


def test_the_late_opposite_lookup_seeks_a_short_range_of_the_market_index(db):
    """Run for every touched signal, so it must never scan: the last signal of the touched
    one's direction is one seek of signals_market_direction, and the range after it reads only
    the cancelled signals of the other direction (signals_cancelled, which holds their
    cancellation time, so that the rows it rules out are never read): in a market where one
    direction is rare, the range by market and time alone spanned most of its history."""
    plan = [r[3] for r in db.reader().execute(
        "EXPLAIN QUERY PLAN " + sigsync._LATE_OPPOSITE_SQL,
        ("MNQ1!", "2025-12-15T15:00:00.000Z", "Bullish", "Bearish"))]
    seeks = [step for step in plan if step.startswith("SEARCH signals")]
    assert seeks == ["SEARCH signals USING INDEX signals_cancelled (<expr>=? AND "
                     "<expr>=? AND signal_time>? AND signal_time<?)",
                     "SEARCH signals USING COVERING INDEX signals_market_direction (<expr>=? "
                     "AND <expr>=? AND signal_time<?)"], plan
    assert not [step for step in plan if step.startswith("SCAN")], plan


def test_the_next_opposite_signal_is_one_seek_of_the_market_and_direction_index(db):
    """Alternation (SPEC 3.3) asks it of every pending signal in a pass: by market and time
    alone it stepped over every later signal of the same direction (a full pass over a
    market where one direction is rare took 18 s at 13,500 signals: tests/bench_sync.py)."""
    plan = [r[3] for r in db.reader().execute(
        "EXPLAIN QUERY PLAN " + sigsync._NEXT_OPPOSITE_SQL,
        ("MNQ1!", "Bearish", "2025-12-15T15:00:00.000Z"))]
    assert plan == ["SEARCH signals USING COVERING INDEX signals_market_direction (<expr>=? "
                    "AND <expr>=? AND signal_time>?)"], plan


def test_alternation_in_a_market_where_one_direction_is_rare(db, clock):
    """A long run of one direction, then the other: every pending signal of the run is
    cancelled by that one signal, none by a later one of its own direction; the signal of the
    rare direction before the run keeps its own next opposite (the first of the run). A late
    signal of the rare direction inside the run takes over the signals of the run before it,
    and only those."""
    first = "20251215_093000000_BEARISH"
    run = [f"20251215_{10 + i // 60:02d}{i % 60:02d}00000_BULLISH" for i in range(0, 120, 3)]
    last = "20251215_120000000_BEARISH"
    for trade_id in [first] + run + [last]:
        send(db, clock, **created(trade_id))
    sigsync.sync_once(db, now=clock.advance(10))
    assert signal_row(db, first)["cancelled_by"] == run[0]
    assert {signal_row(db, t)["cancelled_by"] for t in run} == {last}
    assert signal_row(db, last)["status"] == "PENDING"
    late = "20251215_102800000_BEARISH"                # between run[9] (10:27) and run[10]
    send(db, clock, **created(late))
    result = sigsync.sync_once(db, now=clock.advance(10))
    assert [signal_row(db, t)["cancelled_by"] for t in run] == [late] * 10 + [last] * 30
    assert result["examined"] == 11                    # the late signal and the ten it took
    live = derived_tables(db)
    assert rebuilt_from_scratch(db, clock.now()) == live


@pytest.mark.parametrize("exit_type", ["EXIT_SL", "EXIT_TP"])
def test_the_indicators_own_exit_replaces_an_inferred_one_whole_as_rebuild_does(
        db, clock, exit_type):
    """An inferred exit, then the received one: none of the inference stays (its time, its
    reason, the BE leg's inferred exit), the change is audited, and rebuild agrees, down to
    the MAE estimated from the price while the trade looked open (rebuild replays that pass)."""
    send(db, clock, **entry(BULL))                    # entry 25680, stop 25640
    send(db, clock, event_type="BE_TRIGGERED", trade_id=BULL, no_be_mfe=1.0)
    send(db, clock, event_type="MFE_UPDATE", trade_id=BULL, no_be_mfe=1.0)
    clock.advance(60)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25630.0)      # past the stop
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert row["exit_reason"] == "inferred_stop_crossed" and row["exit_be_at"] is not None
    assert (row["mae"], prov(row, "mae")) == (-1.25, ["calculated", 0.8])
    clock.advance(50)
    send(db, clock, event_type=exit_type, trade_id=BULL, exit_price=25639.5)
    row = signal_row(db, BULL)
    received = sigsync.iso(clock.now())
    exit_at = "exit_sl_at" if exit_type == "EXIT_SL" else "exit_tp_at"
    assert row[exit_at] == received and prov(row, exit_at) == ["indicator", 1.0]
    assert row["exit_price"] == 25639.5 and prov(row, "exit_price") == ["indicator", 1.0]
    assert row["exit_reason"] is None and prov(row, "exit_reason") is None
    assert row["exit_be_at"] is None and row["be_exit_price"] is None
    if exit_type == "EXIT_TP":
        assert row["exit_sl_at"] is None                 # no inferred stop beside a target
    assert row["status"] == "EXITED" and "inferred_exit" not in row["fold_state"]
    withdrawn = {a["field"] for a in audit(db, BULL)
                 if a["tier"] == "ingest" and "supersedes the inferred exit" in a["reason"]}
    assert {"exit_reason", "exit_be_at", "be_exit_price"} <= withdrawn
    sigsync.sync_once(db, now=clock.advance(10))
    live = derived_tables(db)
    assert rebuilt_from_scratch(db, clock.now()) == live


def test_a_break_even_exit_after_an_inferred_exit_keeps_it_and_rebuild_agrees(db, clock):
    """The BE leg's own exit, received after a price past the stop, agrees with the inferred
    exit (the price crossed the entry on its way down): the trade stays EXITED, as inferred.
    Rebuild replays the pass where it ran; it used to run one pass at the end, which judged
    the same price older than the EXIT_BE and left the trade ACTIVE."""
    send(db, clock, **entry(BULL))                    # entry 25680, stop 25640
    send(db, clock, event_type="BE_TRIGGERED", trade_id=BULL, no_be_mfe=1.0)
    clock.advance(60)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25630.0)      # past the stop
    sigsync.sync_once(db, now=clock.advance(10))
    clock.advance(30)
    send(db, clock, event_type="EXIT_BE", trade_id=BULL, exit_price=25680.0)
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert row["status"] == "EXITED" and row["exit_reason"] == "inferred_stop_crossed"
    assert prov(row, "exit_be_at") == ["indicator", 1.0]
    live = derived_tables(db)
    runs, audited = db.query("SELECT * FROM sync_runs"), audit(db)
    assert rebuilt_from_scratch(db, clock.now()) == live
    assert db.query("SELECT * FROM sync_runs") == runs and audit(db) == audited   # no history


def test_rebuild_keeps_an_estimate_whose_price_has_aged_out_since(db, clock):
    """A pass estimated the MFE from a then-fresh price; hours later that price is stale. The
    estimate was sound when made and stays live; rebuild re-makes it by running that pass at
    its own moment (it used to judge freshness at the last pass only, and lost it)."""
    send(db, clock, **entry(BULL))                    # entry 25680, risk 40
    clock.advance(60)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25700.0)      # +0.5R for BULL
    sigsync.sync_once(db, now=clock.advance(10))
    assert prov(signal_row(db, BULL), "no_be_mfe") == ["calculated", 0.8]
    clock.advance(3 * 3600)                           # the price is long stale now
    send(db, clock, **entry(BULL2))
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert (row["no_be_mfe"], prov(row, "no_be_mfe")) == (0.5, ["calculated", 0.8])
    live = derived_tables(db)
    result = sigsync.rebuild(db, now=clock.advance(3600))
    assert derived_tables(db) == live
    assert result["passes"] == 2 and result["changes"] > 0
    wipe_derived(db)
    sigsync.refold(db, now=clock.now())               # the fold alone: no estimate
    assert signal_row(db, BULL)["no_be_mfe"] is None


def test_a_received_break_even_exit_replaces_an_inferred_one(db, clock):
    send(db, clock, **entry(BULL))
    send(db, clock, event_type="BE_TRIGGERED", trade_id=BULL, no_be_mfe=1.0)
    clock.advance(60)
    send(db, clock, event_type="MFE_UPDATE", trade_id="20251215_090000000_BEARISH",
         symbol="MNQ1!", current_price=25630.0)
    sigsync.sync_once(db, now=clock.advance(10))
    inferred = signal_row(db, BULL)["exit_be_at"]
    clock.advance(30)
    send(db, clock, event_type="EXIT_BE", trade_id=BULL, exit_price=25680.0)
    row = signal_row(db, BULL)
    assert row["exit_be_at"] == sigsync.iso(clock.now()) > inferred
    assert prov(row, "exit_be_at") == ["indicator", 1.0]
    assert any(a["field"] == "exit_be_at" and a["tier"] == "ingest" for a in audit(db, BULL))
    sigsync.sync_once(db, now=clock.advance(10))     # no estimate replaces it again
    assert signal_row(db, BULL)["exit_be_at"] == row["exit_be_at"]


def test_an_upper_bound_confirmation_time_raises_no_exit_before_entry(db, clock):
    """EXIT_SL, then its ENTRY: the pass bounds the confirmation by the ENTRY's arrival, after
    the exit's. That proves nothing; later events must not make it a conflict."""
    send(db, clock, event_type="EXIT_SL", trade_id=BULL, exit_price=25639.5)
    clock.advance(30)
    send(db, clock, **entry(BULL))
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert prov(row, "confirmation_time") == ["calculated", 0.8]
    assert row["confirmation_time"] > row["exit_sl_at"]
    send(db, clock, event_type="MFE_UPDATE", trade_id=BULL, no_be_mfe=0.3)
    assert "exit_before_entry" not in signal_row(db, BULL)["conflicts"]
    live = derived_tables(db)
    assert rebuilt_from_scratch(db, clock.now()) == live
    # a received confirmation time after the exit is a contradiction, whatever the order
    send(db, clock, event_type="MFE_UPDATE", trade_id=BULL, no_be_mfe=0.4,
         confirmation_time="2025-12-15T09:05:00")
    assert "exit_before_entry" in signal_row(db, BULL)["conflicts"]


def test_absurd_prices_give_no_infinite_estimate(db, clock):
    send(db, clock, **entry(BULL, price=1e308, stop=1e307))
    sigsync.sync_once(db, now=clock.advance(10))
    row = signal_row(db, BULL)
    assert row["targets_extended"] is None and row["status"] == "ACTIVE"
    raw = db.query("SELECT targets_extended, provenance FROM signals")[0]
    assert "Infinity" not in json.dumps(raw)
