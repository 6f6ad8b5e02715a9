#!/usr/bin/env python3
"""Reconciliation pass and health query times against history size.

    python tests/bench_sync.py [--sizes 10000,100000,1000000] [--repeats 3]

For each size: a database holding that many stored events (a generated 1-minute MNQ1! history:
~10 events per trade, a handful of trades still open), a full pass from scratch, then
`repeats` rounds of "100 new events arrive through ingest, one incremental pass runs", timed.
Reported: median incremental pass, full pass, and the ratio incremental(largest)/incremental(
smallest); then the same at 100k events in one market where one direction is rare (two Bearish
signals among Bullish ones), where alternation compares signals far apart. Targets: the
incremental pass at 1M events within 3x its time at 10k, under 200 ms; the health summary view
and GET /api/health under 50 ms at 100k+ signals (medians of 7).
Everything runs in-process against a database in a temporary directory; no network.

    python tests/bench_sync.py --gapped 100000

times the health summary over that many signals that all have gaps (ENTRY alone: no
SIGNAL_CREATED, no HTF, no confirmation time, no MAE; a third still open and stale, a tenth
pending), half of them in the last 7 days, with some deadlines still ahead of "now".
"""

import argparse
import datetime as dt
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

START = dt.datetime(2024, 1, 2, 14, 0, tzinfo=dt.timezone.utc)


def trade_events(n, rng, bullish=None):
    """The events of trade n: its triangle is 3n minutes after START (New York wall clock);
    bullish when n is even, unless told."""
    tri = START.astimezone(sigsync.NEW_YORK) + dt.timedelta(minutes=3 * n)
    bullish = n % 2 == 0 if bullish is None else bullish
    side = "BULLISH" if bullish else "BEARISH"
    direction = "Bullish" if bullish else "Bearish"
    trade_id = tri.strftime("%Y%m%d_%H%M%S") + "000_" + side
    base = {"trade_id": trade_id, "symbol": "MNQ1!", "timeframe": "1", "direction": direction}
    entry, risk = 25000 + rng.uniform(-500, 500), rng.choice([20.0, 30.0, 40.0])
    stop = entry - risk if bullish else entry + risk
    out = [{**base, "event_type": "SIGNAL_CREATED",
            "event_timestamp": tri.strftime("%Y-%m-%dT%H:%M:%S"),
            "htf_alignment": {"daily": direction, "h1": direction}}]
    if n % 5 == 4:
        return out                                # never confirms: cancelled by alternation
    out.append({**base, "event_type": "ENTRY", "entry_price": round(entry, 2),
                "stop_loss": round(stop, 2), "mae_global_r": 0, "no_be_mfe": 0, "be_mfe": 0})
    mfe = 0.0
    for k in range(6):
        mfe = max(mfe, rng.uniform(-0.2, 1.4))
        out.append({**base, "event_type": "MFE_UPDATE", "no_be_mfe": round(mfe, 4),
                    "be_mfe": round(mfe, 4), "mae_global_r": -0.3,
                    "current_price": round(entry + (1 if bullish else -1) * mfe * risk, 2),
                    "event_timestamp": (tri + dt.timedelta(minutes=k + 2)).isoformat()[:19]})
    out.append({**base, "event_type": "EXIT_SL", "exit_price": round(stop, 2),
                "no_be_mfe": round(mfe, 4), "mae_global_r": -1.0})
    return out


def store_raw(conn, payload, received):
    """Store one payload as an imported request and its event, without folding (bulk loads
    call sigsync.refold once at the end): the real normalisation, none of the per-event fold."""
    raw = json.dumps(payload).encode()
    _, [normalised] = sigsync.normalise(json.loads(raw))
    request_id = sigsync._insert_request(conn, received, "127.0.0.1", "/bench", None, raw,
                                         "import")
    sigsync._store_event(conn, request_id, received, normalised, None,
                         *sigsync._dedup_key(normalised), derive=False)


def build(path, n_events, rng, bullish_of=None):
    """Bulk-load ~n_events through the real normalisation, then fold and run a full pass.
    bullish_of(n): the direction of trade n (default: alternating)."""
    db = sigsync.open_db(path)
    made, n, open_trades = 0, 0, []
    while made < n_events:
        with db.write() as conn:
            for _ in range(1000):
                events = trade_events(n, rng, bullish_of(n) if bullish_of else None)
                if n % 997 == 0 and len(events) > 2:
                    events = events[:-1]             # a few trades stay open
                    open_trades.append(events[0]["trade_id"])
                now = sigsync.iso(START + dt.timedelta(minutes=3 * n + 1))
                for payload in events:
                    store_raw(conn, payload, now)
                    made += 1
                n += 1
                if made >= n_events:
                    break
    end = START + dt.timedelta(minutes=3 * n + 5)
    t0 = time.perf_counter()
    sigsync.refold(db, now=end)
    fold_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = sigsync.sync_once(db, now=end, full=True)
    full_seconds = time.perf_counter() - t0
    return db, n, end, open_trades, fold_seconds, full_seconds, full


def new_evidence(db, n, now, open_trades, rng, count=100):
    """`count` new events: updates of the open trades, and new triangles and entries."""
    sent = 0
    while sent < count:
        if open_trades and rng.random() < 0.5:
            trade_id = rng.choice(open_trades)
            body = {"event_type": "MFE_UPDATE", "trade_id": trade_id, "symbol": "MNQ1!",
                    "no_be_mfe": round(rng.uniform(0, 2), 4), "mae_global_r": -0.3,
                    "current_price": 25000 + rng.uniform(-50, 50)}
        else:
            events = trade_events(n, rng)
            body = events[min(sent % 3, len(events) - 1)]
            n += sent % 3 == 2
        sigsync.ingest(db, json.dumps(body).encode(), now=now)
        sent += 1
        now += dt.timedelta(seconds=1)
    return n, now


def measure(size, repeats, rng):
    with tempfile.TemporaryDirectory() as tmp:
        db, n, now, open_trades, fold_s, full_s, full = build(os.path.join(tmp, "b.db"), size,
                                                              rng)
        signals = db.query("SELECT count(*) AS n FROM signals")[0]["n"]
        events = db.query("SELECT count(*) AS n FROM events")[0]["n"]
        times, examined = [], []
        for _ in range(repeats):
            n, now = new_evidence(db, n, now, open_trades, rng)
            t0 = time.perf_counter()
            run = sigsync.sync_once(db, now=now)
            times.append(time.perf_counter() - t0)
            examined.append(run["examined"])
        health = time_health(db, now)
        db.close()
    return {"events": events, "signals": signals, "fold_s": fold_s, "full_pass_s": full_s,
            "full_pass_changes": full["changes"], "incremental_ms": statistics.median(times) * 1e3,
            "incremental_all_ms": [round(t * 1e3, 1) for t in times],
            "examined": statistics.median(examined), **health}


def rare_direction(size, repeats, rng):
    """One market where one direction is rare: ~size events of Bullish signals, with a Bearish
    one first and one late (a trending market, or an indicator run mostly one way).
    Alternation then compares each pending signal with a far-away opposite one. Times the full
    pass, and incremental passes whose new event is an update of the late Bearish trade (its
    late-opposite lookup reaches back to the first)."""
    # at most 9 events per trade (~7.4 on average): the second lies ~4/5 of the way in
    rare = {0, size // 9 - 50}
    with tempfile.TemporaryDirectory() as tmp:
        db, _, now, _, _, full_s, _ = build(os.path.join(tmp, "r.db"), size, rng,
                                            bullish_of=lambda k: k not in rare)
        late = db.query("SELECT trade_id FROM signals WHERE direction = 'Bearish' "
                        "ORDER BY signal_time DESC LIMIT 1")[0]["trade_id"]
        times, examined = [], []
        for k in range(repeats):
            sigsync.ingest(db, json.dumps({
                "event_type": "MFE_UPDATE", "trade_id": late, "symbol": "MNQ1!",
                "no_be_mfe": 0.5 + k / 10, "mae_global_r": -0.3,
                "current_price": 25000.0}).encode(), now=now)
            t0 = time.perf_counter()
            run = sigsync.sync_once(db, now=now)
            times.append(time.perf_counter() - t0)
            examined.append(run["examined"])
            now += dt.timedelta(seconds=5)
        counts = db.query("SELECT direction, count(*) AS n FROM signals GROUP BY direction "
                          "ORDER BY direction")
        events = db.query("SELECT count(*) AS n FROM events")[0]["n"]
        db.close()
    return {"events": events, "signals": {r["direction"]: r["n"] for r in counts},
            "full_pass_s": full_s, "incremental_ms": statistics.median(times) * 1e3,
            "examined": statistics.median(examined)}


def time_health(db, now, rounds=7):
    """Median time of the summary view, of health_report, and of GET /api/health over HTTP."""
    import http.client
    reader = db.reader()

    def median_ms(func):
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            func()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e3

    view_ms = median_ms(lambda: reader.execute("SELECT * FROM v_health_summary").fetchall())
    report_ms = median_ms(lambda: sigsync.health_report(db, now))
    config = sigsync.Config(db=db.path)
    server = sigsync.HttpServer(sigsync.make_app(db, sigsync.FixedClock(now), config),
                                "127.0.0.1", 0).start()
    try:
        def get():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            conn.request("GET", "/api/health")
            response = conn.getresponse()
            assert response.status == 200, response.status
            response.read()
            conn.close()
        api_ms = median_ms(get)
    finally:
        server.stop()
    return {"summary_view_ms": view_ms, "health_report_ms": report_ms, "api_health_ms": api_ms}


def gapped(n, rng):
    """Time the health summary over `n` signals that each have gaps."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sigsync.open_db(os.path.join(tmp, "g.db"))
        end = START + dt.timedelta(days=400)
        with db.write() as conn:
            for i in range(n):
                # half the triangles spread over the year before the last week, half in it
                ago = dt.timedelta(minutes=(i // 2) * 10_080 * 2 // n if i % 2 else
                                   10_080 + i * 500_000 // n)
                tri = (end - ago).astimezone(sigsync.NEW_YORK)
                side = "BULLISH" if i % 2 == 0 else "BEARISH"
                trade_id = tri.strftime("%Y%m%d_%H%M%S") + f"{i % 1000:03d}_" + side
                body = {"trade_id": trade_id, "symbol": rng.choice(["MNQ1!", "MES1!"]),
                        "direction": side.title(), "timeframe": "1"}
                if i % 10 == 9:
                    body.update(event_type="SIGNAL_CREATED")
                else:
                    body.update(event_type="ENTRY", entry_price=25000.0, stop_loss=24980.0)
                events = [body]
                if i % 3 != 0 and body["event_type"] == "ENTRY":
                    events.append({**body, "event_type": "EXIT_SL", "exit_price": 24980.0})
                received = sigsync.iso(end - ago + dt.timedelta(minutes=2))
                for payload in events:
                    store_raw(conn, payload, received)
        t0 = time.perf_counter()
        sigsync.refold(db, now=end)
        fold_s = time.perf_counter() - t0
        signals = db.query("SELECT count(*) AS n FROM signals")[0]["n"]
        gaps = db.query("SELECT count(*) AS n FROM signal_gaps")[0]["n"]
        health = time_health(db, end)
        summary = sigsync.health_summary(db, end)
        db.close()
    return {"signals": signals, "gap_rows": gaps, "fold_s": fold_s, **health,
            "score_7d": summary["7d"]["score"], "score_all": summary["all"]["score"]}


def run(sizes=(10_000, 100_000, 1_000_000), repeats=3, out=print):
    rng = random.Random(1)
    results = {}
    out("Reconciliation pass vs history size (100 new events per incremental pass)")
    out(f"{'events':>9} {'signals':>8} {'fold s':>7} {'full pass s':>11} "
        f"{'incremental ms':>14} {'examined':>8} {'v_health_summary ms':>19} "
        f"{'GET /api/health ms':>18}")
    for size in sizes:
        r = measure(size, repeats, rng)
        results[size] = r
        out(f"{r['events']:>9} {r['signals']:>8} {r['fold_s']:>7.1f} {r['full_pass_s']:>11.2f} "
            f"{r['incremental_ms']:>14.1f} {r['examined']:>8} {r['summary_view_ms']:>19.1f} "
            f"{r['api_health_ms']:>18.1f}")
    small, large = results[min(sizes)], results[max(sizes)]
    ratio = large["incremental_ms"] / small["incremental_ms"]
    out(f"incremental({max(sizes)}) / incremental({min(sizes)}) = {ratio:.2f} (target <= 3); "
        f"incremental at {max(sizes)} = {large['incremental_ms']:.1f} ms (target < 200 ms)")
    size = 100_000
    r = results["rare_direction"] = rare_direction(size, repeats, rng)
    same = results.get(size)
    out(f"One direction rare ({r['events']} events; signals by direction {r['signals']}): full "
        f"pass {r['full_pass_s']:.2f} s"
        + (f" (alternating history of the same size: {same['full_pass_s']:.2f} s)" if same
           else "")
        + f"; incremental pass updating the late rare signal {r['incremental_ms']:.1f} ms "
        f"({r['examined']} signals examined)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gapped", type=int, default=0, help="time the health summary over "
                        "this many signals that all have gaps, instead")
    args = parser.parse_args()
    if args.gapped:
        r = gapped(args.gapped, random.Random(1))
        print("Health over signals that all have gaps")
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()},
                         indent=1))
        sys.exit(0)
    run(tuple(int(s) for s in args.sizes.split(",")), args.repeats)
