"""The trigger-kept health aggregates (schema.sql: health_hours, health_gap_counts, the
deadline corrections of v_health_summary) give exactly what a from-scratch count of the open
gaps gives, whatever the events, the passes, the thresholds and the instant asked about."""

import datetime as dt
import json

from hypothesis import HealthCheck, given, settings, strategies as st

import sigsync
from conftest import START

WEEK_AGO = START - dt.timedelta(days=7)
# triangle times on both sides of the 7-day window's first hour, and recent ones
TRIANGLES = [WEEK_AGO - dt.timedelta(minutes=70), WEEK_AGO - dt.timedelta(minutes=5),
             WEEK_AGO + dt.timedelta(minutes=20), WEEK_AGO + dt.timedelta(minutes=95),
             START - dt.timedelta(minutes=30), START - dt.timedelta(minutes=3)]


def trade_id(k, bullish):
    local = TRIANGLES[k].astimezone(sigsync.NEW_YORK)
    return local.strftime("%Y%m%d_%H%M%S") + "000_" + ("BULLISH" if bullish else "BEARISH")


@st.composite
def steps(draw):
    """A run of webhooks, passes and clock moves over six trades on two symbols (or none)."""
    out = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["event"] * 6 + ["sync", "wait"]))
        if kind == "wait":
            out.append(("wait", draw(st.sampled_from([1, 59, 61, 119, 121, 599, 601, 3599,
                                                       3601, 86400]))))
            continue
        if kind == "sync":
            out.append(("sync", None))
            continue
        k = draw(st.integers(0, len(TRIANGLES) - 1))
        bullish = draw(st.booleans())
        symbol = draw(st.sampled_from(["MNQ1!", "CME_MINI:MES1!", None]))
        etype = draw(st.sampled_from(["SIGNAL_CREATED", "ENTRY", "ENTRY_PARTIAL", "MFE_UPDATE",
                                      "MFE_UPDATE", "EXIT_SL", "CANCELLED"]))
        body = {"trade_id": trade_id(k, bullish), "event_type": etype, "timeframe": "1",
                "direction": "Bullish" if bullish else "Bearish"}
        if symbol:
            body["symbol"] = symbol
        if etype == "SIGNAL_CREATED":
            body["htf_alignment"] = {"daily": "Bullish"}
        elif etype.startswith("ENTRY"):
            body.update(event_type="ENTRY", entry_price=draw(st.sampled_from([100.0, 101.0])))
            if etype == "ENTRY":
                body.update(stop_loss=90.0, mae_global_r=0)
        elif etype == "MFE_UPDATE":
            body.update(no_be_mfe=draw(st.sampled_from([0.1, 0.5, 1.2])),
                        mae_global_r=draw(st.sampled_from([-0.2, -1.05])),
                        current_price=95.0)
        elif etype == "EXIT_SL":
            body["exit_price"] = 90.0
        out.append(("event", body))
    return out


def reference(db, now, settings=None):
    """v_health_summary computed the slow way: every open gap, every signal."""
    gaps = sigsync.health_query(db, "v_signal_gaps", now, settings=settings)
    signals = db.query("SELECT trade_id, id_time, status, has_signal_created FROM signals")
    out = {}
    for window, since in (("7d", sigsync.iso(now - dt.timedelta(days=7))), ("all", "")):
        members = {s["trade_id"]: s for s in signals if s["id_time"] >= since}
        mine = [g for g in gaps if g["trade_id"] in members]
        penalty = {}
        by_type = {}
        for g in mine:
            if g["severity"] == "abnormal":
                penalty[g["trade_id"]] = penalty.get(g["trade_id"], 0) + g["weight"]
            counts = by_type.setdefault(g["gap"], {"abnormal": 0, "expected": 0})
            counts[g["severity"]] += 1
        confirmed = [s for s in members.values() if s["status"] in ("ACTIVE", "EXITED")]
        n = len(members)
        out[window] = {
            "signals": n,
            "score": db.query("SELECT round(100.0 - 1.0 * ? / ?, 2) AS s",   # SQL's rounding
                              (sum(min(100, p) for p in penalty.values()), n))[0]["s"]
            if n else None,
            "abnormal_gaps": sum(g["severity"] == "abnormal" for g in mine),
            "expected_gaps": sum(g["severity"] == "expected" for g in mine),
            "gaps_by_type": by_type, "confirmed": len(confirmed),
            "signal_coverage": round(sum(s["has_signal_created"] for s in confirmed)
                                     / len(confirmed), 4) if confirmed else None}
    return out


def summary(db, now, settings=None):
    got = sigsync.health_summary(db, now, settings=settings)
    for row in got.values():
        row.pop("filled_by_tier")
    return got


def instants(clock_now):
    """Instants around every deadline the rules have, and around the window's start."""
    yield clock_now
    for base in [clock_now] + [t + dt.timedelta(days=7) for t in TRIANGLES]:
        for seconds in (-0.001, 0, 0.001, 60, 120.001, 600, 600.001, 3600.001):
            yield base + dt.timedelta(seconds=seconds)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=steps(), thresholds=st.sampled_from([None, {"stale_mfe_seconds": 120},
                                                 {"stale_pending_seconds": 60}]))
def test_trigger_kept_summary_equals_a_count_from_scratch(tmp_path_factory, run, thresholds):
    db = sigsync.open_db(str(tmp_path_factory.mktemp("agg") / "a.db"))
    try:
        now = START
        for kind, value in run:
            if kind == "wait":
                now += dt.timedelta(seconds=value)
            elif kind == "sync":
                sigsync.sync_once(db, now=now)
            else:
                sigsync.ingest(db, json.dumps(value).encode(), now=now)
        for at in instants(now):
            assert summary(db, at, thresholds) == reference(db, at, thresholds), at
        # and the aggregates equal a count from scratch of the rows they summarise
        assert db.query("SELECT * FROM health_gap_counts ORDER BY 1, 2, 3") == db.query(
            "SELECT hour, gap, severity, count(*) AS n FROM (SELECT substr(id_time, 1, 13) AS "
            "hour, gap, severity FROM signal_gaps UNION ALL SELECT '*', gap, severity FROM "
            "signal_gaps) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
        assert db.query("SELECT * FROM health_hours ORDER BY 1") == db.query(
            "WITH p AS (SELECT s.trade_id, s.id_time, s.status IN ('ACTIVE', 'EXITED') AS c, "
            "s.has_signal_created AS h, min(100, coalesce((SELECT sum(t.weight) FROM "
            "signal_gaps g JOIN gap_types t USING (gap) WHERE g.trade_id = s.trade_id AND "
            "g.severity = 'abnormal'), 0)) AS pen FROM signals s), "
            "b AS (SELECT substr(id_time, 1, 13) AS hour, * FROM p UNION ALL "
            "SELECT '*', * FROM p) "
            "SELECT hour, count(*) AS signals, sum(c) AS confirmed, sum(c * h) AS "
            "with_signal_created, sum(pen) AS penalty FROM b GROUP BY hour ORDER BY 1")
    finally:
        db.close()
