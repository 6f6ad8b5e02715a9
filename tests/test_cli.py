"""The command line, run as a user runs it: `python sigsync.py <command>` in a subprocess."""

import json

import sigsync
from conftest import START, derived_tables, load_fixtures, open_database, wipe_derived


def derived(db_path):
    with open_database(db_path) as db:
        return derived_tables(db)


def test_rebuild_of_a_live_database_gives_identical_derived_tables(server, run_cli, tmp_path):
    db_path = tmp_path / "live.db"
    s = server(db_path=db_path)
    for entry, body in load_fixtures():
        for content_type in ("application/json", "text/plain"):
            s.post(body, content_type=content_type)
    for _, body in sigsync.demo_payloads(START, seed=11):
        s.post(body, content_type="text/plain")
    s.stop()
    code, out, err = run_cli("sync", "--db", db_path)        # what the loop does live
    assert code == 0 and out.startswith("sync run 1: ok"), out + err
    live = derived(db_path)
    assert len(live["signals"]) > 20
    with open_database(db_path) as db:
        wipe_derived(db)                   # the rebuild must make every row itself
    code, out, err = run_cli("rebuild", "--db", db_path)
    assert code == 0, err
    assert out.startswith(f"rebuilt {len(live['signals'])} signals from ")
    assert derived(db_path) == live


def test_rebuild_leaves_out_an_event_an_older_version_accepted_and_passes_run_again(
        run_cli, tmp_path):
    """Before 0.5.7 a trade_id dated year 1 was accepted, its id_time stored as
    "1-01-01T04:56:02.000Z", and every reconciliation pass failed on it from then on. The
    event cannot leave the append-only log; rebuild leaves it out of the signals, and the
    passes run again."""
    db_path = tmp_path / "old.db"
    good, bad = "20251215_094200000_BULLISH", "00010101_000000000_BULLISH"
    with open_database(db_path) as db:
        sigsync.demo(db, start=START)
        body = {"event_type": "SIGNAL_CREATED", "trade_id": good, "direction": "Bullish",
                "symbol": "MNQ1!"}
        sigsync.ingest(db, json.dumps(body).encode(), now=START)
        with db.write() as conn:           # what 0.5.6 stored for the year-1 id
            conn.execute("UPDATE events SET trade_id = ?, payload = replace(payload, ?, ?) "
                         "WHERE trade_id = ?", (bad, good, bad, good))
            conn.execute("UPDATE signals SET trade_id = ?, id_time = '1-01-01T04:56:02.000Z' "
                         "WHERE trade_id = ?", (bad, good))
        n_events = db.query("SELECT count(*) AS n FROM events")[0]["n"]
        n_signals = db.query("SELECT count(*) AS n FROM signals")[0]["n"]
    code, out, err = run_cli("sync", "--db", db_path, "--full")
    assert code != 0 and "Invalid isoformat string" in out + err
    code, out, err = run_cli("check", "--db", db_path, "--sample", "1000")
    assert code == 1 and f"problem: {bad}: this version refuses its events (trade_id: " in out
    assert "run `sigsync.py rebuild`" in out and out.strip().endswith("1 problems")
    code, out, err = run_cli("rebuild", "--db", db_path)
    assert code == 0, err
    assert out.startswith(f"rebuilt {n_signals - 1} signals from {n_events - 1} events")
    assert "1 events left out: this version refuses them" in out
    assert "out of range" in err
    code, out, err = run_cli("sync", "--db", db_path, "--full")
    assert code == 0 and ": ok" in out, out + err
    code, out, err = run_cli("check", "--db", db_path, "--sample", "1000")
    assert code == 0 and out.strip().endswith("ok"), out
    with open_database(db_path) as db:
        assert db.query("SELECT count(*) AS n FROM events WHERE trade_id = ?", (bad,))[0][
            "n"] == 1
        assert db.query("SELECT count(*) AS n FROM signals WHERE trade_id = ?", (bad,))[0][
            "n"] == 0


def test_demo_fills_every_status(run_cli, tmp_path):
    db_path = tmp_path / "demo.db"
    code, out, err = run_cli("demo", "--db", db_path, "--start", "2025-12-15T13:30:00Z")
    assert code == 0, err
    assert out.startswith("demo: ") and "dead letters" in out
    with open_database(db_path) as db:
        statuses = {r["status"] for r in db.query("SELECT DISTINCT status FROM signals")}
        assert statuses == {"PENDING", "ACTIVE", "EXITED", "CANCELLED"}
        assert db.query("SELECT count(*) AS n FROM rejected")[0]["n"] >= 2
        assert db.query("SELECT count(*) AS n FROM signals WHERE has_signal_created = 0 "
                        "AND status IN ('ACTIVE', 'EXITED')")[0]["n"] >= 1


def test_export_to_a_pipe_that_closes_early_ends_quietly(tmp_path):
    """`sigsync.py export --events - | head -1`: no traceback when the reader stops."""
    import subprocess
    import sys
    from conftest import ROOT
    db_path = tmp_path / "pipe.db"
    with open_database(db_path) as db:
        sigsync.demo(db, start=START)               # ~300 kB of NDJSON: more than a pipe holds
    proc = subprocess.Popen([sys.executable, str(ROOT / "sigsync.py"), "export", "--db",
                             str(db_path), "--events", "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()                             # what `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert json.loads(first)["request_id"] == 1
    assert err == "", err


def test_replay_rejected_reports_what_now_passes(run_cli, tmp_path):
    db_path = tmp_path / "replay.db"
    good = json.dumps({"event_type": "ENTRY", "trade_id": "20251215_094200000_BULLISH",
                       "direction": "Bullish", "entry_price": 25683.5}).encode()
    with open_database(db_path) as db:
        sigsync.reject(db, good, sigsync.SigsyncError("was a bug"), now=START)
        sigsync.reject(db, b"{broken", sigsync.Rejected("bad json", "invalid_json"), now=START)
        sigsync.reject(db, good, sigsync.Rejected("wrong secret", "forbidden", 403), now=START)
    code, out, err = run_cli("replay-rejected", "--db", db_path)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "dead letter 1: stored event 1"
    assert lines[1].startswith("dead letter 2: rejected invalid_json:")
    assert lines[2].startswith("dead letter 3: skipped refused by authentication")
    assert lines[3] == "1 of 3 dead letters now pass"
    with open_database(db_path) as db:
        row = db.query("SELECT replayed_at, replay_event_id FROM rejected WHERE rejected_id = 1")
        assert row[0]["replay_event_id"] == 1 and row[0]["replayed_at"]
        # stored as of its arrival, not of the replay (exit and BE times come from it)
        assert db.query("SELECT source, received_at FROM requests") == [
            {"source": "replay", "received_at": sigsync.iso(START)}]
        assert db.query("SELECT received_at FROM events") == [{"received_at": sigsync.iso(START)}]
        assert row[0]["replayed_at"] > sigsync.iso(START)
    code, out, _ = run_cli("replay-rejected", "--db", db_path)
    assert "0 of 2 dead letters now pass" in out             # the replayed one is not retried
    # Asked by id: one replayed already, one that never was. Said so, and the exit is 1.
    code, out, _ = run_cli("replay-rejected", "--db", db_path, "1", "2", "99")
    lines = out.strip().splitlines()
    assert code == 1
    assert lines[0].startswith("dead letter 2: rejected invalid_json:")
    assert lines[1].startswith("dead letter 1: not_found no dead letter waiting with this id")
    assert lines[2].startswith("dead letter 99: not_found ")
    assert lines[3] == "0 of 3 dead letters now pass"


def test_errors_print_one_line_and_exit_non_zero(run_cli, tmp_path):
    bad = tmp_path / "no-such-dir" / "x.db"
    code, out, err = run_cli("demo", "--db", bad)      # a command that may create one
    assert code == 1
    assert err.startswith("error: cannot open database") and "Traceback" not in err
    code, out, err = run_cli("rebuild", "--db", bad)   # one that needs it to exist
    assert (code, err.strip()) == (1, f"error: no database at {bad}")
    # A typo in a filter is an error, not "0 open gaps" (the API answers it 400).
    with open_database(tmp_path / "g.db"):
        pass                                        # an empty database
    code, out, err = run_cli("gaps", "--db", tmp_path / "g.db", "--gap", "stale_mef")
    assert code == 1 and out == ""
    assert err.startswith("error: gap: unknown gap type 'stale_mef' (known: ") and \
        "stale_mfe" in err


def test_non_loopback_bind_without_secret_is_refused(run_cli, tmp_path):
    code, _, err = run_cli("serve", "--db", tmp_path / "x.db", "--host", "0.0.0.0",
                           "--port", "0", timeout=30)
    assert code == 1 and "without a webhook secret" in err


def test_demo_by_default_replays_the_latest_weekday_morning_that_is_over():
    """A newcomer's demo is recent (the 7-day window shows it) and never in the future."""
    import datetime as dt
    ny = sigsync.NEW_YORK

    def start(local):
        return sigsync.demo_start(local.replace(tzinfo=ny)).astimezone(ny)

    wednesday = dt.datetime(2025, 12, 17)
    assert start(wednesday.replace(hour=13)) == dt.datetime(2025, 12, 17, 8, 30, tzinfo=ny)
    assert start(wednesday.replace(hour=12, minute=59)) == dt.datetime(2025, 12, 16, 8, 30,
                                                                        tzinfo=ny)
    assert start(dt.datetime(2025, 12, 15, 10)) == dt.datetime(2025, 12, 12, 8, 30, tzinfo=ny)
    assert start(dt.datetime(2025, 12, 14, 18)) == dt.datetime(2025, 12, 12, 8, 30, tzinfo=ny)
    now = dt.datetime(2025, 12, 17, 13, 0, tzinfo=ny)
    payloads = sigsync.demo_payloads(sigsync.demo_start(now))
    last = sigsync.demo_start(now) + dt.timedelta(seconds=max(at for at, _ in payloads))
    assert last <= now


def test_demo_bars_carry_the_trades(tmp_path):
    """The demo's trades live on its bars: each entry is a bar close and each recorded MFE is
    the excursion those bars show, so the page's trade chart tells the same story."""
    with open_database(tmp_path / "d.db") as db:
        sigsync.demo(db, start=START)
        bars = {r["time"]: r for r in db.query("SELECT * FROM bars WHERE symbol = 'MNQ1!'")}
        assert len(bars) > 150
        trades = db.query("SELECT * FROM signals WHERE status IN ('ACTIVE', 'EXITED') "
                          "AND has_entry = 1 AND confirmation_time IS NOT NULL")
        assert trades
        closes = {r["close"] for r in bars.values()}
        for t in trades:
            assert t["entry_price"] in closes, t["trade_id"]
            sign = 1 if t["direction"] == "Bullish" else -1
            after = [b for time, b in bars.items() if time >= t["confirmation_time"]
                     and (t["last_update_at"] is None or time < t["last_update_at"])]
            best = max((sign * ((b["high"] if sign > 0 else b["low"]) - t["entry_price"])
                        / t["risk"] for b in after), default=0.0)
            assert t["no_be_mfe"] <= max(best, 0) + 1e-3, t["trade_id"]


def test_demo_break_even_leg_stops_gaining_once_it_is_stopped(tmp_path):
    """The break-even leg's MFE ends with that leg: after its EXIT_BE the trade may run on,
    the BE leg's excursion may not (what a trader compares the two strategies by)."""
    with open_database(tmp_path / "d.db") as db:
        sigsync.demo(db, start=START)
        stopped = db.query("SELECT s.trade_id, s.be_mfe, s.no_be_mfe, s.exit_be_at FROM signals s "
                           "WHERE s.exit_be_at IS NOT NULL")
        assert stopped
        for t in stopped:
            be_exit = db.query("SELECT payload FROM events WHERE trade_id = ? AND event_type = "
                               "'EXIT_BE'", (t["trade_id"],))
            assert be_exit, t["trade_id"]
            assert t["be_mfe"] == json.loads(be_exit[0]["payload"])["be_mfe"], t["trade_id"]
            assert t["be_mfe"] <= t["no_be_mfe"]
        assert any(t["be_mfe"] < t["no_be_mfe"] for t in stopped)   # some ran on after BE


def test_operator_mistakes_get_one_error_line_and_create_nothing(run_cli, tmp_path):
    """A mistyped database path, a missing import file, a port already taken: `error: ...`
    and exit 1, no traceback, and no new empty database that would make a cron job's `sync`
    or `export` report success on nothing (before 0.5.7 these four commands created one)."""
    import socket
    missing = tmp_path / "typo.db"
    for args in (("sync",), ("rebuild",), ("replay-rejected",),
                 ("export", "--signals", tmp_path / "s.csv")):
        code, out, err = run_cli(*args, "--db", missing)
        assert (code, err.strip()) == (1, f"error: no database at {missing}"), (args, out, err)
        assert not missing.exists(), args
    code, out, err = run_cli("import", "--db", missing, tmp_path / "nowhere.ndjson")
    assert code == 1 and err.strip() == (f"error: cannot read {tmp_path / 'nowhere.ndjson'}: "
                                         "No such file or directory"), err
    assert not missing.exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli("serve", "--db", tmp_path / "s.db", "--port", port,
                                 timeout=60)
    assert code == 1 and "Traceback" not in err, err
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in err
