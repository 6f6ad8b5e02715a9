"""The command line, run as a user runs it: `python sigsync.py <command>` in a subprocess."""

import json

import sigsync
from conftest import START, load_fixtures, open_database


def derived(db_path):
    with open_database(db_path) as db:
        return {t: db.query(f"SELECT * FROM {t} ORDER BY 1, 2") for t in sigsync.DERIVED_TABLES}


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
    code, out, err = run_cli("rebuild", "--db", db_path)
    assert code == 0, err
    assert out.startswith(f"rebuilt {len(live['signals'])} signals from ")
    assert derived(db_path) == live


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
        assert db.query("SELECT source FROM requests")[0]["source"] == "replay"
    code, out, _ = run_cli("replay-rejected", "--db", db_path)
    assert "0 of 2 dead letters now pass" in out             # the replayed one is not retried


def test_errors_print_one_line_and_exit_non_zero(run_cli, tmp_path):
    bad = tmp_path / "no-such-dir" / "x.db"
    code, out, err = run_cli("rebuild", "--db", bad)
    assert code == 1
    assert err.startswith("error: cannot open database") and "Traceback" not in err


def test_non_loopback_bind_without_secret_is_refused(run_cli, tmp_path):
    code, _, err = run_cli("serve", "--db", tmp_path / "x.db", "--host", "0.0.0.0",
                           "--port", "0", timeout=30)
    assert code == 1 and "without a webhook secret" in err
