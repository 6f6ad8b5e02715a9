"""The signal lifecycle (SPEC §2): order-independence as a property, plus rebuild = live."""

import datetime as dt
import json
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import sigsync
from conftest import START, derived_tables, rebuilt_from_scratch, wipe_derived

# Fields compared across deliveries: all but bookkeeping. Arrival facts (received_at and the
# like) are compared too: each body keeps its own arrival instant whatever the order.
COMPARED = [c for c in sigsync.SIGNAL_COLUMNS if c not in ("fold_state", "conflicts")]


@st.composite
def trades(draw):
    """One trade's events, in the order the indicator sends them, with consistent content."""
    bullish = draw(st.booleans())
    side, direction = ("BULLISH", "Bullish") if bullish else ("BEARISH", "Bearish")
    minute = draw(st.integers(0, 59))
    trade_id = f"20251215_10{minute:02d}00000_{side}"
    entry = draw(st.sampled_from([25600.0, 25683.5, 25710.25]))
    risk = draw(st.sampled_from([18.5, 21.25, 38.5]))
    stop = entry - risk if bullish else entry + risk
    htf = {"daily": "Bullish", "h4": draw(st.sampled_from(["Bullish", "Bearish", "Neutral"]))}
    base = {"trade_id": trade_id, "symbol": "MNQ1!", "direction": direction, "timeframe": "1"}
    events = []
    if draw(st.booleans()):
        events.append({**base, "event_type": "SIGNAL_CREATED", "session": "NY AM",
                       "htf_alignment": htf, "event_timestamp": f"2025-12-15T10:{minute:02d}:00",
                       "market_state": {"trend_regime": direction}})
    # "contradicted": a CANCELLED and then the trade anyway (a conflict in every order)
    fate = draw(st.sampled_from(["pending", "cancelled", "trade", "contradicted"]))
    if fate in ("cancelled", "contradicted"):
        events.append({**base, "event_type": "CANCELLED", "cancel_reason": "opposite_signal",
                       "cancelled_by": "20251215_110000000_" + (
                           "BEARISH" if bullish else "BULLISH"), "bars_pending": 3})
    if fate in ("pending", "cancelled"):
        return trade_id, events
    if draw(st.booleans()):
        events.append({**base, "event_type": "ENTRY", "entry_price": entry, "stop_loss": stop,
                       "htf_alignment": htf, "be_mfe": 0, "no_be_mfe": 0, "mae_global_r": 0,
                       "targets": {"tp1_price": entry + (risk if bullish else -risk)}})
    steps = draw(st.lists(st.floats(-0.6, 0.8, allow_nan=False), min_size=1, max_size=8))
    if draw(st.booleans()):
        steps.append(-3.0)          # half the trades end at the stop (after BE, now and then)
    r, mfe, mae, be_done = 0.0, 0.0, 0.0, False
    for k, step in enumerate(steps, start=1):
        r += step
        mfe, mae = max(mfe, r), min(mae, r)
        stamp = f"2025-12-15T11:{k:02d}:00"
        element = {"trade_id": trade_id, "direction": direction, "entry_price": entry,
                   "stop_loss": stop, "no_be_mfe": round(mfe, 6), "be_mfe": round(mfe, 6),
                   "mae_global_r": round(mae, 6),
                   "current_price": round(entry + (r if bullish else -r) * risk, 2),
                   "be_triggered": mfe >= 1.0}
        events.append({"event_type": "MFE_UPDATE_BATCH", "timestamp": stamp, "symbol": "MNQ1!",
                       "signals": [element]})
        running = {**base, "entry_price": entry, "stop_loss": stop, "no_be_mfe": round(mfe, 6),
                   "be_mfe": round(mfe, 6), "mae_global_r": round(mae, 6)}
        if mfe >= 1.0 and not be_done:
            be_done = True
            events.append({**running, "event_type": "BE_TRIGGERED", "be_price": entry})
        if be_done is True and r <= 0:
            events.append({**running, "event_type": "EXIT_BREAK_EVEN", "exit_price": entry,
                           "final_mfe_R": round(mfe, 6)})
            be_done = "stopped"
        if r <= -1.0:
            events.append({**running, "event_type": "EXIT_STOP_LOSS", "exit_price": stop,
                           "final_mfe_R": round(mfe, 6)})
            break
    return trade_id, events


def final_state(bodies, arrival=None):
    """Deliver the bodies to a fresh database; return the signal rows' compared content.
    `arrival` maps a body to the server clock when it (and any resend of it) arrives."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sigsync.open_db(f"{tmp}/p.db")
        try:
            for raw in bodies:
                sigsync.ingest(db, raw, now=arrival[raw] if arrival else START)
            rows = db.query("SELECT * FROM signals ORDER BY trade_id")
            events = db.query("SELECT event_id, dedup_key FROM events")
        finally:
            db.close()
    # Event ids follow the delivery order; the events they name must not: compare by content.
    key_of = {e["event_id"]: e["dedup_key"] for e in events}

    def by_content(conflict):
        if isinstance(conflict, dict) and "event_ids" in conflict:
            return {**conflict, "event_ids": sorted(key_of[i] for i in conflict["event_ids"])}
        return conflict

    return len(events), [({c: row[c] for c in COMPARED},
                          {kind: by_content(value)
                           for kind, value in json.loads(row["conflicts"]).items()})
                         for row in rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), trade=trades())
def test_any_order_and_duplication_gives_the_in_order_state(data, trade):
    trade_id, events = trade
    bodies = [json.dumps(e).encode() for e in events]
    assume(len(set(bodies)) >= 2)            # something to reorder
    # each body has its own arrival instant (a resend of it arrives at the same one), so the
    # arrival facts (first/last received, entry and exit arrivals) are compared too
    gaps = data.draw(st.lists(st.integers(0, 600_000), min_size=len(bodies),
                              max_size=len(bodies)), label="ms between arrivals")
    arrival, at = {}, START
    for body, gap in zip(bodies, gaps):
        at += dt.timedelta(milliseconds=gap)
        arrival.setdefault(body, at)
    expected = final_state(bodies, arrival)
    shuffled = data.draw(st.permutations(bodies), label="delivery order")
    repeats = data.draw(st.lists(st.sampled_from(bodies), max_size=len(bodies)),
                        label="resent") if bodies else []
    delivery = list(shuffled)
    for body in repeats:                      # resends land anywhere, even before the original
        delivery.insert(data.draw(st.integers(0, len(delivery)), label="at"), body)
    assert final_state(delivery, arrival) == expected


def deliver_at(deliveries):
    """(raw, arrival) pairs in this order; the signal rows' compared content, and whether a
    refold of the log gives back the same derived tables."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sigsync.open_db(f"{tmp}/r.db")
        try:
            for raw, at in deliveries:
                sigsync.ingest(db, raw, now=at)
            live = derived_tables(db)
            rebuilt = rebuilt_from_scratch(db, START, fold_only=True)
        finally:
            db.close()
    return [{c: row[c] for c in COMPARED} for row in live["signals"]], rebuilt == live


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), trade=trades())
def test_later_resends_move_only_the_last_update_and_rebuild_agrees(data, trade):
    """A resend that arrives later is a duplicate, not a new event; if it is an MFE update it
    is a repeat: the trade's last_update_at moves to it, and nothing else does."""
    _, events = trade
    bodies = [json.dumps(e).encode() for e in events]
    originals = [(b, START + dt.timedelta(minutes=k)) for k, b in enumerate(bodies)]
    expected, agrees = deliver_at(originals)
    assert agrees
    last = START + dt.timedelta(minutes=len(bodies))
    resent = data.draw(st.lists(st.tuples(st.sampled_from(bodies), st.integers(0, 3600)),
                                max_size=4), label="resent (body, seconds after the last)") \
        if bodies else []
    resends = [(b, last + dt.timedelta(seconds=d)) for b, d in resent]
    got, agrees = deliver_at(originals + resends)
    assert agrees
    repeats = [at for b, at in resends if json.loads(b)["event_type"] == "MFE_UPDATE_BATCH"]
    for row in expected:
        if repeats:
            row["last_update_at"] = max([row["last_update_at"] or ""] +
                                        [sigsync.iso(at) for at in repeats])
    assert got == expected


def deliver(bodies, step=1):
    """The bodies in this order, `step` seconds apart from 15:00Z; the signal row."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sigsync.open_db(f"{tmp}/c.db")
        try:
            for k, body in enumerate(bodies):
                sigsync.ingest(db, json.dumps(body).encode(),
                               now=START + dt.timedelta(hours=1, seconds=k * step))
            row = db.query("SELECT * FROM signals")[0]
            ids = {e["event_type"]: e["event_id"] for e in db.query(
                "SELECT event_type, event_id FROM events")}
        finally:
            db.close()
    return dict(row, conflicts=json.loads(row["conflicts"])), ids


@pytest.mark.parametrize("trade_id, entry, stop, wrong", [
    ("20251215_100000000_BULLISH", 25680.0, 25700.0, True),
    ("20251215_100000000_BULLISH", 25680.0, 25680.0, True),     # no risk at all
    ("20251215_100000000_BULLISH", 25680.0, 25640.0, False),
    ("20251215_100000000_BEARISH", 25680.0, 25640.0, True),
    ("20251215_100000000_BEARISH", 25680.0, 25700.0, False)])
def test_a_stop_on_the_wrong_side_of_the_entry_is_a_conflict(trade_id, entry, stop, wrong):
    direction = trade_id.rsplit("_", 1)[1].title()
    row, _ = deliver([{"event_type": "ENTRY", "trade_id": trade_id, "direction": direction,
                       "entry_price": entry, "stop_loss": stop}])
    if wrong:
        assert row["conflicts"] == {"stop_on_wrong_side": {
            "direction": direction, "entry_price": entry, "stop_loss": stop}}
    else:
        assert row["conflicts"] == {}


def test_the_stop_side_is_judged_on_the_final_values_whatever_the_order():
    """A batch element's stop (rank 1) is on the wrong side; the ENTRY's (rank 3) wins."""
    t = "20251215_100000000_BULLISH"
    batch = {"event_type": "MFE_UPDATE_BATCH", "signals": [
        {"trade_id": t, "entry_price": 25680.0, "stop_loss": 25700.0, "no_be_mfe": 0.1}]}
    entry = {"event_type": "ENTRY", "trade_id": t, "direction": "Bullish",
             "entry_price": 25680.0, "stop_loss": 25640.0}
    for order in ([batch], [batch, entry], [entry, batch]):
        row, _ = deliver(order)
        assert ("stop_on_wrong_side" in row["conflicts"]) == (order == [batch])
        assert row["stop_loss"] == (25700.0 if order == [batch] else 25640.0)


def test_a_cancelled_trade_with_mfe_and_exit_evidence_is_a_conflict_not_a_silent_choice():
    base = {"trade_id": "20251215_094200000_BULLISH", "direction": "Bullish",
            "symbol": "MNQ1!"}
    cancelled = {**base, "event_type": "CANCELLED", "cancel_reason": "opposite_signal"}
    mfe = {**base, "event_type": "MFE_UPDATE", "no_be_mfe": 0.4, "mae_global_r": -0.2}
    exit_sl = {**base, "event_type": "EXIT_SL", "exit_price": 25640.0}
    for order in ([cancelled, mfe, exit_sl], [exit_sl, mfe, cancelled]):
        row, ids = deliver(order)
        assert row["status"] == "EXITED"              # the evidence of a trade decides
        assert row["conflicts"]["entry_and_cancelled"] == {
            "event_ids": sorted([ids["CANCELLED"], ids["EXIT_SL"]]),
            "evidence": ["EXIT_SL", "MFE_UPDATE"]}


def test_exit_before_entry_is_judged_on_the_final_values_whatever_the_order():
    base = {"trade_id": "20251215_094200000_BULLISH", "direction": "Bullish",
            "symbol": "MNQ1!", "entry_price": 25680.0, "stop_loss": 25640.0}
    late = {**base, "event_type": "MFE_UPDATE", "no_be_mfe": 0.1,
            "confirmation_time": "2025-12-15T10:45:00"}        # 15:45Z, after the exit
    early = {**base, "event_type": "ENTRY", "confirmation_time": "2025-12-15T09:45:00"}
    exit_sl = {**base, "event_type": "EXIT_SL", "exit_price": 25640.0}
    finals = []
    for order in ([late, exit_sl, early], [early, late, exit_sl], [exit_sl, early, late]):
        row, _ = deliver(order, step=0)               # one arrival instant: 15:00Z
        conflict = row["conflicts"].get("exit_before_entry")
        assert (conflict is not None) == (row["exit_sl_at"] < row["confirmation_time"])
        if conflict:
            assert conflict == {"exit_sl_at": row["exit_sl_at"],
                                "confirmation_time": row["confirmation_time"]}
        finals.append((row["confirmation_time"], row["conflicts"]))
    assert finals[0] == finals[1] == finals[2]


@pytest.mark.parametrize("exit_type,field", [("EXIT_TP", "exit_tp_at"),
                                              ("EXIT_BE", "exit_be_at")])
def test_a_target_or_break_even_exit_before_the_entry_is_a_conflict_too(exit_type, field):
    base = {"trade_id": "20251215_094200000_BULLISH", "direction": "Bullish",
            "symbol": "MNQ1!", "entry_price": 25680.0, "stop_loss": 25640.0}
    entry = {**base, "event_type": "ENTRY", "confirmation_time": "2025-12-15T10:05:00"}
    exit_ = {**base, "event_type": exit_type, "exit_price": 25720.0}
    for order in ([exit_, entry], [entry, exit_]):
        row, _ = deliver(order, step=0)               # the exit arrives at 15:00Z, before 15:05Z
        assert row["conflicts"]["exit_before_entry"] == {
            field: "2025-12-15T15:00:00.000Z", "confirmation_time": "2025-12-15T15:05:00.000Z"}
    on_time = {**entry, "confirmation_time": "2025-12-15T09:55:00"}
    row, _ = deliver([exit_, on_time], step=0)
    assert "exit_before_entry" not in row["conflicts"]


def test_permutations_of_the_fixture_lifecycle_agree():
    """The original indicator's own five alerts for one trade, in all 120 orders."""
    import itertools
    from conftest import load_fixtures
    bodies = [b for e, b in load_fixtures()
              if e.get("trade_id") == "20251215_094200000_BULLISH" and e["_era"] == "A"]
    assert len(bodies) == 5
    expected = final_state(bodies)
    state = expected[1][0][0]
    assert (state["status"], state["be_state"], state["mae"]) == ("EXITED", "STOPPED",
                                                                  -1.0649350649)
    for order in itertools.permutations(bodies):
        assert final_state(list(order)) == expected


def test_rebuild_gives_the_same_derived_tables_as_live_ingestion(db, clock):
    for at, raw in sigsync.demo_payloads(START, seed=3):
        try:
            sigsync.ingest(db, raw, now=START + dt.timedelta(seconds=at))
        except sigsync.Rejected:
            pass
    now = START + dt.timedelta(hours=4)
    sigsync.sync_once(db, now=now)                           # what the loop does live
    live = derived_tables(db)
    assert len(live["signals"]) > 10
    wipe_derived(db)                       # the rebuild must make every row itself
    result = sigsync.rebuild(db, now=now)
    rebuilt = derived_tables(db)
    assert rebuilt == live
    assert result["signals"] == len(live["signals"])


PRICES = [json.dumps({"event_type": "MFE_UPDATE", "trade_id": "20251215_090000000_BEARISH",
                      "symbol": "MNQ1!", "current_price": price}).encode()
          for price in (25500.0, 25650.0, 25700.0, 25900.0)]     # another trade's prices
# A trade that sends no excursions of its own (the pass estimates them from those prices) and
# a pending signal that a later opposite one cancels by alternation.
BARE = "20251215_093000000_BULLISH"
SPARSE = [json.dumps(e).encode() for e in (
    {"event_type": "ENTRY", "trade_id": BARE, "direction": "Bullish", "symbol": "MNQ1!",
     "timeframe": "1", "entry_price": 25680.0, "stop_loss": 25640.0},
    {"event_type": "EXIT_BE", "trade_id": BARE, "exit_price": 25680.0},
    {"event_type": "MFE_UPDATE", "trade_id": BARE, "symbol": "MNQ1!", "mae_global_r": -0.2},
    {"event_type": "SIGNAL_CREATED", "trade_id": "20251215_092000000_BEARISH",
     "direction": "Bearish", "symbol": "MNQ1!", "timeframe": "1",
     "event_timestamp": "2025-12-15T09:20:00"})]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), first=trades(), second=trades())
def test_rebuild_replays_the_passes_where_they_ran(data, first, second):
    """Live: three trades' events (resends among them), other trades' prices of the market, and
    incremental or full passes, at moments minutes apart. A rebuild from the log then gives
    exactly the derived tables the live loop left, estimates and inferences included: prices
    judged as fresh as they were, exits inferred and withdrawn, cancellations by alternation."""
    bodies = [json.dumps(e).encode() for e in first[1] + second[1]]
    pool = bodies + SPARSE * 3 + PRICES * 3 + ["pass"] * 6 + ["full pass"] * 2
    ops = data.draw(st.lists(st.sampled_from(pool), min_size=3, max_size=40),
                    label="operations")
    # mostly seconds apart (a price is fresh for 10 minutes), now and then an hour
    gaps = data.draw(st.lists(st.one_of(st.integers(1, 120_000), st.integers(1, 3_600_000)),
                              min_size=len(ops), max_size=len(ops)), label="ms before each")
    at = START
    with tempfile.TemporaryDirectory() as tmp:
        db = sigsync.open_db(f"{tmp}/p.db")
        try:
            for op, gap in zip(ops, gaps):
                at += dt.timedelta(milliseconds=gap)
                if isinstance(op, str):
                    sigsync.sync_once(db, now=at, full=op == "full pass")
                else:
                    sigsync.ingest(db, op, now=at)
            live = derived_tables(db)
            rebuilt = rebuilt_from_scratch(db, at + dt.timedelta(hours=1))
        finally:
            db.close()
    assert rebuilt == live
