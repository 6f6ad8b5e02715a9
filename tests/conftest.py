"""Fixtures by seam: db (a file database), clock (fixed, settable), app (WSGI calls without
sockets), server (a real `python sigsync.py serve` process on a free loopback port), run_cli."""

import contextlib
import datetime as dt
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sigsync  # noqa: E402

# A copy of the shared fixtures (../shared/fixtures/origin-payloads.json), so a clone tests alone.
FIXTURES = ROOT / "tests" / "fixtures" / "origin-payloads.json"
START = dt.datetime(2025, 12, 15, 14, 0, tzinfo=dt.timezone.utc)


def load_fixtures():
    """The original indicator's payloads: (entry, body bytes) with `_` keys stripped."""
    entries = json.loads(FIXTURES.read_text())
    out = []
    for entry in entries:
        if "_raw_body" in entry:
            body = entry["_raw_body"].encode()
        else:
            body = json.dumps({k: v for k, v in entry.items() if not k.startswith("_")}).encode()
        out.append((entry, body))
    return out


@pytest.fixture
def clock():
    return sigsync.FixedClock(START)


@pytest.fixture
def db(tmp_path):
    database = sigsync.open_db(str(tmp_path / "test.db"))
    yield database
    database.close()


@pytest.fixture
def config(tmp_path):
    return sigsync.Config(db=str(tmp_path / "test.db"))


class WsgiClient:
    """Calls the Bottle app directly (no sockets)."""

    def __init__(self, app):
        self.app = app

    def request(self, method, path, body=b"", headers=None, peer="127.0.0.1"):
        path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "SERVER_NAME": "test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": peer, "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": False,
            "wsgi.multiprocess": False, "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            environ[key if key in ("CONTENT_TYPE",) else "HTTP_" + key] = value
        captured = {}

        def start_response(status, headers, exc_info=None):
            captured["status"] = int(status.split()[0])
            captured["headers"] = dict(headers)

        chunks = self.app(environ, start_response)
        data = b"".join(chunks)
        return Response(captured["status"], captured["headers"], data)

    def post(self, path, body, content_type="application/json", **kw):
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
        headers = {"Content-Type": content_type, **kw.pop("headers", {})}
        return self.request("POST", path, body, headers, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)


class Response:
    def __init__(self, status, headers, data):
        self.status, self.headers, self.data = status, headers, data

    def json(self):
        return json.loads(self.data)


@pytest.fixture
def app(db, clock, config):
    return WsgiClient(sigsync.make_app(db, clock, config))


def http(method, url, body=None, headers=None, timeout=10):
    """One HTTP request to a real server: (status, parsed JSON or bytes)."""
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, data = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data


class Server:
    """A real `python sigsync.py serve` process on a free loopback port."""

    def __init__(self, db_path, *args, env=None):
        self.db_path = str(db_path)
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = None
        self.url = None
        self.log_lines = []

    def start(self, timeout=15):
        cmd = [sys.executable, str(ROOT / "sigsync.py"), "serve", "--db", self.db_path,
               "--port", "0", *self.args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     env=self.env, text=True, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError("server exited: " + "".join(self.log_lines))
                continue
            self.log_lines.append(line)
            m = re.search(r"outcome=listening url=(http://\S+?)/ ", line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise RuntimeError("server did not start: " + "".join(self.log_lines))
        # Keep draining stderr so the pipe never fills and blocks the server.
        import threading
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self):
        for line in self.proc.stderr:
            self.log_lines.append(line)

    def post(self, body, path="/api/automated-signals/webhook", content_type="application/json",
             query="", timeout=10):
        return http("POST", self.url + path + query, body, {"Content-Type": content_type},
                    timeout=timeout)

    def get(self, path, timeout=10):
        return http("GET", self.url + path, timeout=timeout)

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path):
    """Start with server(); every server is stopped at the end of the test."""
    started = []

    def start(*args, db_path=None, env=None):
        s = Server(db_path or tmp_path / "server.db", *args, env=env).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def run_cli(tmp_path):
    """Run `python sigsync.py ...` as a subprocess: (exit code, stdout, stderr)."""

    def run(*args, env=None, timeout=120):
        proc = subprocess.run([sys.executable, str(ROOT / "sigsync.py"), *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
                              env={**os.environ, **(env or {})})
        return proc.returncode, proc.stdout, proc.stderr

    return run


# Tables that hold what happened (the log, the loop's history, settings, the gap catalogue):
# everything else in the schema is derived, and must be what a rebuild from the log makes.
RECORD_TABLES = {"requests", "events", "event_repeats", "rejected", "sync_runs",
                 "sync_audit_log", "counters", "gap_types", "health_settings"}


def derived_table_names(db):
    """Read from the schema itself, not from sigsync: a derived table that sigsync forgets to
    rebuild is still compared (and makes the assertion below fail)."""
    names = {r["name"] for r in db.query("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                        "AND name NOT LIKE 'sqlite_%'")} - RECORD_TABLES
    assert names == set(sigsync.DERIVED_TABLES), names ^ set(sigsync.DERIVED_TABLES)
    return sorted(names)


def require(command, package):
    """A test tool the suite needs (CI installs it): missing, the run fails; never a skip."""
    path = shutil.which(command)
    if path is None:
        raise RuntimeError(f"{command} is required by the tests: apt-get install {package}")
    return path


def derived_tables(db):
    """Every derived table's rows, in a fixed order: what rebuild must reproduce."""
    return {t: db.query(f"SELECT * FROM {t} ORDER BY 1, 2") for t in derived_table_names(db)}


def wipe_derived(db):
    """Empty every derived table, so that a rebuild compared with the live state afterwards
    must make every row itself (a rebuild that did nothing would otherwise pass)."""
    names = derived_table_names(db)
    with db.write() as conn:
        for t in names:
            conn.execute(f"DELETE FROM {t}")
    assert all(not rows for rows in derived_tables(db).values())


def rebuilt_from_scratch(db, now, fold_only=False):
    """Wipe the derived tables, rebuild them from the log (or only refold), return them."""
    wipe_derived(db)
    (sigsync.refold if fold_only else sigsync.rebuild)(db, now=now)
    return derived_tables(db)


def signal_row(db, trade_id):
    rows = db.query("SELECT * FROM signals WHERE trade_id = ?", (trade_id,))
    assert rows, f"no signal {trade_id}"
    row = rows[0]
    for col in ("htf_alignment", "setup", "market_state", "targets", "targets_extended",
                "provenance", "conflicts", "fold_state"):
        if row[col] is not None:
            row[col] = json.loads(row[col])
    return row


@contextlib.contextmanager
def open_database(path):
    database = sigsync.open_db(str(path))
    try:
        yield database
    finally:
        database.close()
