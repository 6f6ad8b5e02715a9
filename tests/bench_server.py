"""The server half of tests/bench.py: sigsync's real app plus two reference routes, one port.

    python tests/bench_server.py --db DIR/bench.db [--server waitress|wsgiref] [--profile FILE]

Builds the app exactly as `serve` does (open_db without autocheckpoint, make_app, the same
scheduler with its periodic WAL checkpoint, INFO logging to stderr) and adds two routes that
exist only here:

    POST /bench/reference   inserts the raw body into a bare table `bench_raw`, through the
                            same connection, lock and durability (db.write(): WAL, FULL)
    POST /bench/bare        reads the body and answers 200, touching nothing
    POST /bench/validated   the webhook's work before its transaction (parse, validate,
                            normalise, dedup key: sigsync's own functions), then the
                            reference's insert of the raw body with that key (UNIQUE):
                            the least any conforming webhook does, with no request log and
                            no lifecycle; a ceiling for the webhook in this process
    POST /bench/writer      how busy the writer has been so far (WriterMeter)

It prints one JSON line {"port": N, "pid": N} once listening, and stops cleanly on SIGTERM.
"""

import argparse
import cProfile
import json
import logging
import os
import pstats
import signal
import socketserver
import sys
import threading
import time
import wsgiref.simple_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bottle  # noqa: E402

import sigsync  # noqa: E402


def add_bench_routes(app, db):
    """The reference (bare durable insert) and bare 200 routes, on the given app."""
    with db.write() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_raw(id INTEGER PRIMARY KEY, body BLOB)")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_validated("
                     "id INTEGER PRIMARY KEY, body BLOB, dedup_key TEXT UNIQUE)")

    def read_raw():
        environ = bottle.request.environ
        length = int(environ.get("CONTENT_LENGTH") or 0)
        return environ["wsgi.input"].read(length) if length else b""

    def bench_reference():
        raw = read_raw()
        with db.write() as conn:
            conn.execute("INSERT INTO bench_raw(body) VALUES (?)", (raw,))
            row_id = conn.last_insert_rowid()
        return sigsync._json_response({"ok": True, "id": row_id})

    def bench_validated():
        raw = read_raw()
        try:        # as sigsync.ingest() does before it queues its transaction
            event_type, payloads = sigsync.normalise(
                sigsync._without_secret(sigsync.parse_body(raw)))
        except sigsync.Rejected as e:
            return sigsync._error_response(e)
        masked = sigsync.mask_secret(raw)
        keys = [sigsync._dedup_key(payload)[1] for payload in payloads]
        with db.write() as conn:
            conn.execute("INSERT INTO bench_validated(body, dedup_key) VALUES (?, ?) "
                         "ON CONFLICT(dedup_key) DO NOTHING", (masked, keys[0]))
            row_id = conn.last_insert_rowid()
        return sigsync._json_response({"ok": True, "id": row_id, "event_type": event_type})

    def bench_bare():
        read_raw()
        return sigsync._json_response({"ok": True})

    app.route("/bench/reference", "POST", bench_reference)
    app.route("/bench/bare", "POST", bench_bare)
    app.route("/bench/validated", "POST", bench_validated)
    meter = WriterMeter(db)
    app.route("/bench/writer", "POST", lambda: sigsync._json_response(meter.read()))


class WriterMeter:
    """How busy the writer is: time spent in group-commit batches (sigsync._run_batch, which
    runs with the writer lock held), of which COMMIT (from the commit hook to the batch's end:
    the WAL write and its fsync), and the batches' sizes. Served at POST /bench/writer as running
    totals with the server's clock, so tests/bench.py can tell over a measurement whether the
    writer's critical section is what limits the webhook's throughput."""

    def __init__(self, db):
        self.busy = self.commit = 0.0
        self.batches = self.jobs = 0
        self.committing = None
        run = sigsync._run_batch

        def timed(conn, batch):
            t0 = time.perf_counter()
            self.committing = None
            try:
                return run(conn, batch)
            finally:
                t1 = time.perf_counter()
                self.busy += t1 - t0
                if self.committing is not None:
                    self.commit += t1 - self.committing
                self.batches += 1
                self.jobs += len(batch)

        def hook():
            self.committing = time.perf_counter()
            return False                    # go on with the commit

        sigsync._run_batch = timed          # only ever called under the writer lock
        db.writer.setcommithook(hook)

    def read(self):
        return {"clock": time.perf_counter(), "busy_s": self.busy, "commit_s": self.commit,
                "batches": self.batches, "jobs": self.jobs}


class _Profiled:
    """WSGI middleware: one cProfile.Profile per worker thread, merged at the end."""

    def __init__(self, app):
        self.app = app
        self.local = threading.local()
        self.profiles = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        prof = getattr(self.local, "prof", None)
        if prof is None:
            prof = self.local.prof = cProfile.Profile()
            with self.lock:
                self.profiles.append(prof)
        prof.enable()
        try:
            return list(self.app(environ, start_response))
        finally:
            prof.disable()

    def dump(self, path):
        with self.lock:
            profiles = list(self.profiles)
        if not profiles:
            return
        stats = pstats.Stats(profiles[0])
        for prof in profiles[1:]:
            stats.add(prof)
        stats.dump_stats(path)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


class _WsgirefServer:
    """The stdlib alternative: wsgiref + ThreadingMixIn (a thread per connection)."""

    def __init__(self, app, host, port):
        self.server = wsgiref.simple_server.make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="http",
                                       daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--server", choices=("waitress", "wsgiref"), default="waitress")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--profile", default=None, help="write merged cProfile stats here")
    args = parser.parse_args(argv)

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s level=%(levelname)s %(message)s", stream=sys.stderr)
    config = sigsync.Config(db=args.db, host="127.0.0.1", port=0)
    clock = sigsync.Clock()
    db = sigsync.open_db(config.db, autocheckpoint=False)      # as serve() opens it
    app = sigsync.make_app(db, clock, config)
    add_bench_routes(app, db)
    wsgi = _Profiled(app) if args.profile else app
    if args.server == "waitress":
        server = sigsync.HttpServer(wsgi, config.host, config.port, threads=config.threads,
                                    connection_limit=config.connection_limit,
                                    max_body=config.max_body)
    else:
        server = _WsgirefServer(wsgi, config.host, config.port)
    server.start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sched = sigsync.make_scheduler(db, clock, config)          # the periodic WAL checkpoint
    print(json.dumps({"port": server.port, "pid": os.getpid(), "server": args.server}),
          flush=True)
    try:
        sigsync.run_jobs(sched, stop)       # here on the main thread: nothing else to do
    finally:
        server.stop()
        if args.profile:
            wsgi.dump(args.profile)
        db.checkpoint()
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
