#!/usr/bin/env python3
"""sigsync: a durable, self-checking record keeper for TradingView signal webhooks.

One process, one SQLite file. Sections, in dependency order (search for the banner):

    CONFIGURATION   settings from flags, SIGSYNC_* variables and *_FILE secrets
    ERRORS          the exception hierarchy and the one JSON error shape
    CLOCK           injected time; New York conversions; trade_id; sessions
    DATABASE        open_db, schema and migrations, the writer lock
    INGEST          raw body -> validated, normalised events -> the log
    LIFECYCLE       the fold: events -> one signal row, order-independent
    HEALTH          gaps and scores: the views of schema.sql, run with an injected "now"
    RECONCILIATION  the tiers, cancellation by alternation, sync_once, the audit trail
    OPERATIONS      rebuild, replay-rejected, demo, backup, check, export, import, metrics
    WEB APP         make_app: webhook, read endpoints, one error shape
    SERVICE         waitress server, scheduler, sd_notify, graceful shutdown
    CLI             cmd_* handlers and main()
"""

import argparse
import base64
import collections
import dataclasses
import datetime as dt
import functools
import hashlib
import heapq
import html
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import zoneinfo

import apsw
import bottle
import schedule

__version__ = "0.5.7"
HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("sigsync")


# ============================================================================================
# CONFIGURATION
# ============================================================================================

@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration knob: its flag, its environment variable, default and meaning."""
    name: str
    default: object
    kind: type
    help: str

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    @property
    def env(self):
        return "SIGSYNC_" + self.name.upper()


SETTINGS = [
    Setting("db", "./sigsync.db", str, "SQLite database file"),
    Setting("host", "127.0.0.1", str, "address to listen on"),
    Setting("port", 8080, int, "TCP port to listen on (0: any free port, printed at start)"),
    Setting("secret", None, str, "webhook secret, sent as ?token= or a \"secret\" body field "
            "(also SIGSYNC_SECRET_FILE or the systemd credential 'secret')"),
    Setting("read_token", None, str, "token for the read API when listening beyond loopback "
            "or behind a reverse proxy (?token= or Authorization: Bearer; also "
            "SIGSYNC_READ_TOKEN_FILE)"),
    Setting("allow_ips", "", list, "comma list of client addresses/networks allowed to post "
            "webhooks (empty: any). TradingView: 52.89.214.238,34.212.75.30,54.218.53.128,52.32.178.7"),
    Setting("trusted_proxies", "", list, "comma list of proxy addresses whose X-Forwarded-For "
            "is believed (e.g. 127.0.0.1 behind nginx)"),
    Setting("max_body", 65536, int, "largest accepted request body in bytes (larger: 413)"),
    Setting("max_dead_letters", 10000, int, "dead letters kept; the oldest are dropped beyond"),
    Setting("max_dead_letter_bytes", 64 * 1024 * 1024, int, "bytes of dead-letter bodies "
            "kept; the oldest are dropped beyond (the newest is always kept)"),
    Setting("threads", 4, int, "HTTP worker threads"),
    Setting("connection_limit", 100, int, "open HTTP connections before new ones wait"),
    Setting("insecure", False, bool, "allow a non-loopback bind without a secret/read token"),
    Setting("log_level", "INFO", str, "DEBUG, INFO, WARNING or ERROR"),
    Setting("display_tz", "America/New_York", str, "time zone for display (storage is UTC)"),
    Setting("checkpoint_seconds", 5, int, "least time between two WAL checkpoints of the "
            "running server (each waits for a quiet moment; see Durability and locking)"),
    Setting("sync_seconds", 120, int, "period of the reconciliation loop"),
    Setting("stale_mfe_seconds", 600, int, "an open trade with no update for longer has a "
            "stale_mfe gap"),
    Setting("stale_pending_seconds", 3600, int, "a signal pending for longer has a "
            "stale_pending gap"),
    Setting("silent_seconds", 900, int, "no webhook for longer: the indicator is silent"),
    Setting("health_threshold", 90, int, "`health` exits 1 when the score is below this"),
    Setting("price_fresh_seconds", 600, int, "a price sample older than this is not used "
            "to estimate excursions or infer exits"),
]
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass
class Config:
    db: str = "./sigsync.db"
    host: str = "127.0.0.1"
    port: int = 8080
    secret: str = None
    read_token: str = None
    allow_ips: list = dataclasses.field(default_factory=list)
    trusted_proxies: list = dataclasses.field(default_factory=list)
    max_body: int = 65536
    max_dead_letters: int = 10000
    max_dead_letter_bytes: int = 64 * 1024 * 1024
    threads: int = 4
    connection_limit: int = 100
    insecure: bool = False
    log_level: str = "INFO"
    display_tz: str = "America/New_York"
    checkpoint_seconds: int = 5
    sync_seconds: int = 120
    stale_mfe_seconds: int = 600
    stale_pending_seconds: int = 3600
    silent_seconds: int = 900
    health_threshold: int = 90
    price_fresh_seconds: int = 600

    @property
    def loopback_only(self):
        return _is_loopback(self.host)


def _parse_setting(setting, raw):
    if setting.kind is bool:
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if setting.kind is int:
        return int(raw)
    if setting.kind is list:
        return [p.strip() for p in str(raw).split(",") if p.strip()]
    return raw


def load_config(args=None, environ=None):
    """Build a Config: flag, else SIGSYNC_* variable, else SIGSYNC_*_FILE, else default."""
    environ = os.environ if environ is None else environ
    values = {}
    for s in SETTINGS:
        raw = getattr(args, s.name, None) if args is not None else None
        if raw is None and s.env in environ:
            raw = environ[s.env]
        if raw is None and s.env + "_FILE" in environ:
            with open(environ[s.env + "_FILE"], encoding="utf-8") as f:
                raw = f.read().strip()
        if raw is None and s.kind is str and environ.get("CREDENTIALS_DIRECTORY"):
            path = os.path.join(environ["CREDENTIALS_DIRECTORY"], s.name)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    raw = f.read().strip()
        values[s.name] = s.default if raw is None else raw
        if values[s.name] is not None:
            values[s.name] = _parse_setting(s, values[s.name])
    _check_time_zone(values["display_tz"])
    return Config(**values)


def _check_time_zone(name):
    """--display-tz must name a zone of the IANA database that a browser knows too: the page
    shows every time in it. (zoneinfo also loads files that are not zones to a browser:
    "localtime", "Factory", and the copies under posix/ and right/.)"""
    if name not in _display_zones():
        raise ValueError(f"display_tz: {name!r} is not a time zone of the IANA database "
                         "(e.g. America/New_York, Europe/London, UTC)")


@functools.lru_cache(maxsize=1)
def _display_zones():
    return frozenset(z for z in zoneinfo.available_timezones() if z not in ("Factory", "localtime")
                     and not z.startswith(("posix/", "right/")))


def _is_loopback(host):
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _in_networks(addr, networks):
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


# ============================================================================================
# ERRORS
# ============================================================================================

class SigsyncError(Exception):
    """Base of every error sigsync raises on purpose."""
    status = 500
    code = "internal_error"

    def __init__(self, message, code=None, status=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class Rejected(SigsyncError):
    """The request is refused (4xx); its raw body goes to the dead letters."""
    status = 400
    code = "invalid"


class StorageUnavailable(SigsyncError):
    """The database could not take the write in time: 503, and TradingView resends."""
    status = 503
    code = "storage_unavailable"


class NotFound(SigsyncError):
    status = 404
    code = "not_found"


class BadRequest(SigsyncError):
    """A read request with a bad parameter (not a webhook: nothing is dead-lettered)."""
    status = 400
    code = "bad_request"


def error_body(code, message):
    return {"ok": False, "error": {"code": code, "message": message}}


# ============================================================================================
# CLOCK
# ============================================================================================

UTC = dt.timezone.utc
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


class Clock:
    """The real clock. Domain code never calls time itself: it is handed `now`."""

    def now(self):
        return dt.datetime.now(UTC)


class FixedClock(Clock):
    """A settable clock for tests and the demo."""

    def __init__(self, start):
        self.current = start if isinstance(start, dt.datetime) else parse_time(start, "start")[0]

    def now(self):
        return self.current

    def advance(self, seconds):
        self.current += dt.timedelta(seconds=seconds)
        return self.current


def iso(moment):
    """UTC ISO-8601 with milliseconds and Z: the one stored time format."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


def from_iso(text):
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def ny_local_to_utc(naive):
    """New York wall-clock time -> aware UTC.

    Deterministic at the DST edges (PEP 495 fold=0): an ambiguous time (the repeated hour in
    November) is the first occurrence, i.e. daylight time; a non-existent time (the skipped hour
    in March) is read with the offset in force before the jump, so 02:30 becomes 03:30 EDT.
    """
    return naive.replace(tzinfo=NEW_YORK, fold=0).astimezone(UTC)


_EPOCH_MS_MIN = 946684800000      # 2000-01-01: smaller numbers are taken as epoch seconds
_TIME_MIN = dt.datetime(1990, 1, 1, tzinfo=UTC)
_TIME_MAX = dt.datetime(2100, 1, 1, tzinfo=UTC)
_TIME_RANGE = "1990-01-01 to 2099-12-31 UTC"
# Years a wall-clock or offset time may name before it is converted: the conversion itself
# overflows at the ends of the calendar (9999-12-31T23:00-05:00), and before 1900 New York's
# zone is local mean time. One year of slack each side; the exact bound is checked after.
_YEARS = range(_TIME_MIN.year - 1, _TIME_MAX.year + 1)
_TIME_OF_DAY = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d{1,6})?)?$")


def parse_time(value, field, naive_zone=None):
    """A payload time -> (aware UTC datetime, kind). Raises Rejected naming the field.

    Accepted: epoch milliseconds (number or digit string; below year 2000 read as seconds),
    ISO-8601 with Z or an offset (taken as is), naive ISO-8601 (New York wall clock, or UTC
    when naive_zone is UTC).
    """
    if isinstance(value, bool):
        raise Rejected(f"{field}: expected a time, got a boolean", "invalid_field")
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
        value = float(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise Rejected(f"{field}: not a finite number", "invalid_field")
        seconds = value / 1000.0 if abs(value) >= _EPOCH_MS_MIN else float(value)
        try:
            moment = dt.datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise Rejected(f"{field}: epoch value out of range: {value!r}", "invalid_field")
        kind = "epoch"
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise Rejected(f"{field}: not a time: {value[:60]!r} (use ISO-8601 or epoch ms)",
                           "invalid_field")
        if moment.year not in _YEARS:
            raise Rejected(f"{field}: time out of range ({_TIME_RANGE}): {value[:60]!r}",
                           "invalid_field")
        if moment.tzinfo is None and naive_zone is UTC:
            moment, kind = moment.replace(tzinfo=UTC), "utc"
        elif moment.tzinfo is None:
            moment, kind = ny_local_to_utc(moment), "new_york"
        else:
            moment, kind = moment.astimezone(UTC), "offset"
    else:
        raise Rejected(f"{field}: expected a time, got {type(value).__name__}", "invalid_field")
    if not _TIME_MIN <= moment < _TIME_MAX:
        raise Rejected(f"{field}: time out of range ({_TIME_RANGE}): {value!r}", "invalid_field")
    return moment, kind


TRADE_ID = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})_([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{3})?"
                      r"_(BULLISH|BEARISH)")


def parse_trade_id(trade_id):
    """`YYYYMMDD_HHMMSSmmm_BULLISH|BEARISH` (or the legacy 6-digit time) -> (UTC, direction).

    The time is the triangle bar's open in New York. Raises Rejected if the id is not valid.
    """
    m = TRADE_ID.fullmatch(trade_id) if isinstance(trade_id, str) else None
    if not m:
        raise Rejected(f"trade_id: {str(trade_id)[:60]!r} does not match "
                       "YYYYMMDD_HHMMSSmmm_BULLISH|BEARISH", "invalid_trade_id")
    y, mo, d, h, mi, s, ms, side = m.groups()
    try:
        naive = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s),
                            int(ms or 0) * 1000)
    except ValueError:
        raise Rejected(f"trade_id: {trade_id!r} has an impossible date or time",
                       "invalid_trade_id")
    moment = ny_local_to_utc(naive) if naive.year in _YEARS else None
    if moment is None or not _TIME_MIN <= moment < _TIME_MAX:
        raise Rejected(f"trade_id: {trade_id!r} is out of range ({_TIME_RANGE})",
                       "invalid_trade_id")
    return moment, side.capitalize()


SESSIONS = ["ASIA", "LONDON", "NY PRE", "NY AM", "NY LUNCH", "NY PM", "AFTER_HOURS"]


def session_of(moment):
    """Trading session of a triangle time, from its New York wall-clock time (SPEC 1.4)."""
    local = moment.astimezone(NEW_YORK)
    minutes = local.hour * 60 + local.minute
    if minutes >= 20 * 60:
        return "ASIA"
    if minutes < 6 * 60:
        return "LONDON"
    if minutes < 8 * 60 + 30:
        return "NY PRE"
    if minutes < 12 * 60:
        return "NY AM"
    if minutes < 13 * 60:
        return "NY LUNCH"
    if minutes < 16 * 60:
        return "NY PM"
    return "AFTER_HOURS"


def ny_date(moment):
    return moment.astimezone(NEW_YORK).date().isoformat()


# ============================================================================================
# DATABASE
# ============================================================================================

SCHEMA_PATH = os.path.join(HERE, "schema.sql")
# A signal's market in SQL: symbol_key() (the symbol without its exchange prefix), written as
# schema.sql's indexes on signals write it, so that a query repeating it uses them.
MARKET_SQL = "replace(substr(symbol, instr(symbol, ':') + 1), ' ', '')"
# Its direction: as received, else the one its trade_id names; always Bullish or Bearish.
DIRECTION_SQL = "coalesce(direction, id_direction)"
VIEWS_MARKER = "-- @views"
BUSY_TIMEOUT_MS = 1200          # with the writer lock wait below, a 503 comes within ~2.3 s
WRITER_LOCK_SECONDS = 1.0       # also how long a job may wait in the group-commit queue
GROUP_COMMIT_MAX = 64           # jobs in one group-commit transaction, at most
# The server's checkpoints. A checkpoint holds the writer lock while it copies the WAL's pages
# into the database and fsyncs it: 20-30 ms after 5 s of full load, a stall for every webhook
# in flight (it set the burst's p99). So it waits for a quiet moment, and only a WAL past the
# bound is checkpointed at once, busy or not (measured: tests/bench.py, README Performance).
CHECKPOINT_TICK_SECONDS = 1     # how often the jobs thread asks "is a checkpoint due?"
CHECKPOINT_QUIET_SECONDS = 0.25  # no commit for this long: a bar close's burst is over
CHECKPOINT_MAX_FRAMES = 16384   # 64 MB of WAL at 4 KB pages: checkpoint even when busy

# Numbered, append-only migrations: MIGRATIONS[n] takes user_version n to n + 1. Each runs in
# one transaction with the version bump inside. A fresh database gets schema.sql directly.
MIGRATIONS = {
    # 0.3: two indexes the webhook paid for on every request and no query needed.
    1: "DROP INDEX IF EXISTS requests_received; DROP INDEX IF EXISTS events_type_received;",
    # 0.5: a repeated MFE update keeps its trade alive (see schema.sql; a frozen copy of its
    # CREATE TABLE, as it was in that release).
    2: "CREATE TABLE event_repeats (event_id INTEGER NOT NULL REFERENCES events(event_id),"
       " request_id INTEGER NOT NULL REFERENCES requests(request_id),"
       " received_at TEXT NOT NULL, symbol_key TEXT, PRIMARY KEY (event_id, request_id))"
       " WITHOUT ROWID;",
    # 0.5.3: the dead letters' bytes, counted once here, then kept by trigger (schema.sql).
    3: "INSERT INTO counters(name, value) SELECT 'dead_letter_bytes', "
       "coalesce(sum(length(CAST(raw_body AS BLOB))), 0) FROM rejected WHERE true "
       "ON CONFLICT(name) DO UPDATE SET value = excluded.value;",
    # 0.5.4: alternation compares markets, not symbols as sent (schema.sql: signals_market).
    4: f"CREATE INDEX signals_market ON signals({MARKET_SQL}, signal_time, trade_id); "
       f"DROP INDEX IF EXISTS signals_pending; CREATE INDEX signals_pending ON "
       f"signals({MARKET_SQL}, signal_time) WHERE status = 'PENDING';",
    # 0.5.6: alternation seeks by market and direction (schema.sql: signals_market_direction).
    5: f"CREATE INDEX signals_market_direction ON signals({MARKET_SQL}, {DIRECTION_SQL}, "
       f"signal_time, trade_id); CREATE INDEX signals_cancelled ON signals({MARKET_SQL}, "
       f"{DIRECTION_SQL}, signal_time, cancelled_at, trade_id) WHERE status = 'CANCELLED';",
}
# What a migration to version n must do once the views are in place (they are created after
# the migrations): 0.5.4 reads "1D", "W", "30S"... timeframes in the no_mae rule, so the
# materialised no_mae gaps are computed again from v_gap_rules (the health triggers follow).
AFTER_VIEWS = {
    5: "DELETE FROM signal_gaps WHERE gap = 'no_mae'; "
       "INSERT INTO signal_gaps(trade_id, gap, severity, before_due, due_base, id_time, since, "
       "symbol_key, evidence) SELECT trade_id, gap, severity, before_due, due_base, id_time, "
       "since, symbol_key, evidence FROM v_gap_rules WHERE gap = 'no_mae';",
}


def _read_schema():
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        text = f.read()
    tables, _, views = text.partition(VIEWS_MARKER)
    return tables, views


def schema_version():
    tables, _ = _read_schema()
    return int(re.search(r"PRAGMA user_version = (\d+);", tables).group(1))


class Database:
    """The database: one writer connection serialised by a lock, one reader per thread.

    Two ways to write: write() takes the lock for one transaction of its own (sync passes,
    rebuild, the CLI); transact(func) queues func as a job and runs it in a transaction that
    also holds whatever other jobs are waiting (group commit: one fsync for all of them).
    """

    def __init__(self, path, *, autocheckpoint=True):
        self.path = path
        self.lock = threading.Lock()
        self._jobs = collections.deque()        # _Job, oldest first, not yet started
        self._jobs_mutex = threading.Lock()     # guards _jobs, _leading, _Job.state and .leads
        self._leading = False                   # a thread runs (or is about to run) a batch
        self.writer = _connect(path)
        self.wal_frames = 0                     # frames in the WAL at the writer's last commit
        self.wal_copied = 0                     # of those, copied by the last checkpoint
        self.last_commit = self.last_checkpoint = time.monotonic()
        if not autocheckpoint:
            # The server checkpoints from a background job instead (MEASURED.md: it keeps
            # checkpoints off the request path, which is where most tail latency came from),
            # when checkpoint_due() says so; the hook tells it how big the WAL is and when the
            # writer last committed.
            self.writer.execute("PRAGMA wal_autocheckpoint = 0")
            self.writer.set_wal_hook(self._committed)
        self._local = threading.local()
        self._readers = []
        _migrate(self.writer)

    def reader(self):
        """This thread's read connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
            conn.execute("PRAGMA query_only = 1")
            self._readers.append(conn)
        return conn

    def write(self):
        """Context manager: the writer lock and one IMMEDIATE transaction, or StorageUnavailable."""
        return _WriteTxn(self)

    # Group commit, leader/follower. Every job is queued; the first thread to find no leader
    # becomes the leader: it takes the writer lock, drains what is queued (up to
    # GROUP_COMMIT_MAX, oldest first), runs each job in one IMMEDIATE transaction (each after
    # the first in its own SAVEPOINT), commits once, and only then wakes each job's thread with
    # its result. If jobs queued meanwhile, it wakes the oldest one's thread to lead the next
    # batch. Wake-ups are targeted (one one-shot lock per job, not a shared condition), so a
    # batch wakes exactly its own threads and the next leader, however many threads wait.
    # Nothing waits to collect a batch: a batch is whatever queued while the previous one held
    # the lock, so a lone request is written at once, as before, and under load the queue fills
    # by itself. Chosen over a dedicated writer thread because the uncontended path then costs
    # no thread hand-off, and there is no extra thread to start, stop and watch.
    def transact(self, func):
        """Run func(conn) in a write transaction, grouped with other waiting jobs.

        Returns func's result once the transaction holding its writes has committed; raises
        func's own exception (its writes rolled back, the other jobs unaffected), or
        StorageUnavailable (nothing of it committed) when the job could not start within
        WRITER_LOCK_SECONDS or the batch failed in the database.
        """
        job = _Job(func, time.monotonic() + WRITER_LOCK_SECONDS)
        with self._jobs_mutex:
            self._jobs.append(job)
            follow, self._leading = self._leading, True
        if follow:
            self._follow(job)
        if job.state != _Job.DONE:          # first in, or woken to lead the next batch
            self._lead(job)
        return job.outcome()

    def _follow(self, job):
        """Wait until the job is done or this thread is to lead; cancel it if still queued at
        its deadline (503, never written)."""
        if job.wake.acquire(timeout=max(0.0, job.deadline - time.monotonic())):
            return
        with self._jobs_mutex:
            if job.state == _Job.QUEUED and not job.leads:
                self._jobs.remove(job)
                job.finish(error=_busy())
                return
        job.wake.acquire()      # started: it commits or fails within the busy timeout

    def _lead(self, own):
        """Run batches until `own` is done, then hand the lead to the oldest waiting job."""
        while own.state != _Job.DONE:
            wake, ran = [], False
            try:
                if self.lock.acquire(timeout=max(0.0, own.deadline - time.monotonic())):
                    try:
                        with self._jobs_mutex:
                            batch, expired = self._take_batch()
                        wake += expired + batch
                        if batch:
                            _run_batch(self.writer, batch)
                        ran = True
                    finally:
                        self.lock.release()
            finally:
                with self._jobs_mutex:
                    if own.state == _Job.QUEUED and not ran:    # the lock never came in time
                        self._jobs.remove(own)
                        own.finish(error=_busy())
                    if own.state == _Job.DONE:
                        if self._jobs:
                            self._jobs[0].leads = True
                            wake.append(self._jobs[0])
                        else:
                            self._leading = False
                for job in wake:
                    if job is not own:
                        job.wake.release()

    def _take_batch(self):
        """(up to GROUP_COMMIT_MAX queued jobs, oldest first; the expired ones, cancelled and
        not run), under the jobs mutex."""
        batch, expired, now = [], [], time.monotonic()
        while self._jobs and len(batch) < GROUP_COMMIT_MAX:
            job = self._jobs.popleft()
            if job.deadline <= now:
                job.finish(error=_busy())
                expired.append(job)
            else:
                job.state = _Job.RUNNING
                batch.append(job)
        return batch, expired

    def query(self, sql, params=()):
        """Rows as dicts, from this thread's reader."""
        cur = self.reader().execute(sql, params)
        try:
            names = [d[0] for d in cur.getdescription()]
        except apsw.ExecutionCompleteError:
            return []
        return [dict(zip(names, row)) for row in cur]

    def _committed(self, conn, name, pages):
        """The writer's WAL hook, called after each of its commits (replaces autocheckpoint)
        with the number of frames in the WAL. Fewer than before: the WAL restarted from its
        beginning, so nothing in it is copied yet. (A restart that writes more frames than the
        old WAL held goes unseen until the next checkpoint: an undercount of a few frames.)"""
        if pages < self.wal_frames:
            self.wal_copied = 0
        self.wal_frames, self.last_commit = pages, time.monotonic()
        return apsw.SQLITE_OK

    @property
    def wal_pending(self):
        """Frames in the WAL not yet copied into the database (as of the last commit)."""
        return self.wal_frames - self.wal_copied

    def checkpoint(self):
        """Copy the WAL into the database now (PASSIVE: readers are not waited for); returns
        [(busy, frames in the WAL, frames copied)], or [(1, -1, -1)] when it could not run
        (another connection was checkpointing): then it is tried again at the next tick."""
        with self.lock:
            result = self.writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            _, frames, copied = result[0]
            if frames >= 0:                         # under the lock: before the next commit
                self.wal_frames, self.wal_copied = frames, copied
                self.last_checkpoint = time.monotonic()
        return result

    def checkpoint_when_due(self, period, now=None):
        """The server's checkpoint job: checkpoint if checkpoint_due() says so, else None."""
        now = time.monotonic() if now is None else now
        frames = self.wal_pending
        if not checkpoint_due(frames, now - self.last_commit, now - self.last_checkpoint, period):
            return None
        started = time.monotonic()
        result = self.checkpoint()
        log.debug("what=checkpoint frames=%d copied=%d ms=%.1f", frames, result[0][2],
                  (time.monotonic() - started) * 1e3)
        return result

    def close(self):
        for conn in self._readers:
            try:
                conn.close()
            except apsw.Error:
                pass
        with self.lock:
            self.writer.close()


def checkpoint_due(frames, since_commit, since_checkpoint, period):
    """Is a checkpoint of a WAL holding `frames` not yet copied due? Never when there are none;
    at once for CHECKPOINT_MAX_FRAMES or more; otherwise once `period` seconds have passed since
    the last one, at a moment when the writer has not committed for CHECKPOINT_QUIET_SECONDS
    (so no webhook waits behind it), or after waiting another period for one in vain (a steady
    trickle of webhooks has no quiet moment, and a trickle's WAL is small)."""
    if frames <= 0:
        return False
    if frames >= CHECKPOINT_MAX_FRAMES:
        return True
    if since_checkpoint < period:
        return False
    return since_commit >= CHECKPOINT_QUIET_SECONDS or since_checkpoint >= 2 * period


STORAGE_ERRORS = (apsw.BusyError, apsw.LockedError, apsw.IOError, apsw.FullError,
                  apsw.CantOpenError, apsw.ReadOnlyError, apsw.CorruptError, apsw.NotADBError,
                  apsw.ProtocolError)


class _WriteTxn:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        if not self.db.lock.acquire(timeout=WRITER_LOCK_SECONDS):
            raise StorageUnavailable("the database is busy; retry shortly")
        try:
            self.db.writer.execute("BEGIN IMMEDIATE")
        except STORAGE_ERRORS as e:
            self.db.lock.release()
            raise StorageUnavailable(f"the database is unavailable: {e}") from e
        except BaseException:
            self.db.lock.release()
            raise
        return self.db.writer

    def __exit__(self, exc_type, exc, tb):
        conn = self.db.writer
        try:
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                except STORAGE_ERRORS as e:
                    _rollback(conn)
                    raise StorageUnavailable(f"the database could not commit: {e}") from e
            else:
                _rollback(conn)
                if isinstance(exc, STORAGE_ERRORS):
                    raise StorageUnavailable(f"the database is unavailable: {exc}") from exc
        finally:
            self.db.lock.release()
        return False


class _Job:
    """One unit of work for Database.transact, and what became of it."""
    QUEUED, RUNNING, DONE = "queued", "running", "done"

    __slots__ = ("func", "deadline", "state", "result", "error", "leads", "wake")

    def __init__(self, func, deadline):
        self.func, self.deadline = func, deadline
        self.state, self.result, self.error = _Job.QUEUED, None, None
        self.leads = False              # its thread is woken to lead the next batch
        self.wake = threading.Lock()    # released once: done, or to lead
        self.wake.acquire()

    def finish(self, result=None, error=None):
        self.result, self.error, self.state = result, error, _Job.DONE

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


def _busy():
    return StorageUnavailable("the database is busy; retry shortly")


def _run_batch(conn, batch):
    """One IMMEDIATE transaction, each job after the first in its own SAVEPOINT, one COMMIT;
    then every job is finished: its result only if the COMMIT returned (the caller holds the
    writer lock)."""
    results = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        # The job that opens the transaction needs no savepoint: rolling the transaction back
        # undoes it alone. That keeps a lone request as cheap as before: inside a savepoint
        # SQLite copies each page a job changes to a sub-journal, which for a webhook's ~30
        # pages spills to a temporary file (strace: ~30 % more pwrite calls per request).
        empty = True
        for job in batch:
            if not empty:
                conn.execute("SAVEPOINT job")
            try:
                results.append((job.func(conn), None))
            except STORAGE_ERRORS:
                raise                   # the transaction may be gone: the whole batch fails
            except Exception as e:      # this job's own failure: undo its writes only
                results.append((None, e))
                if empty:
                    conn.execute("ROLLBACK")
                    conn.execute("BEGIN IMMEDIATE")
                else:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
            else:
                if not empty:
                    conn.execute("RELEASE job")
                empty = False
            if conn.getautocommit():
                raise StorageUnavailable("the transaction ended inside a job")
        conn.execute("COMMIT")
    except BaseException as e:
        _rollback(conn)
        if isinstance(e, STORAGE_ERRORS):
            message = f"the database is unavailable: {e}"
        elif isinstance(e, StorageUnavailable):
            message = e.message
        else:
            message = f"the batch failed: {e!r}"
        for job in batch:
            failure = StorageUnavailable(message)
            failure.__cause__ = e
            job.finish(error=failure)
        if not isinstance(e, Exception):
            raise
        if not isinstance(e, (StorageUnavailable,) + STORAGE_ERRORS):
            log.error("what=group_commit outcome=failed jobs=%d error=%r", len(batch), e)
        return
    for job, (result, error) in zip(batch, results):
        job.finish(result, error)


def _rollback(conn):
    try:
        if not conn.getautocommit():
            conn.execute("ROLLBACK")
    except apsw.Error:
        pass


def _connect(path):
    conn = apsw.Connection(path)
    conn.setbusytimeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: the WAL is fsynced at every commit, so a 2xx survives power loss, not only a crash.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _migrate(conn):
    tables, views = _read_schema()
    target = schema_version()
    version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    if version > target:
        raise SigsyncError(f"database schema version {version} is newer than this program "
                           f"({target}); upgrade sigsync")
    migrated = []                   # the versions this opening migrated to, in order
    with conn:
        if version == 0 and not _table_names(conn):
            conn.execute(tables)
        else:
            while version < target:
                conn.execute(MIGRATIONS[version])
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
                migrated.append(version)
        conn.execute(views)
        for version in migrated:
            if version in AFTER_VIEWS:
                conn.execute(AFTER_VIEWS[version])


def _table_names(conn):
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]


def open_db(path, *, autocheckpoint=True):
    """Open (creating and migrating as needed) the database at `path`."""
    try:
        return Database(path, autocheckpoint=autocheckpoint)
    except apsw.Error as e:
        raise SigsyncError(f"cannot open database {path}: {e}") from e


def _bump(conn, name, by=1):
    conn.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                 "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))


# ============================================================================================
# INGEST
# ============================================================================================

# The one alias table for event names: everything is stored under the canonical name.
EVENT_TYPES = {
    "SIGNAL_CREATED": "SIGNAL_CREATED", "signal_created": "SIGNAL_CREATED",
    "ENTRY": "ENTRY", "entry": "ENTRY", "CONFIRMED": "ENTRY",
    "MFE_UPDATE": "MFE_UPDATE", "mfe_update": "MFE_UPDATE",
    "MFE_UPDATE_BATCH": "MFE_UPDATE_BATCH",
    "BE_TRIGGERED": "BE_TRIGGERED", "be_triggered": "BE_TRIGGERED",
    "EXIT_BE": "EXIT_BE", "EXIT_BREAK_EVEN": "EXIT_BE",
    "EXIT_SL": "EXIT_SL", "EXIT_STOP_LOSS": "EXIT_SL", "signal_completed": "EXIT_SL",
    "EXIT_TP": "EXIT_TP", "EXIT_TAKE_PROFIT": "EXIT_TP",
    "CANCELLED": "CANCELLED", "SIGNAL_CANCELLED": "CANCELLED",
    "HEARTBEAT": "HEARTBEAT",
    "BAR": "BAR",
}
# Snapshot formats of the later indicator: recognised, not yet folded; refused clearly (and kept
# as dead letters, so they can be replayed once supported).
SNAPSHOT_TYPES = {"UNIFIED_SNAPSHOT_V1", "INDICATOR_EXPORT_V2", "ALL_SIGNALS_EXPORT"}
LIFECYCLE_TYPES = {"SIGNAL_CREATED", "ENTRY", "BE_TRIGGERED", "EXIT_BE", "EXIT_SL", "EXIT_TP",
                   "CANCELLED"}
TRADE_TYPES = LIFECYCLE_TYPES | {"MFE_UPDATE"}

# The one alias table for field names (applied once; 0 is a value, never "missing").
FIELD_ALIASES = {
    "signal_id": "trade_id",
    "sl_price": "stop_loss", "stop": "stop_loss",
    "entry": "entry_price",
    "mae_global_R": "mae_global_r", "mae_R_global": "mae_global_r", "mae": "mae_global_r",
    "mae_R": "mae_global_r",
    "final_mfe_R": "final_mfe",
    "be_mfe_R": "be_mfe",
    "no_be_mfe_R": "no_be_mfe", "mfe_R": "no_be_mfe",
    "cancelled_time": "cancelled_at",
    "triangle_time": "signal_time",
    "bars_to_confirm": "bars_to_confirmation",
}
NUMBER_FIELDS = {
    "entry_price", "stop_loss", "be_mfe", "no_be_mfe", "mae_global_r", "final_mfe",
    "final_be_mfe", "final_no_be_mfe", "exit_price", "current_price", "be_price", "risk_R",
    "risk_distance", "position_size", "signal_price", "lowest_low", "highest_high",
    "open", "high", "low", "close",
}
INTEGER_FIELDS = {"bars_pending": 0, "bars_to_confirmation": 1}   # field -> smallest value
INTEGER_MAX = 1_000_000
TEXT_FIELDS = {"trade_id", "symbol", "exit_reason", "cancelled_by", "cancel_reason", "session",
               "signal_date"}
TIME_FIELDS = {"event_timestamp", "timestamp", "confirmation_time", "cancelled_at",
               "exit_timestamp", "time"}
UTC_TIME_FIELDS = {"time"}      # a BAR's open: "UTC ISO or epoch ms" (SPEC §1.3), as {{time}}
TARGET_FIELDS = ("tp1_price", "tp2_price", "tp3_price")
DIRECTIONS = {"BULLISH": "Bullish", "LONG": "Bullish", "BEARISH": "Bearish", "SHORT": "Bearish"}
OPPOSITE = {"Bullish": "Bearish", "Bearish": "Bullish"}
_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")
_LARGEST_INT = int(sys.float_info.max)     # a larger integer has no float (nor SQLite REAL)
# The key may be spelled with JSON escapes ("\u0073ecret" is "secret" once parsed).
_SECRET_KEY = b"".join(rb"(?:%s|\\u%04x)" % (bytes([c]), c) for c in b"secret")
_SECRET_IN_BODY = re.compile(
    rb'("' + _SECRET_KEY + rb'"\s*:\s*)(?:"(?:[^"\\]|\\.)*"|[-+0-9.eE]+|true|false|null)')


_BARE_PLACEHOLDER = re.compile(r'"([^"\\]{1,80})"\s*:\s*(\{\{[^{}]*\}\})')


class _BadConstant:
    """Marks NaN/Infinity found by the JSON parser, so the error can name the field."""

    def __init__(self, text):
        self.text = text


def mask_secret(raw):
    """The raw body with the value of a "secret" field replaced by "***" (nothing else changes)."""
    return _SECRET_IN_BODY.sub(rb'\1"***"', raw)


# Built once: json.loads/json.dumps with non-default options build a new decoder/encoder on
# every call, which showed in the webhook's profile.
_BODY_DECODER = json.JSONDecoder(parse_constant=_BadConstant)
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_body(raw):
    """Raw bytes -> the JSON object sent. Raises Rejected with a precise reason."""
    if not raw or not raw.strip():
        raise Rejected("the request body is empty; send the alert message as JSON", "empty_body")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Rejected(f"the body is not UTF-8 text (byte {e.start})", "invalid_encoding")
    try:
        data = _BODY_DECODER.decode(text)
    except json.JSONDecodeError as e:
        # A numeric placeholder TradingView left as is ("open":{{open}}) breaks the JSON
        # itself: name the field, as for a quoted one, rather than a column number.
        bare = _BARE_PLACEHOLDER.search(text, max(e.pos - 200, 0))
        if bare and bare.start(2) <= e.pos <= bare.end(2):
            raise Rejected(f"the body is not valid JSON: {bare.group(1)}: unreplaced "
                           f"placeholder {bare.group(2)[:60]} (check the alert message)",
                           "invalid_json")
        raise Rejected(f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                       "invalid_json")
    except RecursionError:
        raise Rejected("the body nests too deeply", "invalid_json")
    except ValueError:           # an integer of more digits than Python converts (4,300)
        raise Rejected("the body is not usable JSON: a number has too many digits",
                       "invalid_json")
    if not isinstance(data, dict):
        raise Rejected(f"the body must be a JSON object, got a JSON {type(data).__name__}",
                       "not_an_object")
    return data


def _check_values(value, path):
    """Reject NaN/Infinity and unreplaced {{placeholders}} anywhere, naming the field."""
    if isinstance(value, _BadConstant):
        raise Rejected(f"{path}: {value.text} is not a valid value", "invalid_field")
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected(f"{path}: the number is out of range", "invalid_field")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _LARGEST_INT:
        raise Rejected(f"{path}: the number is out of range", "invalid_field")
    if isinstance(value, str) and not _encodable(value):
        raise Rejected(f"{path}: the text holds an invalid Unicode escape", "invalid_field")
    if isinstance(value, str) and _PLACEHOLDER.search(value):
        raise Rejected(f"{path}: unreplaced placeholder {value[:60]!r} (check the alert message)",
                       "invalid_field")
    if isinstance(value, dict):
        for k, v in value.items():
            if not _encodable(k):
                raise Rejected(f"{path}: a field name holds an invalid Unicode escape",
                               "invalid_field")
            _check_values(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_values(v, f"{path}[{i}]")


def _encodable(text):
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:           # a lone surrogate from a JSON \ud800 escape
        return False


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _number(value, path):
    """A number, or a string holding one -> float. None stays None. Raises Rejected."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise Rejected(f"{path}: expected a number, got a boolean", "invalid_field")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value.strip())
    else:
        raise Rejected(f"{path}: expected a number, got {json.dumps(value)[:60]}",
                       "invalid_field")
    if not math.isfinite(number):
        raise Rejected(f"{path}: {value!r} is not a finite number", "invalid_field")
    return number


def _same_value(field, a, b):
    if a == b:
        return True
    if field in NUMBER_FIELDS:
        try:
            return _number(a, field) == _number(b, field)
        except Rejected:
            return False
    return False


def _apply_aliases(data, path):
    out = {}
    for key, value in data.items():
        canonical = FIELD_ALIASES.get(key, key)
        if canonical in out and not _same_value(canonical, out[canonical], value):
            raise Rejected(f"{path}{key}: conflicts with another name for {canonical} "
                           f"({json.dumps(out[canonical])[:40]} vs {json.dumps(value)[:40]})",
                           "invalid_field")
        if canonical != key and canonical in data and not _same_value(canonical,
                                                                      data[canonical], value):
            raise Rejected(f"{path}{key}: both {key} and {canonical} given, with different "
                           "values", "invalid_field")
        out[canonical] = value
    return out


def _normalise_fields(data, path=""):
    """Aliases, number coercion, times to UTC, direction and session spelling."""
    data = _apply_aliases(data, path)
    for key in list(data):
        value, where = data[key], f"{path}{key}"
        if key in NUMBER_FIELDS:
            data[key] = _number(value, where)
        elif key in INTEGER_FIELDS and value is not None:
            number = _number(value, where)
            if number != int(number) or not INTEGER_FIELDS[key] <= number <= INTEGER_MAX:
                raise Rejected(f"{where}: expected a whole number from {INTEGER_FIELDS[key]} "
                               f"to {INTEGER_MAX}, got {value!r}", "invalid_field")
            data[key] = int(number)
        elif key in TIME_FIELDS and value is not None:
            zone = UTC if key in UTC_TIME_FIELDS else None
            data[key] = iso(parse_time(value, where, zone)[0])
        elif key == "direction" and value is not None:
            if not isinstance(value, str) or value.strip().upper() not in DIRECTIONS:
                raise Rejected(f"{where}: {json.dumps(value)[:40]} is not Bullish/Bearish "
                               "(LONG/SHORT accepted)", "invalid_field")
            data[key] = DIRECTIONS[value.strip().upper()]
        elif key == "targets" and value is not None:
            if not isinstance(value, dict):
                raise Rejected(f"{where}: expected an object of tp1_price..tp3_price",
                               "invalid_field")
            data[key] = {k: (_number(v, f"{where}.{k}") if k in TARGET_FIELDS else v)
                         for k, v in value.items()}
        elif key in ("htf_alignment", "setup", "market_state") and value is not None:
            if not isinstance(value, dict):
                raise Rejected(f"{where}: expected an object", "invalid_field")
        elif key == "be_triggered" and value is not None and not isinstance(value, bool):
            raise Rejected(f"{where}: expected true or false", "invalid_field")
        elif key in TEXT_FIELDS and value is not None and not isinstance(value, str):
            raise Rejected(f"{where}: expected text, got {type(value).__name__}",
                           "invalid_trade_id" if key == "trade_id" else "invalid_field")
        elif key == "timeframe" and value is not None:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise Rejected(f"{where}: expected text such as \"1\" or \"5\"",
                               "invalid_field")
            data[key] = value if isinstance(value, str) else format(value, "g")
    if "signal_time" in data and data["signal_time"] is not None:
        data["signal_time"] = _signal_time(data, path)
    if isinstance(data.get("session"), str):
        label = data["session"].strip().upper().replace("_", " ")
        label = "AFTER_HOURS" if label == "AFTER HOURS" else label
        if label in SESSIONS:
            data["session"] = label
    return data


def _signal_time(data, path):
    """signal_time may be a full time, or a time of day beside signal_date (New York)."""
    value = data["signal_time"]
    if isinstance(value, str) and _TIME_OF_DAY.match(value.strip()):
        day = data.get("signal_date")
        if not isinstance(day, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day.strip()):
            raise Rejected(f"{path}signal_time: a time of day needs signal_date (YYYY-MM-DD)",
                           "invalid_field")
        value = f"{day.strip()}T{value.strip()}"
    return iso(parse_time(value, f"{path}signal_time")[0])


def _require(data, field, path, event_type):
    if data.get(field) is None:
        raise Rejected(f"{path}{field}: required for {event_type}", "missing_field")


def normalise(data):
    """A parsed body -> (kind, [event payloads]). Raises Rejected with the field named.

    kind is the canonical event type of the request (MFE_UPDATE_BATCH for batches, which expand
    into one MFE_UPDATE payload per element).
    """
    if "event_type" not in data and isinstance(data.get("attributes"), dict):
        # the {"attributes": {...}} wrapper: what lies beside it is checked too, not stored
        _check_values({k: v for k, v in data.items() if k != "attributes"}, "body")
        data = data["attributes"]
    _check_values(data, "body")
    raw_type = data.get("event_type")
    if raw_type is None:
        raise Rejected("event_type: required (e.g. \"ENTRY\")", "missing_field")
    if not isinstance(raw_type, str):
        raise Rejected("event_type: expected a string", "invalid_field")
    if raw_type in SNAPSHOT_TYPES:
        raise Rejected(f"event_type: {raw_type} snapshots are recognised but not supported yet; "
                       "the body is kept and can be replayed later", "unsupported_event_type")
    event_type = EVENT_TYPES.get(raw_type.strip())
    if event_type is None:
        raise Rejected(f"event_type: unknown type {raw_type[:40]!r}; expected one of "
                       + ", ".join(sorted(set(EVENT_TYPES.values()))), "unknown_event_type")
    if event_type == "MFE_UPDATE_BATCH":
        return event_type, _normalise_batch(data)
    payload = _normalise_fields({k: v for k, v in data.items() if k != "event_type"})
    payload["event_type"] = event_type
    _validate_event(payload, "")
    return event_type, [payload]


def _normalise_batch(data):
    elements = data.get("signals")
    if not isinstance(elements, list):
        raise Rejected("signals: MFE_UPDATE_BATCH needs a \"signals\" array", "missing_field"
                       if elements is None else "invalid_field")
    envelope = _normalise_fields({k: data[k] for k in ("timestamp", "event_timestamp",
                                                       "symbol", "timeframe") if k in data})
    payloads = []
    for i, element in enumerate(elements):
        path = f"signals[{i}]."
        if not isinstance(element, dict):
            raise Rejected(f"signals[{i}]: expected an object", "invalid_field")
        payload = dict(envelope)
        payload.update(_normalise_fields(dict(element), path))
        payload["event_type"] = "MFE_UPDATE"
        _validate_event(payload, path)
        payloads.append(payload)
    return payloads


def _validate_event(payload, path):
    event_type = payload["event_type"]
    if event_type in TRADE_TYPES:
        _require(payload, "trade_id", path, event_type)
        try:
            id_time, id_direction = parse_trade_id(payload["trade_id"])
        except Rejected as e:              # name the batch element: "signals[3].trade_id: ..."
            raise Rejected(path + e.message, e.code) from None
        if event_type in ("SIGNAL_CREATED", "ENTRY"):
            _require(payload, "direction", path, event_type)
    if event_type == "BAR":
        for field in ("symbol", "time", "open", "high", "low", "close"):
            _require(payload, field, path, "BAR")
        o, h, lo, c = (payload[k] for k in ("open", "high", "low", "close"))
        if not (h >= max(o, c, lo) and lo <= min(o, c)):
            raise Rejected(f"{path}high/low: inconsistent bar (open {o}, high {h}, low {lo}, "
                           f"close {c})", "invalid_field")
    for field in ("stop_loss", "entry_price"):
        if payload.get(field) is not None and payload[field] <= 0:
            raise Rejected(f"{path}{field}: must be a positive price, got {payload[field]}",
                           "invalid_field")


def _canonical(payload):
    return _CANONICAL_ENCODER.encode(payload)


def _event_time(payload):
    return payload.get("event_timestamp") or payload.get("timestamp") or payload.get("time")


@dataclasses.dataclass
class IngestResult:
    """What happened to one accepted request."""
    request_id: int
    event_type: str
    events: list          # [{"event_id", "trade_id", "event_type", "duplicate"}]

    def response(self):
        first = self.events[0] if self.events else None
        body = {"ok": True,
                "event_id": first["event_id"] if first else None,
                "trade_id": first["trade_id"] if len(self.events) == 1 else None,
                "duplicate": bool(self.events) and all(e["duplicate"] for e in self.events)}
        if self.event_type == "MFE_UPDATE_BATCH":
            body["events"] = self.events
        return body


class AlreadyStored(Exception):
    """import: everything in this line is already in the log (nothing was written)."""


def ingest(db, raw, *, now, peer=None, path="/api/automated-signals/webhook",
           content_type=None, source="webhook", data=None, skip_known=None):
    """Validate and store one request durably; fold its events into the signals.

    Returns IngestResult once the transaction is committed (the caller may then answer 2xx).
    Raises Rejected (not stored here: see reject()) or StorageUnavailable. import's
    skip_known ("events" or "request", see _already_known) raises AlreadyStored instead of
    writing a line that is in the log already.
    """
    data = parse_body(raw) if data is None else data
    event_type, payloads = normalise(_without_secret(data))
    received_at = iso(now)
    masked = mask_secret(raw)
    # Everything that needs no database is done here, outside the writer's critical section.
    keyed = [(payload, *_dedup_key(payload)) for payload in payloads]

    def store(conn):
        stored = []
        request_id = _insert_request(conn, received_at, peer, path, content_type, masked, source)
        for index, (payload, canonical, dedup_key) in enumerate(keyed):
            batch_index = index if event_type == "MFE_UPDATE_BATCH" else None
            stored.append(_store_event(conn, request_id, received_at, payload, batch_index,
                                       canonical, dedup_key))
        if skip_known and _already_known(conn, stored, request_id, received_at, raw,
                                         skip_known):
            raise AlreadyStored()               # rolls this job's writes back
        return IngestResult(request_id, event_type, stored)

    return db.transact(store)


# import's "seen?": every source is named so that the (source, received_at) index is used, one
# seek per source.
_KNOWN_REQUEST_SQL = ("SELECT 1 FROM requests WHERE source IN ('webhook', 'import', 'replay', "
                      "'demo') AND received_at = ? AND raw_body = ? AND request_id <> ?")


def _already_known(conn, stored, request_id, received_at, raw, by):
    """Is this import line in the log already? By "events" (a raw body, arriving now): when
    all its events are. By "request" (an exported request, its arrival known): only when this
    very request is, since a line of duplicates may be a resend, and a resent MFE update is a
    repeat (event_repeats)."""
    if stored and not all(e["duplicate"] for e in stored):
        return False
    if stored and by == "events":
        return True
    return bool(conn.execute(_KNOWN_REQUEST_SQL,
                             (received_at, mask_secret(raw), request_id)).fetchall())


def _without_secret(data):
    """The body without its "secret" fields, at any depth: the stored raw body has every one
    masked (mask_secret), and the event's payload must not keep what the raw body hides."""
    if isinstance(data, dict):
        return {k: _without_secret(v) for k, v in data.items() if k != "secret"}
    if isinstance(data, list):
        return [_without_secret(v) for v in data]
    return data


def _insert_request(conn, received_at, peer, path, content_type, raw, source):
    conn.execute("INSERT INTO requests(received_at, peer, path, content_type, raw_body, source) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
                 (received_at, peer, path, content_type, raw, source))
    return conn.last_insert_rowid()


def _dedup_key(payload):
    """The event's canonical JSON and its dedup key (same type, trade and content)."""
    canonical = _canonical(payload)
    trade_id = payload.get("trade_id") if payload["event_type"] in TRADE_TYPES else None
    key_source = f"{payload['event_type']}\x00{trade_id or ''}\x00{canonical}"
    return canonical, hashlib.sha256(key_source.encode("utf-8")).hexdigest()


def _store_event(conn, request_id, received_at, payload, batch_index, canonical, dedup_key,
                 derive=True):
    trade_id = payload.get("trade_id") if payload["event_type"] in TRADE_TYPES else None
    rows = conn.execute(
        "INSERT INTO events(request_id, received_at, event_type, trade_id, symbol, event_time, "
        "batch_index, payload, dedup_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(dedup_key) DO NOTHING RETURNING event_id",
        (request_id, received_at, payload["event_type"], trade_id, payload.get("symbol"),
         _event_time(payload), batch_index, canonical, dedup_key)).fetchall()
    result = {"event_id": None, "trade_id": trade_id, "event_type": payload["event_type"],
              "duplicate": not rows}
    if not rows:
        event_id, first_request = conn.execute(
            "SELECT event_id, request_id FROM events WHERE dedup_key = ?",
            (dedup_key,)).fetchall()[0]
        result["event_id"] = event_id
        _bump(conn, "duplicates")
        _bump(conn, f"duplicates:{payload['event_type']}")
        if payload["event_type"] == "MFE_UPDATE" and first_request != request_id and derive:
            # Not a new fact, but news that the indicator still reports the trade: a trade
            # that stopped moving sends the same update every bar (a v3 batch element has no
            # time of its own). Logged, so that rebuild replays it.
            store_repeat(conn, request_id, event_id, trade_id, payload, received_at)
        return result
    event = {"event_id": rows[0][0], "received_at": received_at, "dedup_key": dedup_key,
             "event_type": payload["event_type"], "trade_id": trade_id, "payload": payload}
    result["event_id"] = event["event_id"]
    _bump(conn, f"events:{payload['event_type']}")
    if derive:                 # bulk loaders skip this and call refold() once at the end
        derive_event(conn, event)
    return result


def reject(db, raw, error, *, now, peer=None, path=None, content_type=None, size=None,
           max_dead_letters=10000, max_dead_letter_bytes=64 * 1024 * 1024):
    """Keep a refused request in the dead-letter table, bounded in rows and in bytes of body
    (the oldest go first; the newest stays). May raise StorageUnavailable."""
    values = (iso(now), peer, path, content_type, error.status, error.code, error.message,
              bytes(mask_secret(raw)), len(raw) if size is None else size)

    def keep(conn):
        conn.execute(
            "INSERT INTO rejected(received_at, peer, path, content_type, status, code, message, "
            "raw_body, body_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        newest = conn.last_insert_rowid()
        conn.execute("DELETE FROM rejected WHERE rejected_id <= ?", (newest - max_dead_letters,))
        _trim_dead_letters(conn, newest, max_dead_letter_bytes)
        _bump(conn, f"rejected:{error.code}")

    db.transact(keep)


def dead_letter_limits(config):
    """reject()'s bounds, as configured."""
    return {"max_dead_letters": config.max_dead_letters,
            "max_dead_letter_bytes": config.max_dead_letter_bytes}


DEAD_LETTER_TRIM = 0.9      # over its byte bound, the dead-letter table is trimmed to this share


def _trim_dead_letters(conn, newest, max_bytes):
    """Drop the oldest dead letters while their bodies hold more than max_bytes.

    The total is the counter 'dead_letter_bytes', kept by triggers on `rejected` (schema.sql),
    so the usual case is one read. Once over, the table is trimmed to DEAD_LETTER_TRIM of the
    bound, reading only the rows it drops: a flood of large bodies pays for a trim once per
    tenth of the bound, not on every request."""
    total = conn.execute("SELECT value FROM counters WHERE name = 'dead_letter_bytes'").fetchall()
    if not total or total[0][0] <= max_bytes:
        return
    excess, freed, last = total[0][0] - int(max_bytes * DEAD_LETTER_TRIM), 0, None
    while freed < excess:
        rows = conn.execute("SELECT rejected_id, length(CAST(raw_body AS BLOB)) FROM rejected "
                            "WHERE rejected_id > ?1 AND rejected_id < ?2 "
                            "ORDER BY rejected_id LIMIT 256", (last or 0, newest)).fetchall()
        if not rows:
            break                               # only the newest is left: it stays
        for rejected_id, size in rows:
            last, freed = rejected_id, freed + size
            if freed >= excess:
                break
    if last is not None:
        conn.execute("DELETE FROM rejected WHERE rejected_id <= ?", (last,))


# ============================================================================================
# LIFECYCLE
# ============================================================================================
# The fold. Each event is applied once, in arrival order, to its signal's row. Every rule is
# written so that the result does not depend on the order (running max/min, ranked sources,
# sets of seen types); where values genuinely disagree the first received stands and a conflict
# is recorded. Live ingestion and `rebuild` run exactly this code.

SIGNAL_COLUMNS = [
    "trade_id", "id_time", "id_direction", "status", "be_state", "symbol", "direction",
    "timeframe", "signal_time", "signal_date", "session", "htf_alignment", "setup",
    "market_state", "entry_price", "stop_loss", "risk", "targets", "targets_extended",
    "confirmation_time", "bars_to_confirmation", "be_triggered_at", "no_be_mfe", "be_mfe", "mae",
    "last_price", "last_price_at", "last_update_at", "exit_be_at", "be_exit_price", "exit_sl_at",
    "exit_tp_at", "exit_price", "exit_reason", "final_mfe", "cancelled_at", "cancelled_by",
    "cancel_reason", "bars_pending", "has_signal_created", "has_entry", "entry_received_at",
    "event_count",
    "first_received_at", "last_received_at", "provenance", "conflicts", "fold_state",
]
JSON_COLUMNS = {"htf_alignment", "setup", "market_state", "targets", "targets_extended",
                "provenance", "conflicts", "fold_state"}
_SELECT_SIGNAL = f"SELECT {', '.join(SIGNAL_COLUMNS)} FROM signals WHERE trade_id = ?"
_INSERT_SIGNAL = (f"INSERT INTO signals({', '.join(SIGNAL_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(SIGNAL_COLUMNS))})")

# Which events may set which fields, and with what rank (higher wins, ties keep the first
# received). Excursions and prices of BE/EXIT alerts are trusted, but their session, HTF and
# time fields describe whichever signal was latest on the chart (a known indicator quirk).
SIGNAL_MOMENT_RANK = {"SIGNAL_CREATED": 3, "ENTRY": 2, "CANCELLED": 1}
TRADE_RANK = {"ENTRY": 3, "MFE_UPDATE": 2, "BE_TRIGGERED": 2, "EXIT_BE": 2, "EXIT_SL": 2,
              "EXIT_TP": 2}
SIGNAL_TIME_RANK = {"SIGNAL_CREATED": 3, "ENTRY": 2, "CANCELLED": 1, "MFE_UPDATE": 1}
IDENTITY_RANK = {"SIGNAL_CREATED": 3, "ENTRY": 2, "CANCELLED": 1}     # others: 0
EXCURSION_TYPES = {"ENTRY", "MFE_UPDATE", "BE_TRIGGERED", "EXIT_BE", "EXIT_SL", "EXIT_TP"}
EXIT_TYPES = {"EXIT_SL", "EXIT_TP"}
ENTRY_EVIDENCE = {"ENTRY", "MFE_UPDATE", "BE_TRIGGERED", "EXIT_BE", "EXIT_SL", "EXIT_TP"}
TARGET_MULTIPLES = (1, 2, 3, 5, 10, 20)


def new_signal(trade_id, received_at):
    id_time, id_direction = parse_trade_id(trade_id)
    row = dict.fromkeys(SIGNAL_COLUMNS)
    row.update(trade_id=trade_id, id_time=iso(id_time), id_direction=id_direction,
               status="PENDING", be_state="NONE", has_signal_created=0, has_entry=0,
               event_count=0, first_received_at=received_at, last_received_at=received_at,
               provenance={}, conflicts={},
               fold_state={"types": [], "ranks": {}, "first": {}, "seen": {}})
    return row


def precedes(new, old):
    """The one precedence rule: does (confidence, rank) `new` beat `old`?

    Higher confidence wins; at equal confidence the higher-ranked source wins; at a tie the value
    already there (the first received) stands. A received value (1.0) always beats an estimate.
    """
    return old is None or new > old


def offer(row, field, value, source, confidence, rank=0):
    """Propose a value for a field; it is taken only if it outranks what is there."""
    if value is None:
        return False
    fs = row["fold_state"]
    old = fs["ranks"].get(field)
    if row[field] is not None and old is not None and not precedes((confidence, rank), tuple(old)):
        return False
    previous = row["provenance"].get(field)
    if previous is not None and previous[1] < 1.0 and confidence >= 1.0 and row[field] != value:
        _queue_audit(row, field, row[field], value, source, confidence, "ingest",
                     f"a received {source} value supersedes the {previous[0]} estimate")
    row[field] = value
    fs["ranks"][field] = [confidence, rank]
    row["provenance"][field] = [source, confidence]
    return True


def _queue_audit(row, field, old, new, source, confidence, tier, reason, evidence=None):
    """Remember a change for the audit log; whoever saves the row writes it."""
    row.setdefault("_audit", []).append({
        "field": field, "old": old, "new": new, "source": source, "confidence": confidence,
        "tier": tier, "reason": reason, "evidence": evidence})


def _conflict_values(row, kind, value):
    """Record a disagreement as the sorted set of values seen (order-independent evidence)."""
    seen = row["fold_state"]["seen"].setdefault(kind, [])
    if value not in seen:
        seen.append(value)
        seen.sort(key=json.dumps)
    if len(seen) > 1:
        row["conflicts"][kind] = {"values": list(seen)}


def load_signal(conn, trade_id):
    rows = conn.execute(_SELECT_SIGNAL, (trade_id,)).fetchall()
    if not rows:
        return None
    row = dict(zip(SIGNAL_COLUMNS, rows[0]))
    row["_stored"] = rows[0]
    for col in JSON_COLUMNS:
        if row[col] is not None:
            row[col] = json.loads(row[col])
    return row


def save_signal(conn, row, *, now, run_id=None, audit=True):
    """Write the row, and an audit row for every change queued on it (or, with audit False,
    drop them: rebuild's replay, whose changes the audit log holds already).

    A loaded row is updated in place, and only in the columns that changed: the row keeps its
    place, untouched indexes are not rewritten, and the gap trigger fires only when a column it
    reads was set.
    """
    values = tuple(_canonical(row[c]) if c in JSON_COLUMNS and row[c] is not None else row[c]
                   for c in SIGNAL_COLUMNS)
    stored = row.get("_stored")
    if stored is None:
        conn.execute(_INSERT_SIGNAL, values)
    else:
        changed = [i for i, (new, old) in enumerate(zip(values, stored)) if new != old]
        if changed:
            sets = ", ".join(f"{SIGNAL_COLUMNS[i]} = ?" for i in changed)
            conn.execute(f"UPDATE signals SET {sets} WHERE trade_id = ?",
                         [values[i] for i in changed] + [row["trade_id"]])
    row["_stored"] = values
    queued = row.pop("_audit", ())
    if not audit:
        return
    for a in queued:
        conn.execute(
            "INSERT INTO sync_audit_log(run_id, created_at, trade_id, field, old_value, "
            "new_value, data_source, confidence, tier, reason, evidence) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, now, row["trade_id"], a["field"],
             None if a["old"] is None else _canonical(a["old"]),
             None if a["new"] is None else _canonical(a["new"]), a["source"], a["confidence"],
             a["tier"], a["reason"], None if a["evidence"] is None else _canonical(a["evidence"])))
        if run_id is not None and a["new"] is not None:
            _bump(conn, f"filled:{a['tier']}")


def symbol_key(symbol):
    """The symbol without its exchange prefix: 'CME_MINI:MNQ1!' and 'MNQ1!' are one market.

    What follows the first ':', without spaces: the same rule as v_gap_rules' expression in
    schema.sql, which the stale_mfe gap matches against symbol_activity's keys."""
    return str(symbol).split(":", 1)[-1].replace(" ", "") if symbol is not None else None


def _record_price(conn, symbol, price, event):
    if symbol is None or price is None:
        return
    conn.execute(
        "INSERT INTO symbol_prices(symbol_key, price, received_at, event_id, trade_id) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(symbol_key) DO UPDATE SET price = excluded.price, "
        "received_at = excluded.received_at, event_id = excluded.event_id, "
        "trade_id = excluded.trade_id WHERE excluded.received_at >= symbol_prices.received_at",
        (symbol_key(symbol), price, event["received_at"], event["event_id"], event["trade_id"]))


def _record_activity(conn, symbol, event):
    if symbol is not None:
        _touch_market(conn, symbol_key(symbol), event["received_at"])


def _touch_market(conn, key, received_at):
    """The market (a symbol key) sent data at received_at."""
    if key is None:
        return
    conn.execute(
        "INSERT INTO symbol_activity(symbol_key, last_received_at) VALUES (?, ?) "
        "ON CONFLICT(symbol_key) DO UPDATE SET last_received_at = excluded.last_received_at "
        "WHERE excluded.last_received_at > symbol_activity.last_received_at",
        (key, received_at))


# Digits, then an optional unit: ASCII only, as SQLite's GLOB [0-9] and upper() read them.
# "M" (months) only in capitals: TradingView sends "M", and a hand-typed "5m" means minutes,
# which this does not guess.
_TIMEFRAME = re.compile(r"([0-9]{0,5})([SDWMsdw]?)")
_TIMEFRAME_SECONDS = {"": 60, "S": 1, "D": 86400, "W": 7 * 86400}
TIMEFRAME_MAX_COUNT = 10000     # more bars of any unit than any chart has: says nothing


def timeframe_step(timeframe):
    """A bar's length from TradingView's {{interval}}: (seconds, n) or (months, n); None when
    the timeframe says nothing usable.

    "5" is 5 minutes, "30S" 30 seconds, "D"/"2D" days, "W" weeks, "M"/"3M" calendar months (no
    fixed length); s, d, w in either case. A count above TIMEFRAME_MAX_COUNT (or of more than
    five digits) says nothing. The same reading as v_gap_rules' no_mae rule in schema.sql."""
    m = _TIMEFRAME.fullmatch(str(timeframe or ""))
    if not m or not timeframe:
        return None
    digits, unit = m.group(1), m.group(2).upper()
    count = int(digits or 0)
    if count > TIMEFRAME_MAX_COUNT or (not unit and count == 0):
        return None
    count = max(1, count)
    return ("months", count) if unit == "M" else ("seconds", count * _TIMEFRAME_SECONDS[unit])


def add_bars(moment, step, count=1):
    """`moment` plus `count` bars of timeframe_step() `step`. Months as SQLite's '+N months'
    counts them: the same day of the month, a day past its end rolling into the next month."""
    unit, n = step
    if unit == "seconds":
        return moment + dt.timedelta(seconds=n * count)
    months = moment.month - 1 + n * count
    first = moment.replace(year=moment.year + months // 12, month=months % 12 + 1, day=1)
    return first + dt.timedelta(days=moment.day - 1)


def bars_between(start, end, step, limit=100_000):
    """Whole bars of `step` from start to end (None past `limit` bars of calendar months)."""
    unit, n = step
    if unit == "seconds":
        return int((end - start).total_seconds() // n)
    count = 0
    while add_bars(start, step, count + 1) <= end:
        count += 1
        if count > limit:
            return None
    return count


def _bar_close(bar):
    """When a bar closed: its open plus its timeframe, when that is known (else its open, the
    moment known for sure)."""
    step = timeframe_step(bar.get("timeframe"))
    try:
        return iso(add_bars(from_iso(bar["time"]), step)) if step else bar["time"]
    except (OverflowError, ValueError):     # more than a date can add: unknown
        return bar["time"]


def derive_event(conn, event, cache=None):
    """Apply one stored event to the derived tables (signals, bars, symbol_prices)."""
    payload = event["payload"]
    if event["event_type"] == "BAR":
        conn.execute("INSERT INTO bars(symbol, timeframe, time, open, high, low, close, event_id) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (payload["symbol"], str(payload.get("timeframe") or ""), payload["time"],
                      payload["open"], payload["high"], payload["low"], payload["close"],
                      event["event_id"]))
        # A bar is the market at its close, not when it reached us: a backfilled or replayed
        # old bar must not pass for a fresh price, nor for a market that is sending data now.
        as_of = dict(event, received_at=min(event["received_at"], _bar_close(payload)))
        _record_price(conn, payload["symbol"], payload["close"], as_of)
        _record_activity(conn, payload["symbol"], as_of)
        return
    trade_id = event["trade_id"]
    if trade_id is None:
        return
    row = cache.get(trade_id) if cache is not None else None
    if row is None:
        row = load_signal(conn, trade_id)
    if row is None:
        row = new_signal(trade_id, event["received_at"])
    fold(row, event)
    _record_activity(conn, payload.get("symbol") or row["symbol"], event)
    if event["event_type"] == "MFE_UPDATE":
        _record_price(conn, payload.get("symbol") or row["symbol"], payload.get("current_price"),
                      event)
    if cache is not None:
        cache[trade_id] = row
    else:
        save_signal(conn, row, now=event["received_at"])


def store_repeat(conn, request_id, event_id, trade_id, payload, received_at):
    """Log a repeat of a stored MFE update (event_repeats) and apply it.

    Only liveness moves: the trade's last update and its market's activity (and, like any
    later update of an open trade, it withdraws an inferred exit). No value, count or
    first-received time changes: the event itself was counted once. The usual case is one
    guarded UPDATE; the row is loaded only when an inferred exit may have to go."""
    found = conn.execute("SELECT symbol, json_extract(fold_state, '$.inferred_exit') IS NOT NULL "
                         "FROM signals WHERE trade_id = ?", (trade_id,)).fetchall()
    if not found:
        return
    symbol, inferred = found[0]
    key = symbol_key(payload.get("symbol") or symbol)
    conn.execute("INSERT OR IGNORE INTO event_repeats(event_id, request_id, received_at, "
                 "symbol_key) VALUES (?, ?, ?, ?)", (event_id, request_id, received_at, key))
    _touch_market(conn, key, received_at)
    if inferred:
        row = load_signal(conn, trade_id)
        if fold_repeat(row, payload, received_at):
            save_signal(conn, row, now=received_at)
    else:
        conn.execute("UPDATE signals SET last_update_at = ?1 WHERE trade_id = ?2 AND "
                     "(last_update_at IS NULL OR last_update_at < ?1)", (received_at, trade_id))


def fold_repeat(row, payload, received_at):
    """Apply a repeat of an MFE update to a signal row, in place; True if the row changed."""
    changed = _withdraw_inferred_exit(row, "MFE_UPDATE", payload, received_at)
    if changed:
        _derive_status(row)
    if row["last_update_at"] is None or received_at > row["last_update_at"]:
        row["last_update_at"] = received_at
        changed = True
    return changed


def _withdraw_inferred_exit(row, etype, p, received):
    """The trade's own update after the evidence of an inferred exit, not past the stop,
    shows it still open: the inference was wrong. True if it was withdrawn."""
    inferred = row["fold_state"].get("inferred_exit")
    if inferred and etype == "MFE_UPDATE" and received > inferred["evidence_received_at"] \
            and (p.get("mae_global_r") is None or p["mae_global_r"] > -1.0):
        del row["fold_state"]["inferred_exit"]
        reason = "the trade's own later update shows it still open: the inferred exit was wrong"
        retract(row, EXIT_FIELDS, reason)
        if row["mae"] is not None and row["mae"] <= -1.0:
            # an estimate past the stop came from the price that inferred the exit: as wrong
            retract(row, ("mae",), reason)
        return True
    return False


def fold(row, event):
    """Apply one event to a signal row, in place."""
    etype, p, received = event["event_type"], event["payload"], event["received_at"]
    fs = row["fold_state"]
    if etype not in fs["types"]:
        fs["types"] = sorted(fs["types"] + [etype])
    row["event_count"] += 1
    row["first_received_at"] = min(row["first_received_at"], received)
    row["last_received_at"] = max(row["last_received_at"], received)
    src = "signal_created" if etype == "SIGNAL_CREATED" else "indicator"

    if etype in LIFECYCLE_TYPES:
        _check_second_lifecycle(row, event)

    # Identity: symbol and direction must agree across events and with the trade_id.
    rank = IDENTITY_RANK.get(etype, 0)
    if p.get("symbol") is not None:
        offer(row, "symbol", p["symbol"], src, 1.0, rank)
        _conflict_values(row, "symbol_mismatch", symbol_key(p["symbol"]))
    if p.get("direction") is not None:
        offer(row, "direction", p["direction"], src, 1.0, rank)
        _conflict_values(row, "direction_mismatch", row["id_direction"])
        _conflict_values(row, "direction_mismatch", p["direction"])
    if p.get("timeframe") is not None:
        offer(row, "timeframe", str(p["timeframe"]), src, 1.0, rank)

    # The signal moment: what the chart looked like when the triangle printed.
    if etype in SIGNAL_MOMENT_RANK:
        rank = SIGNAL_MOMENT_RANK[etype]
        for field in ("htf_alignment", "setup", "market_state"):
            if isinstance(p.get(field), dict) and p[field]:
                offer(row, field, p[field], src, 1.0, rank)
    if etype in SIGNAL_TIME_RANK:
        _fold_signal_time(row, p, etype, src)

    # The trade: entry, stop, targets.
    if etype in TRADE_RANK:
        rank = TRADE_RANK[etype]
        offer(row, "entry_price", p.get("entry_price"), src, 1.0, rank)
        offer(row, "stop_loss", p.get("stop_loss"), src, 1.0, rank)
        targets = p.get("targets")
        if isinstance(targets, dict) and any(targets.get(k) is not None for k in TARGET_FIELDS):
            offer(row, "targets", {k: targets.get(k) for k in TARGET_FIELDS}, src, 1.0, rank)
    if etype in ("ENTRY", "MFE_UPDATE"):
        rank = 2 if etype == "ENTRY" else 1
        offer(row, "confirmation_time", p.get("confirmation_time"), src, 1.0, rank)
        offer(row, "bars_to_confirmation", p.get("bars_to_confirmation"), src, 1.0, rank)
    if etype == "ENTRY":
        _conflict_values(row, "entry_price", p.get("entry_price"))
    if row["entry_price"] is not None and row["stop_loss"] is not None:
        _derive_risk(row)
        _check_stop_side(row)

    _withdraw_inferred_exit(row, etype, p, received)

    # Excursions: running maximum / minimum of everything received, whatever the order.
    if etype in EXCURSION_TYPES:
        _fold_excursions(row, p, received)

    if etype in ENTRY_EVIDENCE and (row["entry_received_at"] is None
                                    or received < row["entry_received_at"]):
        row["entry_received_at"] = received

    # Break-even leg.
    if etype == "BE_TRIGGERED" or (etype == "MFE_UPDATE" and p.get("be_triggered") is True):
        fs["be_triggered"] = True
        _running(row, "be_triggered_at", received, min, src)      # the earliest arrival
    if etype in EXIT_TYPES and fs.get("inferred_exit"):
        # The indicator's own exit supersedes the inferred one, all of it: rebuilt from the
        # log, the row would never have held the inference.
        del fs["inferred_exit"]
        retract(row, EXIT_FIELDS, "the indicator's own exit supersedes the inferred exit")
    if etype == "EXIT_BE":
        _running(row, "exit_be_at", received, min, src)
        offer(row, "be_exit_price", p.get("exit_price"), src, 1.0)
    if etype in EXIT_TYPES:
        _running(row, "exit_sl_at" if etype == "EXIT_SL" else "exit_tp_at", received, min, src)
        offer(row, "exit_price", p.get("exit_price"), src, 1.0, 2)
        offer(row, "exit_reason", p.get("exit_reason"), src, 1.0, 2)
    if etype in ("EXIT_BE",) + tuple(EXIT_TYPES):
        final = p.get("final_mfe", p.get("final_no_be_mfe"))
        offer(row, "final_mfe", final, src, 1.0, 2 if etype in EXIT_TYPES else 1)

    # Cancellation, as the indicator says it.
    if etype == "CANCELLED":
        offer(row, "cancelled_at", p.get("cancelled_at") or p.get("event_timestamp") or received,
              src, 1.0, 2)
        offer(row, "cancelled_by", p.get("cancelled_by"), src, 1.0, 2)
        offer(row, "cancel_reason", p.get("cancel_reason") or p.get("exit_reason"), src, 1.0, 2)
        offer(row, "bars_pending", p.get("bars_pending"), src, 1.0, 2)

    _derive_status(row)


def _fold_signal_time(row, p, etype, src):
    """The triangle time; the New York date and the session follow from it (one definition).

    A session label in the payload is kept in the event but not used: the original indicator
    computed it in other ways (exchange time zone, latest signal on the chart).
    """
    rank = SIGNAL_TIME_RANK[etype]
    signal_time = p.get("signal_time")
    if etype == "SIGNAL_CREATED" and signal_time is None:
        signal_time = p.get("event_timestamp")
    if signal_time is not None:
        if offer(row, "signal_time", signal_time, src, 1.0, rank):
            moment = from_iso(signal_time)
            for field, value in (("signal_date", ny_date(moment)),
                                 ("session", session_of(moment))):
                row[field] = value
                row["fold_state"]["ranks"][field] = [1.0, rank]
                row["provenance"][field] = [src, 1.0]
    elif isinstance(p.get("signal_date"), str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}",
                                                                p["signal_date"].strip()):
        offer(row, "signal_date", p["signal_date"].strip(), src, 1.0, rank - 0.5)


def _received(row, field):
    prov = row["provenance"].get(field)
    return prov is not None and prov[1] >= 1.0


def _check_stop_side(row):
    """A bullish stop lies below the entry, a bearish one above: otherwise R means nothing.
    Judged on the values the row holds (the trade_id's direction), so any order agrees."""
    entry, stop = row["entry_price"], row["stop_loss"]
    if (stop >= entry) if row["id_direction"] == "Bullish" else (stop <= entry):
        row["conflicts"]["stop_on_wrong_side"] = {
            "direction": row["id_direction"], "entry_price": entry, "stop_loss": stop}
    else:
        row["conflicts"].pop("stop_on_wrong_side", None)


def _derive_risk(row):
    risk = abs(row["entry_price"] - row["stop_loss"])
    if row["risk"] != risk:
        row["risk"] = risk
        row["provenance"]["risk"] = ["calculated", 1.0]


def _fold_excursions(row, p, received):
    no_be = [v for v in (p.get("no_be_mfe"), p.get("final_no_be_mfe")) if v is not None]
    be = [v for v in (p.get("be_mfe"), p.get("final_be_mfe")) if v is not None]
    mae = p.get("mae_global_r")
    if no_be:
        _running(row, "no_be_mfe", max(max(no_be), 0.0), max)
    if be:
        _running(row, "be_mfe", max(max(be), 0.0), max)
    if mae is not None:
        _running(row, "mae", min(mae, 0.0), min)
    if row["be_mfe"] is not None and row["no_be_mfe"] is not None \
            and row["be_mfe"] > row["no_be_mfe"] + 1e-9:
        row["conflicts"]["be_mfe_above_no_be_mfe"] = {"be_mfe": row["be_mfe"],
                                                      "no_be_mfe": row["no_be_mfe"]}
    else:
        row["conflicts"].pop("be_mfe_above_no_be_mfe", None)
    if p.get("current_price") is not None and p["event_type"] == "MFE_UPDATE":
        at = _event_time(p) or received
        if row["last_price_at"] is None or (at, p["current_price"]) > (
                row["last_price_at"], row["last_price"]):
            row["last_price"], row["last_price_at"] = p["current_price"], at
            row["provenance"]["last_price"] = ["indicator", 1.0]
    if row["last_update_at"] is None or received > row["last_update_at"]:
        row["last_update_at"] = received


def _running(row, field, value, better, source="indicator"):
    """Running max/min over received values (excursions; min for the earliest arrival of an
    alert); an estimate (< 1.0) is replaced by a received value whatever the order, audited,
    and the rank keeps any later estimate from replacing it."""
    prov = row["provenance"].get(field)
    if row[field] is None or (prov and prov[1] < 1.0):
        new = value
    else:
        new = better(row[field], value)
    if new != row[field] or prov is None or prov[1] < 1.0:
        if prov is not None and prov[1] < 1.0 and new != row[field]:
            _queue_audit(row, field, row[field], new, source, 1.0, "ingest",
                         f"a received value supersedes the {prov[0]} estimate")
        row[field] = new
        row["provenance"][field] = [source, 1.0]
        row["fold_state"]["ranks"][field] = [1.0, 0]


def _check_second_lifecycle(row, event):
    """A second lifecycle event of a type, with different content, is a conflict (SPEC 3.6)."""
    first = row["fold_state"]["first"]
    etype = event["event_type"]
    if etype not in first:
        first[etype] = [event["event_id"], event["dedup_key"], event["received_at"]]
        return
    if first[etype][1] != event["dedup_key"]:
        kind = "second_" + etype.lower()
        ids = sorted({first[etype][0], event["event_id"]}
                     | set(row["conflicts"].get(kind, {}).get("event_ids", [])))
        row["conflicts"][kind] = {"event_ids": ids}


CANCEL_FIELDS = ("cancelled_at", "cancelled_by", "cancel_reason", "bars_pending")
EXIT_FIELDS = ("exit_sl_at", "exit_price", "exit_reason", "exit_be_at", "be_exit_price")


def retract(row, fields, reason, tier="ingest"):
    """Withdraw inferred values (never received ones), auditing each."""
    for field in fields:
        prov = row["provenance"].get(field)
        if prov is not None and prov[1] < 1.0 and row[field] is not None:
            _queue_audit(row, field, row[field], None, prov[0], prov[1], tier, reason)
            row[field] = None
            del row["provenance"][field]
            row["fold_state"]["ranks"].pop(field, None)


def _derive_status(row):
    fs = row["fold_state"]
    types = set(fs["types"])
    row["has_signal_created"] = int("SIGNAL_CREATED" in types)
    row["has_entry"] = int("ENTRY" in types)
    if fs.get("inferred_cancel") and types & ENTRY_EVIDENCE:
        del fs["inferred_cancel"]
        retract(row, CANCEL_FIELDS, "evidence of an entry arrived: the inferred cancellation "
                                    "was wrong")
    if types & EXIT_TYPES or fs.get("inferred_exit"):
        status = "EXITED"
    elif types & ENTRY_EVIDENCE:
        status = "ACTIVE"
    elif "CANCELLED" in types or fs.get("inferred_cancel"):
        status = "CANCELLED"
    else:
        status = "PENDING"
    row["status"] = status
    evidence = types & ENTRY_EVIDENCE
    if "CANCELLED" in types and evidence:
        # CANCELLED against any evidence of an entry (an MFE update or an exit counts, SPEC
        # §2), never resolved silently (§3.6): the status follows the evidence, the conflict
        # names both sides (the events of the lifecycle types; MFE updates by type only)
        ids = {fs["first"][t][0] for t in evidence | {"CANCELLED"} if t in fs["first"]}
        row["conflicts"]["entry_and_cancelled"] = {"event_ids": sorted(ids),
                                                   "evidence": sorted(evidence)}
    if types & {"EXIT_BE", "EXIT_SL"} or fs.get("inferred_exit"):
        row["be_state"] = "STOPPED"
    elif fs.get("be_triggered") or (row["no_be_mfe"] or 0) >= 1.0:
        row["be_state"] = "TRIGGERED"      # the indicator's rule: BE arms at +1R
    else:
        row["be_state"] = "NONE"
    # Judged on the received values the row holds now, whatever order they came in: a later,
    # better confirmation_time that ends the contradiction ends the conflict too. Estimates
    # prove nothing here (the pass's confirmation_time is an upper bound, an inferred exit
    # time a price sample's arrival).
    # Any exit counts: a stop, a target or the BE leg's stop (the earliest received one).
    exits = [(row[f], f) for f in ("exit_sl_at", "exit_tp_at", "exit_be_at")
             if row[f] and _received(row, f)]
    first = min(exits) if exits else None
    if first and row["confirmation_time"] and _received(row, "confirmation_time") \
            and first[0] < row["confirmation_time"]:
        row["conflicts"]["exit_before_entry"] = {first[1]: first[0],
                                                 "confirmation_time": row["confirmation_time"]}
    else:
        row["conflicts"].pop("exit_before_entry", None)


# ============================================================================================
# HEALTH
# ============================================================================================
# The rules are SQL (schema.sql: v_gap_rules, v_signal_gaps, signal_health_metrics,
# v_health_summary, v_global_conditions). The time-dependent views read "now" from v_now, the
# shell's clock; sigsync runs the very same view SQL with its injected clock bound in its place,
# so the shell, the API and the CLI compute one and the same number.

# Views read the clock only through v_now and the thresholds only through v_settings. A view
# that mentions either, or such a view, is "clock-dependent": at_now inlines it with both
# replaced by bound parameters (:now; :set_<setting>, NULL meaning "as stored").
CLOCK_SOURCES = ("v_now", "v_settings")
SETTING_COLUMNS = ("stale_mfe_seconds", "stale_pending_seconds", "silent_seconds",
                   "sync_seconds", "server_started_at", "first_bar_grace_seconds",
                   "rate_window_seconds", "rate_warn_at")
_AT_NOW = {}


def _view_bodies(conn):
    """{view name: its SELECT without comments}, from the schema as stored. (No view has
    '--' inside a string literal.)"""
    out = {}
    for name, sql in conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'view'"):
        head = re.match(r"\s*CREATE\s+VIEW\s+\S+\s+AS\s", sql, re.I)
        out[name] = re.sub(r"--[^\n]*", "", sql[head.end():])
    return out


def _mentions(body, name):
    return re.search(rf"\b{name}\b", body) is not None


def clock_views(conn):
    """The names of the views whose rows depend on the clock or the thresholds."""
    bodies = _view_bodies(conn)
    found = set(CLOCK_SOURCES)
    grew = True
    while grew:
        grew = False
        for name, body in bodies.items():
            if name not in found and any(_mentions(body, f) for f in found):
                found.add(name)
                grew = True
    return sorted(found - set(CLOCK_SOURCES))


def at_now(conn, name):
    """The SQL of a view with every clock-dependent view it reads inlined, and v_now and
    v_settings replaced by parameters (:now, :set_<setting>)."""
    bodies = _view_bodies(conn)
    key = (name, hash(tuple(sorted(bodies.items()))))
    if key not in _AT_NOW:
        inline = set(clock_views(conn))

        def expand(view):
            return re.sub(r"\b(" + "|".join(sorted(inline)) + r")\b",
                          lambda m: f"({expand(m.group(1))})", bodies[view]) \
                if inline else bodies[view]

        settings = ", ".join(f"coalesce(:set_{c}, {c}) AS {c}" for c in SETTING_COLUMNS)
        sources = {"v_now": "(SELECT :now AS now)",
                   "v_settings": f"(SELECT {settings} FROM v_settings)"}
        _AT_NOW[key] = re.sub(r"\b(v_now|v_settings)\b", lambda m: sources[m.group(1)],
                              expand(name))
    return _AT_NOW[key]


def health_query(db, view, now, where="", params=None, conn=None, settings=None):
    """Rows of a view as of `now` (an aware datetime), with `settings` (thresholds by name)
    in place of the stored ones."""
    conn = conn or db.reader()
    bound = {"now": iso(now), **{f"set_{c}": (settings or {}).get(c) for c in SETTING_COLUMNS}}
    cur = conn.execute(f"SELECT * FROM ({at_now(conn, view)}) {where}",
                       {**bound, **(params or {})})
    try:
        names = [d[0] for d in cur.getdescription()]
    except apsw.ExecutionCompleteError:
        return []
    return [dict(zip(names, row)) for row in cur]


def health_settings_from(config, now):
    return {"stale_mfe_seconds": config.stale_mfe_seconds,
            "stale_pending_seconds": config.stale_pending_seconds,
            "silent_seconds": config.silent_seconds, "sync_seconds": config.sync_seconds,
            "server_started_at": iso(now)}


def store_health_settings(db, values):
    """The thresholds the rules read; the server writes its configuration at start."""
    with db.write() as conn:
        for name, value in values.items():
            conn.execute("INSERT INTO health_settings(name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                         (name, str(value)))


def health_summary(db, now, conn=None, settings=None):
    """{window: row} of v_health_summary as of now, JSON columns parsed."""
    out = {}
    for row in health_query(db, "v_health_summary", now, conn=conn, settings=settings):
        row["gaps_by_type"] = json.loads(row["gaps_by_type"] or "{}")
        row["filled_by_tier"] = json.loads(row["filled_by_tier"] or "{}")
        out[row.pop("window")] = row
    return out


def health_report(db, now, settings=None):
    """Everything /api/health, `sigsync.py health` and the page show (`settings`: thresholds
    in place of the stored ones)."""
    windows = health_summary(db, now, settings=settings)
    recent = windows["7d"] if windows["7d"]["signals"] else windows["all"]
    conditions = health_query(db, "v_global_conditions", now, settings=settings)
    for c in conditions:
        c["active"] = bool(c["active"])
        c["detail"] = json.loads(c["detail"])
    last = db.query("SELECT run_id, started_at, finished_at, outcome, examined, changes, error "
                    "FROM sync_runs WHERE outcome <> 'skipped' ORDER BY run_id DESC LIMIT 1")
    silent = next(c for c in conditions if c["condition"] == "indicator_silent")
    return {"now": iso(now), "score": recent["score"],
            "score_window": "7d" if recent is windows["7d"] else "all",
            "windows": windows, "conditions": conditions,
            "last_sync": last[0] if last else None,
            "indicator_last_seen": silent["detail"]["last_event_at"]}


def open_gaps(db, now, *, gap=None, severity=None, trade_id=None, limit=1000, settings=None):
    """Open gaps as of now, abnormal first; BadRequest for a gap type that does not exist (it
    would match nothing, and "0 open gaps" would be a lie about a typo)."""
    if gap is not None and not db.query("SELECT 1 FROM gap_types WHERE gap = ?", (gap,)):
        known = ", ".join(r["gap"] for r in db.query("SELECT gap FROM gap_types ORDER BY gap"))
        raise BadRequest(f"gap: unknown gap type {gap[:40]!r} (known: {known})")
    clauses, params = [], {"limit": limit}
    for name, value in (("gap", gap), ("severity", severity), ("trade_id", trade_id)):
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    where = ("WHERE " + " AND ".join(clauses) if clauses else "") + \
        " ORDER BY severity = 'abnormal' DESC, gap, trade_id LIMIT :limit"
    rows = health_query(db, "v_signal_gaps", now, where, params, settings=settings)
    for r in rows:
        r["evidence"] = json.loads(r["evidence"]) if r["evidence"] else None
    return rows


def format_health(report, threshold):
    """The report in the spirit of the original system's "Gap Analysis" block."""
    windows, lines = report["windows"], []
    w = windows[report["score_window"]]
    score = "n/a (no signals)" if report["score"] is None else f"{report['score']:.1f}/100"
    lines.append(f"Gap Analysis (as of {report['now']})")
    lines.append(f"Health Score: {score}  [{report['score_window']}: {w['signals']} signals; "
                 f"all time: {windows['all']['signals']} signals, score "
                 f"{windows['all']['score'] if windows['all']['score'] is not None else 'n/a'}]"
                 f"  threshold {threshold}")
    lines.append(f"Total Gaps: {w['abnormal_gaps'] + w['expected_gaps']} "
                 f"({w['abnormal_gaps']} abnormal, {w['expected_gaps']} expected)")
    lines.append("")
    lines.append("Gap Breakdown:")
    if not w["gaps_by_type"]:
        lines.append("  (none)")
    for gap, n in sorted(w["gaps_by_type"].items()):
        parts = [f"{n[k]} {k}" for k in ("abnormal", "expected") if n[k]]
        lines.append(f"  {gap}: {', '.join(parts)}")
    if w["signal_coverage"] is not None:
        lines.append(f"Signal coverage: {100 * w['signal_coverage']:.1f}% of {w['confirmed']} "
                     "confirmed signals have their SIGNAL_CREATED")
    filled = ", ".join(f"{k} {v}" for k, v in sorted(w["filled_by_tier"].items())) or "none"
    lines.append(f"Filled by reconciliation: {filled}")
    active = [c for c in report["conditions"] if c["active"]]
    lines.append("Global: " + (", ".join(c["condition"] for c in active) if active else "ok"))
    last = report["last_sync"]
    lines.append("Last sync: " + (f"run {last['run_id']} {last['outcome']} at "
                                  f"{last['started_at']}" if last else "never"))
    return "\n".join(lines)


# ============================================================================================
# RECONCILIATION
# ============================================================================================
# A pass makes each signal as complete as the evidence allows, never pretending: every value it
# sets carries its data_source and confidence, goes through `offer` (the one precedence rule),
# and writes one sync_audit_log row. Tier 0 (the trade's own SIGNAL_CREATED) happens in the fold,
# because that event shares the trade_id: its values are received data at 1.0. Tier 1 (bars)
# has its seam in `_tier1_bars`.

PRICE_FRESH_SECONDS = 600            # a price sample older than this proves nothing
SYNC_CHUNK = 200                     # signals per write transaction: webhooks wait < ~0.1 s
RUNNING_PASS_STALE = dt.timedelta(minutes=10)


# One seek of signals_market_direction, however many signals of the same direction come first.
_NEXT_OPPOSITE_SQL = (f"SELECT trade_id, signal_time FROM signals WHERE {MARKET_SQL} = ? AND "
                      f"{DIRECTION_SQL} = ? AND signal_time > ? ORDER BY signal_time, trade_id "
                      "LIMIT 1")


@dataclasses.dataclass
class PassContext:
    """What a pass knows besides the signal row: the clock and a way to read the database."""
    conn: object
    now: dt.datetime
    fresh_seconds: int = PRICE_FRESH_SECONDS

    def price(self, symbol):
        rows = self.conn.execute(
            "SELECT price, received_at, event_id, trade_id FROM symbol_prices "
            "WHERE symbol_key = ?", (symbol_key(symbol),)).fetchall()
        return dict(zip(("price", "received_at", "event_id", "trade_id"), rows[0])) \
            if rows else None

    def next_opposite(self, row):
        """The first later signal of the other direction on the same market (SPEC 3.3)."""
        direction = row["direction"] or row["id_direction"]
        rows = self.conn.execute(_NEXT_OPPOSITE_SQL, (symbol_key(row["symbol"]),
                                                      OPPOSITE[direction],
                                                      row["signal_time"])).fetchall()
        return {"trade_id": rows[0][0], "signal_time": rows[0][1]} if rows else None


def estimate(row, field, value, source, confidence, tier, reason, evidence=None, update=False):
    """A reconciliation fill through the one precedence rule; audited when it changes the row.

    `update` lets an estimate replace an estimate of the same standing (a running maximum
    computed from newer evidence); it never beats a received value.
    """
    if value is None or not _finite(value):
        return False                # absurd prices can overflow: no number, no estimate
    old, prov = row[field], row["provenance"].get(field)
    if old == value and prov == [source, confidence]:
        return False                                    # nothing new: write nothing
    rank = row["fold_state"]["ranks"].get(field)
    if old is not None and rank is not None:
        standing = (confidence, 0)
        if not (precedes(standing, tuple(rank)) or (update and standing == tuple(rank))):
            return False
    row[field] = value
    row["provenance"][field] = [source, confidence]
    row["fold_state"]["ranks"][field] = [confidence, 0]
    _queue_audit(row, field, old, value, source, confidence, tier, reason, evidence)
    return True


def _finite(value):
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _tier1_bars(row, ctx):
    """Tier 1 (price bars, 0.95): the seam for path-based excursions and exits. Not yet built:
    until then Tier 2 works from single price samples at lower confidence."""
    return 0


def _tier2_calculation(row, ctx):
    changes = 0
    fs = row["fold_state"]
    direction = row["direction"] or row["id_direction"]
    sign = 1 if direction == "Bullish" else -1
    entry, stop = row["entry_price"], row["stop_loss"]
    confirmed = row["status"] in ("ACTIVE", "EXITED")
    risk = abs(entry - stop) if entry is not None and stop is not None else None
    if confirmed and risk:
        targets = {str(k): round(entry + sign * k * risk, 6) for k in TARGET_MULTIPLES}
        # update: an identity follows its inputs (a late ENTRY's price replaces an MFE
        # element's), but never a received targets_extended
        changes += estimate(row, "targets_extended", targets, "calculated", 1.0, "tier2",
                            "entry ± k·risk by direction (an identity)",
                            {"entry_price": entry, "stop_loss": stop, "direction": direction},
                            update=True)
    entry_event = fs["first"].get("ENTRY")
    if confirmed and entry_event and len(entry_event) > 2:
        changes += estimate(row, "confirmation_time", entry_event[2], "calculated", 0.8, "tier2",
                            "upper bound: the ENTRY alert fires at the confirmation bar's close",
                            {"entry_event_id": entry_event[0], "received_at": entry_event[2]})
    if row["status"] != "ACTIVE" or not risk or row["symbol"] is None:
        return changes
    sample = ctx.price(row["symbol"])
    if sample is None:
        return changes
    age = (ctx.now - from_iso(sample["received_at"])).total_seconds()
    since = max(row["entry_received_at"] or row["first_received_at"],
                row["last_update_at"] or "")      # newer than everything the trade said
    if age > ctx.fresh_seconds or sample["received_at"] < since:
        return changes                   # stale, or older than the trade: proves nothing
    r = sign * (sample["price"] - entry) / risk
    evidence = {"price": sample["price"], "received_at": sample["received_at"],
                "event_id": sample["event_id"], "from_trade": sample["trade_id"],
                "symbol": symbol_key(row["symbol"])}
    moved = 0
    for field, value, better in (("no_be_mfe", max(r, 0.0), max), ("mae", min(r, 0.0), min)):
        prov = row["provenance"].get(field)
        if row[field] is None or (prov and prov[1] < 1.0):
            new = round(value if row[field] is None else better(row[field], value), 6)
            moved += estimate(row, field, new, "calculated", 0.8, "tier2",
                              "from the latest fresh price of the same symbol", evidence,
                              update=True)
    if moved:
        changes += moved
        _derive_status(row)             # an estimated MFE of 1R arms the BE leg (SPEC §2)
    past_stop = (sample["price"] <= stop) if sign == 1 else (sample["price"] >= stop)
    if past_stop and not fs.get("inferred_exit"):
        fs["inferred_exit"] = {"evidence_received_at": sample["received_at"]}
        reason = "a fresh same-symbol price is past the stop: exit missed"
        changes += estimate(row, "exit_sl_at", sample["received_at"], "inferred", 0.7, "tier2",
                            reason, evidence)
        changes += estimate(row, "exit_price", stop, "inferred", 0.7, "tier2", reason, evidence)
        changes += estimate(row, "exit_reason", "inferred_stop_crossed", "inferred", 0.7,
                            "tier2", reason, evidence)
        if row["be_state"] == "TRIGGERED":    # the BE stop (the entry) was crossed on the way
            changes += estimate(row, "exit_be_at", sample["received_at"], "inferred", 0.7,
                                "tier2", reason, evidence)
            changes += estimate(row, "be_exit_price", entry, "inferred", 0.7, "tier2", reason,
                                evidence)
        _derive_status(row)
    return changes


def _tier3_trade_id(row, ctx):
    moment = from_iso(row["id_time"])
    reason, evidence = "parsed from the trade_id", {"trade_id": row["trade_id"]}
    changes = estimate(row, "signal_time", row["id_time"], "trade_id", 0.9, "tier3", reason,
                       evidence)
    for field, value in (("signal_date", ny_date(moment)), ("session", session_of(moment)),
                         ("direction", row["id_direction"])):
        changes += estimate(row, field, value, "trade_id", 0.9, "tier3", reason, evidence)
    return changes


def _cancellation(row, ctx):
    """SPEC 3.3: a PENDING signal followed by an opposite one on its symbol is cancelled then;
    a cancellation so inferred follows the next opposite signal when an earlier one arrives
    late."""
    fs = row["fold_state"]
    if row["symbol"] is None or row["signal_time"] is None:
        return 0
    if row["status"] != "PENDING" and not (row["status"] == "CANCELLED"
                                           and fs.get("inferred_cancel")):
        return 0
    later = ctx.next_opposite(row)
    if later is None:
        return 0
    fs["inferred_cancel"] = True
    step = timeframe_step(row["timeframe"])
    bars = None
    if step:
        try:
            bars = bars_between(from_iso(row["signal_time"]), from_iso(later["signal_time"]),
                                step)
        except (OverflowError, ValueError):
            bars = None
    reason = "alternation: an opposite signal on the same market before confirmation"
    evidence = {"cancelled_by": later["trade_id"], "its_signal_time": later["signal_time"]}
    changes = 0
    for field, value in (("cancelled_at", later["signal_time"]),
                         ("cancelled_by", later["trade_id"]), ("bars_pending", bars),
                         ("cancel_reason", "opposite_signal")):
        changes += estimate(row, field, value, "inferred", 0.95, "cancellation", reason,
                            evidence, update=True)
    _derive_status(row)
    return changes


# Two phases over the work set: the tiers first, so that every signal has its time before the
# alternation phase compares neighbours.
PHASES = ((("tier1", _tier1_bars), ("tier2", _tier2_calculation), ("tier3", _tier3_trade_id)),
          (("cancellation", _cancellation),))


def reconcile(row, ctx, tiers):
    """Run the given tiers, in order, over one signal row; returns {tier: fields changed}."""
    counts = {}
    for name, tier in tiers:
        changed = tier(row, ctx)
        if changed:
            counts[name] = counts.get(name, 0) + changed
    return counts


_pass_lock = threading.Lock()


def sync_once(db, *, now, trigger="cli", full=False, fresh_seconds=PRICE_FRESH_SECONDS,
              stop=None):
    """One reconciliation pass, recorded in sync_runs. Returns the run's row as a dict.

    Incremental by default: only signals with events since the last good pass, the open trades
    of their symbols, and the pending signals their arrival can cancel. A pass that would
    overlap a running one (this process or another) is recorded as skipped, not stacked. Once
    `stop` (a threading.Event) is set, the pass ends after its current chunk, recorded as
    failed (what it wrote so far is committed; the next pass takes the same work again).
    """
    if not _pass_lock.acquire(blocking=False):
        return _skip(db, now, trigger, "another pass is running in this process")
    try:
        return _sync_locked(db, now, trigger, full, fresh_seconds, stop)
    finally:
        _pass_lock.release()


def _skip(db, now, trigger, why):
    with db.write() as conn:
        conn.execute("INSERT INTO sync_runs(started_at, finished_at, outcome, trigger, "
                     "from_event_id, to_event_id, error) VALUES (?, ?, 'skipped', ?, 0, 0, ?)",
                     (iso(now), iso(now), trigger, why))
        run_id = conn.last_insert_rowid()
    log.warning("what=sync outcome=skipped run_id=%s reason=%r", run_id, why)
    return {"run_id": run_id, "outcome": "skipped", "error": why}


def _sync_locked(db, now, trigger, full, fresh_seconds, stop=None):
    started = time.monotonic()
    with db.write() as conn:
        running = conn.execute("SELECT run_id FROM sync_runs WHERE outcome = 'running' AND "
                               "started_at > ?", (iso(now - RUNNING_PASS_STALE),)).fetchall()
        if running:
            skip = True
        else:
            skip = False
            mark = conn.execute("SELECT coalesce(max(to_event_id), 0) FROM sync_runs "
                                "WHERE outcome = 'ok'").fetchall()[0][0]
            top = conn.execute("SELECT coalesce(max(event_id), 0) FROM events").fetchall()[0][0]
            conn.execute("INSERT INTO sync_runs(started_at, outcome, trigger, full_pass, "
                         "from_event_id, to_event_id) VALUES (?, 'running', ?, ?, ?, ?)",
                         (iso(now), trigger, int(full), 0 if full else mark, top))
            run_id = conn.last_insert_rowid()
    if skip:
        return _skip(db, now, trigger, f"pass {running[0][0]} is still running")
    counts, examined = {}, 0
    try:
        work = _work_set(db.reader(), mark, top, full)
        examined = len(work)
        for tiers in PHASES:
            for start in range(0, len(work), SYNC_CHUNK):
                if stop is not None and stop.is_set():
                    raise PassInterrupted("the service is stopping")
                with db.write() as conn:
                    _pass_over(conn, work[start:start + SYNC_CHUNK],
                               PassContext(conn, now, fresh_seconds), tiers, counts,
                               run_id=run_id)
        outcome, error = "ok", None
    except PassInterrupted as e:
        outcome, error = "failed", f"{type(e).__name__}: {e}"
        log.warning("what=sync outcome=interrupted run_id=%s reason=%r", run_id, e.message)
    except Exception as e:       # recorded, logged and counted by the caller; never fatal
        outcome, error = "failed", f"{type(e).__name__}: {e}"
        log.exception("what=sync outcome=failed run_id=%s error=%r", run_id, e)
    changes = sum(counts.values())
    with db.write() as conn:
        conn.execute("UPDATE sync_runs SET finished_at = ?, outcome = ?, examined = ?, "
                     "changes = ?, counts = ?, error = ? WHERE run_id = ?",
                     (iso(now + dt.timedelta(seconds=time.monotonic() - started)), outcome,
                      examined, changes, _canonical(counts), error, run_id))
    health = health_summary(db, now)          # on a reader: webhooks never wait for it
    with db.write() as conn:
        conn.execute("UPDATE sync_runs SET finished_at = ?, outcome = ?, examined = ?, "
                     "changes = ?, counts = ?, error = ?, score_7d = ?, score_all = ?, "
                     "abnormal_gaps = ?, expected_gaps = ?, gaps_by_type = ? WHERE run_id = ?",
                     (iso(now + dt.timedelta(seconds=time.monotonic() - started)), outcome,
                      examined, changes, _canonical(counts), error, health["7d"]["score"],
                      health["all"]["score"], health["all"]["abnormal_gaps"],
                      health["all"]["expected_gaps"], _canonical(health["all"]["gaps_by_type"]),
                      run_id))
    log.info("what=sync outcome=%s run_id=%s examined=%s changes=%s seconds=%.3f", outcome,
             run_id, examined, changes, time.monotonic() - started)
    result = {"run_id": run_id, "outcome": outcome, "examined": examined, "changes": changes,
              "counts": counts, "error": error}
    if outcome == "failed":
        raise SyncFailed(error, result)
    return result


def _pass_over(conn, trade_ids, ctx, tiers, counts, **save):
    """Run the tiers over these signals, adding the fields changed to counts by tier; write
    the rows they changed (save_signal's keywords: the run, or no audit)."""
    for trade_id in trade_ids:
        row = load_signal(conn, trade_id)
        if row is None:
            continue
        for tier, n in reconcile(row, ctx, tiers).items():
            counts[tier] = counts.get(tier, 0) + n
        if row.get("_audit"):
            save_signal(conn, row, now=iso(ctx.now), **save)


class PassInterrupted(SigsyncError):
    """The service stopped during a pass (see sync_once's `stop`)."""


class SyncFailed(SigsyncError):
    code = "sync_failed"

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


_LATE_OPPOSITE_SQL = (
    f"SELECT trade_id FROM signals WHERE {MARKET_SQL} = ?1 AND {DIRECTION_SQL} = ?4 AND "
    "status = 'CANCELLED' AND signal_time < ?2 AND signal_time > coalesce((SELECT signal_time "
    f"FROM signals WHERE {MARKET_SQL} = ?1 AND {DIRECTION_SQL} = ?3 AND signal_time < ?2 "
    "ORDER BY signal_time DESC LIMIT 1), '') AND cancelled_at > ?2")


def _work_set(reader, mark, top, full):
    """The trade_ids a pass must look at, in a stable order (read on the given connection)."""
    if full:
        return [r[0] for r in reader.execute("SELECT trade_id FROM signals ORDER BY trade_id")]
    touched, priced = set(), set()     # trades with new events; markets with new price bars
    for trade_id, bar_symbol in reader.execute(
            "SELECT DISTINCT trade_id, CASE WHEN event_type = 'BAR' THEN symbol END FROM events "
            "WHERE event_id > ? AND event_id <= ? AND (trade_id IS NOT NULL OR "
            "event_type = 'BAR')", (mark, top)):
        if trade_id is not None:
            touched.add(trade_id)
        if bar_symbol is not None:
            priced.add(symbol_key(bar_symbol))
    if not touched and not priced:
        return []
    work = set(touched)
    symbols, latest = set(), {}
    for trade_id in touched:
        for symbol, signal_time, direction in reader.execute(
                f"SELECT symbol, coalesce(signal_time, id_time), {DIRECTION_SQL} FROM signals "
                "WHERE trade_id = ?", (trade_id,)):
            if symbol is None:
                continue
            market = symbol_key(symbol)
            symbols.add(market)
            if signal_time is None:
                continue
            if signal_time > latest.get((market, direction), ""):
                latest[market, direction] = signal_time
            # Signals cancelled by alternation at a later time than this one's, since the
            # signal of its direction before it: it is their next opposite signal now (it came
            # late). Two seeks: signals_market_direction for that signal, then the cancelled
            # signals since it (signals_cancelled); usually nothing.
            work.update(r[0] for r in reader.execute(
                _LATE_OPPOSITE_SQL, (market, signal_time, direction, OPPOSITE[direction])))
    # Pending signals a touched one may cancel: earlier, same market, opposite direction. Only
    # the latest touched signal of each market and direction matters (one query each, not one
    # per touched signal: a backlog of thousands stays linear).
    for (market, direction), signal_time in latest.items():
        work.update(r[0] for r in reader.execute(
            f"SELECT trade_id FROM signals WHERE {MARKET_SQL} = ? AND signal_time < ? AND "
            f"status = 'PENDING' AND {DIRECTION_SQL} = ?",
            (market, signal_time, OPPOSITE[direction])))
    # Open trades that a fresh price of their market may move (any exchange prefix): the
    # markets of the touched trades, whose MFE updates carry prices, and of the new bars.
    markets = symbols | priced
    if markets:
        work.update(trade_id for trade_id, symbol in reader.execute(
            "SELECT trade_id, symbol FROM signals WHERE status = 'ACTIVE'")
            if symbol_key(symbol) in markets)
    return sorted(work)


# ============================================================================================
# OPERATIONS
# ============================================================================================

# In this order: deleting signals empties signal_gaps and the health aggregates by trigger.
DERIVED_TABLES = ("signals", "bars", "symbol_prices", "symbol_activity", "signal_gaps",
                  "health_hours", "health_gap_counts", "signal_counts")


def rebuild(db, *, now, fresh_seconds=PRICE_FRESH_SECONDS):
    """Recompute every derived table from the log, the recorded passes replayed where they ran.

    The log is folded in arrival order, and each good pass of sync_runs is run again at its
    place in it: before the first event it had not seen (or a repeat received after it
    started), at its own moment (so a price is exactly as fresh as it was then), over its own
    work (its event range, or everything for a full pass), on the rows and prices the log had
    made by then. The estimates are then those the loop made, including those whose evidence
    has aged out since. Nothing is written to sync_runs or the audit log: those passes and
    their fills are recorded there already. (A webhook committed while a pass ran may have
    been seen by it live and not in the replay, or the other way round: the log does not
    say which.)
    """
    passes = db.query("SELECT started_at, full_pass, from_event_id, to_event_id FROM sync_runs "
                      "WHERE outcome = 'ok' ORDER BY run_id")
    return _fold_log(db, now=now, passes=passes, fresh_seconds=fresh_seconds)


def refold(db, *, now):
    """Recompute the derived tables from the event log (the fold only), in one transaction:
    what the bulk loaders run once at the end."""
    return _fold_log(db, now=now, passes=())


def _fold_log(db, *, now, passes, fresh_seconds=PRICE_FRESH_SECONDS):
    """The derived tables emptied, then the log folded in arrival order (events and repeats,
    by request), each of `passes` run before the first item it had not seen; one transaction.
    """
    passes = collections.deque(passes)
    counts, replayed, skipped = {}, 0, 0
    with db.write() as conn:
        for table in DERIVED_TABLES:
            conn.execute(f"DELETE FROM {table}")
        cache, dirty = {}, set()           # rows folded in memory; those not yet written

        def flush():
            for trade_id in dirty:
                save_signal(conn, cache[trade_id], now=iso(now), audit=False)
            dirty.clear()

        def replay(run):
            flush()
            ctx = PassContext(conn, from_iso(run["started_at"]), fresh_seconds)
            work = _work_set(conn, run["from_event_id"], run["to_event_id"], run["full_pass"])
            for tiers in PHASES:
                _pass_over(conn, work, ctx, tiers, counts, audit=False)
            for trade_id in work:          # the pass wrote them: the cached copies are old
                cache.pop(trade_id, None)

        count = 0
        for kind, request_id, received_at, item in _arrivals(conn):
            while passes and (item[0] > passes[0]["to_event_id"] if kind == "event"
                              else received_at > passes[0]["started_at"]):
                replay(passes.popleft())
                replayed += 1
            if kind == "event":
                event_id, etype, trade_id, payload, dedup_key = item
                try:
                    derive_event(conn, {"event_id": event_id, "received_at": received_at,
                                        "event_type": etype, "trade_id": trade_id,
                                        "payload": json.loads(payload),
                                        "dedup_key": dedup_key}, cache)
                except Rejected as e:
                    # Stored by an older version that accepted what this one refuses (a
                    # trade_id dated year 1, say): it stays in the log, out of the signals.
                    log.warning("event %d left out of the derived tables: %s", event_id,
                                e.message)
                    skipped += 1
                    continue
                count += 1
            else:
                event_id, trade_id, payload, key = item
                _touch_market(conn, key, received_at)
                row = cache.get(trade_id) or load_signal(conn, trade_id)
                if row is None:
                    continue
                fold_repeat(row, json.loads(payload), received_at)
                cache[trade_id] = row
            if trade_id is not None and trade_id in cache:
                dirty.add(trade_id)
        while passes:                      # passes after the last arrival
            replay(passes.popleft())
            replayed += 1
        flush()
        signals = conn.execute("SELECT count(*) FROM signals").fetchall()[0][0]
    return {"events": count, "signals": signals, "passes": replayed,
            "changes": sum(counts.values()), "skipped": skipped}


def _arrivals(conn):
    """The log in arrival order: ("event", request_id, received_at, (event_id, type, trade_id,
    payload, dedup_key)) and ("repeat", request_id, received_at, (event_id, trade_id, payload,
    symbol_key)), merged by request (a request's new events before its repeats)."""
    events = (("event", request_id, received_at, (event_id, etype, trade_id, payload, key))
              for event_id, request_id, received_at, etype, trade_id, payload, key
              in conn.cursor().execute(
                  "SELECT event_id, request_id, received_at, event_type, trade_id, payload, "
                  "dedup_key FROM events ORDER BY event_id"))
    repeats = (("repeat", request_id, received_at, (event_id, trade_id, payload, key))
               for request_id, event_id, received_at, key, trade_id, payload
               in conn.cursor().execute(
                   "SELECT r.request_id, r.event_id, r.received_at, r.symbol_key, e.trade_id, "
                   "e.payload FROM event_repeats AS r JOIN events AS e USING (event_id) "
                   "ORDER BY r.request_id, r.event_id"))
    return heapq.merge(events, repeats, key=lambda a: (a[1], a[0] == "repeat", a[3][0]))


def replay_rejected(db, *, now, include_auth=False, ids=None):
    """Re-ingest dead letters (after a fix); returns one outcome per row tried."""
    sql = "SELECT rejected_id, received_at, raw_body, peer, path, content_type, status " \
          "FROM rejected WHERE replayed_at IS NULL"
    rows = db.query(sql + " ORDER BY rejected_id")
    outcomes = []
    for row in rows:
        if ids and row["rejected_id"] not in ids:
            continue
        if row["status"] in (401, 403) and not include_auth:
            outcomes.append({"rejected_id": row["rejected_id"], "outcome": "skipped",
                             "reason": "refused by authentication (use --include-auth)"})
            continue
        if row["status"] == 413:
            outcomes.append({"rejected_id": row["rejected_id"], "outcome": "skipped",
                             "reason": "body too large: only a prefix was kept"})
            continue
        try:
            # received_at is when the request arrived (SPEC §1.4), not when it was replayed:
            # exit, break-even and confirmation times are read from it.
            result = ingest(db, bytes(row["raw_body"]), now=from_iso(row["received_at"]),
                            peer=row["peer"],
                            path=row["path"] or "/replay", content_type=row["content_type"],
                            source="replay")
        except Rejected as e:
            outcomes.append({"rejected_id": row["rejected_id"], "outcome": "rejected",
                             "reason": f"{e.code}: {e.message}"})
            continue
        first = result.events[0]["event_id"] if result.events else None
        with db.write() as conn:
            conn.execute("UPDATE rejected SET replayed_at = ?, replay_event_id = ? "
                         "WHERE rejected_id = ?", (iso(now), first, row["rejected_id"]))
        outcomes.append({"rejected_id": row["rejected_id"], "outcome": "stored",
                         "event_id": first,
                         "duplicate": result.response()["duplicate"]})
    waiting = {row["rejected_id"] for row in rows}
    for rejected_id in sorted(set(ids or ()) - waiting):
        outcomes.append({"rejected_id": rejected_id, "outcome": "not_found",
                         "reason": "no dead letter waiting with this id (unknown, dropped "
                                   "beyond the bound, or replayed already)"})
    return outcomes


def demo_payloads(start, *, seed=7, signals=24):
    """A realistic generated session: (seconds after start, body bytes) in sending order.

    A 1-minute MNQ1! market from 09:00 New York (a random walk of bars, each sent as a BAR
    alert at its close), and the indicator's alerts on it: triangles that confirm by the
    indicator's rule (a later close beyond the triangle bar's high or low) or get cancelled,
    entries at the confirming close, MFE batches each bar with excursions computed from the
    bars, break-evens, stop and target exits; a lost SIGNAL_CREATED here and there, a lost
    ENTRY recovered only through MFE batches, a resend and a few malformed alerts.
    """
    rng = random.Random(seed)
    t0 = start.astimezone(NEW_YORK).replace(hour=9, minute=0, second=0, microsecond=0)
    n_bars = 7 * signals + 12           # the last trades are still open when it ends
    bars, close = [], 25600.0
    for _ in range(n_bars):
        open_ = close
        close = _tick(open_ + rng.gauss(0.15, 6.0))
        bars.append((open_, _tick(max(open_, close) + abs(rng.gauss(0, 3))),
                     _tick(min(open_, close) - abs(rng.gauss(0, 3))), close))

    def sent_at(m, extra=0.0):
        """Seconds after `start` at which the alert of bar m's close goes out."""
        return (t0 + dt.timedelta(minutes=m + 1) - start).total_seconds() + extra

    out, unconfirmed = [], 0
    for m, (o, h, lo, c) in enumerate(bars):
        out.append((sent_at(m), {"event_type": "BAR", "symbol": "MNQ1!", "timeframe": "1",
                                 "time": iso(t0 + dt.timedelta(minutes=m)),
                                 "open": o, "high": h, "low": lo, "close": c}))
    for n in range(signals):
        i = 7 * n + rng.randint(0, 3)                        # the triangle bar
        tri = t0 + dt.timedelta(minutes=i)
        bullish = rng.random() < 0.55
        confirm = _confirming_bar(bars, i, bullish)
        if confirm is None and rng.random() < 0.7:
            bullish = not bullish           # the indicator prints more winners than a coin
            confirm = _confirming_bar(bars, i, bullish)
        direction = "Bullish" if bullish else "Bearish"
        sign = 1 if bullish else -1
        trade_id = tri.strftime("%Y%m%d_%H%M%S") + "000_" + direction.upper()
        htf = {k: rng.choice(["Bullish", "Bearish", "Neutral"]) for k in
               ("daily", "h4", "h1", "m15", "m5", "m1")}
        base = {"trade_id": trade_id, "symbol": "MNQ1!", "timeframe": "1",
                "direction": direction, "session": session_of(tri.astimezone(UTC)),
                "event_timestamp": tri.strftime("%Y-%m-%dT%H:%M:%S")}
        if rng.random() > 0.15:     # most SIGNAL_CREATED alerts arrive
            out.append((sent_at(i), {**base, "event_type": "SIGNAL_CREATED",
                                     "htf_alignment": htf,
                                     "setup": {"setup_family": "FVG_CORE",
                                               "setup_variant": "PENDING_CONFIRMATION"},
                                     "market_state": {"trend_regime": direction}}))
        if confirm is None or rng.random() < 0.1:
            # Not confirmed in six bars: the indicator cancels it when the opposite triangle
            # prints, or (every third time) says nothing and reconciliation has to infer it.
            unconfirmed += 1
            if unconfirmed % 3:
                bars_pending = rng.randint(2, 5)
                opposite = tri + dt.timedelta(minutes=bars_pending)
                out.append((sent_at(i + bars_pending), {
                    **base, "event_type": "CANCELLED", "cancel_reason": "opposite_signal",
                    "cancelled_time": opposite.strftime("%Y-%m-%dT%H:%M:%S"),
                    "cancelled_by": opposite.strftime("%Y%m%d_%H%M%S") + "000_"
                    + ("BEARISH" if bullish else "BULLISH"), "bars_pending": bars_pending}))
            continue
        entry = bars[confirm][3]
        stop = _tick(bars[i][2] - 0.25) if bullish else _tick(bars[i][1] + 0.25)
        if sign * (entry - stop) < 8:
            stop = _tick(entry - sign * 8)
        risk = abs(entry - stop)
        targets = {f"tp{k}_price": _tick(entry + sign * k * risk) for k in (1, 2, 3)}
        if rng.random() >= 0.08:    # a lost ENTRY now and then: only the batches carry it
            out.append((sent_at(confirm), {**base, "event_type": "ENTRY", "entry_price": entry,
                                           "stop_loss": stop, "targets": targets,
                                           "htf_alignment": htf, "be_mfe": 0, "no_be_mfe": 0,
                                           "mae_global_r": 0}))
        mfe = mae = be_mfe = 0.0
        be = "none"
        for m in range(confirm + 1, min(confirm + 31, n_bars)):
            o, h, lo, c = bars[m]
            best, worst = (h, lo) if bullish else (lo, h)
            mfe = max(mfe, round(sign * (best - entry) / risk, 4))
            mae = min(mae, round(sign * (worst - entry) / risk, 4))
            if be != "stopped":     # the break-even leg's excursion ends with that leg
                be_mfe = mfe
            stamp = (t0 + dt.timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%S")
            out.append((sent_at(m, 0.5), {
                "event_type": "MFE_UPDATE_BATCH", "timestamp": stamp, "symbol": "MNQ1!",
                "signals": [{"trade_id": trade_id, "direction": direction,
                             "entry_price": entry, "stop_loss": stop, "no_be_mfe": mfe,
                             "be_mfe": be_mfe, "mae_global_r": mae, "current_price": c,
                             "be_triggered": mfe >= 1.0}]}))
            common = {**base, "entry_price": entry, "stop_loss": stop, "be_mfe": be_mfe,
                      "no_be_mfe": mfe, "mae_global_r": mae}
            if be == "none" and mfe >= 1.0:
                be = "armed"
                out.append((sent_at(m, 1), {**common, "event_type": "BE_TRIGGERED",
                                            "be_price": entry}))
            elif be == "armed" and sign * (worst - entry) <= 0:
                be = "stopped"
                out.append((sent_at(m, 2), {**common, "event_type": "EXIT_BE",
                                            "exit_price": entry, "final_mfe": be_mfe}))
            if mae <= -1.0:
                out.append((sent_at(m, 3), {**common, "event_type": "EXIT_SL",
                                            "exit_price": stop, "final_mfe": mfe}))
                break
            if mfe >= 3.0:
                out.append((sent_at(m, 3), {**common, "event_type": "EXIT_TP",
                                            "exit_price": targets["tp3_price"],
                                            "final_mfe": mfe}))
                break
    last = max(at for at, _ in out)
    fresh = (start + dt.timedelta(seconds=last + 60)).astimezone(NEW_YORK)
    fresh = fresh.replace(second=0, microsecond=0)
    out.append((last + 61, {"event_type": "SIGNAL_CREATED", "symbol": "MNQ1!", "timeframe": "1",
                            "trade_id": fresh.strftime("%Y%m%d_%H%M%S") + "000_BULLISH",
                            "direction": "Bullish",
                            "event_timestamp": fresh.strftime("%Y-%m-%dT%H:%M:%S"),
                            "htf_alignment": {"daily": "Bullish", "h4": "Bullish"}}))
    for k in range(0, n_bars, 15):
        out.append((sent_at(k), {"event_type": "HEARTBEAT",
                                 "timestamp": (t0 + dt.timedelta(minutes=k)).isoformat()[:19]}))
    # A second stop alert for one trade with another fill price: kept, and shown as a conflict.
    at, first_sl = next((at, b) for at, b in sorted(out, key=lambda item: item[0])
                        if b["event_type"] == "EXIT_SL")
    out.append((at + 20, {**first_sl, "exit_price": _tick(first_sl["exit_price"] - 1.25)}))
    out.sort(key=lambda item: item[0])
    bodies = [(at, json.dumps(body).encode()) for at, body in out]
    # What a real feed also carries: a resend, a malformed body, an unreplaced placeholder.
    bodies.insert(len(bodies) // 2, bodies[len(bodies) // 2])
    bodies.append((bodies[-1][0] + 5, b'{"event_type":"ENTRY","trade_id":"20251215_1000"'))
    bodies.append((bodies[-1][0] + 5, b'{"event_type":"BAR","symbol":"MNQ1!","time":"{{time}}",'
                   b'"open":1,"high":2,"low":0.5,"close":1.5}'))
    return bodies


def _confirming_bar(bars, i, bullish, within=6):
    """The indicator's rule: the first of the next `within` bars to close beyond the triangle
    bar's high (bullish) or low (bearish)."""
    level = bars[i][1] if bullish else bars[i][2]
    return next((m for m in range(i + 1, min(i + within + 1, len(bars)))
                 if (bars[m][3] > level if bullish else bars[m][3] < level)), None)


def _tick(price):
    """A price on MNQ's 0.25 tick."""
    return round(price * 4) / 4


def demo_start(now):
    """Where `demo` starts by default: 08:30 New York on the latest weekday whose session (09:00
    to about 12:30) is over by `now`, so a newcomer's page shows a finished, recent morning."""
    local = now.astimezone(NEW_YORK)
    day = local.date() if local.hour >= 13 else local.date() - dt.timedelta(days=1)
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return ny_local_to_utc(dt.datetime.combine(day, dt.time(8, 30)))


def demo(db, *, start, seed=7):
    """Fill the database with a generated session through the real ingest path."""
    stored = rejected = 0
    for at, body in demo_payloads(start, seed=seed):
        now = start + dt.timedelta(seconds=at)
        try:
            ingest(db, body, now=now, peer="127.0.0.1", content_type="application/json",
                   source="demo")
            stored += 1
        except Rejected as e:
            reject(db, body, e, now=now, peer="127.0.0.1", path="/api/automated-signals/webhook",
                   content_type="text/plain")
            rejected += 1
    run = sync_once(db, now=now, trigger="cli")        # what the loop would have done by now
    return {"stored": stored, "rejected": rejected, "changes": run["changes"]}


def backup_to(source_path, dest):
    """A consistent copy of the database (SQLite online backup API), safe while serving.

    The pages are copied in one step, i.e. inside one read transaction: the copy is the database
    as of that instant, whatever writers do meanwhile. Written to a temporary file, fsynced,
    then renamed over `dest`, so a crash never leaves a half backup under that name.
    """
    dest = os.path.abspath(dest)
    if os.path.isdir(dest):
        raise SigsyncError(f"backup: {dest} is a directory; name the backup file, e.g. "
                           f"{os.path.join(dest, 'sigsync.db')}")
    if not os.path.isdir(os.path.dirname(dest)):
        raise SigsyncError(f"backup: no such directory: {os.path.dirname(dest)}")
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        # Readable by its owner only, whoever runs it and whatever the umask: every raw body
        # is in it. (SQLite takes an empty file for a new database.)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        source = _connect(source_path)
        try:
            target = apsw.Connection(tmp)
            try:
                with target.backup("main", source, "main") as b:
                    b.step(-1)
                    pages = b.pagecount
            finally:
                target.close()
        finally:
            source.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        for leftover in (tmp, tmp + "-journal"):      # never leave a partial copy behind
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        raise
    directory = os.open(os.path.dirname(dest), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return {"dest": dest, "pages": pages, "bytes": os.path.getsize(dest)}


def check(db, *, now, sample=200, seed=None):
    """Integrity, schema version, and the derived rows of a sample equal to a fresh fold."""
    problems = []
    integrity = [r["integrity_check"] for r in db.query("PRAGMA integrity_check")]
    if integrity != ["ok"]:
        problems.append("integrity_check: " + "; ".join(integrity[:5]))
    version = db.query("PRAGMA user_version")[0]["user_version"]
    if version != schema_version():
        problems.append(f"schema version {version}, expected {schema_version()}")
    ids = [r["trade_id"] for r in db.query("SELECT trade_id FROM signals")]
    chosen = random.Random(seed).sample(ids, min(sample, len(ids)))
    compared = ("status", "be_state", "event_count", "has_entry", "has_signal_created",
                "first_received_at", "last_received_at", "last_update_at", "no_be_mfe",
                "be_mfe", "mae")
    for trade_id in chosen:
        stored = load_signal(db.reader(), trade_id)
        fresh = None
        try:
            for e in db.query("SELECT event_id, received_at, event_type, trade_id, payload, "
                              "dedup_key FROM events WHERE trade_id = ? ORDER BY event_id",
                              (trade_id,)):
                e["payload"] = json.loads(e["payload"])
                fresh = fresh or new_signal(trade_id, e["received_at"])
                fold(fresh, e)
        except Rejected as refused:        # stored by an older version that accepted it
            problems.append(f"{trade_id}: this version refuses its events ({refused.message}): "
                            "run `sigsync.py rebuild`")
            continue
        if fresh is None:
            problems.append(f"{trade_id}: a signal without events")
            continue
        for r in db.query("SELECT e.payload, r.received_at FROM events AS e JOIN event_repeats "
                          "AS r USING (event_id) WHERE e.trade_id = ? ORDER BY r.request_id",
                          (trade_id,)):
            fold_repeat(fresh, json.loads(r["payload"]), r["received_at"])
        inferred = stored["fold_state"].get("inferred_cancel") or \
            stored["fold_state"].get("inferred_exit")
        estimated = {f for f, p in stored["provenance"].items() if p is not None and p[1] < 1.0}
        for field in SIGNAL_COLUMNS:
            if field in estimated:
                continue                     # an estimate of a pass: not in the log
            prov = stored["provenance"].get(field)
            if field not in compared and (prov is None or prov[0] == "calculated"):
                continue                     # bookkeeping, or a pass's exact arithmetic
            if field in ("status", "be_state") and inferred:
                continue                     # follows from an inference, not from the log
            if field == "be_state" and "no_be_mfe" in estimated and \
                    (stored[field], fresh[field]) == ("TRIGGERED", "NONE") and \
                    (stored["no_be_mfe"] or 0) >= 1.0:
                continue                     # armed by an estimated excursion (+1R)
            if stored[field] != fresh[field]:
                problems.append(f"{trade_id}.{field}: stored {stored[field]!r}, "
                                f"log says {fresh[field]!r}")
    return {"integrity": integrity[0] if integrity else None, "schema_version": version,
            "signals_checked": len(chosen), "problems": problems, "ok": not problems}


def export_events(db, out):
    """NDJSON, one line per accepted request: its arrival, origin and raw body."""
    n = 0
    for row in db.reader().execute(
            "SELECT request_id, received_at, peer, path, content_type, source, raw_body "
            "FROM requests ORDER BY request_id"):
        keys = ("request_id", "received_at", "peer", "path", "content_type", "source")
        line = dict(zip(keys, row[:6]))
        line["raw_body"] = bytes(row[6]).decode("utf-8")
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        n += 1
    return n


def export_signals_csv(db, out):
    import csv
    columns = [c for c in SIGNAL_COLUMNS if c != "fold_state"]
    writer = csv.writer(out)
    writer.writerow(columns)
    n = 0
    for row in db.reader().execute(f"SELECT {', '.join(columns)} FROM signals "
                                   "ORDER BY id_time, trade_id"):
        writer.writerow(["" if v is None else v for v in row])
        n += 1
    return n


def import_lines(db, lines, *, now, progress=None, limits=None):
    """Ingest NDJSON: exported request lines (their received_at kept) or raw bodies (arriving
    now). Idempotent: a raw line whose events are all stored already writes nothing; an
    exported line writes nothing when that very request is stored (see _already_known)."""
    counts = {"stored": 0, "known": 0, "rejected": 0, "lines": 0}
    # Run again (after an interruption, say), a refused line is not kept twice: the dead
    # letters of earlier imports, by digest, read once (they are bounded: 64 MB by default).
    kept = {hashlib.sha256(bytes(r["raw_body"])).digest() for r in db.query(
        "SELECT raw_body FROM rejected WHERE path = '/import' AND replayed_at IS NULL")}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        counts["lines"] += 1
        raw, received, meta, known = line.encode("utf-8"), now, {}, "events"
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("raw_body"), str) \
                and "received_at" in data:
            raw = data["raw_body"].encode("utf-8")
            received = from_iso(data["received_at"])
            meta = {"peer": data.get("peer"), "content_type": data.get("content_type"),
                    "path": data.get("path") or "/import"}
            known = "request"
        try:
            if known == "events" and isinstance(data, dict) and data.get("signals") == [] \
                    and db.query("SELECT 1 FROM requests WHERE source = 'import' AND "
                                 "raw_body = ? LIMIT 1", (bytes(mask_secret(raw)),)):
                # A raw body with no events at all (an empty MFE batch) that an earlier import
                # stored: "all its events are stored" says nothing, so the body is looked up
                # (a read, outside the writer lock; only for such lines).
                raise AlreadyStored()
            ingest(db, raw, now=received, source="import", skip_known=known,
                   **{"path": "/import", **meta})
            counts["stored"] += 1
        except AlreadyStored:
            counts["known"] += 1
        except Rejected as e:
            counts["rejected"] += 1
            digest = hashlib.sha256(bytes(mask_secret(raw))).digest()
            if digest not in kept:
                reject(db, raw, e, now=now, path="/import", **(limits or {}))
                kept.add(digest)
        if progress:
            progress(number, counts)
    return counts


def metrics_text(db, now, job_failures=None):
    """Prometheus text exposition (format 0.0.4)."""
    out = []

    def family(name, kind, help_text, samples):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{v}"' for k, v in labels.items())
            out.append(f"{name}{{{label}}} {value}" if label else f"{name} {value}")

    counters = {r["name"]: r["value"] for r in db.query("SELECT name, value FROM counters")}
    family("sigsync_events_total", "counter", "Events stored, by type (duplicates excluded).",
           [({"type": t}, counters.get(f"events:{t}", 0))
            for t in sorted(set(EVENT_TYPES.values()) - {"MFE_UPDATE_BATCH"})])
    family("sigsync_duplicates_total", "counter", "Events received again and acknowledged "
           "as duplicates.", [({}, counters.get("duplicates", 0))])
    family("sigsync_rejected_total", "counter", "Requests refused, by reason.",
           [({"reason": k.split(":", 1)[1]}, v) for k, v in sorted(counters.items())
            if k.startswith("rejected:")])
    family("sigsync_dead_letter_bytes", "gauge", "Bytes of request bodies kept as dead letters "
           "(bounded by max_dead_letter_bytes).", [({}, counters.get("dead_letter_bytes", 0))])
    runs = {r["outcome"]: r for r in db.query(
        "SELECT outcome, count(*) AS n, coalesce(sum((julianday(finished_at) - "
        "julianday(started_at)) * 86400), 0) AS seconds FROM sync_runs GROUP BY outcome")}
    family("sigsync_sync_runs_total", "counter", "Reconciliation passes, by outcome.",
           [({"outcome": o}, runs[o]["n"] if o in runs else 0)
            for o in ("ok", "failed", "skipped")])
    finished = [r for o, r in runs.items() if o in ("ok", "failed")]
    family("sigsync_sync_duration_seconds", "summary", "Time spent in reconciliation passes.",
           [])
    out.append(f"sigsync_sync_duration_seconds_sum {sum(r['seconds'] for r in finished):.6f}")
    out.append(f"sigsync_sync_duration_seconds_count {sum(r['n'] for r in finished)}")
    last = db.query("SELECT (julianday(finished_at) - julianday(started_at)) * 86400 AS s "
                    "FROM sync_runs WHERE finished_at IS NOT NULL AND outcome <> 'skipped' "
                    "ORDER BY run_id DESC LIMIT 1")
    family("sigsync_sync_last_duration_seconds", "gauge", "Duration of the last pass.",
           [({}, f"{last[0]['s']:.6f}" if last else "NaN")])
    summary = health_summary(db, now)          # its 'all' window counts every open gap
    counts = {(g, sev): n for g, by in summary["all"]["gaps_by_type"].items()
              for sev, n in by.items() if n}
    family("sigsync_open_gaps", "gauge", "Open gaps, by type and severity.",
           [({"gap": g, "severity": sev}, n) for (g, sev), n in sorted(counts.items())])
    family("sigsync_health_score", "gauge", "Mean per-signal health score (NaN: no signals).",
           [({"window": w}, "NaN" if summary[w]["score"] is None else summary[w]["score"])
            for w in ("7d", "all")])
    family("sigsync_job_failures_total", "counter", "Background job failures, by job.",
           [({"job": j}, n) for j, n in sorted((job_failures or {}).items())])
    return "\n".join(out) + "\n"


# ============================================================================================
# READ MODEL
# ============================================================================================
# What the page, the read API and `sigsync.py signals` list. One row per signal, newest first
# (by the time in its trade_id, which every signal has), keyset-paginated so page 1,000 costs
# what page 1 costs.

SIGNAL_STATUSES = ("PENDING", "ACTIVE", "EXITED", "CANCELLED")
STATUS_FILTERS = {"pending": ("PENDING",), "active": ("ACTIVE",), "exited": ("EXITED",),
                  "cancelled": ("CANCELLED",), "confirmed": ("ACTIVE", "EXITED")}
LIST_COLUMNS = [
    "trade_id", "status", "be_state", "be_triggered_at", "exit_be_at", "symbol", "direction",
    "timeframe", "session", "signal_time", "signal_date", "entry_price", "stop_loss", "risk",
    "no_be_mfe", "be_mfe", "mae", "final_mfe", "htf_alignment", "confirmation_time",
    "exit_reason", "exit_price", "cancelled_at", "event_count", "last_received_at"]
# Whether the status was received (an EXIT or CANCELLED event, or the evidence of an entry) or
# inferred by a pass (an exit from a price sample past the stop, confidence 0.7; a cancellation
# by alternation, 0.95): the list and the detail say which, so an inference never reads as news
# from the indicator. The fold drops `inferred_exit` when the indicator's own exit arrives; an
# explicit CANCELLED event's 1.0 replaces the inferred cancelled_at.
STATUS_SOURCE_SQL = (
    "CASE WHEN status = 'EXITED' AND json_extract(fold_state, '$.inferred_exit') IS NOT NULL "
    "THEN 'inferred' WHEN status = 'CANCELLED' AND "
    "json_extract(provenance, '$.cancelled_at[0]') = 'inferred' THEN 'inferred' "
    "ELSE 'received' END AS status_source")
CANCELLED_COLUMNS = ["trade_id", "symbol", "direction", "session", "signal_time",
                     "cancelled_at", "cancelled_by", "cancel_reason", "bars_pending"]


@dataclasses.dataclass
class SignalFilter:
    """The filters of the all-signals list, validated. Times are UTC ISO strings."""
    statuses: tuple = ()
    direction: str = None
    sessions: tuple = ()
    symbol: str = None
    since: str = None          # inclusive
    until: str = None          # exclusive
    q: str = None
    limit: int = 100
    cursor: tuple = None       # (id_time, trade_id) of the last row of the previous page

    @classmethod
    def parse(cls, get):
        """From query parameters (`get(name)` -> str or None). Raises BadRequest."""
        f = cls()
        raw = (get("status") or "").strip()
        if raw:
            statuses = []
            for part in raw.split(","):
                key = part.strip().lower()
                if key not in STATUS_FILTERS:
                    raise BadRequest(f"status: unknown status {part.strip()[:20]!r} (expected "
                                     f"{', '.join(STATUS_FILTERS)})")
                statuses.extend(s for s in STATUS_FILTERS[key] if s not in statuses)
            f.statuses = tuple(statuses)
        raw = (get("direction") or "").strip()
        if raw:
            if raw.capitalize() not in ("Bullish", "Bearish"):
                raise BadRequest(f"direction: expected Bullish or Bearish, got {raw[:20]!r}")
            f.direction = raw.capitalize()
        raw = (get("session") or "").strip()
        if raw:
            sessions = []
            for part in raw.split(","):
                name = part.strip().upper().replace("_", " ")
                name = "AFTER_HOURS" if name == "AFTER HOURS" else name
                if name not in SESSIONS:
                    raise BadRequest(f"session: unknown session {part.strip()[:20]!r} (expected "
                                     f"one of {', '.join(SESSIONS)})")
                sessions.append(name)
            f.sessions = tuple(sessions)
        f.symbol = (get("symbol") or "").strip() or None
        f.since = _filter_time(get("since"), "since", end=False)
        f.until = _filter_time(get("until"), "until", end=True)
        f.q = (get("q") or "").strip() or None
        raw = get("limit")
        if raw not in (None, ""):
            try:
                f.limit = int(raw)
            except ValueError:
                raise BadRequest(f"limit: expected a whole number, got {raw[:20]!r}")
            if not 1 <= f.limit <= 1000:
                raise BadRequest("limit: must be between 1 and 1000")
        raw = get("cursor")
        if raw:
            f.cursor = decode_cursor(raw)
        return f

    def key_filters(self, *, statuses=True):
        """{column: allowed values} of the filters on whole column values."""
        out = {"status": self.statuses if statuses else (), "session": self.sessions,
               "direction": (self.direction,) if self.direction else (),
               "symbol": (self.symbol,) if self.symbol else ()}
        return {column: values for column, values in out.items() if values}

    def where(self, *, statuses=True):
        """(SQL condition, parameters) for every filter but the cursor."""
        clauses, params = _in_clauses(self.key_filters(statuses=statuses))
        if self.since:
            clauses.append("id_time >= :since")
            params["since"] = self.since
        if self.until:
            clauses.append("id_time < :until")
            params["until"] = self.until
        if self.q:
            clauses.append("instr(upper(trade_id), upper(:q)) > 0")
            params["q"] = self.q
        return (" AND ".join(clauses) or "1"), params


def _in_clauses(allowed):
    """([SQL "column IN (...)"], parameters) for {column: allowed values}."""
    clauses, params = [], {}
    for column, values in allowed.items():
        names = [f"{column}_{i}" for i in range(len(values))]
        clauses.append(f"{column} IN ({', '.join(':' + n for n in names)})")
        params.update(zip(names, values))
    return clauses, params


def _filter_time(raw, name, *, end):
    """A since/until parameter: a New York calendar date (the whole day) or an instant."""
    raw = (raw or "").strip()
    if not raw:
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        try:
            day = dt.date.fromisoformat(raw)
        except ValueError:
            raise BadRequest(f"{name}: not a date: {raw!r}")
        if day.year not in _YEARS:
            return _clamp_time(day.year)
        if end:
            day += dt.timedelta(days=1)
        return iso(ny_local_to_utc(dt.datetime.combine(day, dt.time())))
    try:
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: expected YYYY-MM-DD (New York date) or an ISO time, "
                         f"got {raw[:40]!r}")
    if moment.tzinfo is None:
        raise BadRequest(f"{name}: an instant needs Z or an offset, got {raw[:40]!r}")
    if moment.year not in _YEARS:
        return _clamp_time(moment.year)
    return iso(moment)


def _clamp_time(year):
    """A filter bound beyond the times sigsync stores (_TIME_RANGE): the nearest end, so that
    `since=0999-01-01` means "from the start" and `until=9999-12-31` "to the end" (compared as
    text, a bound outside the four-digit ISO form would mean neither)."""
    return iso(_TIME_MIN if year < _TIME_MIN.year else _TIME_MAX)


def encode_cursor(id_time, trade_id):
    text = json.dumps([id_time, trade_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(raw):
    try:
        padded = raw + "=" * (-len(raw) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")).decode())
        if (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, str) for v in value)):
            return tuple(value)
    except (ValueError, UnicodeError):
        pass
    raise BadRequest("cursor: not a cursor this server handed out (start again without it)")


def _page(db, select, f):
    """Rows of one page and the cursor of the next, newest first.

    One query per status, each an ordered range of the signals_status (status, id_time) index,
    merged here: no sort of all matching rows, so a page reads at most limit + 1 rows per
    status however many signals match.
    """
    where, params = f.where(statuses=False)
    if f.cursor:
        where += " AND (id_time, trade_id) < (:c_time, :c_id)"
        params.update(c_time=f.cursor[0], c_id=f.cursor[1])
    sql = (f"SELECT id_time, {select} FROM signals WHERE status = :status AND {where} "
           "ORDER BY id_time DESC, trade_id DESC LIMIT :limit")
    arms = [db.query(sql, {**params, "status": status, "limit": f.limit + 1})
            for status in (f.statuses or SIGNAL_STATUSES)]
    rows = list(itertools.islice(heapq.merge(
        *arms, key=lambda r: (r["id_time"], r["trade_id"]), reverse=True), f.limit + 1))
    more = len(rows) > f.limit
    rows = rows[:f.limit]
    cursor = encode_cursor(rows[-1]["id_time"], rows[-1]["trade_id"]) if more else None
    for r in rows:
        del r["id_time"]
    return rows, cursor


def signal_summary(db, f):
    """Counts by status over every filter but status (so each status keeps its count).

    With no time or trade_id filter the answer is a sum over signal_counts (kept by triggers);
    otherwise the signals themselves are counted, within the time range's part of the index.
    """
    counts = dict.fromkeys(SIGNAL_STATUSES, 0)
    if f.since or f.until or f.q:
        where, params = f.where(statuses=False)
        sql = f"SELECT status, count(*) AS n FROM signals WHERE {where} GROUP BY status"
    else:
        clauses, params = _in_clauses(f.key_filters(statuses=False))
        sql = ("SELECT status, sum(n) AS n FROM signal_counts WHERE "
               f"{' AND '.join(clauses) or '1'} GROUP BY status")
    for r in db.query(sql, params):
        counts[r["status"]] = r["n"]
    total = sum(counts.values())
    confirmed = counts["ACTIVE"] + counts["EXITED"]
    return {"total": total, "pending": counts["PENDING"], "active": counts["ACTIVE"],
            "exited": counts["EXITED"], "cancelled": counts["CANCELLED"],
            "confirmation_rate": round(confirmed / total, 4) if total else None}


def signal_health(db, now, trade_ids):
    """{trade_id: its signal_health_metrics row (health_score, open_gaps, abnormal_gaps)}."""
    if not trade_ids:
        return {}
    [clause], params = _in_clauses({"trade_id": trade_ids})
    rows = health_query(db, "signal_health_metrics", now, f"WHERE {clause}", params)
    return {r["trade_id"]: r for r in rows}


def list_signals(db, now, f):
    """The all-signals answer: one page of rows, the next cursor, the summary."""
    rows, cursor = _page(db, ", ".join(LIST_COLUMNS + [STATUS_SOURCE_SQL]), f)
    health = signal_health(db, now, [r["trade_id"] for r in rows])
    for r in rows:
        r["htf_alignment"] = json.loads(r["htf_alignment"]) if r["htf_alignment"] else None
        h = health.get(r["trade_id"], {})
        r["health_score"] = h.get("health_score", 100)
        r["open_gaps"] = h.get("open_gaps", 0)
        r["abnormal_gaps"] = h.get("abnormal_gaps", 0)
    return {"signals": rows, "count": len(rows), "next_cursor": cursor,
            "summary": signal_summary(db, f)}


def list_cancelled(db, f):
    """Cancelled signals with who cancelled them and how sure that is."""
    f = dataclasses.replace(f, statuses=("CANCELLED",))
    rows, cursor = _page(db, ", ".join(CANCELLED_COLUMNS) + ", provenance", f)
    for r in rows:
        source, confidence = json.loads(r.pop("provenance")).get("cancelled_at", (None, None))
        r["data_source"], r["confidence"] = source, confidence
    where, params = f.where()
    total = db.query(f"SELECT count(*) AS n FROM signals WHERE {where}", params)
    return {"signals": rows, "count": len(rows), "next_cursor": cursor, "total": total[0]["n"]}


def signal_detail(db, now, trade_id):
    """Everything known about one signal: fields with provenance, events, audit, gaps."""
    rows = db.query(f"SELECT *, {STATUS_SOURCE_SQL} FROM signals WHERE trade_id = ?",
                    (trade_id,))
    if not rows:
        raise NotFound(f"no signal {trade_id!r}")
    signal_row = _signal_out(rows[0])
    provenance = signal_row.pop("provenance")
    fields = {}
    for name in SIGNAL_COLUMNS:
        if name in ("provenance", "conflicts", "fold_state", "trade_id"):
            continue
        source, confidence = provenance.get(name, (None, None))
        fields[name] = {"value": signal_row[name], "data_source": source,
                        "confidence": confidence}
    events = db.query(
        "SELECT e.event_id, e.event_type, e.received_at, e.event_time, e.batch_index, "
        "e.payload, r.raw_body, r.content_type, r.source FROM events AS e "
        "JOIN requests AS r USING (request_id) WHERE e.trade_id = ? ORDER BY e.event_id",
        (trade_id,))
    for e in events:
        e["payload"] = json.loads(e["payload"])
        e["raw_body"] = bytes(e["raw_body"]).decode("utf-8", "replace")
    audit = db.query("SELECT audit_id, run_id, created_at, field, old_value, new_value, "
                     "data_source, confidence, tier, reason, evidence FROM sync_audit_log "
                     "WHERE trade_id = ? ORDER BY audit_id", (trade_id,))
    for a in audit:
        for col in ("old_value", "new_value", "evidence"):
            a[col] = json.loads(a[col]) if a[col] is not None else None
    _conflict_sides(signal_row["conflicts"], events)
    health = signal_health(db, now, [trade_id]).get(trade_id, {})
    return {"trade_id": trade_id, "status": signal_row["status"],
            "status_source": signal_row["status_source"], "be_state": signal_row["be_state"],
            "health_score": health.get("health_score", 100),
            "fields": fields, "conflicts": signal_row["conflicts"], "events": events,
            "audit": audit, "gaps": open_gaps(db, now, trade_id=trade_id)}


def _conflict_sides(conflicts, events):
    """Give conflicts recorded as event ids (a second EXIT_SL, ENTRY after CANCELLED) their
    `values`: per event, the fields in which the events differ, so they read side by side."""
    payloads = {e["event_id"]: e["payload"] for e in events}
    for evidence in conflicts.values():
        if not isinstance(evidence, dict) or "values" in evidence:
            continue
        sides = [(i, payloads[i]) for i in evidence.get("event_ids", ()) if i in payloads]
        keys = sorted({k for _, p in sides for k in p})
        differing = [k for k in keys
                     if len({json.dumps(p.get(k), sort_keys=True) for _, p in sides}) > 1]
        evidence["values"] = [{"event_id": i, "event_type": p.get("event_type"),
                               **{k: p.get(k) for k in differing}} for i, p in sides]


def list_bars(db, symbol, since=None, until=None, limit=5000):
    clauses, params = ["symbol = :symbol"], {"symbol": symbol, "limit": limit}
    if since:
        clauses.append("time >= :since")
        params["since"] = since
    if until:
        clauses.append("time < :until")
        params["until"] = until
    rows = db.query(f"SELECT time, timeframe, open, high, low, close FROM bars "
                    f"WHERE {' AND '.join(clauses)} ORDER BY time LIMIT :limit", params)
    return {"symbol": symbol, "count": len(rows), "bars": rows}


# ============================================================================================
# WEB APP
# ============================================================================================

STATIC_DIR = os.path.join(HERE, "static")
WEBHOOK_PATHS = ("/api/automated-signals/webhook", "/api/automated-signals", "/webhook")


def _json_response(body, status=200, headers=None):
    response = bottle.HTTPResponse(json.dumps(body), status=status, headers=headers)
    response.content_type = "application/json"
    return response


def _error_response(error):
    headers = {"Retry-After": "5"} if error.status == 503 else None
    return _json_response(error_body(error.code, error.message), error.status, headers)


def client_address(environ, trusted_proxies):
    """The socket peer, or the client named by X-Forwarded-For when the peer is a trusted proxy."""
    peer = environ.get("REMOTE_ADDR")
    if not trusted_proxies or not peer or not _in_networks(peer, trusted_proxies):
        return peer
    forwarded = [a.strip() for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")
                 if a.strip()]
    for addr in reversed(forwarded):
        if not _in_networks(addr, trusted_proxies):
            return addr
    return forwarded[0] if forwarded else peer


FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP",
                      "HTTP_X_FORWARDED_HOST")


def _forwarded(environ):
    """Did a reverse proxy pass this request on (Caddy and the README's nginx say so)?"""
    return any(environ.get(h) for h in FORWARDING_HEADERS)


def _signal_out(row):
    """A signal row for the API: JSON columns parsed, bookkeeping dropped."""
    out = {k: v for k, v in row.items() if k != "fold_state"}
    for col in JSON_COLUMNS - {"fold_state"}:
        if isinstance(out.get(col), str):
            out[col] = json.loads(out[col])
    return out


def make_app(db, clock, config):
    """A fresh Bottle app with every route declared inside (no module-level state)."""
    app = bottle.Bottle()
    app.config["sigsync.db"] = db

    def read_body(environ):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        stream = environ["wsgi.input"]
        raw = stream.read(min(length, config.max_body + 1)) if length else b""
        return raw, length

    def authorise(environ, data, peer, unreadable=None):
        """Allow list, then the secret; `unreadable`: why the body could not be parsed."""
        if config.allow_ips and not _in_networks(peer or "", config.allow_ips):
            raise Rejected(f"address {peer} is not in the allow list", "forbidden_address", 403)
        if not config.secret:
            return
        query = bottle.FormsDict(bottle._parse_qsl(environ.get("QUERY_STRING", "")))
        offered = query.get("token")
        if offered is None and isinstance(data, dict):
            offered = data.get("secret")
            if offered is None and isinstance(data.get("attributes"), dict):
                offered = data["attributes"].get("secret")
        if offered is None and unreadable is not None:
            # Unauthenticated garbage is refused as such (401): it is kept, but replay skips it
            raise Rejected(f"a secret is required and none could be read ({unreadable.message}):"
                           " add ?token=... to the webhook URL", "unauthorized", 401)
        if offered is None:
            raise Rejected("a secret is required: add ?token=... to the webhook URL or a "
                           "\"secret\" field to the message", "unauthorized", 401)
        if not isinstance(offered, str) or not _encodable(offered) or not hmac.compare_digest(
                offered.encode("utf-8"), config.secret.encode("utf-8")):
            raise Rejected("the secret does not match", "forbidden", 403)

    def api_webhook():
        now = clock.now()
        environ = bottle.request.environ
        peer = client_address(environ, config.trusted_proxies)
        content_type = environ.get("CONTENT_TYPE")
        path = bottle.request.path
        raw, length = read_body(environ)
        data = None
        try:
            if length > config.max_body or len(raw) > config.max_body:
                raise Rejected(f"the body is {length} bytes; the limit is {config.max_body}",
                               "body_too_large", 413)
            try:
                data = parse_body(raw)
            except Rejected as unusable:
                authorise(environ, None, peer, unreadable=unusable)
                raise
            authorise(environ, data, peer)
            result = ingest(db, raw, now=now, peer=peer, path=path, content_type=content_type,
                            data=data)
        except Rejected as error:
            kept = raw[:config.max_body]
            try:
                reject(db, kept, error, now=now, peer=peer, path=path,
                       content_type=content_type, size=max(length, len(raw)),
                       **dead_letter_limits(config))
            except StorageUnavailable as storage:
                log.error("what=webhook outcome=unavailable reason=%s peer=%s", storage.message,
                          peer)
                return _error_response(storage)
            log.warning("what=webhook outcome=rejected status=%s code=%s peer=%s message=%r",
                        error.status, error.code, peer, error.message)
            return _error_response(error)
        except StorageUnavailable as error:
            log.error("what=webhook outcome=unavailable reason=%s peer=%s", error.message, peer)
            return _error_response(error)
        except Exception as e:
            # A bug, not bad input: answer 500 (TradingView resends) and keep the body so it
            # can be replayed once fixed.
            log.exception("what=webhook outcome=error peer=%s error=%r", peer, e)
            error = SigsyncError("internal error while storing the event (see the server log)")
            try:
                reject(db, raw[:config.max_body], error, now=now, peer=peer, path=path,
                       content_type=content_type, size=len(raw),
                       **dead_letter_limits(config))
            except SigsyncError:
                pass
            return _error_response(error)
        for e in result.events:
            log.info("what=webhook event_type=%s trade_id=%s outcome=%s event_id=%s",
                     e["event_type"], e["trade_id"] or "-",
                     "duplicate" if e["duplicate"] else "stored", e["event_id"])
        if not result.events:
            log.info("what=webhook event_type=%s outcome=stored events=0", result.event_type)
        return _json_response(result.response())

    for path in WEBHOOK_PATHS:
        app.route(path, "POST", api_webhook)

    def require_read_token():
        environ = bottle.request.environ
        if not config.read_token:
            # Open to this machine alone, or (--insecure) to all by the operator's choice. On
            # loopback behind a reverse proxy every client on the internet arrives from
            # 127.0.0.1: the proxy's forwarding header is what tells them apart.
            if not config.loopback_only or not _forwarded(environ):
                return
            raise SigsyncError("this request came through a proxy and no read token is set: "
                               "set SIGSYNC_READ_TOKEN and open the page as /?token=...",
                               "unauthorized", 401)
        query = bottle.FormsDict(bottle._parse_qsl(environ.get("QUERY_STRING", "")))
        offered = query.get("token")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if offered is None and auth.startswith("Bearer "):
            offered = auth[len("Bearer "):].strip()
        if offered is None or not hmac.compare_digest(offered.encode(),
                                                      config.read_token.encode()):
            raise SigsyncError("a read token is required (?token= or Authorization: Bearer)",
                               "unauthorized", 401)

    def reading(handler):
        def wrapper(*args, **kwargs):
            try:
                require_read_token()
                return _json_response(handler(*args, **kwargs))
            except SigsyncError as error:
                return _error_response(error)
            except STORAGE_ERRORS as e:
                return _error_response(StorageUnavailable(f"the database is unavailable: {e}"))
        wrapper.__name__ = handler.__name__
        return wrapper

    def query_get(name):
        raw = bottle.request.query.get(name)    # Bottle hands query values over as latin-1
        if raw is None:
            return None
        try:
            return raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise BadRequest(f"{name}: not valid UTF-8")

    @app.get("/api/automated-signals/all-signals")
    @reading
    def api_all_signals():
        return list_signals(db, clock.now(), SignalFilter.parse(query_get))

    @app.get("/api/automated-signals/cancelled-signals")
    @reading
    def api_cancelled_signals():
        f = SignalFilter.parse(query_get)
        if f.statuses:
            raise BadRequest("status: this list holds only cancelled signals")
        return list_cancelled(db, f)

    @app.get("/api/signals/<trade_id>")
    @reading
    def api_signal(trade_id):
        return signal_detail(db, clock.now(), trade_id)

    @app.get("/api/bars")
    @reading
    def api_bars():
        symbol = (query_get("symbol") or "").strip()
        if not symbol:
            raise BadRequest("symbol: required")
        return list_bars(db, symbol, _filter_time(query_get("since"), "since", end=False),
                         _filter_time(query_get("until"), "until", end=True),
                         _int_param("limit", 5000, 1, 20000))

    @app.get("/api/health")
    @reading
    def api_health():
        return health_report(db, clock.now())

    @app.get("/api/health/history")
    @reading
    def api_health_history():
        limit = _int_param("limit", 500, 1, 5000)
        rows = db.query("SELECT run_id, started_at, finished_at, outcome, trigger, examined, "
                        "changes, counts, error, score_7d, score_all, abnormal_gaps, "
                        "expected_gaps, gaps_by_type FROM sync_runs WHERE outcome <> 'skipped' "
                        "ORDER BY run_id DESC LIMIT ?", (limit,))
        for r in rows:
            r["counts"] = json.loads(r["counts"] or "{}")
            r["gaps_by_type"] = json.loads(r["gaps_by_type"] or "{}")
        return {"runs": rows[::-1]}

    @app.get("/api/gaps")
    @reading
    def api_gaps():
        severity = query_get("severity") or None
        if severity not in (None, "expected", "abnormal"):
            raise BadRequest("severity: expected 'expected' or 'abnormal'")
        rows = open_gaps(db, clock.now(), gap=query_get("gap") or None, severity=severity,
                         trade_id=query_get("trade_id") or None,
                         limit=_int_param("limit", 500, 1, 5000))
        return {"count": len(rows), "gaps": rows}

    @app.get("/api/rejected")
    @reading
    def api_rejected():
        limit = _int_param("limit", 100, 1, 1000)
        rows = db.query("SELECT rejected_id, received_at, peer, path, content_type, status, "
                        "code, message, raw_body, body_size, replayed_at, replay_event_id "
                        "FROM rejected ORDER BY rejected_id DESC LIMIT ?", (limit,))
        for r in rows:
            r["raw_body"] = bytes(r["raw_body"]).decode("utf-8", "replace")
        total = db.query("SELECT count(*) AS n FROM rejected")[0]["n"]
        return {"total": total, "rejected": rows}

    # The page: static files, no build step. Served without the read token (they hold no
    # data); the page sends the token it was opened with to the API.
    # The page shows times in the configured zone: index.html names it in a meta tag.
    with open(os.path.join(STATIC_DIR, "index.html"), encoding="utf-8") as f:
        index_html = f.read().replace(
            '<meta name="sigsync-display-tz" content="America/New_York">',
            f'<meta name="sigsync-display-tz" content="{html.escape(config.display_tz)}">')

    @app.get("/")
    def page_index():
        bottle.response.set_header("Cache-Control", "no-cache")
        bottle.response.content_type = "text/html; charset=utf-8"
        return index_html

    @app.get("/static/<path:path>")
    def page_static(path):
        return bottle.static_file(path, root=STATIC_DIR, headers={"Cache-Control": "no-cache"})

    started_at = clock.now()

    @app.get("/healthz")
    def api_healthz():
        """Liveness: the database answers and the reconciliation loop is not late.

        Open to any caller, since a monitor or a load balancer's probe holds no token: the
        status code says it all. The details (the loop's last failure and its error text, the
        version) are a read like any other, given only where the read API would answer."""
        try:
            require_read_token()
            detailed = True
        except SigsyncError:
            detailed = False
        now = clock.now()
        try:
            loop = loop_status(db, now=now, started_at=started_at,
                               interval=config.sync_seconds)
        except STORAGE_ERRORS as e:
            return _json_response({"ok": False, "database": str(e) if detailed
                                   else "unavailable"}, 503)
        ok = not loop["late"]
        if not detailed:
            return _json_response({"ok": ok}, 200 if ok else 503)
        return _json_response({"ok": ok, "database": "ok", "loop": loop,
                               "version": __version__}, 200 if ok else 503)

    @app.get("/metrics")
    def api_metrics():
        try:
            require_read_token()
            text = metrics_text(db, clock.now(), _job_failures)
        except SigsyncError as error:
            return _error_response(error)
        except STORAGE_ERRORS as e:
            return _error_response(StorageUnavailable(f"the database is unavailable: {e}"))
        return bottle.HTTPResponse(text, 200, {
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def _default_error(error):
        bottle.response.content_type = "application/json"
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code,
                                                                  "internal_error")
        message = "no such route" if error.status_code == 404 else str(error.body or error.status)
        if error.status_code >= 500:
            log.error("what=http outcome=error status=%s error=%r", error.status_code,
                      error.exception)
            message = "internal error (see the server log)"
        return json.dumps(error_body(code, message))

    app.default_error_handler = _default_error
    return app


def loop_status(db, *, now, started_at, interval):
    """The reconciliation loop as an operator needs to see it: last run, last error, lateness.

    Late = no pass has started for two intervals plus a minute (counting from the later of the
    last pass and this server's start).
    """
    last = db.query("SELECT run_id, started_at, finished_at, outcome, error FROM sync_runs "
                    "WHERE outcome <> 'skipped' ORDER BY run_id DESC LIMIT 1")
    failed = db.query("SELECT run_id, started_at, error FROM sync_runs WHERE outcome = 'failed' "
                      "ORDER BY run_id DESC LIMIT 1")
    reference = started_at
    if last and from_iso(last[0]["started_at"]) > reference:
        reference = from_iso(last[0]["started_at"])
    due_at = reference + dt.timedelta(seconds=2 * interval + 60)
    return {"last_run": last[0] if last else None, "last_failure": failed[0] if failed else None,
            "due_by": iso(due_at), "late": now > due_at}


def _int_param(name, default, low, high):
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected a whole number, got {raw[:20]!r}")
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be between {low} and {high}")
    return value


# ============================================================================================
# SERVICE
# ============================================================================================

def _sd_notify(message):
    """Tell systemd (Type=notify) something; a no-op when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("what=sd_notify outcome=failed error=%s", e)
        return False


class _InFlight:
    """WSGI middleware counting requests in progress, for a graceful shutdown."""

    def __init__(self, app):
        self.app = app
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            self.count += 1
        try:
            return list(self.app(environ, start_response))
        finally:
            with self.lock:
                self.count -= 1


class HttpServer:
    """waitress under the Bottle app, on its own thread, with a graceful stop.

    waitress reads each request completely (asynchronously) before a worker thread sees it, so
    a stalled or slow client holds no worker; connections are bounded (connection_limit).
    """

    def __init__(self, app, host, port, *, threads=4, connection_limit=100, max_body=65536):
        import waitress.server
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self.app = _InFlight(app)
        self.server = waitress.server.create_server(
            self.app, host=host, port=port, threads=threads, ident="sigsync",
            connection_limit=connection_limit, channel_timeout=30,
            # sigsync answers 413 itself (and keeps a dead letter) up to 16x its own limit.
            max_request_body_size=max(max_body * 16, 1 << 20),
            clear_untrusted_proxy_headers=False, expose_tracebacks=False)
        self.host, self.port = self.server.effective_host, self.server.effective_port
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _idle(self):
        """No request in the app, none queued, no answer still being sent."""
        try:
            channels = list(self.server._map.values())    # the loop thread may change it
        except RuntimeError:
            return False
        return self.app.count == 0 and not self.server.task_dispatcher.queue and not any(
            getattr(ch, "total_outbufs_len", 0) for ch in channels)

    def stop(self, timeout=10.0):
        """Stop accepting, let requests in flight finish and their answers go out, then close."""
        import waitress.wasyncore as wasyncore
        server = self.server
        server.trigger.pull_trigger(lambda: wasyncore.dispatcher.close(server))
        deadline = time.monotonic() + timeout
        dispatcher = server.task_dispatcher
        while time.monotonic() < deadline and not self._idle():
            time.sleep(0.01)
        dispatcher.shutdown(cancel_pending=True, timeout=max(0.1, deadline - time.monotonic()))
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        self.thread.join(timeout=5)


JOBS_STOP_SECONDS = 20      # how long a stop waits for a job in progress (a pass: one chunk)


def make_scheduler(db, clock, config, stop=None):
    """The background jobs, on a fresh schedule.Scheduler."""
    sched = schedule.Scheduler()
    sched.every(CHECKPOINT_TICK_SECONDS).seconds.do(_guarded, "checkpoint",
                                                    db.checkpoint_when_due,
                                                    config.checkpoint_seconds)
    sched.every(config.sync_seconds).seconds.do(_guarded, "sync", job_sync, db, clock, config,
                                                stop)
    sched.every(WATCH_SECONDS).seconds.do(_guarded, "watch", job_watch, db, clock, {})
    return sched


WATCH_SECONDS = 30      # how often the global conditions are looked at for the log


def job_watch(db, clock, active):
    """Log each global condition as it starts (a warning, with its detail) and as it ends.

    `active` is the state of the last look, kept by the caller; the health panel shows the
    conditions as they are, this puts them in the journal (an alert near TradingView's
    cut-off among them, SPEC §1.1)."""
    for c in health_query(db, "v_global_conditions", clock.now()):
        name, now_active = c["condition"], bool(c["active"])
        if now_active == active.get(name, False):
            continue
        active[name] = now_active
        if now_active:
            log.warning("what=condition condition=%s outcome=active detail=%s", name,
                        c["detail"])
        else:
            log.info("what=condition condition=%s outcome=cleared", name)


def run_jobs(sched, stop):
    """The jobs thread: run what is due until `stop` is set."""
    while not stop.wait(0.25):
        sched.run_pending()


def job_sync(db, clock, config, stop=None):
    """The reconciliation loop's job: one incremental pass (failures are recorded by it)."""
    try:
        return sync_once(db, now=clock.now(), trigger="schedule",
                         fresh_seconds=config.price_fresh_seconds, stop=stop)
    except SyncFailed as e:
        if stop is not None and stop.is_set():
            return e.result                 # interrupted by the stop: recorded, not a failure
        raise


_job_failures = {}


def _guarded(name, func, *args):
    """Run a job; an exception is logged and counted and never kills the loop."""
    try:
        return func(*args)
    except Exception as e:     # the loop must survive anything a job does
        _job_failures[name] = _job_failures.get(name, 0) + 1
        log.exception("what=job job=%s outcome=failed error=%r", name, e)
        return None


def database_answers(db):
    """A real check for the watchdog: can we take the write lock and begin a write?"""
    try:
        with db.write() as conn:
            conn.execute("SELECT count(*) FROM counters").fetchall()
        return True
    except (SigsyncError, apsw.Error):
        return False


def serve(config, clock=None, stop=None):
    """Run the HTTP server and the scheduler until SIGTERM/SIGINT (or `stop` is set)."""
    clock = clock or Clock()
    stop = stop or threading.Event()
    if not config.loopback_only and not config.insecure:
        if not config.secret:
            raise SigsyncError(f"refusing to listen on {config.host} without a webhook secret "
                               "(set SIGSYNC_SECRET, or pass --insecure)")
        if not config.read_token:
            raise SigsyncError(f"refusing to listen on {config.host} without a read token "
                               "(set SIGSYNC_READ_TOKEN, or pass --insecure)")
    if not config.secret:
        log.warning("what=config outcome=insecure message=%r",
                    "NO WEBHOOK SECRET IS SET: anyone who can reach this port can post events. "
                    "Set SIGSYNC_SECRET before exposing it.")
    db = open_db(config.db, autocheckpoint=False)
    store_health_settings(db, health_settings_from(config, clock.now()))
    app = make_app(db, clock, config)
    try:
        server = HttpServer(app, config.host, config.port, threads=config.threads,
                            connection_limit=config.connection_limit, max_body=config.max_body)
    except OSError as e:                   # the port is taken, the address is not this host's
        db.close()
        raise SigsyncError(f"cannot listen on {config.host}:{config.port}: "
                           f"{e.strerror or e}") from e
    server.start()
    log.info("what=serve outcome=listening url=http://%s:%s/ db=%s", server.host, server.port,
             config.db)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # The jobs (reconciliation passes, checkpoints) run on a thread of their own (SPEC §6), so
    # a long pass never delays the watchdog pings or the reaction to SIGTERM on this one.
    jobs = threading.Thread(target=run_jobs, args=(make_scheduler(db, clock, config, stop), stop),
                            name="jobs", daemon=True)
    jobs.start()
    watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    watchdog_every = watchdog_usec / 2e6 if watchdog_usec else None
    last_ping = 0.0
    ready = False
    try:
        while True:
            if not ready:
                # READY only after a real database check; retried until it passes.
                ready = database_answers(db)
                if ready:
                    _sd_notify("READY=1\nSTATUS=listening on %s:%s" % (server.host, server.port))
                else:
                    log.error("what=serve outcome=not_ready reason=database_unavailable")
            if stop.wait(0.25):
                break
            if watchdog_every and time.monotonic() - last_ping >= watchdog_every:
                if database_answers(db):
                    _sd_notify("WATCHDOG=1")
                    last_ping = time.monotonic()
                else:
                    log.error("what=watchdog outcome=skipped reason=database_unavailable")
    finally:
        stop.set()
        _sd_notify("STOPPING=1")
        log.info("what=serve outcome=stopping")
        try:
            server.stop()
        except Exception as e:       # still close the database cleanly
            log.exception("what=serve outcome=stop_error error=%r", e)
        jobs.join(JOBS_STOP_SECONDS)    # a pass ends after its current chunk
        if jobs.is_alive():
            log.error("what=serve outcome=jobs_still_running seconds=%s", JOBS_STOP_SECONDS)
        db.checkpoint()
        db.close()
        log.info("what=serve outcome=stopped")
    return 0


# ============================================================================================
# CLI
# ============================================================================================

def _print_json(value):
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def cmd_serve(args, config, clock):
    return serve(config, clock)


def cmd_sync(args, config, clock):
    db = open_db(_existing(config.db))
    try:
        result = sync_once(db, now=clock.now(), trigger="cli", full=args.full,
                           fresh_seconds=config.price_fresh_seconds)
    except SyncFailed as e:
        result = e.result
    finally:
        db.close()
    if args.json:
        _print_json(result)
    else:
        by_tier = ", ".join(f"{k} {v}" for k, v in sorted(result.get("counts", {}).items()))
        print(f"sync run {result['run_id']}: {result['outcome']}"
              + (f", {result['examined']} signals examined, {result['changes']} fields changed"
                 if result["outcome"] != "skipped" else "")
              + (f" ({by_tier})" if by_tier else "")
              + (f": {result['error']}" if result.get("error") else ""))
    return 0 if result["outcome"] in ("ok", "skipped") else 1


def cmd_backup(args, config, clock):
    open_db(_existing(config.db)).close()               # migrate/validate before copying
    result = backup_to(config.db, args.dest)
    print(f"backup: {result['pages']} pages, {result['bytes']} bytes -> {result['dest']}")
    return 0


def cmd_check(args, config, clock):
    db = open_db(_existing(config.db))
    try:
        result = check(db, now=clock.now(), sample=args.sample)
    finally:
        db.close()
    if args.json:
        _print_json(result)
    else:
        print(f"integrity: {result['integrity']}; schema version {result['schema_version']} "
              f"(this program: {schema_version()}); {result['signals_checked']} signals "
              "compared with a fresh fold of their events")
        for p in result["problems"]:
            print(f"problem: {p}")
        print("ok" if result["ok"] else f"{len(result['problems'])} problems")
    return 0 if result["ok"] else 1


def cmd_export(args, config, clock):
    if not args.events and not args.signals:
        raise SigsyncError("say what to export: --events FILE and/or --signals FILE.csv "
                           "('-' for standard output)")
    db = open_db(_existing(config.db))
    try:
        for target, func, what in ((args.events, export_events, "requests"),
                                   (args.signals, export_signals_csv, "signals")):
            if not target:
                continue
            if target == "-":
                n = func(db, sys.stdout)
            else:
                with open(target, "w", encoding="utf-8", newline="") as f:
                    n = func(db, f)
            print(f"exported {n} {what} to {target}", file=sys.stderr)
    finally:
        db.close()
    return 0


def cmd_import(args, config, clock):
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    except OSError as e:                   # before the database: a typo creates nothing
        raise SigsyncError(f"cannot read {args.file}: {e.strerror or e}") from e
    db = open_db(config.db)
    tty = sys.stderr.isatty()
    total = None
    if tty and args.file != "-":
        with open(args.file, encoding="utf-8") as f:
            total = sum(1 for _ in f)

    def progress(n, counts):
        if tty and (n % 100 == 0 or n == total):
            width = 30
            done = int(width * n / total) if total else 0
            bar = "#" * done + "." * (width - done)
            sys.stderr.write(f"\rimport [{bar}] {n}/{total or '?'} lines, "
                             f"{counts['stored']} stored, {counts['known']} already there")
            sys.stderr.flush()

    try:
        with stream:
            counts = import_lines(db, stream, now=clock.now(), progress=progress,
                                  limits=dead_letter_limits(config))
        if tty:
            sys.stderr.write("\n")
        # What the loop would do next, done now: the imported trades get their fills (and
        # their gaps their true state) before anyone looks.
        run = sync_once(db, now=clock.now(), trigger="cli") if counts["stored"] else None
    finally:
        db.close()
    print(f"import: {counts['lines']} lines, {counts['stored']} stored, {counts['known']} "
          f"already there, {counts['rejected']} rejected (kept as dead letters)"
          + (f"; sync run {run['run_id']}: {run['changes']} fields filled" if run else ""))
    return 0 if counts["rejected"] == 0 else 1


def _existing(path):
    if not os.path.exists(path):
        raise SigsyncError(f"no database at {path}")
    return path


THRESHOLD_SETTINGS = ("stale_mfe_seconds", "stale_pending_seconds", "silent_seconds",
                      "sync_seconds")


def _given_thresholds(args, config, environ=None):
    """The health thresholds this command was given (flag or SIGSYNC_* variable): they replace
    the stored ones (the running server's) for this report; nothing is written."""
    environ = os.environ if environ is None else environ
    return {name: getattr(config, name) for name in THRESHOLD_SETTINGS
            if getattr(args, name, None) is not None
            or SETTINGS_BY_NAME[name].env in environ
            or SETTINGS_BY_NAME[name].env + "_FILE" in environ}


def cmd_health(args, config, clock):
    db = open_db(_existing(config.db))
    try:
        report = health_report(db, clock.now(), settings=_given_thresholds(args, config))
    finally:
        db.close()
    if args.json:
        _print_json(report)
    else:
        print(format_health(report, config.health_threshold))
    score = report["score"]
    return 1 if score is not None and score < config.health_threshold else 0


def cmd_gaps(args, config, clock):
    db = open_db(_existing(config.db))
    try:
        rows = open_gaps(db, clock.now(), gap=args.gap, severity=args.severity,
                         trade_id=args.trade_id, limit=args.limit,
                         settings=_given_thresholds(args, config))
    finally:
        db.close()
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(f"{r['trade_id']}  {r['gap']:<21} {r['severity']:<8} since {r['since'] or '-'}"
              f"  (filled by {r['filled_by']})")
    print(f"{len(rows)} open gaps")
    return 0


def cmd_signals(args, config, clock):
    db = open_db(_existing(config.db))
    try:
        params = {"status": args.status, "direction": args.direction, "session": args.session,
                  "symbol": args.symbol, "since": args.since, "until": args.until, "q": args.q,
                  "limit": str(args.limit), "cursor": args.cursor}
        f = SignalFilter.parse(params.get)
        answer = list_signals(db, clock.now(), f)
    finally:
        db.close()
    if args.json:
        _print_json(answer)
        return 0
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)
    for r in answer["signals"]:
        when = (from_iso(r["signal_time"]).astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z")
                if r["signal_time"] else "-")
        print(f"{r['trade_id']:<27} {r['status']:<9} {when:<20} {r['session'] or '-':<11} "
              f"{r['symbol'] or '-':<8} entry {num(r['entry_price'], '.2f'):>9} "
              f"MFE {num(r['no_be_mfe'], '.2f'):>5}R MAE {num(r['mae'], '.2f'):>5}R "
              f"health {r['health_score']}")
    summary = answer["summary"]
    matching = (sum(summary[s.lower()] for s in f.statuses) if f.statuses
                else summary["total"])
    print(f"{answer['count']} of {matching} signals"
          + (f"; next page: --cursor {answer['next_cursor']}" if answer["next_cursor"] else ""))
    return 0


def cmd_rebuild(args, config, clock):
    db = open_db(_existing(config.db))
    try:
        result = rebuild(db, now=clock.now(), fresh_seconds=config.price_fresh_seconds)
    finally:
        db.close()
    passes = result["passes"]
    print(f"rebuilt {result['signals']} signals from {result['events']} events; "
          f"{passes} reconciliation pass{'' if passes == 1 else 'es'} replayed "
          f"({result['changes']} fields filled)")
    if result["skipped"]:
        print(f"{result['skipped']} events left out: this version refuses them (see the log); "
              "they stay in the event log")
    return 0


def cmd_replay_rejected(args, config, clock):
    db = open_db(_existing(config.db))
    try:
        outcomes = replay_rejected(db, now=clock.now(), include_auth=args.include_auth,
                                   ids=set(args.ids) if args.ids else None)
    finally:
        db.close()
    if args.json:
        _print_json(outcomes)
    else:
        for o in outcomes:
            detail = (f"event {o['event_id']}" + (" (duplicate)" if o.get("duplicate") else "")
                      if o["outcome"] == "stored" else o.get("reason", ""))
            print(f"dead letter {o['rejected_id']}: {o['outcome']} {detail}".rstrip())
        stored = sum(o["outcome"] == "stored" for o in outcomes)
        print(f"{stored} of {len(outcomes)} dead letters now pass")
    return 1 if any(o["outcome"] == "not_found" for o in outcomes) else 0


def cmd_demo(args, config, clock):
    db = open_db(config.db)
    try:
        held = db.query("SELECT count(*) AS n FROM requests")[0]["n"]
        if held:
            # Generated trades must never mix with real ones, and the quick start may be run
            # twice: leave a database with anything in it as it is.
            print(f"demo: {config.db} already holds {held} requests; left as it is (demo fills "
                  "only a new or empty database)")
            return 0
        start = demo_start(clock.now()) if args.start is None \
            else parse_time(args.start, "--start")[0]
        result = demo(db, start=start, seed=args.seed)
    finally:
        db.close()
    print(f"demo: {result['stored']} requests stored, {result['rejected']} dead letters, "
          f"{result['changes']} fields filled by reconciliation in {config.db}")
    return 0


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    for s in SETTINGS:
        if s.kind is bool:
            common.add_argument(s.flag, action="store_const", const=True, default=None,
                                help=s.help)
        else:
            common.add_argument(s.flag, default=None, help=f"{s.help} [{s.env}]")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser = argparse.ArgumentParser(prog="sigsync", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sigsync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the webhook server and the loop")
    p = sub.add_parser("sync", parents=[common], help="run one reconciliation pass")
    p.add_argument("--full", action="store_true", help="look at every signal, not only those "
                   "with new evidence")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub.add_parser("rebuild", parents=[common], help="recompute derived state from the log")
    p = sub.add_parser("backup", parents=[common], help="consistent copy of the database, "
                       "safe while serving")
    p.add_argument("dest", help="the copy's path (written to a temporary file, then renamed)")
    p = sub.add_parser("check", parents=[common], help="integrity, schema version, derived "
                       "state against the log")
    p.add_argument("--sample", type=int, default=200,
                   help="how many signals, picked at random, to compare with a fresh fold [200]")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("export", parents=[common], help="NDJSON of requests, CSV of signals")
    p.add_argument("--events", help="NDJSON file of every accepted request ('-': stdout)")
    p.add_argument("--signals", help="CSV file of the signals ('-': stdout)")
    p = sub.add_parser("import", parents=[common], help="ingest NDJSON of raw bodies or of "
                       "exported requests (idempotent)")
    p.add_argument("file", help="NDJSON file ('-': standard input)")
    p = sub.add_parser("health", parents=[common], help="the health report; exit 1 under the "
                       "threshold")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("gaps", parents=[common], help="list open gaps")
    p.add_argument("--gap", help="only this gap type")
    p.add_argument("--severity", choices=["expected", "abnormal"])
    p.add_argument("--trade-id", dest="trade_id", help="only this signal's gaps")
    p.add_argument("--limit", type=int, default=1000, help="at most this many gaps [1000]")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("signals", parents=[common], help="list signals, newest first (the "
                       "filters of GET /api/automated-signals/all-signals)")
    p.add_argument("--status", help="comma list: pending, active, exited, cancelled, confirmed")
    p.add_argument("--direction", help="Bullish or Bearish")
    p.add_argument("--session", help="comma list of sessions, e.g. 'NY AM,NY PM'")
    p.add_argument("--symbol", help="exactly this symbol, as stored (e.g. MNQ1!)")
    p.add_argument("--since", help="YYYY-MM-DD (New York date) or an ISO instant")
    p.add_argument("--until", help="YYYY-MM-DD (New York date, inclusive) or an ISO instant")
    p.add_argument("--q", help="part of a trade_id")
    p.add_argument("--limit", type=int, default=100, help="1..1000")
    p.add_argument("--cursor", help="the next page, as printed by the previous one")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("replay-rejected", parents=[common], help="re-ingest dead letters")
    p.add_argument("ids", nargs="*", type=int, help="only these dead letters")
    p.add_argument("--include-auth", action="store_true",
                   help="also replay requests refused by authentication")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = sub.add_parser("demo", parents=[common], help="fill the database with a demo session")
    p.add_argument("--seed", type=int, default=7, help="which generated session (the same "
                   "seed and start give the same data) [7]")
    p.add_argument("--start", default=None, help="the session's day: its alerts run from 09:00 "
                   "New York that day (default: the latest weekday morning that is over)")
    return parser


def main(argv=None, clock=None):
    """The command line; `clock` (tests: a FixedClock) is what every command takes as now."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args)
    except (OSError, ValueError) as e:
        print(f"error: bad configuration: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, str(config.log_level).upper(), logging.INFO),
                        format="%(asctime)s level=%(levelname)s %(message)s", stream=sys.stderr)
    handler = globals()["cmd_" + args.command.replace("-", "_")]
    try:
        return handler(args, config, clock or Clock())
    except SigsyncError as e:
        if args.debug:
            raise
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `sigsync.py export --events - | head`: the reader had enough. Python would complain
        # again when it flushes stdout at exit, so point stdout at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
