#!/usr/bin/env python3
"""The read API against table size: GET /api/automated-signals/all-signals at 100k signals.

    python tests/bench_read.py [--signals 100000] [--rounds 7]

Builds a database of `--signals` signals through the real normalisation and fold (SIGNAL_CREATED
for all, ENTRY for four in five, exits and cancellations among them, four symbols, every session,
~1 signal per 3 minutes so the history spans months), runs one full reconciliation pass (so the
gaps are real), then times over HTTP on loopback (median of `--rounds`): the first page with no
filter, the page with each kind of filter, a page deep in the cursor chain, the cancelled list and
one signal's detail. Target (issue #5): the first page under 50 ms at 100k signals.
"""

import argparse
import datetime as dt
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sigsync  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))
import bench_sync  # noqa: E402

START = dt.datetime(2024, 1, 2, 14, 0, tzinfo=dt.timezone.utc)
SYMBOLS = ("MNQ1!", "MES1!", "NQ1!", "ES1!")


def signal_events(n, rng):
    tri = START.astimezone(sigsync.NEW_YORK) + dt.timedelta(minutes=3 * n)
    bullish = rng.random() < 0.5
    direction = "Bullish" if bullish else "Bearish"
    trade_id = tri.strftime("%Y%m%d_%H%M%S") + "000_" + direction.upper()
    base = {"trade_id": trade_id, "symbol": SYMBOLS[n % 4], "timeframe": "1",
            "direction": direction}
    out = [{**base, "event_type": "SIGNAL_CREATED",
            "event_timestamp": tri.strftime("%Y-%m-%dT%H:%M:%S"),
            "htf_alignment": {"daily": direction, "h4": direction, "h1": "Bearish"}}]
    roll = rng.random()
    if roll < 0.1:
        out.append({**base, "event_type": "CANCELLED", "bars_pending": rng.randint(1, 9)})
    elif roll < 0.9:
        entry, risk = 25000 + rng.uniform(-500, 500), rng.choice([20.0, 30.0, 40.0])
        stop = entry - risk if bullish else entry + risk
        out.append({**base, "event_type": "ENTRY", "entry_price": round(entry, 2),
                    "stop_loss": round(stop, 2), "mae_global_r": 0, "no_be_mfe": 0,
                    "be_mfe": 0})
        if roll < 0.8:
            out.append({**base, "event_type": "EXIT_SL", "exit_price": round(stop, 2),
                        "no_be_mfe": round(rng.uniform(0, 2), 3), "mae_global_r": -1.0})
    return out


def build(path, n_signals, rng):
    db = sigsync.open_db(path)
    for start in range(0, n_signals, 1000):
        with db.write() as conn:
            for n in range(start, min(start + 1000, n_signals)):
                now = sigsync.iso(START + dt.timedelta(minutes=3 * n + 1))
                for payload in signal_events(n, rng):
                    bench_sync.store_raw(conn, payload, now)
    end = START + dt.timedelta(minutes=3 * n_signals + 5)
    sigsync.refold(db, now=end)
    sigsync.sync_once(db, now=end, full=True)
    return db, end


def run(n_signals=100_000, rounds=7, out=print):
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        db, now = build(os.path.join(tmp, "read.db"), n_signals, rng)
        built_s = time.perf_counter() - t0
        signals = db.query("SELECT count(*) AS n FROM signals")[0]["n"]
        day = db.query("SELECT signal_date FROM signals WHERE trade_id = (SELECT trade_id "
                       "FROM signals ORDER BY id_time LIMIT 1 OFFSET ?)", (signals // 2,))[0][
            "signal_date"]
        some = db.query("SELECT trade_id FROM signals ORDER BY id_time DESC LIMIT 1 OFFSET ?",
                        (signals // 2,))[0]["trade_id"]
        server = sigsync.HttpServer(sigsync.make_app(db, sigsync.FixedClock(now),
                                                     sigsync.Config(db=db.path)),
                                    "127.0.0.1", 0).start()
        try:
            def get(path):
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                conn.close()
                assert response.status == 200, (path, response.status, body[:200])
                return json.loads(body)

            def median_ms(path):
                get(path)                                  # warm the page cache once
                samples = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    get(path)
                    samples.append(time.perf_counter() - t0)
                return statistics.median(samples) * 1e3

            base = "/api/automated-signals/all-signals"
            cursor, deep = None, signals // 200            # halfway down, by pages of 100
            for _ in range(deep):
                cursor = get(base + "?limit=100" + (f"&cursor={cursor}" if cursor else ""))[
                    "next_cursor"]
            cases = [
                ("first page, no filter", base),
                ("status=confirmed", base + "?status=confirmed"),
                ("status=pending", base + "?status=pending"),
                ("symbol=MES1!", base + "?symbol=MES1!"),
                ("session=NY AM", base + "?session=NY%20AM"),
                ("direction+symbol+status", base + "?direction=Bearish&symbol=NQ1!"
                                                   "&status=exited"),
                ("one New York day", base + f"?since={day}&until={day}"),
                ("q=substring", base + "?q=_0931"),
                (f"page {deep + 1} (cursor)", base + f"?limit=100&cursor={cursor}"),
                ("cancelled-signals", "/api/automated-signals/cancelled-signals"),
                ("one signal's detail", f"/api/signals/{some}"),
            ]
            results = {name: median_ms(path) for name, path in cases}
        finally:
            server.stop()
            db.close()
    out(f"Read API at {signals} signals (built in {built_s:.0f} s; HTTP on loopback, "
        f"median of {rounds})")
    out(f"{'request':<28} {'ms':>7}")
    for name, ms in results.items():
        out(f"{name:<28} {ms:>7.1f}")
    first = results["first page, no filter"]
    out(f"all-signals first page at {signals} signals = {first:.1f} ms (target < 50 ms)")
    return {"signals": signals, "build_s": built_s, "ms": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    run(args.signals, args.rounds)
