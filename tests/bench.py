#!/usr/bin/env python3
"""sigsync benchmark: the webhook path against a bare durable insert and a bare 200 route.

    python tests/bench.py [--quick] [--json FILE] [--profile] [--client python|wrk] [--keep]
                          [--parts http,sync,read] [--sync-sizes N,N,N] [--read-signals N]

Three parts, each printing its table and the ratios its issue asks for: `http` (below),
`sync` (tests/bench_sync.py: the reconciliation pass at 10k/100k/1M stored events with 100 new
events, a full pass, and /api/health over 100k signals) and `read` (tests/bench_read.py: the
all-signals API and its filters at 100k signals).

What it measures, in one run against one server process (tests/bench_server.py: sigsync's real
app from make_app, served by sigsync.HttpServer with the same waitress thread count as `serve`,
the same open_db(autocheckpoint=False) and the same periodic WAL checkpoint job):

    webhook    POST /api/automated-signals/webhook   the real path: parse, normalise, store the
                                                     request and event, fold into the signal row
    reference  POST /bench/reference                 INSERT of the raw body into a bare table via
                                                     db.write(): same connection, lock, WAL, FULL
    bare       POST /bench/bare                      reads the body, answers 200
    validated  POST /bench/validated                 (c=8 only) the webhook's parsing and
                                                     validation, then the reference's insert
                                                     with the dedup key: a ceiling for any
                                                     webhook design in this process

at concurrency 1, 8 and 32 (closed loop: each connection sends its next request as soon as the
previous answer is complete; keep-alive), interleaved route by route, medians over repetitions.
Over each webhook measurement's window the server also reports how busy its writer was
(bench_server.WriterMeter: the share of the time group-commit batches held the writer lock,
webhooks per batch, ms per webhook inside the lock and COMMIT's share of it), which says
whether the writer's critical section is what limits the webhook.
Then bursts of 1,000 distinct events at concurrency 32 (3; 1 with --quick), each after 2 s
without a request, as a bar close's alerts come after a quiet spell, all checked afterwards in
the `events` table; the median p99 is held against the target. Then "server choice": the
same webhook load and a stalled-client check under waitress and under the stdlib wsgiref +
ThreadingMixIn, each in its own process. Last, in-process and without HTTP, one webhook
transaction (sigsync.ingest) against one raw insert: time, and the pages each writes to the
WAL by b-tree (what COMMIT must fsync), to show where the gap is; then the same webhooks from
4 threads at once, to show what group commit shares (events per transaction, counted from the
WAL's commit frames).

Webhook bodies are distinct (a duplicate takes a cheaper path): ENTRY events for a pool of 200
trade_ids (YYYYMMDD_HHMMSSmmm_BULLISH|BEARISH), sent before measuring, then MFE_UPDATE events of
the original indicator's shape (~630 bytes; the ENTRY events ~1,000) with varying excursions,
price and event_timestamp.

Load generator (the choice, and why): the machine has 2 cores, so the client competes with the
server for CPU. The default client is Python but not GIL-bound: a selectors event loop over
raw keep-alive sockets with pre-formatted requests, run in min(concurrency, nproc) processes;
it costs roughly 20 us of CPU per request. Its numbers are checked in every run against `wrk`
(C, epoll) on the bare and webhook routes at c=8 when wrk is installed (Debian: apt-get install
wrk) -- the "load generator check" section; `--client wrk` uses wrk for the whole matrix. The
Python client is kept as the default because it also does what wrk cannot here: exact request
counts, per-response checks (status, duplicates, event_id) and identical bodies across tools.
All traffic goes to 127.0.0.1, bounded by time (a few seconds per measurement) or count.
"""

import argparse
import array
import collections
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import apsw  # noqa: E402

import sigsync  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "bench_server.py")
NPROC = os.cpu_count() or 1
HOST = "127.0.0.1"
ROUTES = {"webhook": "/api/automated-signals/webhook", "reference": "/bench/reference",
          "bare": "/bench/bare"}
# Measured at c=8 only, interleaved with the matrix: how close any design that parses and
# validates in this process (and writes no request log and no lifecycle) could come.
CEILING = {"validated": "/bench/validated"}
CONCURRENCY = (1, 8, 32)
SEQ_BLOCK = 5_000_000      # distinct sequence numbers reserved per measurement
BURST_IDLE_SECONDS = 2.0   # quiet before each burst, as before a bar close's alerts


# ============================================================================================
# BODIES
# ============================================================================================

def trade_pool(day, n=200):
    """n trade_ids spread over the New York regular session of `day` (YYYY-MM-DD)."""
    pool = []
    y, m, d = (int(x) for x in day.split("-"))
    for i in range(n):
        minute = 9 * 60 + 30 + (i * 390) // n
        naive = dt.datetime(y, m, d, minute // 60, minute % 60)
        side = "BULLISH" if i % 2 == 0 else "BEARISH"
        trade_id = f"{naive:%Y%m%d_%H%M%S}000_{side}"
        entry = 25600.0 + (i * 37) % 400 + 0.25 * (i % 4)
        risk = 10.0 + (i * 13) % 40 + 0.5 * (i % 2)
        sign = 1 if side == "BULLISH" else -1
        pool.append({
            "trade_id": trade_id, "direction": side.capitalize(), "entry": entry,
            "stop": entry - sign * risk, "risk": risk, "sign": sign,
            "tps": [entry + sign * risk * k for k in (1, 2, 3)],
            "session": sigsync.session_of(sigsync.ny_local_to_utc(naive)),
            # the naive New York wall clock as a fake epoch, for cheap formatting (also in Lua)
            "naive_epoch": int((naive - dt.datetime(1970, 1, 1)).total_seconds()),
        })
    return pool


def entry_body(t):
    """The ENTRY of a trade, in the original indicator's Era-A shape (~970 bytes)."""
    naive = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=t["naive_epoch"])
    return json.dumps({
        "schema_version": "1.0.0", "engine_version": "1.0.0", "strategy_name": "NQ_FVG_CORE",
        "strategy_id": "NQ_FVG_CORE", "strategy_version": "2025.11.20",
        "trade_id": t["trade_id"], "event_type": "ENTRY",
        "event_timestamp": naive.isoformat(), "symbol": "MNQ1!", "exchange": "MNQ1!",
        "timeframe": "1", "session": t["session"], "direction": t["direction"],
        "entry_price": t["entry"], "stop_loss": t["stop"], "risk_R": 1, "position_size": 12,
        "be_price": None, "be_mfe": 0, "no_be_mfe": 0, "mae_global_r": 0, "final_mfe_R": None,
        "exit_price": None, "exit_timestamp": None, "exit_reason": None,
        "targets": {"tp1_price": t["tps"][0], "tp2_price": t["tps"][1],
                    "tp3_price": t["tps"][2], "target_Rs": [1, 2, 3]},
        "setup": {"setup_family": "FVG_CORE", "setup_variant": "HTF_ALIGNED",
                  "setup_id": "FVG_CORE_HTF_ALIGNED", "signal_strength": 75},
        "market_state": {"trend_regime": t["direction"], "trend_score": 1,
                         "volatility_regime": "NORMAL"},
        "htf_alignment": {"daily": "Bullish", "h4": "Bearish", "h1": "Bullish",
                          "m15": "Bullish", "m5": "Bullish", "m1": "Bullish",
                          "all_bullish": False, "all_bearish": False},
    }, separators=(",", ":")).encode()


# Era-A field order, compact as the Pine script builds it. Kept in step with mfe.lua below.
MFE_TEMPLATE = (
    '{"schema_version":"1.0.0","engine_version":"1.0.0","strategy_name":"NQ_FVG_CORE",'
    '"strategy_id":"NQ_FVG_CORE","strategy_version":"2025.11.20","trade_id":"%s",'
    '"event_type":"MFE_UPDATE","event_timestamp":"%s","symbol":"MNQ1!","exchange":"MNQ1!",'
    '"timeframe":"1","session":"%s","direction":"%s","entry_price":%.2f,"stop_loss":%.2f,'
    '"risk_R":1,"position_size":12,"be_price":null,"be_mfe":%.2f,"no_be_mfe":%.2f,'
    '"mae_global_r":%.2f,"current_price":%.2f,"signal_age_seconds":%d,"targets":{'
    '"tp1_price":%.2f,"tp2_price":%.2f,"tp3_price":%.2f,"target_Rs":[1,2,3]}}')


def mfe_body(pool, seq):
    """The seq-th MFE_UPDATE: trade seq % len(pool); content unique for each seq."""
    t = pool[seq % len(pool)]
    k = seq // len(pool)
    offset_ms = 180_000 + k                       # 3 minutes after the triangle, +1 ms a round
    secs = t["naive_epoch"] + offset_ms // 1000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%03d" % (offset_ms % 1000)
    no_be = (seq * 7919) % 400 / 100.0
    be = min(no_be, (seq * 104729) % 200 / 100.0)
    mae = -((seq * 15485863) % 100) / 100.0
    price = t["entry"] + t["sign"] * t["risk"] * (no_be + mae) / 2.0
    tps = t["tps"]
    return (MFE_TEMPLATE % (t["trade_id"], stamp, t["session"], t["direction"], t["entry"],
                            t["stop"], be, no_be, mae, price, 180 + offset_ms // 1000, tps[0],
                            tps[1], tps[2])).encode()


# ============================================================================================
# PYTHON CLIENT (selectors event loop over raw keep-alive sockets, one per process)
# ============================================================================================

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


class _Conn:
    __slots__ = ("sock", "buf", "t0", "item", "busy")

    def __init__(self):
        self.sock, self.buf, self.t0, self.item, self.busy = None, bytearray(), 0.0, None, False


def _client_worker(spec, pipe):
    """Closed-loop load from one process. Duration mode (bodies from mfe_body with a disjoint
    sequence) or list mode (exactly these (index, body) items, answers kept)."""
    port, path = spec["port"], spec["path"].encode()
    head = (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: " % port)
    items = spec.get("items")
    pool, seq, step = spec.get("pool"), spec.get("seq0", 0), spec.get("step", 1)
    start = spec["start_at"]
    window_start = start + spec.get("warmup", 0.0)
    end = window_start + spec["duration"] if items is None else math.inf
    keep = items is not None
    lat = array.array("d")
    statuses = collections.Counter()
    errors = collections.Counter()
    results = []
    duplicates = 0
    sel = selectors.DefaultSelector()
    queue = list(reversed(items)) if keep else None

    def next_request(c):
        nonlocal seq
        if keep:
            if not queue:
                return None
            c.item = queue.pop()
            body = c.item[1]
        else:
            if time.monotonic() >= end:
                return None
            body = mfe_body(pool, seq)
            seq += step
        return head + b"%d\r\n\r\n" % len(body) + body

    def open_conn(c):
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        c.sock, c.buf = sock, bytearray()
        sel.register(sock, selectors.EVENT_READ, c)

    def close_conn(c):
        if c.sock is not None:
            sel.unregister(c.sock)
            c.sock.close()
            c.sock = None

    def send_next(c):
        request = next_request(c)
        if request is None:
            c.busy = False
            return
        c.t0 = time.monotonic()
        try:
            if c.sock is None:
                open_conn(c)
            c.sock.sendall(request)
            c.busy = True
        except OSError as e:
            errors[type(e).__name__] += 1
            close_conn(c)
            c.busy = False

    cpu0 = os.times()
    t_last = None
    while time.monotonic() < start:
        time.sleep(min(0.01, max(0.0, start - time.monotonic())))
    conns = [_Conn() for _ in range(spec["conns"])]
    for c in conns:
        send_next(c)
    # answers still missing 15 s after the end (list mode: 120 s after the start) are timeouts
    deadline = (end if items is None else start + 105.0) + 15.0
    while True:
        busy = sum(c.busy for c in conns)
        if not busy:
            break
        if time.monotonic() >= deadline:
            errors["timeout"] += busy
            break
        for key, _ in sel.select(0.5):
            c = key.data
            try:
                data = c.sock.recv(262144)
            except OSError as e:
                data, err = b"", type(e).__name__
            else:
                err = "closed"
            if not data:
                errors[err] += 1
                close_conn(c)
                send_next(c)
                continue
            c.buf += data
            hdr_end = c.buf.find(b"\r\n\r\n")
            if hdr_end < 0:
                continue
            header = bytes(c.buf[:hdr_end + 2]).lower()
            m = _CONTENT_LENGTH.search(header)
            if m is None:
                continue        # (never seen here: both servers send Content-Length)
            total = hdr_end + 4 + int(m.group(1))
            if len(c.buf) < total:
                continue
            t1 = t_last = time.monotonic()
            status = int(c.buf[9:12])
            body = bytes(c.buf[hdr_end + 4:total])
            del c.buf[:total]
            statuses[status] += 1
            if keep:
                results.append((c.item[0], status, body, t1 - c.t0))
            elif window_start <= t1 <= end:
                lat.append(t1 - c.t0)
                if b'"duplicate": true' in body:
                    duplicates += 1
            if b"\r\nconnection: close" in header or (
                    header.startswith(b"http/1.0") and b"keep-alive" not in header):
                close_conn(c)
            send_next(c)
    for c in conns:
        close_conn(c)
    cpu1 = os.times()
    pipe.send({"lat": lat.tobytes(), "statuses": dict(statuses), "errors": dict(errors),
               "results": results, "duplicates": duplicates, "t_first": start, "t_last": t_last,
               "cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)})
    pipe.close()


def _proc_cpu(pid):
    """CPU seconds (user + system) used so far by a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def python_load(port, path, conc, *, pool=None, seq0=0, duration=3.0, warmup=0.5,
                items=None, procs=None, server_pid=None, meter=None):
    """Run one measurement with the Python client; returns a result dict. With `meter` (a
    function), its values at the start and at the end of the measured window, as "window"."""
    procs = max(1, min(procs or NPROC, conc))
    ctx = multiprocessing.get_context("fork")
    start_at = time.monotonic() + 0.25
    workers = []
    for w in range(procs):
        spec = {"port": port, "path": path, "conns": conc // procs + (w < conc % procs),
                "start_at": start_at, "warmup": warmup, "duration": duration}
        if items is not None:
            spec["items"] = items[w::procs]
        else:
            spec.update(pool=pool, seq0=seq0 + w, step=procs)
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_client_worker, args=(spec, child), daemon=True)
        proc.start()
        child.close()
        workers.append((proc, parent))
    cpu0 = _proc_cpu(server_pid) if server_pid else float("nan")
    window = None
    if meter is not None and items is None:     # the clients run on their own meanwhile
        time.sleep(max(0.0, start_at + warmup - time.monotonic()))
        first = meter()
        time.sleep(max(0.0, start_at + warmup + duration - time.monotonic()))
        window = (first, meter())
    outs = []
    for proc, parent in workers:
        outs.append(parent.recv())
        proc.join(30)
    cpu1 = _proc_cpu(server_pid) if server_pid else float("nan")
    lat = array.array("d")
    statuses, errors, results = collections.Counter(), collections.Counter(), []
    for out in outs:
        lat.frombytes(out["lat"])
        statuses.update(out["statuses"])
        errors.update(out["errors"])
        results.extend(out["results"])
    if items is not None:
        lat = array.array("d", [r[3] for r in results])
    lat = sorted(lat)
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    lasts = [o["t_last"] for o in outs if o["t_last"] is not None]
    wall = duration if items is None else ((max(lasts) - start_at) if lasts else float("nan"))
    counted = len(lat)
    return {"requests": counted, "rps": counted / wall if wall else float("nan"),
            "p50_ms": percentile(lat, 0.50) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
            "max_ms": (lat[-1] * 1e3) if lat else float("nan"),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "ok": ok,
            "errors": dict(errors), "duplicates": sum(o["duplicates"] for o in outs),
            # server CPU over the whole call (includes warm-up and drain: an upper bound)
            "server_cpu_s": cpu1 - cpu0, "client_cpu_s": sum(o["cpu"] for o in outs),
            "results": results if items is not None else None, "tool": "python",
            "window": window}


# ============================================================================================
# WRK CLIENT (cross-check, or --client wrk)
# ============================================================================================

WRK_LUA = r"""
-- generated by tests/bench.py: the same MFE_UPDATE bodies as mfe_body() in Python
local pool = %(pool)s
local n = #pool
local seq0, nthreads = %(seq0)d, %(threads)d
local template = %(template)s
local path = "%(path)s"
local headers = {["Content-Type"] = "application/json"}
local counter = 0
local count = 0   -- setup() runs in the main state; thread:set gives each thread a global tid
function setup(thread) thread:set("tid", count); count = count + 1 end
function request()
  local seq = seq0 + (tid or 0) + counter * nthreads
  counter = counter + 1
  local t = pool[(seq %% n) + 1]
  local k = math.floor(seq / n)
  local offset_ms = 180000 + k
  local secs = t[7] + math.floor(offset_ms / 1000)
  local stamp = os.date("!%%Y-%%m-%%dT%%H:%%M:%%S", secs) ..
                string.format(".%%03d", offset_ms %% 1000)
  local no_be = ((seq * 7919) %% 400) / 100.0
  local be = math.min(no_be, ((seq * 104729) %% 200) / 100.0)
  local mae = -((seq * 15485863) %% 100) / 100.0
  local price = t[4] + t[8] * t[9] * (no_be + mae) / 2.0
  local body = string.format(template, t[1], stamp, t[3], t[2], t[4], t[5], be, no_be, mae,
                             price, 180 + math.floor(offset_ms / 1000), t[10], t[11], t[12])
  return wrk.format("POST", path, headers, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%%d,"duration_us":%%d,"status":%%d,' ..
    '"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d}\n', summary.requests, summary.duration, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def _lua_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_load(port, path, conc, *, pool, seq0, duration, workdir, server_pid=None):
    """One measurement with wrk (needs `wrk` on PATH); same bodies as the Python client."""
    threads = max(1, min(NPROC, conc))
    rows = ", ".join(
        "{%s, %s, %s, %r, %r, 0, %d, %d, %r, %r, %r, %r}" % (
            _lua_string(t["trade_id"]), _lua_string(t["direction"]), _lua_string(t["session"]),
            t["entry"], t["stop"], t["naive_epoch"], t["sign"], t["risk"], *t["tps"])
        for t in pool)
    script = os.path.join(workdir, "mfe.lua")
    with open(script, "w") as f:
        f.write(WRK_LUA % {"pool": "{" + rows + "}", "seq0": seq0, "threads": threads,
                           "template": _lua_string(MFE_TEMPLATE), "path": path})
    cpu0 = _proc_cpu(server_pid) if server_pid else float("nan")
    proc = subprocess.run(["wrk", "-t", str(threads), "-c", str(conc),
                           "-d", f"{max(1, round(duration))}s",
                           "--timeout", "10s", "-s", script, f"http://{HOST}:{port}{path}"],
                          capture_output=True, text=True, timeout=duration + 60)
    cpu1 = _proc_cpu(server_pid) if server_pid else float("nan")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {proc.stdout}\n{proc.stderr}")
    w = json.loads(line[len("WRKJSON "):])
    secs = w["duration_us"] / 1e6
    errors = {k: w[k] for k in ("connect", "read", "write", "timeout") if w[k]}
    return {"requests": w["requests"], "rps": w["requests"] / secs, "p50_ms": w["p50_us"] / 1e3,
            "p99_ms": w["p99_us"] / 1e3, "max_ms": w["max_us"] / 1e3,
            "statuses": {"non-2xx/3xx": w["status"]}, "ok": w["requests"] - w["status"],
            "errors": errors, "duplicates": None, "server_cpu_s": cpu1 - cpu0,
            "client_cpu_s": None, "results": None, "tool": "wrk"}


# ============================================================================================
# SERVER PROCESS
# ============================================================================================

class BenchServer:
    """tests/bench_server.py in a subprocess on a free loopback port, with a fresh database."""

    running = []        # stopped in run()'s finally, whatever happened

    def __init__(self, workdir, name, *, server="waitress", profile=None, extra=()):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.db_path = os.path.join(self.dir, "bench.db")
        self.log_path = os.path.join(self.dir, "server.log")
        cmd = [sys.executable, SERVER, "--db", self.db_path, "--server", server]
        if profile:
            cmd += ["--profile", profile]
        cmd += list(extra)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(30):
            self.proc.kill()
            raise RuntimeError(f"bench server did not start; see {self.log_path}")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench server exited: {open(self.log_path).read()[-2000:]}")
        info = json.loads(line)
        self.port, self.pid = int(info["port"]), self.proc.pid
        BenchServer.running.append(self)

    def tally(self):
        """(duplicates counter, dead letters) read from the database while it runs."""
        conn = apsw.Connection(self.db_path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            dup = conn.execute("SELECT coalesce(sum(value), 0) FROM counters "
                               "WHERE name = 'duplicates'").fetchall()[0][0]
            rej = conn.execute("SELECT count(*) FROM rejected").fetchall()[0][0]
            return dup, rej
        finally:
            conn.close()

    def writer_meter(self):
        """The server's WriterMeter totals (bench_server.py)."""
        status, body, _ = post(self.port, "/bench/writer", b"")
        if status != 200:
            raise RuntimeError(f"/bench/writer answered {status}")
        return json.loads(body)

    def stop(self):
        """SIGTERM and wait: the server finishes requests in flight, checkpoints and closes."""
        if self in BenchServer.running:
            BenchServer.running.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


def writer_between(before, after):
    """Between two writer_meter() readings: the share of the time the writer spent in
    group-commit batches, events per batch, and per event the ms in the writer's critical
    section, COMMIT's share included (None if no batch ran)."""
    d = {k: after[k] - before[k] for k in before}
    if not d["jobs"]:
        return None
    return {"busy_share": d["busy_s"] / d["clock"], "jobs_per_batch": d["jobs"] / d["batches"],
            "ms_per_event": d["busy_s"] / d["jobs"] * 1e3,
            "commit_ms_per_event": d["commit_s"] / d["jobs"] * 1e3}


def post(port, path, body, timeout=30.0):
    """One POST on a new connection: (status, body bytes, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (path.encode(), port, len(body), body))
        buf = bytearray()
        while True:
            hdr_end = buf.find(b"\r\n\r\n")
            if hdr_end >= 0:
                m = _CONTENT_LENGTH.search(bytes(buf[:hdr_end + 2]).lower())
                if m and len(buf) >= hdr_end + 4 + int(m.group(1)):
                    break
            data = sock.recv(65536)
            if not data:
                break
            buf += data
    return int(buf[9:12]), bytes(buf[hdr_end + 4:]), time.monotonic() - t0


def send_entries(server, pool):
    """The ENTRY of every trade in the pool (c=8), so that MFE updates fold into live rows."""
    items = [(i, entry_body(t)) for i, t in enumerate(pool)]
    r = python_load(server.port, ROUTES["webhook"], 8, items=items, warmup=0)
    bad = [x for x in r["results"] if not 200 <= x[1] < 300]
    if bad:
        raise RuntimeError(f"ENTRY events refused: {bad[:3]}")
    return r


def stalled_check(port, n=20, timeout=30.0):
    """n connections each send half a request and stall; then time one normal POST."""
    stalled = []
    body = mfe_body(trade_pool("2025-12-17", 20), 1)
    try:
        for _ in range(n):
            s = socket.create_connection((HOST, port), timeout=5)
            s.sendall(b"POST /api/automated-signals/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body[:len(body) // 2]))
            stalled.append(s)
        time.sleep(0.5)
        try:
            status, _, secs = post(port, ROUTES["webhook"],
                                   mfe_body(trade_pool("2025-12-17", 20), 2), timeout=timeout)
            return {"stalled": n, "status": status, "ms": secs * 1e3, "answered": True}
        except (socket.timeout, OSError) as e:
            return {"stalled": n, "status": None, "ms": None, "answered": False,
                    "error": f"{type(e).__name__} after {timeout:.0f} s"}
    finally:
        for s in stalled:
            s.close()


# ============================================================================================
# THE RUN
# ============================================================================================

class Runner:
    def __init__(self, args, workdir):
        self.args, self.workdir = args, workdir
        self.seq = 0
        self.client = args.client

    def next_seq(self):
        self.seq += SEQ_BLOCK
        return self.seq

    def measure(self, server, route, conc, pool, *, client=None):
        client = client or self.client
        path = {**ROUTES, **CEILING}[route]
        before = server.tally()
        whole_call = server.writer_meter()
        if client == "wrk":
            r = wrk_load(server.port, path, conc, pool=pool, seq0=self.next_seq(),
                         duration=self.args.duration + self.args.warmup,
                         workdir=self.workdir, server_pid=server.pid)
        else:
            r = python_load(server.port, path, conc, pool=pool, seq0=self.next_seq(),
                            duration=self.args.duration, warmup=self.args.warmup,
                            server_pid=server.pid, meter=server.writer_meter)
        after = server.tally()
        # the writer over the measured window (wrk's: over the whole call, warm-up included)
        r["writer"] = writer_between(*(r.get("window") or (whole_call, server.writer_meter())))
        # from the database itself, whatever the client: webhooks answered as duplicates (a
        # cheaper path) and requests refused; both must stay 0 for the numbers to mean anything
        r["db_duplicates"] = after[0] - before[0]
        r["db_rejected"] = after[1] - before[1]
        return r


def median(values):
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarise(runs):
    """Medians over repetitions of one (route, concurrency)."""
    out = {k: median([r[k] for r in runs]) for k in ("rps", "p50_ms", "p99_ms", "max_ms")}
    # server CPU over the whole call (warm-up and drain included) per answer in that time
    out["server_cpu_ms_per_req"] = median(
        [r["server_cpu_s"] * 1e3 / max(1, sum(r["statuses"].values())) if r["tool"] == "python" else
         r["server_cpu_s"] * 1e3 / r["requests"] if r["requests"] else None for r in runs])
    out["non_2xx"] = sum(r["requests"] - r["ok"] if r["tool"] == "wrk" else
                         sum(n for s, n in r["statuses"].items() if not 200 <= int(s) < 300)
                         for r in runs)
    out["errors"] = sum(sum(r["errors"].values()) for r in runs)
    out["duplicates"] = sum(max(r["duplicates"] or 0, r.get("db_duplicates", 0)) for r in runs)
    out["rejected"] = sum(r.get("db_rejected", 0) for r in runs)
    writer = [r["writer"] for r in runs if r.get("writer")]
    out["writer"] = {k: median([x[k] for x in writer]) for k in writer[0]} if writer else None
    out["runs"] = len(runs)
    return out


def progress(msg):
    print(msg, file=sys.stderr, flush=True)


def environment():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    import bottle
    import waitress
    wrk_version = None
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        wrk_version = out.split("[")[0].replace("wrk", "").strip() or out.strip()
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True,
                        text=True).stdout.splitlines()[-1].split()[1]
    return {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "loadavg_at_start": os.getloadavg()[0],
            "nproc": NPROC, "cpu": cpu, "python": platform.python_version(),
            "sqlite": apsw.sqlitelibversion(), "apsw": apsw.apswversion(),
            "waitress": getattr(waitress, "__version__", None) or _dist_version("waitress"),
            "bottle": bottle.__version__, "kernel": platform.release(), "wrk": wrk_version,
            "db_filesystem": fs, "threads": sigsync.Config().threads}


def _machine_busy():
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)      # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu():
    """CPU seconds of this process and its reaped children (servers, clients, wrk)."""
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _listen_overflows():
    """The kernel's count of connections dropped because a listen queue was full."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:])).get("ListenOverflows", 0))
    return 0


def _dist_version(name):
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run(args):
    env = environment()
    results = {"environment": env, "settings": {
        "duration_s": args.duration, "warmup_s": args.warmup, "repetitions": args.reps,
        "client": args.client, "concurrency": list(CONCURRENCY)}}
    workdir = tempfile.mkdtemp(prefix="sigsync-bench-")
    runner = Runner(args, workdir)
    pool = trade_pool("2025-12-15")
    t_start = time.monotonic()
    busy0, own0 = _machine_busy(), _own_cpu()
    try:
        # ---- 1. the matrix: webhook / reference / bare at c = 1, 8, 32, one server ----------
        server = BenchServer(workdir, "main")
        progress(f"server pid {server.pid} port {server.port}; db {server.db_path}")
        send_entries(server, pool)
        runner.measure(server, "webhook", 8, pool)            # warm-up, not recorded
        raw = collections.defaultdict(list)
        for rep in range(args.reps):
            for conc in CONCURRENCY:
                for route in list(ROUTES) + (list(CEILING) if conc == 8 else []):
                    r = runner.measure(server, route, conc, pool)
                    raw[(route, conc)].append(r)
                    progress(f"rep {rep + 1}/{args.reps} {route:9s} c={conc:<2d} "
                             f"{r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                             f"p99 {r['p99_ms']:6.2f} ms  {r['statuses']} {r['errors'] or ''}")
        matrix = {f"{route}@{conc}": summarise(runs) for (route, conc), runs in raw.items()}
        results["matrix"] = matrix
        results["matrix_runs"] = {f"{k[0]}@{k[1]}": [
            {x: v for x, v in r.items() if x != "results"} for r in runs]
            for k, runs in raw.items()}

        # ---- 2. load generator check: wrk against the Python client, same server ----------
        if shutil.which("wrk") and args.client == "python":
            check = {}
            for route in ("bare", "webhook"):
                runs = {"wrk": [], "python": []}
                for _ in range(args.check_reps):           # alternated, medians
                    for tool in ("wrk", "python"):
                        runs[tool].append(runner.measure(server, route, 8, pool, client=tool))
                check[route] = {tool: {
                    "rps": median([r["rps"] for r in rs]),
                    "p50_ms": median([r["p50_ms"] for r in rs]),
                    "p99_ms": median([r["p99_ms"] for r in rs]),
                    "non_2xx": sum(r["requests"] - r["ok"] for r in rs) if tool == "wrk" else
                    sum(n for r in rs for st, n in r["statuses"].items()
                        if not 200 <= int(st) < 300),
                    "db_duplicates": sum(r["db_duplicates"] for r in rs),
                    "db_rejected": sum(r["db_rejected"] for r in rs), "runs": len(rs)}
                    for tool, rs in runs.items()}
                check[route]["python_client_cpu_us_per_req"] = median(
                    [r["client_cpu_s"] * 1e6 / max(1, sum(r["statuses"].values()))
                     for r in runs["python"]])
                progress(f"client check {route} c=8: wrk {check[route]['wrk']['rps']:.0f} "
                         f"req/s, python {check[route]['python']['rps']:.0f} req/s")
            results["client_check"] = check

        # ---- 3. bursts: 1,000 distinct events at c=32 each, then checked in the database --
        # A bar close's burst comes after a quiet spell (the alerts of one bar), so each burst
        # starts from an idle server; a burst's p99 swings with the machine, hence several.
        bursts = []
        for k in range(args.burst_reps):
            day = f"2025-12-{16 + k:02d}"
            burst_pool = trade_pool(day, 100)
            items = [(i, entry_body(t)) for i, t in enumerate(burst_pool)]
            items += [(len(items) + j, mfe_body(burst_pool, runner.next_seq() + j))
                      for j in range(args.burst - len(items))]
            time.sleep(BURST_IDLE_SECONDS)
            r = python_load(server.port, ROUTES["webhook"], 32, items=items, warmup=0,
                            server_pid=server.pid)
            bursts.append((day, items, r))
            progress(f"burst {k + 1}/{args.burst_reps}: p50 {r['p50_ms']:.1f} ms, "
                     f"p99 {r['p99_ms']:.1f} ms, {r['statuses']}")
        rc = server.stop()
        results["bursts"] = [verify_burst(r, items, server.db_path, rc, day)
                             for day, items, r in bursts]
        progress(f"bursts: {results['bursts']}")

        # ---- 4. server choice: waitress vs wsgiref + ThreadingMixIn, each on its own -------
        choice = {}
        for kind in ("waitress", "wsgiref"):
            srv = BenchServer(workdir, f"choice-{kind}", server=kind)
            try:
                send_entries(srv, pool)
                runner.measure(srv, "webhook", 8, pool)       # warm-up
                overflows = _listen_overflows()
                bare = [runner.measure(srv, "bare", 8, pool) for _ in range(args.choice_reps)]
                hook = [runner.measure(srv, "webhook", 8, pool) for _ in range(args.choice_reps)]
                overflows = _listen_overflows() - overflows
                stall = stalled_check(srv.port)
            finally:
                srv.stop()
            choice[kind] = {"bare@8": summarise(bare), "webhook@8": summarise(hook),
                            "stalled": stall, "listen_overflows": overflows,
                            "max_ms": max(r["max_ms"] for r in bare + hook)}
            progress(f"server {kind}: webhook {choice[kind]['webhook@8']['rps']:.0f} req/s, "
                     f"stalled {stall}")
        results["server_choice"] = choice

        # ---- 5. where the webhook's transaction goes (in-process, no HTTP) ----------------
        results["write_amplification"] = write_amplification(workdir, pool)

        # ---- 6. optional profile of the webhook path -------------------------------------
        if args.profile:
            results["profile"] = profile_webhook(runner, workdir, pool)
    finally:
        for srv in list(BenchServer.running):
            srv.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"kept {workdir}")
    results["elapsed_s"] = time.monotonic() - t_start
    results["environment"]["loadavg_at_end"] = os.getloadavg()[0]
    # CPU used meanwhile by everything that is not this benchmark (other jobs, kernel threads)
    results["environment"]["other_cpu_share"] = max(0.0, (_machine_busy() - busy0) - (
        _own_cpu() - own0)) / results["elapsed_s"]
    return results


def verify_burst(r, items, db_path, rc, day):
    """Every 2xx of the burst names an event_id that holds exactly what was sent (its trades
    are those of `day`, YYYY-MM-DD)."""
    sent = dict(items)
    answers = {}
    for index, status, body, _ in r["results"]:
        if 200 <= status < 300:
            answers[index] = json.loads(body)
    conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    missing, mismatched, duplicates = [], [], 0
    try:
        for index, answer in answers.items():
            duplicates += bool(answer.get("duplicate"))
            expected = json.loads(sent[index])
            rows = conn.execute("SELECT trade_id, event_type, payload FROM events "
                                "WHERE event_id = ?", (answer.get("event_id"),)).fetchall()
            if not rows:
                missing.append(index)
                continue
            trade_id, event_type, payload = rows[0]
            payload = json.loads(payload)
            if (trade_id != expected["trade_id"] or event_type != expected["event_type"]
                    or any(payload.get(f) != float(expected[f]) for f in (
                        "no_be_mfe", "be_mfe", "mae_global_r", "entry_price"))
                    or payload.get("event_timestamp") != sigsync.iso(sigsync.parse_time(
                        expected["event_timestamp"], "event_timestamp")[0])):
                mismatched.append(index)
        stored = conn.execute("SELECT count(*) FROM events WHERE trade_id LIKE ?",
                              (day.replace("-", "") + "_%",)).fetchall()[0][0]
    finally:
        conn.close()
    return {"sent": len(items), "ok_2xx": len(answers), "statuses": r["statuses"],
            "errors": r["errors"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "max_ms": r["max_ms"], "seconds": r["requests"] / r["rps"] if r["rps"] else None,
            "verified_in_events": len(answers) - len(missing) - len(mismatched),
            "missing": len(missing), "mismatched": len(mismatched),
            "duplicates": duplicates, "events_rows_for_burst_trades": stored,
            "server_exit_code": rc}


def _wal_frames(path):
    """Page numbers of the frames in a WAL file, in order."""
    import struct
    pages = []
    with open(path + "-wal", "rb") as f:
        header = f.read(32)
        if len(header) < 32:
            return pages
        page_size = struct.unpack(">I", header[8:12])[0]
        while True:
            frame = f.read(24)
            if len(frame) < 24:
                return pages
            pages.append(struct.unpack(">I", frame[:4])[0])
            f.seek(page_size, 1)


def _wal_commits(path):
    """How many transactions the frames of a WAL file commit (commit frames carry the size of
    the database after the commit; the others carry 0)."""
    import struct
    commits = 0
    with open(path + "-wal", "rb") as f:
        header = f.read(32)
        if len(header) < 32:
            return 0
        page_size = struct.unpack(">I", header[8:12])[0]
        while True:
            frame = f.read(24)
            if len(frame) < 24:
                return commits
            commits += struct.unpack(">I", frame[4:8])[0] != 0
            f.seek(page_size, 1)


def write_amplification(workdir, pool, n=300, threads=4):
    """In-process, no HTTP: one webhook transaction (sigsync.ingest) against one raw insert --
    time each and count the pages each writes to the WAL (what COMMIT must fsync), by b-tree.
    Then the same webhooks from `threads` threads at once ("webhook, N threads"), where group
    commit lets waiting events share a transaction: events per transaction, from the WAL."""
    import threading
    path = os.path.join(workdir, "amplification.db")
    db = sigsync.open_db(path, autocheckpoint=False)
    try:
        clock = sigsync.Clock()
        for t in pool:
            sigsync.ingest(db, entry_body(t), now=clock.now())
        for i in range(1000):
            sigsync.ingest(db, mfe_body(pool, 900_000_000 + i), now=clock.now())
        with db.write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_raw(id INTEGER PRIMARY KEY, body BLOB)")
        out = {}
        grouped = f"webhook, {threads} threads"
        # what the webhook does before any database work: parse, validate, normalise, key
        bodies = [mfe_body(pool, 905_000_000 + i) for i in range(n)]
        c0 = time.process_time()
        for body in bodies:
            _, payloads = sigsync.normalise(sigsync.parse_body(body))
            [sigsync._dedup_key(p) for p in payloads]
        out["parse only"] = {"cpu_ms_per_txn": (time.process_time() - c0) / n * 1e3}
        for kind in ("webhook", "reference", grouped):
            db.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            seq0 = 910_000_000 if kind != grouped else 920_000_000
            bodies = [mfe_body(pool, seq0 + i) for i in range(n)]
            t0, c0 = time.perf_counter(), time.process_time()
            if kind == "webhook":
                for body in bodies:
                    sigsync.ingest(db, body, now=clock.now())
            elif kind == "reference":
                for body in bodies:
                    with db.write() as conn:
                        conn.execute("INSERT INTO bench_raw(body) VALUES (?)", (body,))
            else:
                workers = [threading.Thread(target=lambda k: [
                    sigsync.ingest(db, body, now=clock.now()) for body in bodies[k::threads]],
                    args=(k,)) for k in range(threads)]
                for t in workers:
                    t.start()
                for t in workers:
                    t.join()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            frames = _wal_frames(path)
            commits = _wal_commits(path)
            try:
                owner = dict((p, name) for name, p in db.reader().execute(
                    "SELECT name, pageno FROM dbstat"))
            except apsw.Error:          # SQLite built without the dbstat table
                owner = {}
            by_btree = collections.Counter(owner.get(p, "(other)") for p in frames)
            # per event (= per transaction, except in the grouped run)
            out[kind] = {"ms_per_txn": wall / n * 1e3, "cpu_ms_per_txn": cpu / n * 1e3,
                         "wal_pages_per_txn": len(frames) / n,
                         "events_per_commit": n / commits if commits else None,
                         "by_btree": {k: v / n for k, v in by_btree.most_common()}}
        return out
    finally:
        db.close()


def profile_webhook(runner, workdir, pool):
    """cProfile of the webhook path in the server (per worker thread, merged), c=8."""
    import io
    import pstats
    prof_path = os.path.join(workdir, "webhook.prof")
    srv = BenchServer(workdir, "profile", profile=prof_path)
    try:
        send_entries(srv, pool)
        r = runner.measure(srv, "webhook", 8, pool, client="python")
    finally:
        srv.stop()
    out = io.StringIO()
    stats = pstats.Stats(prof_path, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    return {"rps_under_profiler": r["rps"], "text": out.getvalue()}


# ============================================================================================
# REPORT
# ============================================================================================

def grouped_run(wa):
    """write_amplification's run from several threads at once: ("N threads", its figures), or
    (None, None)."""
    for kind, figures in (wa or {}).items():
        if kind.startswith("webhook, "):
            return kind[len("webhook, "):], figures
    return None, None


def report(results):
    env, s = results["environment"], results["settings"]
    lines = []
    w = lines.append
    w("### Performance")
    w("")
    w(f"Measured {env['date']} by `python tests/bench.py` on {env['cpu'] or 'an unknown CPU'}, "
      f"nproc {env['nproc']}, Linux {env['kernel']}; Python {env['python']}, "
      f"SQLite {env['sqlite']} (apsw {env['apsw']}), waitress {env['waitress']} "
      f"({env['threads']} threads), bottle {env['bottle']}; database on {env['db_filesystem']}, "
      "WAL, synchronous=FULL.")
    runs = (f"runs of {max(1, round(s['duration_s'] + s['warmup_s']))} s (no warm-up)"
            if s["client"] == "wrk" else
            f"runs of {s['duration_s']:g} s (after {s['warmup_s']:g} s warm-up each)")
    w(f"Load: {s['client']} client on the same machine, closed loop, keep-alive, 127.0.0.1; "
      f"medians of {s['repetitions']} {runs}, routes interleaved.")
    w("")
    w("| route | concurrency | req/s | p50 ms | p99 ms | server CPU ms/req |")
    w("|---|---:|---:|---:|---:|---:|")
    m = results["matrix"]
    names = {"webhook": "webhook (real path)", "reference": "reference (raw durable insert)",
             "bare": "bare 200"}
    for conc in s["concurrency"]:
        for route in ROUTES:
            x = m[f"{route}@{conc}"]
            w(f"| {names[route]} | {conc} | {x['rps']:,.0f} | {x['p50_ms']:.2f} | "
              f"{x['p99_ms']:.2f} | {x['server_cpu_ms_per_req']:.2f} |")
    w("")
    w("Throughput ratios (target: webhook/reference >= 0.8 at concurrency 8):")
    w("")
    for conc in s["concurrency"]:
        a, b, c = (m[f"{r}@{conc}"]["rps"] for r in ROUTES)
        flag = ""
        if conc == 8:
            flag = "  (target met)" if a / b >= 0.8 else "  (BELOW TARGET 0.8)"
        runs = results["matrix_runs"]
        per_rep = [x["rps"] / y["rps"] for x, y in zip(runs[f"webhook@{conc}"],
                                                      runs[f"reference@{conc}"])]
        spread = (f" (per repetition {min(per_rep):.2f}-{max(per_rep):.2f})"
                  if len(per_rep) > 1 else "")
        w(f"- c={conc}: webhook/reference {a / b:.2f}{spread}, webhook/bare {a / c:.2f}{flag}")
    v = m.get("validated@8")
    if v:
        runs = results["matrix_runs"]
        per_rep = [x["rps"] / y["rps"] for x, y in zip(runs["validated@8"],
                                                      runs["reference@8"])]
        w(f"- Ceiling at c=8: a route that does only the webhook's parsing and validation "
          f"before the reference's insert (plus the dedup key, unique; no request log, no "
          f"lifecycle) ran at {v['rps']:,.0f} req/s, {v['rps'] / m['reference@8']['rps']:.2f} "
          f"of the reference (per repetition {min(per_rep):.2f}-{max(per_rep):.2f}), at "
          f"{v['server_cpu_ms_per_req']:.2f} ms of server CPU per request. Whatever a webhook "
          f"does beyond that (its request log, its lifecycle) comes off this figure.")
    wa = results.get("write_amplification")
    if wa and "parse only" in wa:
        # Both routes are bound by one core (the GIL), so req/s goes as 1 / server CPU per
        # request: 0.8 of the reference allows the webhook reference / 0.8 of server CPU, of
        # which the bare route's share is the HTTP work both pay.
        ref, bare = (m[f"{r}@8"]["server_cpu_ms_per_req"] for r in ("reference", "bare"))
        allowed = ref / 0.8
        w(f"- What 0.8 at c=8 allows: the reference costs {ref:.2f} ms of server CPU per "
          f"request, so the webhook may cost {allowed:.2f} ms (it costs "
          f"{m['webhook@8']['server_cpu_ms_per_req']:.2f}); the bare route's HTTP work takes "
          f"{bare:.2f} of that, leaving {allowed - bare:.2f} ms for everything the webhook does "
          f"beyond HTTP. In-process (no HTTP, one transaction each) that work takes "
          f"{wa['webhook']['cpu_ms_per_txn']:.2f} ms of CPU; its parsing and validation alone, "
          f"before any database work, {wa['parse only']['cpu_ms_per_txn']:.2f} ms, and the "
          f"reference's whole insert and commit {wa['reference']['cpu_ms_per_txn']:.2f} ms.")
    wr = m["webhook@8"].get("writer")
    if wr:
        need = 0.8 * m["reference@8"]["rps"]
        w(f"- The writer at c=8: group-commit batches held the writer lock "
          f"{100 * wr['busy_share']:.0f} % of the time, {wr['jobs_per_batch']:.1f} events per "
          f"batch, {wr['ms_per_event']:.2f} ms per event inside it (COMMIT's share "
          f"{wr['commit_ms_per_event']:.2f} ms). One writer at that pace stores at most "
          f"{1e3 / wr['ms_per_event']:,.0f} events/s; 0.8 of the reference is {need:,.0f}/s.")
        threads, g = grouped_run(wa)
        if g:
            w(f"- With no HTTP at all (in-process, {threads} at once, group commit), the "
              f"webhook's transactions ran at {1e3 / g['ms_per_txn']:,.0f} events/s.")
    bad = {k: (v["non_2xx"], v["errors"], v["duplicates"], v["rejected"]) for k, v in m.items()
           if v["non_2xx"] or v["errors"] or v["duplicates"] or v["rejected"]}
    if bad:
        w(f"- WARNING (non-2xx, errors, duplicates, rejected) by route@concurrency: {bad}")
    if "client_check" in results:
        w("")
        w("Load generator check (c=8, same server, alternated, medians of "
          f"{next(iter(results['client_check'].values()))['wrk']['runs']} runs each):")
        w("")
        for route, x in results["client_check"].items():
            wk, py = x["wrk"], x["python"]
            odd = [f"{tool}: {v['non_2xx']} non-2xx, {v['db_duplicates']} duplicates, "
                   f"{v['db_rejected']} rejected" for tool, v in (("wrk", wk), ("python", py))
                   if v["non_2xx"] or v["db_duplicates"] or v["db_rejected"]]
            w(f"- {route}: wrk {wk['rps']:,.0f} req/s (p50 {wk['p50_ms']:.2f} ms, p99 "
              f"{wk['p99_ms']:.2f} ms), Python client {py['rps']:,.0f} req/s (p50 "
              f"{py['p50_ms']:.2f} ms, p99 {py['p99_ms']:.2f} ms; client CPU "
              f"{x['python_client_cpu_us_per_req']:.0f} us/req)"
              + (f" WARNING {odd}" if odd else ""))
    bs = results.get("bursts")
    if bs:
        w("")
        p99 = median([b["p99_ms"] for b in bs])
        target = "met" if p99 < 50 else "NOT MET"
        statuses = collections.Counter()
        for b in bs:
            statuses.update(b["statuses"])
        errors = [b["errors"] for b in bs if b["errors"]]
        each_p99 = ", ".join(f"{b['p99_ms']:.1f}" for b in bs)
        each_s = ", ".join(f"{b['seconds']:.2f}" for b in bs)
        w(f"Bursts: {len(bs)} x {bs[0]['sent']:,} distinct webhook events at concurrency 32, "
          f"each from an idle server ({BURST_IDLE_SECONDS:g} s without a request first): "
          f"p99 per burst {each_p99} ms, median p99 {p99:.1f} ms (target < 50 ms: {target}); "
          f"median p50 {median([b['p50_ms'] for b in bs]):.1f} ms, slowest answer "
          f"{max(b['max_ms'] for b in bs):.1f} ms; the bursts took {each_s} s. "
          f"{sum(b['ok_2xx'] for b in bs):,} of {sum(b['sent'] for b in bs):,} answered 2xx "
          f"(statuses {dict(statuses)}{', errors ' + str(errors) if errors else ''}); after "
          f"stopping the server, {sum(b['verified_in_events'] for b in bs):,} of them were found "
          f"in `events` by event_id with the content sent ({sum(b['missing'] for b in bs)} "
          f"missing, {sum(b['mismatched'] for b in bs)} different, "
          f"{sum(b['duplicates'] for b in bs)} answered as duplicates).")
    wa = results.get("write_amplification")
    if wa:
        a, r = wa["webhook"], wa["reference"]
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(a["by_btree"].items())[:8])
        w("")
        w(f"One transaction in-process (no HTTP), {a['ms_per_txn']:.2f} ms for the webhook's "
          f"(ingest: {a['cpu_ms_per_txn']:.2f} ms CPU) against {r['ms_per_txn']:.2f} ms for the "
          f"raw insert ({r['cpu_ms_per_txn']:.2f} ms CPU). Pages written to the WAL per "
          f"transaction, which COMMIT must fsync: {a['wal_pages_per_txn']:.1f} against "
          f"{r['wal_pages_per_txn']:.1f}; by b-tree: {top}.")
        threads, g = grouped_run(wa)
        if g:
            w(f"The same webhooks from {threads} "
              f"at once (group commit): {g['events_per_commit']:.1f} events per transaction, "
              f"{g['ms_per_txn']:.2f} ms and {g['cpu_ms_per_txn']:.2f} ms CPU per event, "
              f"{g['wal_pages_per_txn']:.1f} WAL pages per event.")
    ch = results.get("server_choice")
    if ch:
        w("")
        w("Server choice (each in its own process, fresh database, c=8, medians of "
          f"{ch['waitress']['webhook@8']['runs']} runs):")
        w("")
        w("| server | bare req/s | webhook req/s | webhook p99 ms | slowest answer ms "
          "(listen queue overflows) | 20 stalled clients: a normal POST |")
        w("|---|---:|---:|---:|---:|---|")
        labels = {"waitress": "waitress (sigsync.HttpServer, 4 threads)",
                  "wsgiref": "wsgiref + ThreadingMixIn (a thread per connection; HTTP/1.0, "
                             "so a new connection per request)"}
        for kind, x in ch.items():
            st = x["stalled"]
            stall = (f"answered {st['status']} in {st['ms']:.1f} ms" if st["answered"]
                     else f"not answered ({st['error']})")
            w(f"| {labels[kind]} | {x['bare@8']['rps']:,.0f} | {x['webhook@8']['rps']:,.0f} | "
              f"{x['webhook@8']['p99_ms']:.2f} | {x['max_ms']:.0f} ({x['listen_overflows']}) | "
              f"{stall} |")
    w("")
    w(f"(whole benchmark: {results['elapsed_s']:.0f} s; other processes used "
      f"{env['other_cpu_share'] * 100:.0f} % of one core meanwhile; 1-minute load average "
      f"{env['loadavg_at_start']:.2f} before the run)")
    if env["other_cpu_share"] > 0.10:
        w(f"WARNING: the machine was not quiet: other processes used "
          f"{env['other_cpu_share'] * 100:.0f} % of one core during the run, which skews "
          "these figures; rerun on an idle machine.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 repetition")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    parser.add_argument("--client", choices=("python", "wrk"), default="python",
                        help="load generator for the matrix (default: python)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile the webhook path in a separate server (c=8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of the matrix")
    parser.add_argument("--parts", default="http,sync,read",
                        help="comma list of: http (webhook matrix, burst, server choice), sync "
                             "(reconciliation pass and health vs history size: bench_sync.py), "
                             "read (the all-signals API at 100k signals: bench_read.py)")
    parser.add_argument("--sync-sizes", default="10000,100000,1000000",
                        help="stored events for the sync part")
    parser.add_argument("--read-signals", type=int, default=100_000,
                        help="signals for the read part")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    args.duration = args.duration or (1.0 if args.quick else 3.0)
    args.reps = args.reps or (1 if args.quick else 3)
    args.warmup = 0.25 if args.quick else 0.5
    args.choice_reps = 1 if args.quick else 3
    args.check_reps = 1 if args.quick else 2
    args.burst = 1000
    args.burst_reps = 1 if args.quick else 3
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    results = {}
    if "http" in parts:
        results = run(args)
        print(report(results))
        if results.get("profile"):
            print("\nProfile of the webhook path (server side, c=8, "
                  f"{results['profile']['rps_under_profiler']:.0f} req/s under the profiler):\n")
            print(results["profile"]["text"])
    if "sync" in parts:                  # issue #3 Done 5 and issue #4 Done 5
        import bench_sync
        print()
        results["sync"] = bench_sync.run(tuple(int(n) for n in args.sync_sizes.split(",")),
                                         repeats=1 if args.quick else 3)
        r = results["sync_gapped"] = bench_sync.gapped(args.read_signals,
                                                       bench_sync.random.Random(1))
        print(f"\nHealth over {r['signals']} signals that all have gaps ({r['gap_rows']} gap "
              f"rows): v_health_summary {r['summary_view_ms']:.1f} ms, health_report "
              f"{r['health_report_ms']:.1f} ms, GET /api/health {r['api_health_ms']:.1f} ms "
              "(target < 50 ms)")
    if "read" in parts:                  # issue #5 Done 3
        import bench_read
        print()
        results["read"] = bench_read.run(args.read_signals, rounds=3 if args.quick else 7)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
