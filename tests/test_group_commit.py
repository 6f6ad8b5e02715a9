"""Group commit (Database.transact): waiting writes share one transaction and one fsync, each in
its own savepoint; an answer is given only after the commit that holds it. And the server's
checkpoints, which wait for a quiet moment so that no webhook waits behind one.

Batches are formed deterministically: the test holds the writer lock (as a sync pass would), so
the jobs it starts queue up behind it; releasing the lock lets one leader run them all at once.
"""

import json
import shutil
import threading
import time

import apsw
import pytest

import sigsync
from conftest import START, WsgiClient, open_database, signal_row

TRADE = "20251215_094200000_BULLISH"
ENTRY = json.dumps({"event_type": "ENTRY", "trade_id": TRADE, "direction": "Bullish",
                    "symbol": "MNQ1!", "entry_price": 25683.5, "stop_loss": 25645,
                    "mae_global_r": 0}).encode()
MFE = json.dumps({"event_type": "MFE_UPDATE", "trade_id": TRADE, "symbol": "MNQ1!",
                  "no_be_mfe": 0.8, "be_mfe": 0.5, "mae_global_r": -0.2,
                  "current_price": 25700}).encode()


class Call(threading.Thread):
    """Run func() on its own thread; keep its result or its exception."""

    def __init__(self, func):
        super().__init__(daemon=True)
        self.func, self.result, self.error = func, None, None
        self.start()

    def run(self):
        try:
            self.result = self.func()
        except BaseException as e:
            self.error = e

    def outcome(self):
        self.join(timeout=30)
        assert not self.is_alive(), "the call never returned"
        return self.result, self.error


def wait_until(predicate, what):
    """Poll for a state another thread reaches (not a timing assertion: the bound is generous)."""
    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.001)


@pytest.fixture
def batches(monkeypatch):
    """The size of every batch run, in order."""
    sizes = []
    run = sigsync._run_batch

    def recording(conn, batch):
        sizes.append(len(batch))
        return run(conn, batch)

    monkeypatch.setattr(sigsync, "_run_batch", recording)
    return sizes


@pytest.fixture
def patient(monkeypatch):
    """Jobs may wait 30 s in the queue, so a slow machine cannot cancel the batch being built."""
    monkeypatch.setattr(sigsync, "WRITER_LOCK_SECONDS", 30.0)


def queue_in_order(db, funcs):
    """Start each call once the previous one is queued: the batch runs them in this order."""
    calls = []
    for n, func in enumerate(funcs, 1):
        calls.append(Call(func))
        wait_until(lambda: len(db._jobs) == n, f"{n} jobs queued")
    return calls


def count(db, sql):
    return db.query(sql)[0]["n"]


def test_mixed_jobs_in_one_batch_each_get_their_own_result(db, batches, patient):
    def failing(conn):
        conn.execute("INSERT INTO counters(name, value) VALUES ('written by a failing job', 1)")
        raise ValueError("this job fails")

    bad = sigsync.Rejected("not json", "invalid_json")
    with db.lock:
        calls = queue_in_order(db, [
            lambda: sigsync.ingest(db, ENTRY, now=START),
            lambda: db.transact(failing),
            lambda: sigsync.ingest(db, ENTRY, now=START),                # same body again
            lambda: sigsync.ingest(db, MFE, now=START),                  # same trade again
            lambda: sigsync.reject(db, b"{oops", bad, now=START),
        ])
    (entry, e1), (_, failure), (again, e3), (mfe, e4), (_, e5) = [c.outcome() for c in calls]

    assert batches == [5]
    assert (e1, e3, e4, e5) == (None, None, None, None)
    assert isinstance(failure, ValueError) and str(failure) == "this job fails"
    assert entry.events[0]["duplicate"] is False
    assert again.events[0] == {**entry.events[0], "duplicate": True}
    assert mfe.events[0]["duplicate"] is False
    # the failing job's write is gone, everything else is there
    assert count(db, "SELECT count(*) AS n FROM counters WHERE name LIKE 'written by%'") == 0
    assert count(db, "SELECT count(*) AS n FROM requests") == 3
    assert count(db, "SELECT count(*) AS n FROM events") == 2
    assert count(db, "SELECT count(*) AS n FROM rejected WHERE code = 'invalid_json'") == 1
    assert count(db, "SELECT value AS n FROM counters WHERE name = 'duplicates'") == 1
    # the MFE was folded on top of the ENTRY written earlier in the same transaction
    row = signal_row(db, TRADE)
    assert (row["status"], row["entry_price"], row["no_be_mfe"], row["mae"]) == (
        "ACTIVE", 25683.5, 0.8, -0.2)


def test_the_fold_of_one_trade_twice_in_a_batch_equals_two_separate_commits(
        db, batches, patient, tmp_path):
    with db.lock:
        calls = queue_in_order(db, [lambda: sigsync.ingest(db, ENTRY, now=START),
                                    lambda: sigsync.ingest(db, MFE, now=START)])
    assert [c.outcome()[1] for c in calls] == [None, None]
    assert batches == [2]
    separate = sigsync.open_db(str(tmp_path / "separate.db"))
    try:
        sigsync.ingest(separate, ENTRY, now=START)
        sigsync.ingest(separate, MFE, now=START)
        assert signal_row(db, TRADE) == signal_row(separate, TRADE)
    finally:
        separate.close()


@pytest.mark.parametrize("position", [0, 1, 2])   # the first job runs without a savepoint
def test_a_statement_error_in_one_job_does_not_poison_the_batch(db, batches, patient, position):
    def broken(conn):
        conn.execute("INSERT INTO counters(name, value) VALUES ('half done', 1)")
        conn.execute("INSERT INTO counters(name, value) VALUES ('half done', 2)")  # PK clash

    funcs = [lambda: sigsync.ingest(db, ENTRY, now=START),
             lambda: sigsync.ingest(db, MFE, now=START)]
    funcs.insert(position, lambda: db.transact(broken))
    with db.lock:
        calls = queue_in_order(db, funcs)
    outcomes = [c.outcome() for c in calls]
    _, error = outcomes.pop(position)
    (entry, e1), (mfe, e2) = outcomes
    assert batches == [3]
    assert isinstance(error, apsw.ConstraintError)
    assert (e1, e2) == (None, None)
    assert count(db, "SELECT count(*) AS n FROM counters WHERE name = 'half done'") == 0
    stored = {r["event_id"] for r in db.query("SELECT event_id FROM events")}
    assert stored == {entry.events[0]["event_id"], mfe.events[0]["event_id"]}
    assert signal_row(db, TRADE)["no_be_mfe"] == 0.8


def test_a_lone_job_that_fails_leaves_nothing_behind(db, batches):
    def broken(conn):
        conn.execute("INSERT INTO counters(name, value) VALUES ('half done', 1)")
        raise ValueError("no")

    with pytest.raises(ValueError):
        db.transact(broken)
    assert batches == [1]
    assert count(db, "SELECT count(*) AS n FROM counters WHERE name = 'half done'") == 0
    assert db.writer.getautocommit()
    assert sigsync.ingest(db, ENTRY, now=START).events[0]["duplicate"] is False


def test_a_storage_error_in_one_job_fails_the_whole_batch_and_stores_nothing(
        db, batches, patient):
    def disk_trouble(conn):
        raise apsw.IOError("simulated I/O error")

    with db.lock:
        calls = queue_in_order(db, [lambda: sigsync.ingest(db, ENTRY, now=START),
                                    lambda: db.transact(disk_trouble),
                                    lambda: sigsync.ingest(db, MFE, now=START)])
    errors = [c.outcome()[1] for c in calls]
    assert batches == [3]
    assert all(isinstance(e, sigsync.StorageUnavailable) for e in errors)
    assert count(db, "SELECT count(*) AS n FROM requests") == 0
    assert count(db, "SELECT count(*) AS n FROM events") == 0


def test_a_batch_that_cannot_begin_answers_unavailable_for_every_job(db, tmp_path, patient):
    db.writer.setbusytimeout(50)
    blocker = apsw.Connection(db.path)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with db.lock:
            calls = queue_in_order(db, [lambda: sigsync.ingest(db, ENTRY, now=START),
                                        lambda: sigsync.ingest(db, MFE, now=START)])
        errors = [c.outcome()[1] for c in calls]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(e, sigsync.StorageUnavailable) for e in errors)
    assert count(db, "SELECT count(*) AS n FROM requests") == 0


def test_a_job_queued_past_its_deadline_gets_unavailable_and_is_never_written(
        db, batches, monkeypatch):
    inside, release = threading.Event(), threading.Event()

    def slow(conn):
        conn.execute("INSERT INTO counters(name, value) VALUES ('slow job', 1)")
        inside.set()
        assert release.wait(30)
        return "slow done"

    monkeypatch.setattr(sigsync, "WRITER_LOCK_SECONDS", 30.0)
    running = Call(lambda: db.transact(slow))
    assert inside.wait(30)                   # a batch is running and holds the writer
    monkeypatch.setattr(sigsync, "WRITER_LOCK_SECONDS", 0.05)
    _, error = Call(lambda: sigsync.ingest(db, ENTRY, now=START)).outcome()
    assert isinstance(error, sigsync.StorageUnavailable)
    assert len(db._jobs) == 0                # cancelled: it left the queue
    release.set()
    assert running.outcome() == ("slow done", None)
    assert batches == [1]                    # the expired job never ran
    assert count(db, "SELECT count(*) AS n FROM requests") == 0
    assert count(db, "SELECT count(*) AS n FROM counters WHERE name = 'slow job'") == 1
    # the resend TradingView makes after the 503 is stored normally
    assert sigsync.ingest(db, ENTRY, now=START).events[0]["duplicate"] is False


def test_a_leader_does_not_start_a_job_whose_deadline_passed_before_its_thread_woke(db):
    expired = sigsync._Job(lambda conn: "must not run", time.monotonic() - 1)
    fresh = sigsync._Job(lambda conn: "runs", time.monotonic() + 30)
    with db._jobs_mutex:
        db._jobs.extend([expired, fresh])
        batch, cancelled = db._take_batch()
    assert batch == [fresh] and fresh.state == sigsync._Job.RUNNING
    assert cancelled == [expired]
    with pytest.raises(sigsync.StorageUnavailable):
        expired.outcome()


def test_a_job_waiting_for_a_held_writer_lock_gets_unavailable(db, monkeypatch):
    monkeypatch.setattr(sigsync, "WRITER_LOCK_SECONDS", 0.05)
    with db.lock:                            # e.g. a long sync pass
        _, error = Call(lambda: sigsync.ingest(db, ENTRY, now=START)).outcome()
    assert isinstance(error, sigsync.StorageUnavailable)
    assert not db._leading and len(db._jobs) == 0
    assert count(db, "SELECT count(*) AS n FROM requests") == 0


def test_batches_are_capped(db, batches, patient, monkeypatch):
    monkeypatch.setattr(sigsync, "GROUP_COMMIT_MAX", 3)
    bodies = [json.dumps({"event_type": "HEARTBEAT", "n": i}).encode() for i in range(7)]
    with db.lock:
        calls = queue_in_order(db, [lambda b=b: sigsync.ingest(db, b, now=START)
                                    for b in bodies])
    assert [c.outcome()[1] for c in calls] == [None] * 7
    assert batches == [3, 3, 1]
    assert count(db, "SELECT count(*) AS n FROM requests") == 7


def test_a_lone_write_does_not_wait_for_company(db, batches):
    for i in range(3):
        sigsync.ingest(db, json.dumps({"event_type": "HEARTBEAT", "n": i}).encode(), now=START)
    assert batches == [1, 1, 1]


def test_concurrent_webhooks_through_the_app_are_all_stored(db, clock, config, batches):
    client = WsgiClient(sigsync.make_app(db, clock, config))
    bodies = [json.dumps({"event_type": "MFE_UPDATE", "trade_id": TRADE, "symbol": "MNQ1!",
                          "no_be_mfe": i / 100, "be_mfe": 0, "mae_global_r": -0.1,
                          "current_price": 25600 + i}).encode() for i in range(240)]
    bodies += bodies[:40]                                     # resends: duplicates
    answers = [None] * len(bodies)

    def post(k):
        for i in range(k, len(bodies), 12):
            r = client.post("/api/automated-signals/webhook", bodies[i])
            answers[i] = (r.status, r.json())

    threads = [threading.Thread(target=post, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {r["event_id"]: json.loads(r["payload"])
              for r in db.query("SELECT event_id, payload FROM events")}
    assert len(stored) == 240
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert stored[answer["event_id"]]["no_be_mfe"] == json.loads(bodies[i])["no_be_mfe"]
    assert sum(a["duplicate"] for _, a in answers) == 40
    assert sum(batches) == len(bodies)
    assert signal_row(db, TRADE)["no_be_mfe"] == 2.39          # the running maximum


def test_every_2xx_from_a_real_server_under_concurrency_is_in_events(server, tmp_path):
    s = server(db_path=tmp_path / "many.db")
    bodies = [json.dumps({"event_type": "MFE_UPDATE", "symbol": "MNQ1!",
                          "trade_id": f"20251215_{9 + i % 6:02d}{i % 60:02d}00000_BULLISH",
                          "no_be_mfe": i / 1000, "be_mfe": 0, "mae_global_r": -0.1,
                          "current_price": 25600 + i}).encode() for i in range(600)]
    bodies += bodies[::10]                                    # resends in the same storm
    answers = {}

    def post(k):
        for i in range(k, len(bodies), 24):
            answers[i] = s.post(bodies[i], content_type="text/plain")

    threads = [threading.Thread(target=post, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.stop()
    assert sorted(status for status, _ in answers.values()) == [200] * len(bodies)
    with open_database(s.db_path) as db:
        stored = {r["event_id"]: json.loads(r["payload"])
                  for r in db.query("SELECT event_id, payload FROM events")}
        assert count(db, "SELECT count(*) AS n FROM requests") == len(bodies)
    assert len(stored) == 600
    for i, (_, answer) in answers.items():
        assert stored[answer["event_id"]]["no_be_mfe"] == json.loads(bodies[i])["no_be_mfe"]
    assert sum(answer["duplicate"] for _, answer in answers.values()) == 60


# --------------------------------------------------------------------------------------------
# Checkpoints: at a quiet moment, or at once past the WAL bound

@pytest.mark.parametrize("frames, since_commit, since_checkpoint, due", [
    (0, 99, 99, False),                                  # nothing to copy
    (1, 0.25, 5, True),                                  # quiet, period over: the boundaries
    (1, 0.2499, 5, False),                               # a commit a moment ago: busy
    (1, 99, 4.999, False),                               # quiet, but the period is not over
    (1, 0, 9.999, False),                                # busy: waits another period...
    (1, 0, 10, True),                                    # ...and no longer (a steady trickle)
    (sigsync.CHECKPOINT_MAX_FRAMES - 1, 0, 0, False),    # busy, under the bound: waits
    (sigsync.CHECKPOINT_MAX_FRAMES, 0, 0, True),         # at the bound: at once, busy or not
])
def test_checkpoint_due(frames, since_commit, since_checkpoint, due):
    assert sigsync.CHECKPOINT_QUIET_SECONDS == 0.25
    assert sigsync.checkpoint_due(frames, since_commit, since_checkpoint, 5) is due


def server_db(tmp_path, writes):
    """A database opened as serve() opens it, with `writes` committed webhook-like jobs."""
    db = sigsync.open_db(str(tmp_path / "ckpt.db"), autocheckpoint=False)
    for i in range(writes):
        db.transact(lambda conn, i=i: sigsync._bump(conn, f"test:{i}"))
    return db


def test_the_server_checkpoints_when_the_writer_is_quiet(tmp_path):
    db = server_db(tmp_path, 20)
    try:
        frames, committed = db.wal_frames, db.last_commit
        assert frames > 0 and db.wal_pending == frames      # the WAL hook counts the frames
        db.last_checkpoint = committed - 5
        assert db.checkpoint_when_due(5, now=committed + 0.1) is None      # busy: waits
        assert db.wal_pending == frames
        db.last_checkpoint = committed - 4
        assert db.checkpoint_when_due(5, now=committed + 0.5) is None      # period not over
        assert db.checkpoint_when_due(5, now=committed + 1) == [(0, frames, frames)]
        assert db.wal_pending == 0 and db.last_checkpoint > committed
        assert db.checkpoint_when_due(5, now=committed + 99) is None       # nothing to copy
        db.transact(lambda conn: sigsync._bump(conn, "after"))             # the WAL restarts
        assert 0 < db.wal_pending == db.wal_frames < frames
    finally:
        db.close()


def test_a_wal_past_the_bound_is_checkpointed_even_while_busy(tmp_path, monkeypatch):
    db = server_db(tmp_path, 3)
    try:
        monkeypatch.setattr(sigsync, "CHECKPOINT_MAX_FRAMES", db.wal_pending + 1)
        assert db.checkpoint_when_due(5, now=db.last_commit) is None
        db.transact(lambda conn: sigsync._bump(conn, "one more"))
        frames = db.wal_pending
        assert frames >= sigsync.CHECKPOINT_MAX_FRAMES
        assert db.checkpoint_when_due(5, now=db.last_commit) == [(0, frames, frames)]
    finally:
        db.close()


def test_frames_copied_already_do_not_count_when_the_wal_cannot_restart(tmp_path):
    """A reader inside the WAL at the next write keeps it from restarting: the frames the
    checkpoint copied stay in the file, and only the new ones are pending."""
    db = server_db(tmp_path, 10)
    reader = sigsync._connect(db.path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM counters").fetchall()      # a snapshot, held
        (_, frames, copied), = db.checkpoint()
        assert frames == copied > 0 and db.wal_pending == 0
        db.transact(lambda conn: sigsync._bump(conn, "while read"))
        assert db.wal_frames > frames                                   # no restart
        assert 0 < db.wal_pending == db.wal_frames - frames
        reader.execute("COMMIT")
        db.checkpoint()
        db.transact(lambda conn: sigsync._bump(conn, "after"))         # the WAL restarts
        assert db.wal_frames < frames and db.wal_pending == db.wal_frames
    finally:
        reader.close()
        db.close()


def test_a_checkpoint_that_cannot_run_is_tried_again(tmp_path):
    """Another connection checkpointing (a CLI command's autocheckpoint, say) holds the
    checkpoint lock: PASSIVE gives up at once, and nothing is taken as copied."""
    db = server_db(tmp_path, 10)
    reader = sigsync._connect(db.path)
    other = apsw.Connection(db.path)
    waiting, release = threading.Event(), threading.Event()

    def held(tries):                # the other checkpoint waits for the reader, lock held
        waiting.set()
        release.wait(20)
        return False

    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM counters").fetchall()
        db.transact(lambda conn: sigsync._bump(conn, "past the reader"))
        other.set_busy_handler(held)
        full = Call(lambda: other.execute("PRAGMA wal_checkpoint(FULL)").fetchall())
        wait_until(waiting.is_set, "the other connection holds the checkpoint lock")
        pending, last = db.wal_pending, db.last_checkpoint
        assert db.checkpoint_when_due(5, now=db.last_commit + 99) == [(1, -1, -1)]
        assert db.wal_pending == pending > 0 and db.last_checkpoint == last
        release.set()
        full.outcome()
        reader.execute("COMMIT")
        assert db.checkpoint_when_due(5, now=db.last_commit + 99)[0][0] == 0
    finally:
        release.set()
        other.close()
        reader.close()
        db.close()


def test_the_scheduler_asks_every_second_with_the_configured_period(db, clock):
    config = sigsync.Config(db=db.path, checkpoint_seconds=7)
    jobs = [j for j in sigsync.make_scheduler(db, clock, config).get_jobs()
            if j.job_func.args[0] == "checkpoint"]
    assert [(j.interval, j.unit, j.job_func.args[1:]) for j in jobs] == [
        (sigsync.CHECKPOINT_TICK_SECONDS, "seconds", (db.checkpoint_when_due, 7))]


def test_the_cli_keeps_sqlite_autocheckpoint(tmp_path):
    db = sigsync.open_db(str(tmp_path / "cli.db"))
    try:
        db.transact(lambda conn: sigsync._bump(conn, "x"))
        assert db.wal_pending == 0                       # no hook: SQLite checkpoints itself
        assert db.writer.execute("PRAGMA wal_autocheckpoint").fetchall() == [(1000,)]
    finally:
        db.close()


def test_a_quiet_server_has_its_events_in_the_database_file(server, tmp_path):
    """Seen from outside: after a few webhooks and a quiet moment, the main database file
    alone (without its WAL) holds them, so the server's checkpoint job ran."""
    s = server("--checkpoint-seconds", "1", db_path=tmp_path / "quiet.db")
    for i in range(5):
        assert s.post(MFE.replace(b"0.8", b"0.8%d" % i))[0] == 200
    copy = tmp_path / "main-file-only.db"

    def checkpointed():
        shutil.copyfile(s.db_path, copy)        # the main file, not -wal or -shm
        try:
            conn = apsw.Connection(str(copy))
            try:
                return conn.execute("SELECT count(*) FROM events").fetchall()[0][0] == 5
            finally:
                conn.close()
        except apsw.Error:
            return False                        # no table yet, or a copy taken mid-write

    wait_until(checkpointed, "the events reach the database file")


# --- the fsync itself ------------------------------------------------------------------------

class _SyncRecordingFile(apsw.VFSFile):
    def __init__(self, journal, name, flags):
        self.journal = journal
        self.path = name.filename() if hasattr(name, "filename") else (name or "")
        super().__init__("unix", name, flags)

    def xSync(self, flags):
        result = super().xSync(flags)
        self.journal.append(("fsync", self.path.rsplit("/", 1)[-1]))
        return result


class _SyncRecordingVFS(apsw.VFS):
    """The OS VFS, made the default for the test, noting every completed fsync."""

    def __init__(self, journal):
        self.journal = journal
        super().__init__("sigsync-test-syncs", "unix", makedefault=True)

    def xOpen(self, name, flags):
        return _SyncRecordingFile(self.journal, name, flags)


@pytest.fixture
def journal():
    entries = []
    vfs = _SyncRecordingVFS(entries)
    try:
        yield entries
    finally:
        vfs.unregister()


def test_a_webhook_is_answered_only_after_its_wal_was_fsynced(tmp_path, journal):
    """What a crash test cannot show (a killed process loses nothing the kernel holds): the
    WAL reaches the disk, with one fsync per commit, before the answer is given. With
    synchronous=NORMAL or OFF there would be no fsync here at all."""
    db = sigsync.open_db(str(tmp_path / "s.db"), autocheckpoint=False)     # as serve opens it
    try:
        assert db.writer.execute("PRAGMA synchronous").fetchall() == [(2,)]        # FULL
        assert db.writer.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
        app = sigsync.make_app(db, sigsync.FixedClock(START),
                               sigsync.Config(db=str(tmp_path / "s.db")))
        original = app.__call__

        def answering(environ, start_response):
            def noted(status, headers, exc_info=None):
                journal.append(("answer", status.split()[0]))
                return start_response(status, headers, exc_info)
            return original(environ, noted)

        client = WsgiClient(answering)
        for body in (ENTRY, MFE):
            journal.clear()
            response = client.post("/api/automated-signals/webhook", body)
            assert response.status == 200, response.data
            assert journal == [("fsync", "s.db-wal"), ("answer", "200")], journal
        journal.clear()
        assert client.post("/api/automated-signals/webhook", b"{").status == 400
        assert journal == [("fsync", "s.db-wal"), ("answer", "400")]       # the dead letter
    finally:
        db.close()
