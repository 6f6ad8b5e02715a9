"""Operations (SPEC §6): backup under load, export/import, check, /metrics, graceful SIGTERM."""

import datetime as dt
import json
import re
import signal
import threading
import time

import apsw
import pytest

import sigsync
from conftest import START, open_database
from test_durability import mfe_body, post_until_killed


def wait_for(condition, seconds=30):
    """Poll until condition() holds; a stuck load fails here instead of hanging the run."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the load made no progress"
        time.sleep(0.005)


def test_backup_under_write_load_is_consistent_and_complete(server, run_cli, tmp_path):
    db_path = tmp_path / "live.db"
    s = server(db_path=db_path)
    acked, stop = [], threading.Event()
    bodies = [mfe_body(i, 7.0) for i in range(3000)]
    writer = threading.Thread(target=post_until_killed, args=(s.url, bodies, acked, stop))
    writer.start()
    try:
        wait_for(lambda: len(acked) >= 200)
        acknowledged_before = list(acked)          # acknowledged before the backup started
        code, out, err = run_cli("backup", "--db", db_path, tmp_path / "copy.db")
        assert code == 0, err
        assert out.startswith("backup: ") and len(acked) > len(acknowledged_before)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not list(tmp_path.glob("copy.db.tmp-*"))
    assert (tmp_path / "copy.db").stat().st_mode & 0o777 == 0o600    # every raw body is in it
    copy = apsw.Connection(str(tmp_path / "copy.db"))
    assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    stored = {r[0] for r in copy.execute("SELECT event_id FROM events")}
    missing = [event_id for event_id, _ in acknowledged_before if event_id not in stored]
    assert missing == []
    copy.close()


def test_export_then_import_reproduces_the_signals_and_a_second_import_adds_nothing(
        tmp_path, run_cli):
    origin = tmp_path / "origin.db"
    end = START + dt.timedelta(hours=5)
    with open_database(origin) as db:
        stored = sigsync.demo(db, start=START)["stored"]      # the resend among them
        sigsync.sync_once(db, now=end)
        n_signals = db.query("SELECT count(*) AS n FROM signals")[0]["n"]
    code, _, err = run_cli("export", "--db", origin, "--events", tmp_path / "e.ndjson",
                           "--signals", tmp_path / "s.csv")
    assert code == 0, err
    copy = tmp_path / "copy.db"
    code, out, err = run_cli("import", "--db", copy, tmp_path / "e.ndjson")
    assert code == 0, err
    assert out.startswith(f"import: {stored} lines, {stored - 1} stored, 1 already there")
    assert re.search(r"; sync run 1: \d+ fields filled$", out.strip()), out
    with open_database(copy) as db:
        # import ran the loop's pass (tier 3 filled the session of every imported signal)
        assert db.query("SELECT count(*) AS n FROM sync_runs WHERE outcome = 'ok'")[0]["n"] == 1
        assert db.query("SELECT count(*) AS n FROM signals WHERE session IS NULL")[0]["n"] == 0
        sigsync.sync_once(db, now=end)                # the same evidence, the same clock
    compared = [c for c in sigsync.SIGNAL_COLUMNS if c != "fold_state"]

    def signals(path):
        with open_database(path) as db:
            return db.query(f"SELECT {', '.join(compared)} FROM signals ORDER BY trade_id")

    assert signals(copy) == signals(origin)
    with open_database(copy) as db:
        counts = {t: db.query(f"SELECT count(*) AS n FROM {t}")[0]["n"]
                  for t in ("requests", "events")}
    code, out, _ = run_cli("import", "--db", copy, tmp_path / "e.ndjson")
    assert code == 0 and f"0 stored, {stored} already there" in out
    with open_database(copy) as db:
        assert {t: db.query(f"SELECT count(*) AS n FROM {t}")[0]["n"]
                for t in ("requests", "events")} == counts
    csv_lines = (tmp_path / "s.csv").read_text().splitlines()
    assert csv_lines[0].startswith("trade_id,id_time,") and len(csv_lines) == n_signals + 1


def test_a_resend_survives_export_and_import_as_a_repeat(tmp_path, run_cli):
    """An MFE update sent again later keeps the trade alive (event_repeats); an export carries
    the resend as a request, and the import makes it a repeat again, once."""
    origin, copy = tmp_path / "o.db", tmp_path / "c.db"
    update = json.dumps({"event_type": "MFE_UPDATE", "trade_id": "20251215_094200000_BULLISH",
                         "symbol": "MNQ1!", "no_be_mfe": 0.4}).encode()
    with open_database(origin) as db:
        sigsync.ingest(db, update, now=START)
        sigsync.ingest(db, update, now=START + dt.timedelta(minutes=7))
    code, _, err = run_cli("export", "--db", origin, "--events", tmp_path / "e.ndjson")
    assert code == 0, err
    for attempt in ("first", "second"):
        code, out, err = run_cli("import", "--db", copy, tmp_path / "e.ndjson")
        assert code == 0, err
        assert ("2 stored, 0 already" if attempt == "first" else "0 stored, 2 already") in out
    for path in (origin, copy):
        with open_database(path) as db:
            assert db.query("SELECT last_update_at, event_count FROM signals") == [
                {"last_update_at": "2025-12-15T14:07:00.000Z", "event_count": 1}]
            assert db.query("SELECT received_at FROM event_repeats") == [
                {"received_at": "2025-12-15T14:07:00.000Z"}]
        code, out, err = run_cli("check", "--db", path)
        assert code == 0 and out.strip().endswith("ok"), out + err


def test_import_of_raw_bodies_is_idempotent(tmp_path, run_cli):
    lines = [json.dumps({"event_type": "ENTRY", "trade_id": "20251215_094200000_BULLISH",
                         "direction": "Bullish", "entry_price": 25683.5}),
             '{"broken',
             json.dumps({"event_type": "HEARTBEAT", "timestamp": "2025-12-15T10:00:00"}),
             json.dumps({"event_type": "MFE_UPDATE_BATCH", "signals": []}),   # no events
             '{"broken']                    # the same refused line twice: one dead letter
    (tmp_path / "raw.ndjson").write_text("\n".join(lines) + "\n")
    code, out, _ = run_cli("import", "--db", tmp_path / "r.db", tmp_path / "raw.ndjson")
    assert code == 1 and "5 lines, 3 stored, 0 already there, 2 rejected" in out

    def held():
        with open_database(tmp_path / "r.db") as db:
            return [db.query(f"SELECT count(*) AS n FROM {t}")[0]["n"]
                    for t in ("requests", "events", "rejected", "sync_runs")]

    first = held()
    assert first == [3, 2, 1, 1]
    for _ in range(2):      # again and again: nothing new, not even a dead letter or a pass
        code, out, _ = run_cli("import", "--db", tmp_path / "r.db", tmp_path / "raw.ndjson")
        assert code == 1 and "0 stored, 3 already there, 2 rejected" in out
        assert held() == first


def test_check_finds_a_derived_row_that_disagrees_with_the_log(tmp_path, run_cli):
    path = tmp_path / "c.db"
    with open_database(path) as db:
        sigsync.demo(db, start=START)
    code, out, _ = run_cli("check", "--db", path)
    version = sigsync.schema_version()
    assert code == 0 and out.strip().endswith("ok")
    assert f"integrity: ok; schema version {version}" in out
    with open_database(path) as db, db.write() as conn:
        conn.execute("UPDATE signals SET no_be_mfe = 99 WHERE status = 'EXITED'")
    code, out, _ = run_cli("check", "--db", path, "--sample", "1000")
    assert code == 1 and "no_be_mfe: stored 99.0" in out


def parse_metrics(text):
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_parse_and_move_when_events_arrive(server, tmp_path):
    import urllib.request
    s = server("--sync-seconds", "1", db_path=tmp_path / "m.db")

    def scrape():
        with urllib.request.urlopen(s.url + "/metrics", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return parse_metrics(r.read().decode())

    before = scrape()
    assert before[("sigsync_events_total", (("type", "ENTRY"),))] == 0
    body = {"event_type": "ENTRY", "trade_id": "20251215_094200000_BULLISH",
            "direction": "Bullish", "symbol": "MNQ1!", "entry_price": 25683.5}
    assert s.post(body)[0] == 200
    assert s.post(body)[1]["duplicate"] is True
    assert s.post(b"{broken")[0] == 400
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = scrape()
        if after.get(("sigsync_sync_runs_total", (("outcome", "ok"),)), 0) >= 1:
            break
        time.sleep(0.1)
    assert after[("sigsync_events_total", (("type", "ENTRY"),))] == 1
    assert after[("sigsync_duplicates_total", ())] == 1
    assert after[("sigsync_rejected_total", (("reason", "invalid_json"),))] == 1
    assert before[("sigsync_dead_letter_bytes", ())] == 0
    assert after[("sigsync_dead_letter_bytes", ())] == len(b"{broken")
    assert after[("sigsync_sync_runs_total", (("outcome", "ok"),))] >= 1
    assert after[("sigsync_sync_duration_seconds_count", ())] >= 1
    assert after[("sigsync_open_gaps", (("gap", "no_signal_created"),
                                        ("severity", "abnormal")))] == 1
    assert 0 <= after[("sigsync_health_score", (("window", "all"),))] < 100


def test_sigterm_during_a_stream_of_webhooks_loses_nothing_and_exits_0(server, tmp_path):
    db_path = tmp_path / "term.db"
    s = server(db_path=db_path)
    acked, stop = [], threading.Event()
    clients = [threading.Thread(target=post_until_killed,
                                args=(s.url, [mfe_body(i, 3.0) for i in range(k, 4000, 4)],
                                      acked, stop)) for k in range(4)]
    for c in clients:
        c.start()
    wait_for(lambda: len(acked) >= 300)
    s.proc.send_signal(signal.SIGTERM)
    code = s.proc.wait(timeout=20)                     # the unit's TimeoutStopSec
    stop.set()
    for c in clients:
        c.join(timeout=10)
    assert code == 0
    assert any("outcome=stopped" in line for line in s.log_lines)
    with open_database(db_path) as db:
        assert db.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
        stored = {r["event_id"] for r in db.query("SELECT event_id FROM events")}
        assert [e for e, _ in acked if e not in stored] == []
        assert db.query("SELECT count(*) AS n FROM sync_runs WHERE outcome = 'running'")[0][
            "n"] == 0
    again = server(db_path=db_path)                    # the next start finds a clean database
    assert again.post(mfe_body(99999, 3.0))[0] == 200


def test_check_compares_fields_that_carry_no_provenance(tmp_path, run_cli):
    path = tmp_path / "c2.db"
    with open_database(path) as db:
        sigsync.demo(db, start=START)
        with db.write() as conn:
            conn.execute("UPDATE signals SET event_count = event_count + 1 "
                         "WHERE trade_id = (SELECT min(trade_id) FROM signals)")
    code, out, _ = run_cli("check", "--db", path, "--sample", "1000")
    assert code == 1 and ".event_count: stored " in out and "1 problems" in out


def test_the_readme_first_command_demo_then_serve_shows_a_populated_page(server, run_cli,
                                                                         tmp_path):
    """Issue #6 Done 6: the quick start's first command runs `demo` then `serve` on the same
    database; doing exactly that gives a page and an API with every kind of signal in it."""
    import re
    from conftest import ROOT, http
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"\*\*1\..*?```sh\n(.+?)\n```", readme, re.S).group(1)
    steps = [s.strip() for s in first.split("&&")]
    demo = next(s for s in steps if " sigsync.py demo " in s)
    serve = steps[-1]
    db_name = re.search(r"--db (\S+)", demo).group(1)
    assert re.fullmatch(rf"\S*python sigsync\.py serve --db {re.escape(db_name)}", serve), serve
    assert steps.index(demo) == len(steps) - 2
    db_path = tmp_path / db_name
    code, out, err = run_cli("demo", "--db", db_path)
    assert code == 0, err
    with open_database(db_path) as db:
        held = db.query("SELECT count(*) AS n FROM requests")[0]["n"]
    # The quick start run a second time: demo leaves the database as it is, and serve starts.
    code, out, err = run_cli("demo", "--db", db_path)
    assert code == 0 and out.startswith(f"demo: {db_path} already holds {held} requests; left")
    with open_database(db_path) as db:
        assert db.query("SELECT count(*) AS n FROM requests")[0]["n"] == held
    s = server(db_path=db_path)
    status, page = http("GET", s.url + "/")
    assert status == 200 and b"<html" in page.lower()
    status, body = s.get("/api/automated-signals/all-signals?limit=1000")
    assert status == 200
    summary = body["summary"]
    assert summary["total"] == len(body["signals"]) >= 20
    assert all(summary[k] > 0 for k in ("pending", "active", "exited", "cancelled")), summary
    status, health = s.get("/api/health")
    assert status == 200 and health["last_sync"] is not None and health["score"] is not None
    status, rejected = s.get("/api/rejected")
    assert rejected["total"] >= 1


def test_a_version_1_database_is_migrated_in_place_and_keeps_its_log(tmp_path):
    """0.2 databases (user_version 1) had two more indexes on the log, no event_repeats (added
    in 0.5, user_version 3), no count of the dead letters' bytes (0.5.3, user_version 4) and
    signals indexed by symbol as sent, not by market (0.5.4, user_version 5) nor by market and
    direction (0.5.6, user_version 6); opening one drops the indexes, adds the table, counts
    the bytes, indexes the markets and directions, keeps every row, and the webhook path works
    on it."""
    path = tmp_path / "v1.db"
    with open_database(path) as db:
        sigsync.demo(db, start=START)
        with db.write() as conn:
            conn.execute("CREATE INDEX requests_received ON requests(received_at);"
                         "CREATE INDEX events_type_received ON events(event_type, received_at);"
                         "DROP TABLE event_repeats; PRAGMA user_version = 1;"
                         "DELETE FROM counters WHERE name = 'dead_letter_bytes';"
                         "DROP INDEX signals_market; DROP INDEX signals_pending;"
                         "DROP INDEX signals_market_direction; DROP INDEX signals_cancelled;"
                         "CREATE INDEX signals_pending ON signals(symbol, signal_time) "
                         "WHERE status = 'PENDING'")
        before = db.query("SELECT count(*) AS n FROM events")[0]["n"]
    with open_database(path) as db:
        indexes = {r["name"] for r in db.query(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND name NOT LIKE 'sqlite_%'")}
        assert not indexes & {"requests_received", "events_type_received"}
        assert {"requests_source_received", "signals_market", "signals_market_direction",
                "signals_cancelled"} <= indexes
        assert "instr(symbol" in db.query("SELECT sql FROM sqlite_schema "
                                          "WHERE name = 'signals_pending'")[0]["sql"]
        assert db.query("PRAGMA user_version")[0]["user_version"] == sigsync.schema_version() == 6
        migrated_indexes = db.query("SELECT name, sql FROM sqlite_schema WHERE type = 'index' "
                                    "AND name LIKE 'signals_%' ORDER BY name")
        kept = db.query("SELECT raw_body FROM rejected")
        assert len(kept) == 2 and db.query(
            "SELECT value FROM counters WHERE name = 'dead_letter_bytes'")[0]["value"] == sum(
            len(r["raw_body"]) for r in kept)
        assert db.query("SELECT count(*) AS n FROM events")[0]["n"] == before
        assert db.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
        body = json.dumps({"event_type": "MFE_UPDATE", "trade_id": "20251215_094200000_BULLISH",
                           "no_be_mfe": 1.0, "be_mfe": 1.0, "mae_global_r": -0.2}).encode()
        result = sigsync.ingest(db, body, now=dt.datetime(2025, 12, 15, 15, tzinfo=dt.timezone.utc))
        assert not result.events[0]["duplicate"]
        again = sigsync.ingest(db, body, now=dt.datetime(2025, 12, 15, 16, tzinfo=dt.timezone.utc))
        assert again.events[0]["duplicate"]
        assert db.query("SELECT received_at FROM event_repeats") == [
            {"received_at": "2025-12-15T16:00:00.000Z"}]
    with open_database(tmp_path / "fresh.db") as fresh:       # the same indexes, word for word
        assert fresh.query("SELECT name, sql FROM sqlite_schema WHERE type = 'index' "
                           "AND name LIKE 'signals_%' ORDER BY name") == migrated_indexes


def test_a_version_4_database_gets_its_no_mae_deadlines_read_from_the_timeframe(tmp_path):
    """0.5.3 read a daily chart's "1D" as one minute: its materialised no_mae gaps are
    computed again when the database is opened by 0.5.4, health aggregates included."""
    path = tmp_path / "v4.db"
    at = dt.datetime(2025, 12, 15, 15, tzinfo=dt.timezone.utc)
    with open_database(path) as db:
        sigsync.ingest(db, json.dumps({
            "event_type": "ENTRY", "trade_id": "20251215_100000000_BULLISH", "symbol": "MNQ1!",
            "timeframe": "1D", "direction": "Bullish", "entry_price": 25680.0,
            "stop_loss": 25640.0}).encode(), now=at)
        fresh = db.query("SELECT due_base FROM signal_gaps WHERE gap = 'no_mae'")
        counts = db.query("SELECT * FROM health_gap_counts ORDER BY 1, 2, 3")
        with db.write() as conn:                 # as 0.5.3 left it
            conn.execute("UPDATE signal_gaps SET due_base = '2025-12-15T15:01:00.000Z' "
                         "WHERE gap = 'no_mae'; DROP INDEX signals_market; "
                         "DROP INDEX signals_pending; CREATE INDEX signals_pending ON "
                         "signals(symbol, signal_time) WHERE status = 'PENDING'; "
                         "DROP INDEX signals_market_direction; DROP INDEX signals_cancelled; "
                         "PRAGMA user_version = 4")
    assert fresh == [{"due_base": "2025-12-16T15:00:00.000Z"}]
    with open_database(path) as db:
        assert db.query("SELECT due_base FROM signal_gaps WHERE gap = 'no_mae'") == fresh
        assert db.query("SELECT * FROM health_gap_counts ORDER BY 1, 2, 3") == counts
        assert db.query("PRAGMA user_version")[0]["user_version"] == sigsync.schema_version()


def test_the_reads_of_the_request_log_seek_its_one_index(tmp_path):
    """'Last webhook', 'requests in the rate window' and import's 'seen?' seek
    requests_source_received, never scan the log (it grows by every request)."""
    with open_database(tmp_path / "p.db") as db:
        conn = db.reader()
        sql = f"SELECT * FROM ({sigsync.at_now(conn, 'v_global_conditions')})"
        bound = {"now": "2025-12-15T00:00:00.000Z",
                 **{f"set_{c}": None for c in sigsync.SETTING_COLUMNS}}
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, bound)]
        on_log = [step for step in plan if re.search(r"\brequests\b", step)]
        assert len(on_log) >= 2, plan                # the last webhook, the rate window
        for step in on_log:
            assert re.fullmatch(r"SEARCH requests USING (COVERING )?INDEX "
                                r"requests_source_received \(source=\?( AND received_at>\?)?\)",
                                step), plan
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sigsync._KNOWN_REQUEST_SQL,
                                           ("2025-12-15T00:00:00.000Z", b"{}", 0))]
        assert plan == ["SEARCH requests USING INDEX requests_source_received "
                        "(source=? AND received_at=?)"], plan


def test_backup_to_a_directory_or_a_missing_one_says_so_and_leaves_nothing(run_cli, tmp_path):
    db_path = tmp_path / "b.db"
    with open_database(db_path) as db:
        sigsync.demo(db, start=START)
    for dest, message in ((tmp_path, "is a directory"),
                          (tmp_path / "nowhere" / "x.db", "no such directory")):
        before = set(tmp_path.iterdir())
        code, _, err = run_cli("backup", "--db", db_path, dest)
        assert code == 1 and err.startswith("error: backup: ") and message in err, err
        assert "Traceback" not in err
        assert set(tmp_path.iterdir()) == before           # no temporary copy left behind
    code, out, err = run_cli("backup", "--db", db_path, tmp_path / "ok.db")
    assert code == 0, err
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
