"""The read API (SPEC §4): all-signals and cancelled-signals with every filter, cursor paging and
error; the signal detail with provenance, events, audit and gaps; bars; the read token; the
static page routes; the `signals` command.

The data set is generated from a plain description (`SPECS`), and each filter's expected answer
is computed from that description in Python, not by the SQL under test.
"""

import datetime as dt
import json
import os

import pytest

import sigsync
from conftest import START, WsgiClient, http, wipe_derived

NY = sigsync.NEW_YORK
SYMBOLS = ("MNQ1!", "MES1!", "NQ1!")
STATUSES = ("PENDING", "ACTIVE", "EXITED", "CANCELLED")
# 2025-12-14 00:00 New York, then one signal every 97 minutes: spans several days and every
# session, with both directions and three symbols.
BASE = dt.datetime(2025, 12, 14, 0, 0, tzinfo=NY)


def make_specs(n=64):
    specs = []
    for i in range(n):
        local = BASE + dt.timedelta(minutes=97 * i)
        direction = "Bullish" if (i * 7) % 5 < 3 else "Bearish"
        trade_id = local.strftime("%Y%m%d_%H%M%S") + "000_" + direction.upper()
        specs.append({"trade_id": trade_id, "local": local, "utc": local.astimezone(dt.timezone.utc),
                      "direction": direction, "symbol": SYMBOLS[i % 3],
                      "status": STATUSES[(i // 3) % 4],
                      "session": sigsync.session_of(local.astimezone(dt.timezone.utc))})
    return specs


SPECS = make_specs()


def bodies(spec):
    t, d, sym = spec["trade_id"], spec["direction"], spec["symbol"]
    sign = 1 if d == "Bullish" else -1
    entry_price = 25000.0 + (hash(t) % 100)
    out = [dict(event_type="SIGNAL_CREATED", trade_id=t, direction=d, symbol=sym, timeframe="1",
                event_timestamp=spec["local"].strftime("%Y-%m-%dT%H:%M:%S"),
                htf_alignment={"daily": d, "h4": "Bearish", "h1": d, "m15": d, "m5": d,
                               "m1": d})]
    if spec["status"] in ("ACTIVE", "EXITED"):
        out.append(dict(event_type="ENTRY", trade_id=t, direction=d, symbol=sym,
                        entry_price=entry_price, stop_loss=entry_price - sign * 20))
    if spec["status"] == "EXITED":
        out.append(dict(event_type="EXIT_SL", trade_id=t, direction=d, symbol=sym,
                        exit_price=entry_price - sign * 20))
    if spec["status"] == "CANCELLED":
        out.append(dict(event_type="CANCELLED", trade_id=t, direction=d, symbol=sym,
                        bars_pending=4))
    return out


@pytest.fixture
def loaded(db, clock, config):
    now = clock.now()
    for spec in SPECS:
        for body in bodies(spec):
            sigsync.ingest(db, json.dumps(body).encode(), now=now)
    return WsgiClient(sigsync.make_app(db, clock, config))


def newest_first(specs):
    return [s["trade_id"] for s in sorted(specs, key=lambda s: (s["utc"], s["trade_id"]),
                                          reverse=True)]


def get_all(client, path, **params):
    """Every row of a paged list, following next_cursor; also the pages' sizes."""
    rows, sizes, cursor = [], [], None
    for _ in range(1000):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = client.get(path + "?" + "&".join(f"{k}={v}" for k, v in query.items()))
        assert r.status == 200, r.data
        body = r.json()
        rows += body["signals"]
        sizes.append(body["count"])
        cursor = body["next_cursor"]
        if cursor is None:
            return rows, sizes, body
    raise AssertionError("paging did not end")


ALL = "/api/automated-signals/all-signals"
CANCELLED = "/api/automated-signals/cancelled-signals"


def test_all_signals_one_row_per_signal_newest_first_with_the_summary(loaded):
    r = loaded.get(ALL + "?limit=1000")
    body = r.json()
    assert r.status == 200
    assert [s["trade_id"] for s in body["signals"]] == newest_first(SPECS)
    assert body["count"] == len(SPECS) and body["next_cursor"] is None
    by_status = {s: sum(1 for x in SPECS if x["status"] == s) for s in STATUSES}
    assert body["summary"] == {
        "total": len(SPECS), "pending": by_status["PENDING"], "active": by_status["ACTIVE"],
        "exited": by_status["EXITED"], "cancelled": by_status["CANCELLED"],
        "confirmation_rate": round((by_status["ACTIVE"] + by_status["EXITED"]) / len(SPECS), 4)}
    row = next(s for s in body["signals"] if s["trade_id"] == SPECS[5]["trade_id"])
    spec = SPECS[5]
    assert (row["status"], row["direction"], row["symbol"], row["session"]) == (
        spec["status"], spec["direction"], spec["symbol"], spec["session"])
    assert row["signal_time"] == sigsync.iso(spec["utc"])
    assert row["htf_alignment"]["h4"] == "Bearish" and row["htf_alignment"]["daily"] == \
        spec["direction"]
    assert 0 <= row["health_score"] <= 100
    assert set(row) >= {"entry_price", "stop_loss", "risk", "no_be_mfe", "be_mfe", "mae",
                        "be_state", "open_gaps", "abnormal_gaps", "event_count"}


@pytest.mark.parametrize("query, keep", [
    ("status=pending", lambda s: s["status"] == "PENDING"),
    ("status=ACTIVE", lambda s: s["status"] == "ACTIVE"),
    ("status=exited,cancelled", lambda s: s["status"] in ("EXITED", "CANCELLED")),
    ("status=confirmed", lambda s: s["status"] in ("ACTIVE", "EXITED")),
    ("direction=Bearish", lambda s: s["direction"] == "Bearish"),
    ("direction=bullish", lambda s: s["direction"] == "Bullish"),
    ("session=NY%20AM", lambda s: s["session"] == "NY AM"),
    ("session=ASIA,LONDON", lambda s: s["session"] in ("ASIA", "LONDON")),
    ("symbol=MES1!", lambda s: s["symbol"] == "MES1!"),
    ("q=bearish", lambda s: "BEARISH" in s["trade_id"]),
    ("q=20251215_", lambda s: s["trade_id"].startswith("20251215_")),
    ("since=2025-12-15", lambda s: s["local"].date() >= dt.date(2025, 12, 15)),
    ("until=2025-12-15", lambda s: s["local"].date() <= dt.date(2025, 12, 15)),
    ("since=2025-12-15&until=2025-12-15", lambda s: s["local"].date() == dt.date(2025, 12, 15)),
    ("since=2025-12-15T12:00:00Z&until=2025-12-16T00:00:00Z",
     lambda s: dt.datetime(2025, 12, 15, 12, tzinfo=dt.timezone.utc) <= s["utc"]
     < dt.datetime(2025, 12, 16, tzinfo=dt.timezone.utc)),
    # bounds beyond the stored years mean "from the start" and "to the end" (before 0.5.7:
    # since=0999-01-01 matched nothing, compared as text, and until=9999-12-31 was a 500)
    ("since=0999-01-01&until=9999-12-31", lambda s: True),
    ("since=2025-12-15&until=9999-12-31T23:00:00-05:00",
     lambda s: s["local"].date() >= dt.date(2025, 12, 15)),
    ("since=0001-01-01T00:00:00%2B01:00&until=2025-12-15",
     lambda s: s["local"].date() <= dt.date(2025, 12, 15)),
    ("status=confirmed&direction=Bullish&symbol=MNQ1!",
     lambda s: s["status"] in ("ACTIVE", "EXITED") and s["direction"] == "Bullish"
     and s["symbol"] == "MNQ1!"),
])
def test_each_filter_returns_exactly_the_matching_signals(loaded, query, keep):
    expected = [s for s in SPECS if keep(s)]
    assert expected, "the data set must exercise the filter"
    assert len(expected) < len(SPECS) or "since" in query
    rows, _, last = get_all(loaded, ALL, **dict(p.split("=") for p in query.split("&")),
                            limit=5)
    assert [r["trade_id"] for r in rows] == newest_first(expected)


def test_summary_ignores_the_status_filter_but_keeps_the_others(loaded):
    body = loaded.get(ALL + "?status=pending&symbol=MNQ1!").json()
    mine = [s for s in SPECS if s["symbol"] == "MNQ1!"]
    assert body["summary"]["total"] == len(mine)
    assert body["summary"]["pending"] == sum(s["status"] == "PENDING" for s in mine)
    assert body["count"] == body["summary"]["pending"]


def test_a_new_york_date_filter_follows_new_york_midnight(db, clock, config):
    """since=D starts at 00:00 New York (05:00Z in winter): a signal at 23:59 the day before is
    out, one at 00:00 is in."""
    app = WsgiClient(sigsync.make_app(db, clock, config))
    for trade_id in ("20251214_235900000_BULLISH", "20251215_000000000_BULLISH"):
        sigsync.ingest(db, json.dumps({"event_type": "ENTRY", "trade_id": trade_id,
                                       "direction": "Bullish", "symbol": "MNQ1!",
                                       "entry_price": 100, "stop_loss": 90}).encode(),
                       now=clock.now())
    rows = app.get(ALL + "?since=2025-12-15").json()["signals"]
    assert [r["trade_id"] for r in rows] == ["20251215_000000000_BULLISH"]
    rows = app.get(ALL + "?until=2025-12-14").json()["signals"]
    assert [r["trade_id"] for r in rows] == ["20251214_235900000_BULLISH"]
    rows = app.get(ALL + "?since=2025-12-15T05:00:00Z").json()["signals"]
    assert [r["trade_id"] for r in rows] == ["20251215_000000000_BULLISH"]
    rows = app.get(ALL + "?until=2025-12-15T05:00:00Z").json()["signals"]
    assert [r["trade_id"] for r in rows] == ["20251214_235900000_BULLISH"]


def test_cursor_paging_walks_every_signal_once_in_order(loaded):
    rows, sizes, last = get_all(loaded, ALL, limit=7)
    assert [r["trade_id"] for r in rows] == newest_first(SPECS)
    assert sizes == [7] * (len(SPECS) // 7) + ([len(SPECS) % 7] if len(SPECS) % 7 else [])


def test_a_signal_arriving_while_paging_is_neither_repeated_nor_skipped(loaded, db, clock):
    first = loaded.get(ALL + "?limit=10").json()
    newer = "20251231_120000000_BULLISH"
    sigsync.ingest(db, json.dumps({"event_type": "SIGNAL_CREATED", "trade_id": newer,
                                   "direction": "Bullish", "symbol": "MNQ1!"}).encode(),
                   now=clock.now())
    rest, _, _ = get_all(loaded, ALL, limit=10, cursor=first["next_cursor"])
    seen = [r["trade_id"] for r in first["signals"] + rest]
    assert seen == newest_first(SPECS)
    assert loaded.get(ALL + "?limit=1").json()["signals"][0]["trade_id"] == newer


@pytest.mark.parametrize("query, field", [
    ("status=open", "status"),
    ("status=pending,bogus", "status"),
    ("direction=Long", "direction"),
    ("session=NY%20EVENING", "session"),
    ("since=yesterday", "since"),
    ("until=2025-13-01", "until"),
    ("since=2025-12-15T10:00:00", "since"),      # an instant without a zone is ambiguous
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("cursor=not-a-cursor", "cursor"),
    ("cursor=WzFd", "cursor"),                   # base64 of [1]: decodes, wrong shape
    ("cursor=%FF%FE", "cursor"),
])
def test_bad_filter_values_are_400_with_the_one_error_shape(loaded, query, field):
    for path in (ALL, CANCELLED):
        if path == CANCELLED and field == "status":
            continue
        r = loaded.get(f"{path}?{query}")
        assert r.status == 400, (path, query, r.data)
        body = r.json()
        assert body["ok"] is False and body["error"]["code"] == "bad_request"
        assert body["error"]["message"].startswith(field + ":")


def test_cancelled_signals_lists_only_cancelled_ones_with_who_why_and_how_sure(loaded):
    rows, _, last = get_all(loaded, CANCELLED, limit=4)
    expected = [s for s in SPECS if s["status"] == "CANCELLED"]
    assert [r["trade_id"] for r in rows] == newest_first(expected)
    assert last["total"] == len(expected)
    for r in rows:
        assert r["cancelled_at"] and r["bars_pending"] == 4
        assert (r["data_source"], r["confidence"]) == ("indicator", 1.0)
    mes = loaded.get(CANCELLED + "?symbol=MES1!").json()["signals"]
    assert {r["trade_id"] for r in mes} == {s["trade_id"] for s in expected
                                            if s["symbol"] == "MES1!"}
    wide = get_all(loaded, CANCELLED, limit=4, until="9999-12-31")[0]
    assert [r["trade_id"] for r in wide] == newest_first(expected)
    r = loaded.get(CANCELLED + "?status=pending")
    assert r.status == 400 and r.json()["error"]["code"] == "bad_request"


def test_an_inferred_cancellation_shows_the_opposite_signal_and_its_confidence(db, clock, config):
    app = WsgiClient(sigsync.make_app(db, clock, config))
    bull, bear = "20251215_100000000_BULLISH", "20251215_100600000_BEARISH"
    for trade_id, direction, stamp in ((bull, "Bullish", "10:00"), (bear, "Bearish", "10:06")):
        sigsync.ingest(db, json.dumps({"event_type": "SIGNAL_CREATED", "trade_id": trade_id,
                                       "direction": direction, "symbol": "MNQ1!",
                                       "timeframe": "1",
                                       "event_timestamp": f"2025-12-15T{stamp}:00"}).encode(),
                       now=clock.now())
    sigsync.sync_once(db, now=clock.advance(600))
    rows = app.get(CANCELLED).json()["signals"]
    assert [r["trade_id"] for r in rows] == [bull]
    assert rows[0]["cancelled_by"] == bear
    assert rows[0]["bars_pending"] == 6
    assert (rows[0]["data_source"], rows[0]["confidence"]) == ("inferred", 0.95)


def test_signal_detail_has_fields_with_provenance_events_audit_and_gaps(db, clock, config):
    app = WsgiClient(sigsync.make_app(db, clock, config))
    trade_id = "20251215_100000000_BULLISH"
    sent = [{"event_type": "ENTRY", "trade_id": trade_id, "direction": "Bullish",
             "symbol": "MNQ1!", "entry_price": 25680.0, "stop_loss": 25640.0},
            {"event_type": "MFE_UPDATE", "trade_id": trade_id, "direction": "Bullish",
             "symbol": "MNQ1!", "no_be_mfe": 0.5, "mae": -0.25, "current_price": 25700}]
    for body in sent:
        sigsync.ingest(db, json.dumps(body).encode(), now=clock.advance(30))
    run = sigsync.sync_once(db, now=clock.advance(60))
    r = app.get(f"/api/signals/{trade_id}")
    assert r.status == 200
    body = r.json()
    assert [e["event_type"] for e in body["events"]] == ["ENTRY", "MFE_UPDATE"]
    assert [json.loads(e["raw_body"]) for e in body["events"]] == sent
    assert body["events"][0]["received_at"] < body["events"][1]["received_at"]
    fields = body["fields"]
    assert fields["entry_price"] == {"value": 25680.0, "data_source": "indicator",
                                     "confidence": 1.0}
    assert fields["session"] == {"value": "NY AM", "data_source": "trade_id", "confidence": 0.9}
    audited = {a["field"]: a for a in body["audit"]}
    assert audited["session"]["run_id"] == run["run_id"]
    assert audited["session"]["new_value"] == "NY AM" and audited["session"]["old_value"] is None
    assert audited["targets_extended"]["data_source"] == "calculated"
    gaps = {g["gap"]: g for g in body["gaps"]}
    assert "no_signal_created" in gaps and gaps["no_signal_created"]["severity"] == "abnormal"
    assert body["health_score"] == 100 - sum(g["weight"] for g in body["gaps"]
                                             if g["severity"] == "abnormal")


def test_unknown_signal_is_404_not_found(loaded):
    r = loaded.get("/api/signals/20251215_100000000_BULLISH")
    assert r.status == 404 and r.json()["error"]["code"] == "not_found"


def test_bars_by_symbol_and_time_range(db, clock, config):
    app = WsgiClient(sigsync.make_app(db, clock, config))
    for minute in range(5):
        for symbol in ("MNQ1!", "MES1!"):
            sigsync.ingest(db, json.dumps({
                "event_type": "BAR", "symbol": symbol, "timeframe": "1",
                "time": f"2025-12-15T15:0{minute}:00Z", "open": 100 + minute,
                "high": 102 + minute, "low": 99 + minute, "close": 101 + minute}).encode(),
                now=clock.now())
    body = app.get("/api/bars?symbol=MNQ1!&since=2025-12-15T15:01:00Z"
                   "&until=2025-12-15T15:04:00Z").json()
    assert body["symbol"] == "MNQ1!" and body["count"] == 3
    assert [b["time"] for b in body["bars"]] == [f"2025-12-15T15:0{m}:00.000Z" for m in (1, 2, 3)]
    assert body["bars"][0] == {"time": "2025-12-15T15:01:00.000Z", "timeframe": "1", "open": 101,
                               "high": 103, "low": 100, "close": 102}
    body = app.get("/api/bars?symbol=MNQ1!&since=2025-12-15T15:01:00Z&until=9999-12-31").json()
    assert body["count"] == 4
    body = app.get("/api/bars?symbol=MNQ1!&since=0001-01-01&until=9999-12-31T23:00:00-05:00"
                   ).json()
    assert body["count"] == 5
    assert app.get("/api/bars?symbol=ES1!").json()["bars"] == []
    r = app.get("/api/bars")
    assert r.status == 400 and r.json()["error"]["message"].startswith("symbol:")


def test_read_endpoints_need_the_read_token_beyond_loopback(db, clock, tmp_path):
    config = sigsync.Config(db=str(tmp_path / "test.db"), host="0.0.0.0", read_token="r3ad",
                            secret="s3cret")
    app = WsgiClient(sigsync.make_app(db, clock, config))
    for path, status in ((ALL, 200), (CANCELLED, 200),
                         ("/api/signals/20251215_100000000_BULLISH", 404),   # none stored
                         ("/api/bars?symbol=MNQ1!", 200)):
        r = app.get(path)
        assert r.status == 401 and r.json()["error"]["code"] == "unauthorized", path
        sep = "&" if "?" in path else "?"
        assert app.get(f"{path}{sep}token=wrong").status == 401
        ok = app.get(path, headers={"Authorization": "Bearer r3ad"})
        assert ok.status == status, (path, ok.data)
    assert app.get(ALL + "?token=r3ad").status == 200
    # liveness stays open to a probe without a token, and tells it nothing more than that
    r = app.get("/healthz")
    assert (r.status, r.json()) == (200, {"ok": True})
    full = app.get("/healthz?token=r3ad").json()
    assert full["version"] == sigsync.__version__ and full["loop"]["late"] is False


@pytest.mark.parametrize("header", [{"X-Forwarded-For": "203.0.113.9"},
                                    {"Forwarded": "for=203.0.113.9;proto=https"},
                                    {"X-Real-IP": "203.0.113.9"}])
def test_behind_a_reverse_proxy_on_loopback_the_read_api_needs_a_read_token(server, header):
    # The README's set-up keeps sigsync on 127.0.0.1 behind Caddy or nginx: every client on the
    # internet then arrives from loopback, and only the proxy's header tells them apart.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGSYNC_")}
    open_api = server(env=env)
    for path in (ALL, "/api/rejected", "/metrics"):
        status, body = http("GET", open_api.url + path, headers=header)
        assert status == 401 and "SIGSYNC_READ_TOKEN" in body["error"]["message"], path
        assert http("GET", open_api.url + path)[0] == 200, path      # this machine itself
    assert http("GET", open_api.url + "/", headers=header)[0] == 200  # the page asks for it
    with_token = server("--read-token", "r3ad", env=env, db_path=open_api.db_path + "2")
    assert http("GET", with_token.url + ALL, headers=header)[0] == 401
    assert http("GET", with_token.url + ALL + "?token=r3ad", headers=header)[0] == 200


def test_the_page_is_served_at_the_root_and_files_cannot_escape_static(app):
    r = app.get("/")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert b"<html" in r.data.lower()
    assert app.get("/static/../sigsync.py").status in (403, 404)
    assert app.get("/static/%2e%2e/sigsync.py").status in (403, 404)
    assert app.get("/static/no-such-file.js").status == 404


def test_signals_command_lists_with_the_same_filters(loaded, db, config, clock, capsys):
    code = sigsync.main(["signals", "--db", config.db, "--status", "confirmed",
                         "--symbol", "MNQ1!", "--limit", "1000", "--json"], clock)
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    expected = [s for s in SPECS if s["status"] in ("ACTIVE", "EXITED")
                and s["symbol"] == "MNQ1!"]
    assert [r["trade_id"] for r in body["signals"]] == newest_first(expected)
    code = sigsync.main(["signals", "--db", config.db, "--session", "NY AM"], clock)
    out = capsys.readouterr().out
    assert code == 0
    ny_am = [s for s in SPECS if s["session"] == "NY AM"]
    for s in ny_am:
        assert s["trade_id"] in out
    assert f"{len(ny_am)} of {len(ny_am)} signals" in out
    assert sigsync.main(["signals", "--db", config.db, "--status", "open"], clock) == 1
    assert "status: unknown status" in capsys.readouterr().err


def test_a_conflict_recorded_as_event_ids_reads_side_by_side_in_the_detail(db, clock, config):
    app = WsgiClient(sigsync.make_app(db, clock, config))
    trade_id = "20251215_100000000_BULLISH"
    base = {"trade_id": trade_id, "direction": "Bullish", "symbol": "MNQ1!"}
    sigsync.ingest(db, json.dumps({**base, "event_type": "ENTRY", "entry_price": 25680.0,
                                   "stop_loss": 25640.0}).encode(), now=clock.advance(1))
    first = sigsync.ingest(db, json.dumps({**base, "event_type": "EXIT_SL",
                                           "exit_price": 25640.0}).encode(), now=clock.advance(1))
    second = sigsync.ingest(db, json.dumps({**base, "event_type": "EXIT_SL",
                                            "exit_price": 25638.75}).encode(),
                            now=clock.advance(1))
    conflict = app.get(f"/api/signals/{trade_id}").json()["conflicts"]["second_exit_sl"]
    ids = [first.events[0]["event_id"], second.events[0]["event_id"]]
    assert conflict["event_ids"] == ids
    assert conflict["values"] == [
        {"event_id": ids[0], "event_type": "EXIT_SL", "exit_price": 25640.0},
        {"event_id": ids[1], "event_type": "EXIT_SL", "exit_price": 25638.75}]


COUNT_FROM_SCRATCH = (
    "SELECT coalesce(symbol, '') AS symbol, coalesce(session, '') AS session, "
    "coalesce(direction, '') AS direction, status, count(*) AS n FROM signals "
    "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4")


def test_signal_counts_kept_by_triggers_equal_a_count_from_scratch(db, clock, config):
    """Through inserts, late SIGNAL_CREATED (session appears), entries, exits, inferred
    cancellations and a rebuild, the trigger-kept counts stay equal to counting the signals;
    and the summary with and without the counts table agrees."""
    kept = "SELECT * FROM signal_counts ORDER BY 1, 2, 3, 4"
    rng = __import__("random").Random(3)
    for spec in SPECS:
        events = bodies(spec)
        rng.shuffle(events)                     # SIGNAL_CREATED sometimes last
        for body in events:
            sigsync.ingest(db, json.dumps(body).encode(), now=clock.advance(1))
    assert db.query(kept) == db.query(COUNT_FROM_SCRATCH)
    sigsync.sync_once(db, now=clock.advance(3600))
    assert db.query(kept) == db.query(COUNT_FROM_SCRATCH)
    for params in ({}, {"symbol": "MES1!"}, {"session": "NY AM,ASIA"}, {"direction": "Bearish"},
                   {"symbol": "NQ1!", "direction": "Bullish"}):
        f = sigsync.SignalFilter.parse(params.get)
        fast = sigsync.signal_summary(db, f)
        slow = sigsync.signal_summary(db, sigsync.dataclasses.replace(f, q="_"))  # counts rows
        assert fast == slow, params
    wipe_derived(db)
    sigsync.rebuild(db, now=clock.now())
    rebuilt = db.query(kept)
    assert len(rebuilt) > 5 and rebuilt == db.query(COUNT_FROM_SCRATCH)
