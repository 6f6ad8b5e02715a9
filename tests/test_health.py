"""Health in SQL (SPEC §3.4–§3.5): each gap opens, closes and has the right severity at the
boundary instants; the seeds' scenario; the shell, the API and the CLI agree."""

import datetime as dt
import itertools
import json
import subprocess

import hypothesis
import pytest
from hypothesis import strategies as st

import sigsync
from conftest import START, derived_tables, rebuilt_from_scratch

T = "20251215_100000000_BULLISH"
OTHER = "20251215_090000000_BEARISH"


def send(db, clock, **fields):
    return sigsync.ingest(db, json.dumps(fields).encode(), now=clock.now())


def gaps(db, clock, trade_id=T):
    return {r["gap"]: r["severity"] for r in sigsync.open_gaps(db, clock.now(),
                                                               trade_id=trade_id)}


def entry(trade_id=T, **extra):
    fields = dict(event_type="ENTRY", trade_id=trade_id, symbol="MNQ1!", timeframe="1",
                  direction="Bullish" if trade_id.endswith("BULLISH") else "Bearish",
                  entry_price=25680.0, stop_loss=25640.0, mae_global_r=0)
    fields.update(extra)
    return {k: v for k, v in fields.items() if v is not None}


def created(trade_id=T, symbol="MNQ1!"):
    return dict(event_type="SIGNAL_CREATED", trade_id=trade_id, symbol=symbol, timeframe="1",
                direction="Bullish" if trade_id.endswith("BULLISH") else "Bearish",
                event_timestamp=f"2025-12-15T{trade_id[9:11]}:{trade_id[11:13]}:00",
                htf_alignment={"daily": "Bullish"})


# --- each gap: the condition that opens it and the one that closes it ----------------------

def test_no_signal_created_opens_on_entry_alone_and_closes_when_it_arrives(db, clock):
    send(db, clock, **entry())
    assert gaps(db, clock)["no_signal_created"] == "abnormal"
    send(db, clock, **created())
    assert "no_signal_created" not in gaps(db, clock)


def test_no_entry_opens_on_mfe_alone_and_closes_with_the_entry(db, clock):
    send(db, clock, event_type="MFE_UPDATE", trade_id=T, no_be_mfe=0.2, mae_global_r=-0.1)
    assert gaps(db, clock)["no_entry"] == "abnormal"
    send(db, clock, **entry())
    assert "no_entry" not in gaps(db, clock)


@pytest.mark.parametrize("field, gap", [("entry_price", "no_entry_price"),
                                        ("stop_loss", "no_stop_loss")])
def test_missing_price_opens_and_batch_elements_close_it(db, clock, field, gap):
    send(db, clock, **entry(**{field: None}))
    assert gaps(db, clock)[gap] == "abnormal"
    send(db, clock, event_type="MFE_UPDATE_BATCH", timestamp="2025-12-15T10:05:00",
         signals=[{"trade_id": T, "entry_price": 25680.0, "stop_loss": 25640.0}])
    assert gap not in gaps(db, clock)


def test_no_htf_alignment_closes_with_the_signal_created(db, clock):
    send(db, clock, **entry())
    assert gaps(db, clock)["no_htf_alignment"] == "abnormal"
    send(db, clock, **created())
    assert "no_htf_alignment" not in gaps(db, clock)


@pytest.mark.parametrize("gap", ["no_confirmation_time", "no_session", "no_signal_date",
                                 "no_targets"])
def test_gaps_a_pass_fills_close_after_the_pass(db, clock, gap):
    send(db, clock, **entry())
    assert gaps(db, clock)[gap] == "abnormal"
    sigsync.sync_once(db, now=clock.now())
    assert gap not in gaps(db, clock)


def test_missed_exit_opens_on_mae_past_the_stop_and_closes_with_the_exit(db, clock):
    send(db, clock, **entry())
    send(db, clock, event_type="MFE_UPDATE", trade_id=T, mae_global_r=-1.05)
    assert gaps(db, clock)["missed_exit"] == "abnormal"
    send(db, clock, event_type="EXIT_SL", trade_id=T, exit_price=25640.0)
    assert "missed_exit" not in gaps(db, clock)


def test_conflict_stays_open_for_a_person(db, clock):
    send(db, clock, **entry())
    send(db, clock, **entry(entry_price=25690.0))
    sigsync.sync_once(db, now=clock.now())
    row = sigsync.open_gaps(db, clock.now(), trade_id=T, gap="conflict")[0]
    assert row["severity"] == "abnormal" and "entry_price" in row["evidence"]


# --- time rules at their boundary instants ------------------------------------------------

def at(clock, seconds):
    clock.current = START + dt.timedelta(seconds=seconds)


def test_stale_mfe_boundaries_and_severity_by_symbol_activity(db, clock):
    send(db, clock, **entry())                       # last update at START
    at(clock, 599.999)
    assert "stale_mfe" not in gaps(db, clock)        # just before
    at(clock, 600)
    assert "stale_mfe" not in gaps(db, clock)        # at: "older than" is strict
    at(clock, 600.001)
    assert gaps(db, clock)["stale_mfe"] == "expected"    # just after; nothing else arrives
    send(db, clock, event_type="MFE_UPDATE", trade_id=OTHER, symbol="MNQ1!",
         current_price=25700.0)                      # the market is sending data: abnormal
    assert gaps(db, clock)["stale_mfe"] == "abnormal"
    send(db, clock, event_type="MFE_UPDATE", trade_id=T, no_be_mfe=0.2)
    assert "stale_mfe" not in gaps(db, clock)        # closes with the trade's own update


def test_stale_mfe_stays_expected_when_only_another_symbol_moves(db, clock):
    send(db, clock, **entry())
    at(clock, 700)
    send(db, clock, event_type="MFE_UPDATE", trade_id=OTHER, symbol="MES1!",
         current_price=6000.0)
    assert gaps(db, clock)["stale_mfe"] == "expected"


def test_a_repeated_update_keeps_a_flat_trade_alive_and_rebuild_agrees(db, clock):
    """A trade that stopped moving sends the same MFE update every bar (a v3 batch element has
    no time of its own). Each copy is a duplicate, not a new event, but it is the indicator
    still reporting the trade: no stale_mfe while it keeps coming."""
    send(db, clock, **entry())
    same = dict(event_type="MFE_UPDATE_BATCH", symbol="MNQ1!", timeframe="1", signals=[
        {"trade_id": T, "triangle_time": 1765810800000, "entry": 25680.0, "stop": 25640.0,
         "be_mfe": 0.5, "no_be_mfe": 0.5, "mae": -0.2, "completed": False}])
    first = send(db, clock, **same)
    for seconds in (300, 600, 900):
        at(clock, seconds)
        again = send(db, clock, **same)
        assert again.events[0]["duplicate"] and again.events[0]["event_id"] == \
            first.events[0]["event_id"]
    at(clock, 900 + 600)
    assert "stale_mfe" not in gaps(db, clock)        # 600 s after the last copy: not yet
    at(clock, 900 + 600.001)
    assert gaps(db, clock)["stale_mfe"] == "expected"    # the copies stopped, and the market too
    row = db.query("SELECT event_count, last_update_at, no_be_mfe FROM signals "
                   "WHERE trade_id = ?", (T,))[0]
    assert row == {"event_count": 2, "last_update_at": "2025-12-15T14:15:00.000Z",
                   "no_be_mfe": 0.5}
    assert db.query("SELECT last_received_at FROM symbol_activity") == [
        {"last_received_at": "2025-12-15T14:15:00.000Z"}]
    live = derived_tables(db)
    assert rebuilt_from_scratch(db, clock.now(), fold_only=True) == live


def test_a_repeat_is_market_activity_for_the_other_trades(db, clock):
    send(db, clock, **entry())
    send(db, clock, **entry(trade_id=OTHER))
    update = dict(event_type="MFE_UPDATE", trade_id=OTHER, symbol="MNQ1!", no_be_mfe=0.3)
    send(db, clock, **update)
    at(clock, 700)
    assert gaps(db, clock)["stale_mfe"] == "expected"
    assert send(db, clock, **update).events[0]["duplicate"]
    assert gaps(db, clock)["stale_mfe"] == "abnormal"    # the market is sending data
    assert "stale_mfe" not in gaps(db, clock, trade_id=OTHER)


@pytest.mark.parametrize("mine, theirs", [("CME_MINI:MNQ1!", "MNQ1!"),
                                           ("MNQ 1!", "CME_MINI:MNQ1!"),
                                           ("BINANCE:BTC:USDT", "BINANCE:BTC:USDT")])
def test_stale_mfe_sees_activity_under_any_spelling_of_the_same_market(db, clock, mine, theirs):
    # the gap's symbol key is computed in SQL (v_gap_rules), the activity's in Python
    # (symbol_key): both must name the same market, or the gap never turns abnormal
    send(db, clock, **entry(symbol=mine))
    at(clock, 700)
    send(db, clock, event_type="MFE_UPDATE", trade_id=OTHER, symbol=theirs,
         current_price=25700.0)
    assert gaps(db, clock)["stale_mfe"] == "abnormal"
    key = db.query("SELECT symbol_key FROM signal_gaps WHERE trade_id = ? AND gap = "
                   "'stale_mfe'", (T,))[0]["symbol_key"]
    assert key == sigsync.symbol_key(mine) == sigsync.symbol_key(theirs)


def test_no_mae_is_expected_for_the_first_bar_and_abnormal_after(db, clock):
    send(db, clock, **entry(mae_global_r=None))      # 1-minute chart: bar + 60 s grace
    assert gaps(db, clock)["no_mae"] == "expected"
    at(clock, 119.999)
    assert gaps(db, clock)["no_mae"] == "expected"
    at(clock, 120)
    assert gaps(db, clock)["no_mae"] == "expected"
    at(clock, 120.001)
    assert gaps(db, clock)["no_mae"] == "abnormal"
    send(db, clock, event_type="MFE_UPDATE", trade_id=T, mae_global_r=0)
    assert "no_mae" not in gaps(db, clock)           # 0 is a value


@pytest.mark.parametrize("timeframe, bar_seconds", [
    ("5", 300), ("30S", 30), ("1D", 86400), ("D", 86400), ("1d", 86400), ("W", 7 * 86400),
    ("2W", 14 * 86400), ("M", 31 * 86400), ("3M", 90 * 86400), ("240", 4 * 3600),
    ("weird", 60), ("5m", 60), ("99999D", 60), ("10000", 10000 * 60)])
def test_no_mae_waits_for_the_first_bar_of_the_charts_timeframe(db, clock, timeframe,
                                                                  bar_seconds):
    """A daily chart's entry has no MAE for a day, not a minute (0.5.3 read "1D" as one
    minute). Months are calendar months: from Dec 15 one is 31 days, three are 90. A timeframe
    that says nothing (a hand-typed "5m", a count past 10000) counts as one minute."""
    send(db, clock, **entry(mae_global_r=None, timeframe=timeframe))     # at START + grace 60
    at(clock, bar_seconds + 60)
    assert gaps(db, clock)["no_mae"] == "expected"
    at(clock, bar_seconds + 60.001)
    assert gaps(db, clock)["no_mae"] == "abnormal"


_serial = itertools.count()


@hypothesis.settings(max_examples=60, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(
    timeframe=st.one_of(st.from_regex(r"\A[0-9]{0,6}[SDWMsdwm]?\Z"),
                        st.sampled_from(["", "X", "1H", " 5", "5 ", "-1", "1.5", "٥", "５",
                                         "٥D", "30ſ", "9" * 30 + "S", "10000M", "10001D"]),
                        st.text(max_size=8)),
    moment=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31),
                        timezones=st.just(dt.timezone.utc)))
@hypothesis.example(timeframe="M", moment=dt.datetime(2025, 1, 31, 12, tzinfo=dt.timezone.utc))
@hypothesis.example(timeframe="12M", moment=dt.datetime(2024, 2, 29, tzinfo=dt.timezone.utc))
def test_python_and_sql_read_a_timeframe_alike(db, clock, timeframe, moment):
    """The no_mae rule (SQL) and a bar's close and bars_pending (Python) read the timeframe
    with one meaning: the deadline v_gap_rules writes is timeframe_step()'s bar after the
    entry, or one minute when that says nothing."""
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    trade_id = (moment.astimezone(sigsync.NEW_YORK).strftime("%Y%m%d_%H%M%S")
                + f"{next(_serial) % 1000:03d}_BULLISH")             # one trade per example
    clock.current = moment
    send(db, clock, **entry(trade_id, mae_global_r=None, timeframe=timeframe))
    due = db.query("SELECT due_base FROM signal_gaps WHERE trade_id = ? AND gap = 'no_mae'",
                   (trade_id,))[0]["due_base"]
    step = sigsync.timeframe_step(timeframe) or ("seconds", 60)
    assert due == sigsync.iso(sigsync.add_bars(moment, step)), (timeframe, step)


def test_stale_pending_boundaries(db, clock):
    send(db, clock, **created())                     # triangle at 15:00Z
    clock.current = dt.datetime(2025, 12, 15, 16, 0, tzinfo=dt.timezone.utc)
    assert "stale_pending" not in gaps(db, clock)
    clock.current += dt.timedelta(milliseconds=1)
    assert gaps(db, clock)["stale_pending"] == "expected"
    send(db, clock, **entry())
    assert "stale_pending" not in gaps(db, clock)


def conditions(db, clock):
    return {c["condition"]: c["active"] for c in sigsync.health_report(db, clock.now())[
        "conditions"]}


def test_indicator_silent_boundaries(db, clock):
    sigsync.ingest(db, b'{"event_type": "HEARTBEAT"}', now=clock.now())
    at(clock, 900)
    assert conditions(db, clock)["indicator_silent"] is False
    at(clock, 900.001)
    assert conditions(db, clock)["indicator_silent"] is True


def test_indicator_last_seen_is_the_last_webhook_not_an_import(db, clock):
    assert sigsync.health_report(db, clock.now())["indicator_last_seen"] is None
    sigsync.ingest(db, b'{"event_type": "HEARTBEAT"}', now=clock.now())
    first = sigsync.iso(clock.now())
    at(clock, 60)
    sigsync.ingest(db, b'{"event_type": "HEARTBEAT", "n": 2}', now=clock.now(), source="import")
    report = sigsync.health_report(db, clock.now())
    assert report["indicator_last_seen"] == first
    silent = [c for c in report["conditions"] if c["condition"] == "indicator_silent"]
    assert silent[0]["detail"]["last_event_at"] == first


def test_sync_late_and_failing_conditions(db, clock):
    sigsync.store_health_settings(db, {"server_started_at": sigsync.iso(clock.now())})
    at(clock, 300)                                   # 2 x 120 s + 60 s
    assert conditions(db, clock)["sync_late"] is False
    at(clock, 300.001)
    assert conditions(db, clock)["sync_late"] is True
    sigsync.sync_once(db, now=clock.now())
    assert conditions(db, clock)["sync_late"] is False
    assert conditions(db, clock)["sync_failing"] is False


def test_alert_rate_near_tradingviews_cutoff(db, clock):
    for i in range(12):
        sigsync.ingest(db, b'{"event_type": "HEARTBEAT", "n": %d}' % i, now=clock.now())
    assert conditions(db, clock)["alert_rate_near_cutoff"] is True
    at(clock, 181)
    assert conditions(db, clock)["alert_rate_near_cutoff"] is False


def test_dead_letters_in_the_last_day(db, clock):
    sigsync.reject(db, b"x", sigsync.Rejected("bad", "invalid_json"), now=clock.now())
    assert conditions(db, clock)["dead_letters_24h"] is True
    at(clock, 86400.001)
    assert conditions(db, clock)["dead_letters_24h"] is False


# --- scores --------------------------------------------------------------------------------

def tid(n, side="BULLISH"):
    base = dt.datetime(2025, 12, 15, 8, 0) + dt.timedelta(minutes=n)
    return base.strftime("%Y%m%d_%H%M%S") + "000_" + side


def test_the_seeds_scenario_low_for_the_right_reason_then_healthy(db, clock):
    clock.current = dt.datetime(2025, 12, 15, 20, 0, tzinfo=dt.timezone.utc)
    # 7 open trades on a market that has closed: complete, then no more data (expected)
    for n in range(7):
        t = tid(n)
        send(db, clock, **created(t, symbol="MES1!"))
        send(db, clock, **entry(t, symbol="MES1!", confirmation_time="2025-12-15T08:05:00"))
        send(db, clock, event_type="MFE_UPDATE", trade_id=t, no_be_mfe=0.3, mae_global_r=-0.2)
    sigsync.sync_once(db, now=clock.now())
    clock.current += dt.timedelta(hours=1)
    # 36 confirmed trades: ENTRY without HTF or confirmation time; their SIGNAL_CREATED was lost
    for n in range(10, 46):
        send(db, clock, **entry(tid(n)))
        send(db, clock, event_type="EXIT_SL", trade_id=tid(n), exit_price=25640.0)
    # 5 trades whose ENTRY dropped the stop (so no extended targets)
    for n in range(50, 55):
        send(db, clock, **created(tid(n)))
        send(db, clock, **entry(tid(n), stop_loss=None, confirmation_time="2025-12-15T09:00:00"))
        send(db, clock, event_type="EXIT_BE", trade_id=tid(n), exit_price=25680.0)
    # 2 trades that just confirmed: no MAE yet, still within their first bar (expected)
    for n in range(60, 62):
        send(db, clock, **created(tid(n)))
        send(db, clock, **entry(tid(n), mae_global_r=None,
                                confirmation_time="2025-12-15T09:05:00"))
    report = sigsync.health_report(db, clock.now())
    w = report["windows"]["all"]
    by = w["gaps_by_type"]
    assert w["signals"] == 50
    assert by["no_htf_alignment"] == {"abnormal": 36, "expected": 0}
    assert by["no_confirmation_time"] == {"abnormal": 36, "expected": 0}
    assert by["no_signal_created"]["abnormal"] == 36
    # no pass since they arrived: the 36 and the 5, and the 2 newest, lack extended targets
    assert by["no_targets"]["abnormal"] == 36 + 5 + 2 and by["no_stop_loss"]["abnormal"] == 5
    assert by["stale_mfe"] == {"abnormal": 0, "expected": 7}
    assert by["no_mae"] == {"abnormal": 0, "expected": 2}
    assert w["score"] < 85                            # low, and for the abnormal gaps only
    waiting = [r for r in sigsync.health_query(db, "signal_health_metrics", clock.now())
               if r["gaps"] and "stale_mfe" in r["gaps"]]
    assert len(waiting) == 7 and all(r["health_score"] == 100 for r in waiting)
    fresh = [r for r in sigsync.health_query(db, "signal_health_metrics", clock.now())
             if r["gaps"] and "no_mae:expected" in r["gaps"]]
    assert len(fresh) == 2 and all(r["health_score"] == 95 for r in fresh)  # no_targets only
    assert w["signal_coverage"] == round(14 / 50, 4)

    # the SIGNAL_CREATED events arrive, the batches carry the stops; one pass
    for n in range(10, 46):
        send(db, clock, **created(tid(n)))
    send(db, clock, event_type="MFE_UPDATE_BATCH", timestamp="2025-12-15T09:10:00",
         signals=[{"trade_id": tid(n), "entry_price": 25680.0, "stop_loss": 25640.0}
                  for n in range(50, 55)])
    sigsync.sync_once(db, now=clock.now())
    report = sigsync.health_report(db, clock.now())
    w = report["windows"]["all"]
    assert w["score"] >= 95 and w["abnormal_gaps"] == 0
    assert set(w["gaps_by_type"]) == {"stale_mfe", "no_mae"}
    assert w["signal_coverage"] == 1.0


def test_one_broken_signal_among_a_hundred_costs_about_one_point(db, clock):
    for n in range(100):
        send(db, clock, **created(tid(n)))
        send(db, clock, **entry(tid(n), confirmation_time="2025-12-15T09:00:00"))
        send(db, clock, event_type="EXIT_SL", trade_id=tid(n), exit_price=25640.0)
    sigsync.sync_once(db, now=clock.now())
    assert sigsync.health_report(db, clock.now())["score"] == 100.0
    broken = tid(200)
    send(db, clock, **entry(broken, entry_price=None, stop_loss=None, mae_global_r=None))
    send(db, clock, **entry(broken, entry_price=1.0))                 # and a conflict
    sigsync.sync_once(db, now=clock.now())
    score = sigsync.health_report(db, clock.now())["score"]
    # even a signal that is worth 0 costs the mean at most 100/101 points
    assert 100 - 100 / 101 - 0.01 <= score < 100, score


def test_each_pass_stores_the_score(db, clock):
    send(db, clock, **entry())
    before = sigsync.health_report(db, clock.now())["windows"]["all"]
    run = sigsync.sync_once(db, now=clock.now())
    row = db.query("SELECT * FROM sync_runs WHERE run_id = ?", (run["run_id"],))[0]
    after = sigsync.health_report(db, clock.now())["windows"]["all"]
    assert row["score_all"] == after["score"] > before["score"]
    assert json.loads(row["gaps_by_type"]) == after["gaps_by_type"]
    assert row["abnormal_gaps"] == after["abnormal_gaps"]


# --- the shell, the API and the CLI agree --------------------------------------------------

def test_sqlite3_shell_api_and_cli_give_the_same_numbers(server, run_cli, tmp_path):
    db_path = tmp_path / "parity.db"
    code, _, err = run_cli("demo", "--db", db_path, "--start", "2025-12-15T13:30:00Z")
    assert code == 0, err
    s = server(db_path=db_path)
    status, api = s.get("/api/health")
    assert status == 200
    code, out, err = run_cli("health", "--db", db_path, "--json")
    cli = json.loads(out)
    shell = subprocess.run(["sqlite3", "-json", str(db_path), "select * from v_health_summary"],
                           capture_output=True, text=True, check=True)
    rows = {r["window"]: r for r in json.loads(shell.stdout)}
    for window in ("7d", "all"):
        for key in ("signals", "score", "abnormal_gaps", "expected_gaps", "confirmed",
                    "signal_coverage"):
            assert api["windows"][window][key] == cli["windows"][window][key] \
                == rows[window][key], (window, key)
        assert api["windows"][window]["gaps_by_type"] == json.loads(
            rows[window]["gaps_by_type"]) == cli["windows"][window]["gaps_by_type"]
    assert api["windows"]["all"]["signals"] > 20 and api["windows"]["all"]["abnormal_gaps"] > 0
    shell = subprocess.run(["sqlite3", "-json", str(db_path),
                            "select gap, severity, count(*) AS n from v_signal_gaps "
                            "group by 1, 2"], capture_output=True, text=True, check=True)
    status, listed = s.get("/api/gaps")
    counted = {}
    for g in listed["gaps"]:
        counted[(g["gap"], g["severity"])] = counted.get((g["gap"], g["severity"]), 0) + 1
    assert counted == {(r["gap"], r["severity"]): r["n"] for r in json.loads(shell.stdout)}


# --- the health command's exit code --------------------------------------------------------

def test_health_exits_zero_when_healthy_and_one_under_the_threshold(tmp_path, capsys):
    path = str(tmp_path / "exit.db")
    db = sigsync.open_db(path)
    clock = sigsync.FixedClock(START)
    now = clock.now()
    trade = (now.astimezone(sigsync.NEW_YORK) - dt.timedelta(hours=1)).strftime(
        "%Y%m%d_%H%M%S") + "000_BULLISH"
    sigsync.ingest(db, json.dumps(created(trade)).encode(), now=now)
    sigsync.ingest(db, json.dumps(entry(trade, confirmation_time=None)).encode(), now=now)
    sigsync.ingest(db, json.dumps({"event_type": "EXIT_SL", "trade_id": trade,
                                   "exit_price": 25640.0}).encode(), now=now)
    sigsync.sync_once(db, now=now)
    db.close()
    assert sigsync.main(["health", "--db", path], clock) == 0
    assert "Health Score: 100.0/100" in capsys.readouterr().out
    db = sigsync.open_db(path)
    sigsync.ingest(db, json.dumps(entry(trade, entry_price=1.0)).encode(), now=now)  # conflict
    db.close()
    assert sigsync.main(["health", "--db", path, "--health-threshold", "90"], clock) == 1
    assert sigsync.main(["health", "--db", path, "--health-threshold", "75"], clock) == 0
    capsys.readouterr()
    assert sigsync.main(["health", "--db", path, "--json"], clock) == 1
    assert json.loads(capsys.readouterr().out)["score"] < 90


# --- thresholds are read at query time ---------------------------------------------------

def test_new_thresholds_retime_gaps_already_stored(db, clock):
    """Rows keep clock-free base instants; a restart with other settings re-times them all."""
    send(db, clock, **entry())                       # last update at START
    send(db, clock, **created(OTHER))                # pending since its triangle, 14:00Z
    at(clock, 300.001)
    assert "stale_mfe" not in gaps(db, clock)
    sigsync.store_health_settings(db, {"stale_mfe_seconds": 300,
                                       "stale_pending_seconds": 300})
    assert gaps(db, clock)["stale_mfe"] == "expected"
    assert gaps(db, clock, OTHER)["stale_pending"] == "expected"     # triangle at 14:00Z
    at(clock, 300)
    assert "stale_mfe" not in gaps(db, clock)        # the boundary moved with the setting
    assert "stale_pending" not in gaps(db, clock, OTHER)
    sigsync.store_health_settings(db, {"stale_mfe_seconds": 600})
    at(clock, 600.001)
    assert gaps(db, clock)["stale_mfe"] == "expected"
    summary = sigsync.health_summary(db, clock.now())["all"]["gaps_by_type"]
    assert summary["stale_mfe"] == {"abnormal": 0, "expected": 1}


def test_thresholds_given_to_a_query_replace_the_stored_ones_without_writing(db, clock):
    send(db, clock, **entry())
    at(clock, 400)
    assert "stale_mfe" not in gaps(db, clock)
    rows = sigsync.open_gaps(db, clock.now(), trade_id=T, settings={"stale_mfe_seconds": 300})
    assert "stale_mfe" in {r["gap"] for r in rows}
    report = sigsync.health_report(db, clock.now(), settings={"stale_mfe_seconds": 300})
    assert report["windows"]["all"]["gaps_by_type"]["stale_mfe"]["expected"] == 1
    assert db.query("SELECT value FROM health_settings WHERE name = 'stale_mfe_seconds'")[0][
        "value"] == "600"


def _recent_open_trade(path, now, seconds_ago):
    db = sigsync.open_db(path)
    trade = (now.astimezone(sigsync.NEW_YORK) - dt.timedelta(hours=1)).strftime(
        "%Y%m%d_%H%M%S") + "000_BULLISH"
    sigsync.ingest(db, json.dumps(created(trade)).encode(), now=now)
    sigsync.ingest(db, json.dumps(entry(trade)).encode(),
                   now=now - dt.timedelta(seconds=seconds_ago))
    db.close()
    return trade


def test_health_and_gaps_commands_apply_threshold_flags(tmp_path, capsys, monkeypatch):
    """The commands take the clock they are given: the gap opens once the last update is more
    than the threshold old, and not at the threshold itself."""
    monkeypatch.delenv("SIGSYNC_STALE_MFE_SECONDS", raising=False)
    path = str(tmp_path / "flags.db")
    clock = sigsync.FixedClock(START)
    trade = _recent_open_trade(path, START, seconds_ago=400)

    def stale_mfe(*flags):
        assert sigsync.main(["health", "--db", path, "--json", *flags], clock) in (0, 1)
        return json.loads(capsys.readouterr().out)["windows"]["all"]["gaps_by_type"].get(
            "stale_mfe")

    assert stale_mfe() is None                                  # the stored 600 s
    assert stale_mfe("--stale-mfe-seconds", "400") is None      # exactly at the threshold
    by_type = stale_mfe("--stale-mfe-seconds", "399")
    assert by_type == {"abnormal": 1, "expected": 0}    # abnormal: its SIGNAL_CREATED came since
    assert sigsync.main(["gaps", "--db", path, "--json", "--gap", "stale_mfe",
                         "--stale-mfe-seconds", "399"], clock) == 0
    assert [r["trade_id"] for r in json.loads(capsys.readouterr().out)] == [trade]
    assert sigsync.main(["gaps", "--db", path, "--json", "--gap", "stale_mfe",
                         "--stale-mfe-seconds", "400"], clock) == 0
    assert json.loads(capsys.readouterr().out) == []
    monkeypatch.setenv("SIGSYNC_STALE_MFE_SECONDS", "300")      # the EnvironmentFile's way
    sigsync.main(["gaps", "--db", path, "--json", "--gap", "stale_mfe"], clock)
    assert len(json.loads(capsys.readouterr().out)) == 1
    monkeypatch.delenv("SIGSYNC_STALE_MFE_SECONDS")
    sigsync.main(["gaps", "--db", path, "--json", "--gap", "stale_mfe"], clock)
    assert json.loads(capsys.readouterr().out) == []            # nothing was stored


def test_open_gaps_come_abnormal_first_so_a_limit_keeps_them(db, clock):
    send(db, clock, **created(OTHER))                    # pending: stale_pending (expected)
    send(db, clock, **entry())                           # an open trade with abnormal gaps
    at(clock, 7200)
    rows = sigsync.open_gaps(db, clock.now())
    assert {"abnormal", "expected"} <= {r["severity"] for r in rows}
    [first] = sigsync.open_gaps(db, clock.now(), limit=1)
    assert first["severity"] == "abnormal"
    assert [r["severity"] for r in rows] == sorted((r["severity"] for r in rows),
                                                   key=lambda sev: sev != "abnormal")


def test_gaps_json_lists_rows_with_parsed_evidence(tmp_path, capsys):
    path = str(tmp_path / "gaps.db")
    trade = _recent_open_trade(path, START, seconds_ago=0)
    assert sigsync.main(["gaps", "--db", path, "--json", "--trade-id", trade],
                        sigsync.FixedClock(START)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["gap"] for r in rows} >= {"no_confirmation_time", "no_targets"}
    assert all(set(r) == {"trade_id", "gap", "severity", "since", "filled_by", "weight",
                          "evidence"} for r in rows)
    assert [r["severity"] for r in rows] == sorted((r["severity"] for r in rows),
                                                   key=lambda sev: sev != "abnormal")


def test_sync_json_reports_the_run(tmp_path, capsys):
    path = str(tmp_path / "sync.db")
    _recent_open_trade(path, START, seconds_ago=0)
    assert sigsync.main(["sync", "--db", path, "--json"], sigsync.FixedClock(START)) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["outcome"] == "ok" and run["examined"] == 1 and run["changes"] > 0
    assert set(run) == {"run_id", "outcome", "examined", "changes", "counts", "error"}
    assert sum(run["counts"].values()) == run["changes"]


# --- boundary instants of the other time rules ---------------------------------------------

def test_stale_pending_just_before_the_threshold(db, clock):
    send(db, clock, **created())                     # triangle at 15:00Z
    clock.current = dt.datetime(2025, 12, 15, 15, 59, 59, 999000, tzinfo=dt.timezone.utc)
    assert "stale_pending" not in gaps(db, clock)


def test_indicator_silent_just_before(db, clock):
    sigsync.ingest(db, b'{"event_type": "HEARTBEAT"}', now=clock.now())
    at(clock, 899.999)
    assert conditions(db, clock)["indicator_silent"] is False


def test_dead_letters_in_the_last_day_boundaries(db, clock):
    sigsync.reject(db, b"x", sigsync.Rejected("bad", "invalid_json"), now=clock.now())
    at(clock, 86399.999)
    assert conditions(db, clock)["dead_letters_24h"] is True
    at(clock, 86400)                                 # "in the last 24 h" is strict
    assert conditions(db, clock)["dead_letters_24h"] is False


def test_alert_rate_boundaries(db, clock):
    """12 webhooks within 180 s warn (TradingView cuts an alert off past 15 in 3 minutes)."""
    for i in range(11):
        sigsync.ingest(db, b'{"event_type": "HEARTBEAT", "n": %d}' % i, now=clock.now())
    assert conditions(db, clock)["alert_rate_near_cutoff"] is False      # 11: just below
    at(clock, 10)
    sigsync.ingest(db, b'{"event_type": "HEARTBEAT", "n": 11}', now=clock.now())
    assert conditions(db, clock)["alert_rate_near_cutoff"] is True       # 12: at
    at(clock, 179.999)
    assert conditions(db, clock)["alert_rate_near_cutoff"] is True       # all in the window
    at(clock, 180)
    assert conditions(db, clock)["alert_rate_near_cutoff"] is False      # the first 11 left
    at(clock, 10)
    for i in range(15, 18):                          # 15 alerts in 3 minutes: still warned
        sigsync.ingest(db, b'{"event_type": "HEARTBEAT", "n": %d}' % i, now=clock.now())
    detail = [c for c in sigsync.health_report(db, clock.now())["conditions"]
              if c["condition"] == "alert_rate_near_cutoff"][0]
    assert detail["active"] and detail["detail"]["requests_in_window"] == 15


def test_alert_rate_is_counted_per_alert(db, clock):
    """TradingView cuts off one alert (one chart), so webhooks are counted per symbol and
    timeframe; one naming no symbol counts for every alert."""
    def hit(symbol, n, timeframe="1"):
        for i in range(n):
            body = {"event_type": "BAR", "symbol": symbol, "timeframe": timeframe,
                    "time": f"2025-12-15T14:{len(seen):02d}:00", "open": 1, "high": 2,
                    "low": 0.5, "close": 1.5}
            seen.append(body)
            sigsync.ingest(db, json.dumps(body).encode(), now=clock.now())

    def rate():
        return [c for c in sigsync.health_report(db, clock.now())["conditions"]
                if c["condition"] == "alert_rate_near_cutoff"][0]

    seen = []
    hit("CME_MINI:MNQ1!", 6)
    hit("MNQ1!", 3)                                  # the same market: the same alert
    hit("MES1!", 8)
    hit("MNQ1!", 5, timeframe="5")                   # another chart of it: another alert
    r = rate()
    assert not r["active"]                           # 22 webhooks, but no alert has 12
    assert r["detail"]["alert"] == "MNQ1! 1" and r["detail"]["requests_in_window"] == 9
    assert r["detail"]["all_requests_in_window"] == 22
    sigsync.ingest(db, b'{"event_type": "HEARTBEAT", "n": 1}', now=clock.now())
    sigsync.ingest(db, b'{"event_type": "HEARTBEAT", "n": 2}', now=clock.now())
    assert not rate()["active"]                      # MNQ1! 1: 9 + 2 that could be its own
    hit("MNQ1!", 1)
    r = rate()
    assert r["active"] and r["detail"]["alert"] == "MNQ1! 1"
    assert r["detail"]["requests_in_window"] == 12


def test_conditions_are_logged_as_they_start_and_end(db, clock, caplog):
    """The serve loop's watch job puts a condition in the log once when it starts (with its
    detail) and once when it ends; nothing while it lasts."""
    import logging
    caplog.set_level(logging.INFO, logger="sigsync")
    sigsync.sync_once(db, now=clock.now())           # no pass late or failing
    state = {}
    for i in range(12):
        sigsync.ingest(db, b'{"event_type": "HEARTBEAT", "n": %d}' % i, now=clock.now())

    def look():
        caplog.clear()
        sigsync.job_watch(db, clock, state)
        return [(r.levelname, r.getMessage()) for r in caplog.records]

    logged = look()
    assert len(logged) == 1 and logged[0][0] == "WARNING"
    assert logged[0][1].startswith("what=condition condition=alert_rate_near_cutoff "
                                   "outcome=active detail=")
    assert '"requests_in_window":12' in logged[0][1]
    assert look() == []                              # still on: said once
    at(clock, 180)
    assert look() == [("INFO", "what=condition condition=alert_rate_near_cutoff "
                               "outcome=cleared")]
    assert look() == []


# --- the API's health history and gap filters ----------------------------------------------

def test_health_history_is_one_row_per_pass_oldest_first(app, db, clock):
    send(db, clock, **entry())
    for _ in range(3):
        sigsync.sync_once(db, now=clock.now())
        clock.advance(120)
    sigsync.store_health_settings(db, {})
    r = app.get("/api/health/history")
    assert r.status == 200
    runs = r.json()["runs"]
    assert [x["run_id"] for x in runs] == sorted(x["run_id"] for x in runs) and len(runs) == 3
    assert set(runs[0]) == {"run_id", "started_at", "finished_at", "outcome", "trigger",
                            "examined", "changes", "counts", "error", "score_7d",
                            "score_all", "abnormal_gaps", "expected_gaps", "gaps_by_type"}
    assert isinstance(runs[0]["counts"], dict) and isinstance(runs[0]["gaps_by_type"], dict)
    assert runs[-1]["score_all"] == sigsync.health_report(db, clock.now())["windows"]["all"][
        "score"]
    assert [x["run_id"] for x in app.get("/api/health/history?limit=2").json()["runs"]] == \
        [runs[1]["run_id"], runs[2]["run_id"]]                    # the latest two


def test_gaps_api_filters(app, db, clock):
    send(db, clock, **entry())
    send(db, clock, **entry(OTHER, mae_global_r=None))
    every = app.get("/api/gaps").json()
    assert every["count"] == len(every["gaps"]) > 0
    only = app.get("/api/gaps?gap=no_mae").json()["gaps"]
    assert [(g["trade_id"], g["gap"]) for g in only] == [(OTHER, "no_mae")]
    expected = app.get("/api/gaps?severity=expected").json()["gaps"]
    assert expected and all(g["severity"] == "expected" for g in expected)
    mine = app.get(f"/api/gaps?trade_id={T}").json()["gaps"]
    assert mine and {g["trade_id"] for g in mine} == {T}
    assert len(app.get("/api/gaps?limit=1").json()["gaps"]) == 1


@pytest.mark.parametrize("query", ["gap=nope", "severity=bad", "limit=0", "limit=x",
                                   "limit=5001"])
def test_gaps_api_refuses_bad_filters_with_the_one_error_shape(app, query):
    r = app.get("/api/gaps?" + query)
    assert r.status == 400
    body = r.json()
    assert body["ok"] is False and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"].split(":")[0] in query


# --- at_now runs exactly what the shell runs ------------------------------------------------

def test_at_now_equals_the_stock_shell_with_v_now_pinned_for_every_view(db, clock):
    """The documented way (schema.sql, v_now): replace v_now in a transaction rolled back."""
    for at_s, raw in sigsync.demo_payloads(START, seed=5):
        try:
            sigsync.ingest(db, raw, now=START + dt.timedelta(seconds=at_s))
        except sigsync.Rejected as e:
            sigsync.reject(db, raw, e, now=START + dt.timedelta(seconds=at_s))
    sigsync.sync_once(db, now=START + dt.timedelta(hours=3))
    views = [r["name"] for r in db.query("SELECT name FROM sqlite_schema WHERE type = 'view' "
                                         "AND name NOT IN ('v_now') ORDER BY name")]
    clocked = set(sigsync.clock_views(db.reader()))
    assert {"v_signal_gaps", "v_health_summary", "v_global_conditions"} <= clocked

    def norm(rows):
        return sorted(json.dumps({k: round(v, 9) if isinstance(v, float) else v
                                  for k, v in r.items()}, sort_keys=True) for r in rows)

    for hours in (3, 6.5, 24 * 8):
        now = START + dt.timedelta(hours=hours)
        for view in views:
            pinned = (f"BEGIN; DROP VIEW v_now; CREATE VIEW v_now AS SELECT "
                      f"'{sigsync.iso(now)}' AS now; SELECT * FROM {view}; ROLLBACK;")
            out = subprocess.run(["sqlite3", "-json", "-bail", db.path, pinned],
                                 capture_output=True, text=True, check=True).stdout
            shell = json.loads(out) if out.strip() else []
            ours = sigsync.health_query(db, view, now) if view in clocked else \
                db.query(f"SELECT * FROM {view}")
            assert norm(ours) == norm(shell), (view, hours)
