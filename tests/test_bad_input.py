"""Bad input against a real `sigsync.py serve` process (SPEC §1.2, §1.3, §1.5).

Every kind of bad request gets its documented 4xx and error code, a message that names what to
fix, never a 5xx, and exactly one dead letter holding the body as sent (a "secret" value masked).
"""

import json

import pytest

from conftest import Server, http, load_fixtures, open_database

WEBHOOK = "/api/automated-signals/webhook"
GOOD_ID = "20251215_094200000_BULLISH"
RAW_INVALID = [body for entry, body in load_fixtures() if "_raw_body" in entry][0]


def j(**fields):
    return json.dumps(fields).encode()


def entry(**extra):
    body = {"event_type": "ENTRY", "trade_id": GOOD_ID, "direction": "Bullish",
            "symbol": "MNQ1!", "entry_price": 25683.5, "stop_loss": 25645.0}
    body.update(extra)
    return json.dumps({k: v for k, v in body.items() if v is not DROP}).encode()


def bar(**extra):
    body = {"event_type": "BAR", "symbol": "MNQ1!", "timeframe": "1",
            "time": "2025-12-15T14:42:00Z", "open": 25680.0, "high": 25690.0, "low": 25675.5,
            "close": 25688.25}
    body.update(extra)
    return json.dumps({k: v for k, v in body.items() if v is not DROP}).encode()


DROP = object()        # marks a field to leave out of the body


# (id, body bytes, status, code, text the message must contain, content type)
CASES = [
    # --- the body as a whole ---
    ("empty-body", b"", 400, "empty_body", "empty", "text/plain"),
    ("whitespace-body", b"  \r\n\t  ", 400, "empty_body", "empty", "text/plain"),
    ("invalid-json", b'{"event_type": "ENTRY", "trade_id": ', 400, "invalid_json", "JSON",
     "text/plain"),
    ("indicator-invalid-body", RAW_INVALID, 400, "invalid_json", "JSON", "text/plain"),
    ("unreplaced-numeric-placeholders",
     b'{"event_type":"BAR","symbol":"MNQ1!","timeframe":"1","time":"2025-12-15T14:42:00Z",'
     b'"open":{{open}},"high":{{high}},"low":{{low}},"close":{{close}}}',
     400, "invalid_json", "not valid JSON: open: unreplaced placeholder {{open}}", "text/plain"),
    ("json-array", b'[{"event_type": "HEARTBEAT"}]', 400, "not_an_object", "object",
     "application/json"),
    ("json-string", b'"ENTRY"', 400, "not_an_object", "object", "application/json"),
    ("json-number", b"42", 400, "not_an_object", "object", "application/json"),
    ("json-null", b"null", 400, "not_an_object", "object", "application/json"),
    ("deep-nesting", b'{"event_type":"HEARTBEAT","x":' + b"[" * 20000 + b"]" * 20000 + b"}",
     400, "invalid_json", "deep", "application/json"),
    ("non-utf8", b'{"event_type": "HEARTBEAT", "note": "caf\xe9 \xff"}', 400,
     "invalid_encoding", "UTF-8", "text/plain"),
    # --- wrong types ---
    ("entry_price-object", entry(entry_price={"value": 25683.5}), 400, "invalid_field",
     "entry_price", "application/json"),
    ("direction-number", entry(direction=1), 400, "invalid_field", "direction",
     "application/json"),
    ("be_triggered-string",
     j(event_type="MFE_UPDATE", trade_id=GOOD_ID, no_be_mfe=0.4, be_triggered="true"),
     400, "invalid_field", "be_triggered", "application/json"),
    ("entry_price-boolean", entry(entry_price=True), 400, "invalid_field", "entry_price",
     "application/json"),
    ("htf_alignment-string", entry(htf_alignment="Bullish"), 400, "invalid_field",
     "htf_alignment", "application/json"),
    ("targets-list", entry(targets=[25722, 25760.5]), 400, "invalid_field", "targets",
     "application/json"),
    ("target-price-text", entry(targets={"tp1_price": "above"}), 400, "invalid_field",
     "tp1_price", "application/json"),
    ("current_price-text", j(event_type="MFE_UPDATE", trade_id=GOOD_ID, current_price="abc"),
     400, "invalid_field", "current_price", "application/json"),
    ("symbol-object", entry(symbol={"ticker": "MNQ1!"}), 400, "invalid_field", "symbol",
     "application/json"),
    ("bar-symbol-list", bar(symbol=["MNQ1!"]), 400, "invalid_field", "symbol",
     "application/json"),
    ("exit_reason-object",
     j(event_type="EXIT_SL", trade_id=GOOD_ID, exit_price=25645.0, exit_reason={"why": "sl"}),
     400, "invalid_field", "exit_reason", "application/json"),
    ("cancelled_by-list",
     j(event_type="CANCELLED", trade_id=GOOD_ID, cancelled_by=["20251215_094500000_BEARISH"]),
     400, "invalid_field", "cancelled_by", "application/json"),
    ("bars_pending-negative", j(event_type="CANCELLED", trade_id=GOOD_ID, bars_pending=-1),
     400, "invalid_field", "bars_pending", "application/json"),
    ("bars_pending-huge", j(event_type="CANCELLED", trade_id=GOOD_ID, bars_pending=1e30),
     400, "invalid_field", "bars_pending", "application/json"),
    ("bars_to_confirmation-zero", entry(bars_to_confirmation=0), 400, "invalid_field",
     "bars_to_confirmation", "application/json"),
    # --- NaN, Infinity, placeholders ---
    ("NaN-literal", entry(entry_price=DROP)[:-1] + b', "entry_price": NaN}', 400,
     "invalid_field", "entry_price", "application/json"),
    ("Infinity-literal", entry(stop_loss=DROP)[:-1] + b', "stop_loss": Infinity}', 400,
     "invalid_field", "stop_loss", "application/json"),
    ("minus-Infinity-literal",
     b'{"event_type": "MFE_UPDATE", "trade_id": "' + GOOD_ID.encode()
     + b'", "mae_global_r": -Infinity}', 400, "invalid_field", "mae_global_r",
     "application/json"),
    ("NaN-string", entry(entry_price="NaN"), 400, "invalid_field", "entry_price",
     "application/json"),
    ("Infinity-string", j(event_type="MFE_UPDATE", trade_id=GOOD_ID, current_price="Infinity"),
     400, "invalid_field", "current_price", "application/json"),
    ("overflowing-number", entry(entry_price=DROP)[:-1] + b', "entry_price": 1e999}', 400,
     "invalid_field", "entry_price", "application/json"),
    ("overflowing-number-unknown-field",
     b'{"event_type": "HEARTBEAT", "signal_count": 1e999}', 400, "invalid_field",
     "signal_count", "application/json"),
    # integers past a float's range: a 500 here would make TradingView resend in vain
    ("integer-past-float-range", j(event_type="MFE_UPDATE", trade_id=GOOD_ID,
                                   no_be_mfe=10 ** 400), 400, "invalid_field", "no_be_mfe",
     "application/json"),
    ("integer-past-float-range-as-time", j(event_type="MFE_UPDATE", trade_id=GOOD_ID,
                                           timestamp=-10 ** 400), 400, "invalid_field",
     "timestamp", "application/json"),
    ("integer-of-5000-digits", b'{"event_type": "HEARTBEAT", "x": ' + b"7" * 5000 + b"}", 400,
     "invalid_json", "digits", "text/plain"),
    ("NaN-beside-the-attributes-wrapper",
     b'{"message": "x", "x": NaN, "attributes": ' + entry() + b"}", 400, "invalid_field",
     "body.x", "application/json"),
    ("placeholder-beside-the-attributes-wrapper",
     j(message="{{strategy.order.alert_message}}", attributes=json.loads(entry())), 400,
     "invalid_field", "message", "application/json"),
    ("placeholder-top-level", bar(close="{{close}}"), 400, "invalid_field", "close",
     "application/json"),
    ("placeholder-in-text-field", bar(symbol="{{ticker}}"), 400, "invalid_field", "symbol",
     "application/json"),
    ("placeholder-nested", entry(targets={"tp1_price": "{{plot_1}}"}), 400, "invalid_field",
     "tp1_price", "application/json"),
    # --- event type ---
    ("unknown-event-type", j(event_type="TRADE_ACTIVATED", trade_id=GOOD_ID), 400,
     "unknown_event_type", "event_type", "application/json"),
    ("event_type-number", j(event_type=3, trade_id=GOOD_ID), 400, "invalid_field",
     "event_type", "application/json"),
    ("snapshot-UNIFIED_SNAPSHOT_V1", j(event_type="UNIFIED_SNAPSHOT_V1", signals=[]), 400,
     "unsupported_event_type", "UNIFIED_SNAPSHOT_V1", "application/json"),
    ("snapshot-INDICATOR_EXPORT_V2", j(event_type="INDICATOR_EXPORT_V2", signals=[]), 400,
     "unsupported_event_type", "INDICATOR_EXPORT_V2", "application/json"),
    ("snapshot-ALL_SIGNALS_EXPORT", j(event_type="ALL_SIGNALS_EXPORT", signals=[]), 400,
     "unsupported_event_type", "ALL_SIGNALS_EXPORT", "application/json"),
    ("missing-event_type", j(trade_id=GOOD_ID, direction="Bullish", entry_price=25683.5), 400,
     "missing_field", "event_type", "application/json"),
    ("legacy-type-field", j(type="signal_created", signal_id=GOOD_ID, bias="Bullish"), 400,
     "missing_field", "event_type", "text/plain"),
    ("wrapped-missing-event_type", j(message="", attributes={"trade_id": GOOD_ID}), 400,
     "missing_field", "event_type", "application/json"),
    # --- trade_id ---
    ("trade_id-month-13", entry(trade_id="20251332_094200000_BULLISH"), 400,
     "invalid_trade_id", "trade_id", "application/json"),
    ("trade_id-feb-30", entry(trade_id="20250230_094200000_BULLISH"), 400, "invalid_trade_id",
     "trade_id", "application/json"),
    ("trade_id-hour-25", entry(trade_id="20251215_254200000_BULLISH"), 400,
     "invalid_trade_id", "trade_id", "application/json"),
    ("trade_id-suffix-LONG", entry(trade_id="20251215_094200000_LONG"), 400,
     "invalid_trade_id", "trade_id", "application/json"),
    ("trade_id-suffix-lowercase", entry(trade_id="20251215_094200000_bullish"), 400,
     "invalid_trade_id", "trade_id", "application/json"),
    ("trade_id-no-suffix", entry(trade_id="20251215_094200000"), 400, "invalid_trade_id",
     "trade_id", "application/json"),
    ("trade_id-self-test", entry(trade_id="TEST_LIFECYCLE_1765809720"), 400,
     "invalid_trade_id", "trade_id", "application/json"),
    ("trade_id-legacy-2,025", entry(trade_id=DROP, signal_id="2,025001110_083300_BULLISH"),
     400, "invalid_trade_id", "trade_id", "application/json"),
    ("trade_id-number", entry(trade_id=20251215094200000), 400, "invalid_trade_id",
     "trade_id", "application/json"),
    ("trade_id-trailing-newline", entry(trade_id=GOOD_ID + "\n"), 400, "invalid_trade_id",
     "trade_id", "application/json"),
    ("trade_id-non-ascii-digits", entry(trade_id="\u0662\u0660\u0662\u0665" + GOOD_ID[4:]),
     400, "invalid_trade_id", "trade_id", "application/json"),
    ("trade_id-object-on-heartbeat", j(event_type="HEARTBEAT", trade_id={"id": GOOD_ID}), 400,
     "invalid_trade_id", "trade_id", "application/json"),
    # a date the calendar allows but no TradingView alert can carry: before 0.5.7 year 1 was
    # stored with an id_time not in ISO form ("1-01-01T04:56:02.000Z"), which then broke every
    # reconciliation pass; year 9999 overflowed the time conversion into a 500
    *[(f"trade_id-year-{stamp[:4]}", entry(trade_id=f"{stamp}_BULLISH"), 400,
       "invalid_trade_id", "out of range", "application/json")
      for stamp in ("00010101_000000000", "09991231_093000000", "18000101_093000000",
                    "99991231_230000000")],
    ("missing-trade_id-ENTRY", entry(trade_id=DROP), 400, "missing_field", "trade_id",
     "application/json"),
    ("missing-trade_id-EXIT_SL", j(event_type="EXIT_SL", exit_price=25645.0), 400,
     "missing_field", "trade_id", "application/json"),
    # --- direction ---
    ("missing-direction-ENTRY", entry(direction=DROP), 400, "missing_field", "direction",
     "application/json"),
    ("missing-direction-SIGNAL_CREATED",
     j(event_type="SIGNAL_CREATED", trade_id=GOOD_ID, event_timestamp="2025-12-15T09:42:00"),
     400, "missing_field", "direction", "application/json"),
    ("invalid-direction", entry(direction="UP"), 400, "invalid_field", "direction",
     "application/json"),
    # --- times ---
    ("time-not-a-time", entry(event_timestamp="yesterday"), 400, "invalid_field",
     "event_timestamp", "application/json"),
    ("time-of-day-without-date",
     j(event_type="SIGNAL_CREATED", trade_id=GOOD_ID, direction="Bullish",
       signal_time="09:42:00"), 400, "invalid_field", "signal_time", "application/json"),
    ("time-boolean", j(event_type="HEARTBEAT", timestamp=True), 400, "invalid_field",
     "timestamp", "application/json"),
    ("time-out-of-range", j(event_type="HEARTBEAT", timestamp=1e300), 400, "invalid_field",
     "timestamp", "application/json"),
    ("bar-time-placeholder", bar(time="{{time}}"), 400, "invalid_field", "time",
     "application/json"),
    # the ends of the calendar, with and without an offset (a 500 before 0.5.7: the time-zone
    # conversion overflowed before the range check could refuse them)
    *[(f"time-{name}", build(stamp), 400, "invalid_field", text, "application/json")
      for name, build, stamp, text in (
          ("year-9999-new-york", lambda t: entry(event_timestamp=t), "9999-12-31T23:00:00",
           "out of range"),
          ("year-9999-offset", lambda t: entry(event_timestamp=t), "9999-12-31T23:00:00-05:00",
           "event_timestamp"),
          ("year-1-offset", lambda t: entry(event_timestamp=t), "0001-01-01T00:00:00+01:00",
           "event_timestamp"),
          ("bar-year-9999-offset", lambda t: bar(time=t), "9999-12-31T23:00:00-05:00", "time"),
          ("1989", lambda t: entry(event_timestamp=t), "1989-12-31T12:00:00Z",
           "1990-01-01 to 2099-12-31 UTC"))],
    # --- prices and bars ---
    ("bar-high-below-low", bar(high=25670.0, low=25675.5), 400, "invalid_field", "high",
     "application/json"),
    ("bar-missing-close", bar(close=DROP), 400, "missing_field", "close", "application/json"),
    ("negative-entry_price", entry(entry_price=-25683.5), 400, "invalid_field", "entry_price",
     "application/json"),
    ("zero-stop_loss", entry(stop_loss=0), 400, "invalid_field", "stop_loss",
     "application/json"),
    # --- batches ---
    ("batch-non-object-element",
     j(event_type="MFE_UPDATE_BATCH", timestamp="2025-12-15T10:05:00",
       signals=[{"trade_id": GOOD_ID, "no_be_mfe": 0.2}, "oops"]),
     400, "invalid_field", "signals[1]", "application/json"),
    ("batch-element-missing-trade_id",
     j(event_type="MFE_UPDATE_BATCH", signals=[{"direction": "Bullish", "no_be_mfe": 0.2}]),
     400, "missing_field", "signals[0].trade_id", "application/json"),
    ("batch-element-bad-number",
     j(event_type="MFE_UPDATE_BATCH",
       signals=[{"trade_id": GOOD_ID, "no_be_mfe": 0.2},
                {"trade_id": GOOD_ID, "mae_global_r": "lots"}]),
     400, "invalid_field", "signals[1].mae_global_r", "application/json"),
    ("batch-element-symbol-object",
     j(event_type="MFE_UPDATE_BATCH", signals=[{"trade_id": GOOD_ID, "symbol": {"t": 1}}]),
     400, "invalid_field", "signals[0].symbol", "application/json"),
    ("batch-element-bad-trade_id",
     j(event_type="MFE_UPDATE_BATCH",
       signals=[{"trade_id": GOOD_ID, "no_be_mfe": 0.2}, {"trade_id": "garbage"}]),
     400, "invalid_trade_id", "signals[1].trade_id: 'garbage'", "application/json"),
    ("batch-signals-not-a-list", j(event_type="MFE_UPDATE_BATCH", signals="none"), 400,
     "invalid_field", "signals", "application/json"),
    ("batch-without-signals", j(event_type="MFE_UPDATE_BATCH", timestamp="2025-12-15T10:05:00"),
     400, "missing_field", "signals", "application/json"),
    # --- aliases ---
    ("alias-and-canonical-differ", entry(stop=25640.0), 400, "invalid_field", "stop",
     "application/json"),
    ("two-aliases-differ",
     j(event_type="MFE_UPDATE", trade_id=GOOD_ID, mae=-0.3, mae_global_R=-0.4), 400,
     "invalid_field", "mae", "application/json"),
    ("alias-trade_id-differs", entry(signal_id="20251215_094500000_BULLISH"), 400,
     "invalid_field", "signal_id", "application/json"),
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("bad_input") / "server.db").start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def srv_db(srv):
    with open_database(srv.db_path) as db:
        yield db


def counts(db):
    row = db.query("SELECT (SELECT count(*) FROM requests) AS requests, "
                   "(SELECT count(*) FROM events) AS events, "
                   "(SELECT coalesce(max(rejected_id), 0) FROM rejected) AS last_rejected")[0]
    return row


def assert_refused(s, db, body, status, code, names, content_type="application/json",
                   query="", kept=None, size=None):
    """Post `body`; check the answer and that exactly one dead letter (and nothing else) was
    written. Returns (answer, dead letter row)."""
    before = counts(db)
    got, answer = s.post(body, content_type=content_type, query=query)
    assert got < 500, (got, answer)
    assert got == status, answer
    assert isinstance(answer, dict) and answer.get("ok") is False, answer
    codes = code if isinstance(code, tuple) else (code,)
    assert answer["error"]["code"] in codes, answer
    message = answer["error"]["message"]
    assert isinstance(message, str) and len(message) > 10, answer
    assert names in message, (names, message)
    after = counts(db)
    assert after["requests"] == before["requests"], "a refused request was logged as accepted"
    assert after["events"] == before["events"], "a refused request stored an event"
    new = db.query("SELECT * FROM rejected WHERE rejected_id > ? ORDER BY rejected_id",
                   (before["last_rejected"],))
    assert len(new) == 1, new
    (dead,) = new
    assert dead["status"] == status
    assert dead["code"] == answer["error"]["code"]
    assert dead["message"] == message
    assert bytes(dead["raw_body"]) == (body if kept is None else kept)
    assert dead["body_size"] == (len(body) if size is None else size)
    assert dead["content_type"] == content_type
    assert dead["path"] == WEBHOOK
    assert dead["peer"] == "127.0.0.1"
    return answer, dead


@pytest.mark.parametrize("body, status, code, names, content_type",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_dead_lettered(srv, srv_db, body, status, code, names,
                                                       content_type):
    assert_refused(srv, srv_db, body, status, code, names, content_type)


def test_enough_kinds_of_bad_input():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


def test_huge_body_is_413_and_keeps_a_prefix(srv, srv_db):
    body = json.dumps({"event_type": "HEARTBEAT", "pad": "x" * (70 * 1024)}).encode()
    assert len(body) > 64 * 1024
    assert_refused(srv, srv_db, body, 413, "body_too_large", "65536", "text/plain",
                   kept=body[:65536], size=len(body))


def test_a_valid_request_still_works_after_all_that(srv, srv_db):
    status, answer = srv.post(entry(trade_id="20251215_100000000_BULLISH"))
    assert status == 200 and answer["ok"] is True and answer["duplicate"] is False


# --- authentication --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("secured") / "server.db", "--secret", "s3cret").start()
    try:
        with open_database(s.db_path) as db:
            yield s, db
    finally:
        s.stop()


HEARTBEAT = j(event_type="HEARTBEAT", timestamp="2025-12-15T10:05:00")


def test_no_secret_is_401(secured):
    s, db = secured
    assert_refused(s, db, HEARTBEAT, 401, "unauthorized", "secret")


def test_wrong_token_is_403_and_the_token_is_not_kept(secured):
    s, db = secured
    _, dead = assert_refused(s, db, HEARTBEAT, 403, "forbidden", "secret",
                             query="?token=wrong")
    assert "wrong" not in dead["path"]


def test_empty_token_is_403(secured):
    s, db = secured
    assert_refused(s, db, HEARTBEAT, 403, "forbidden", "secret", query="?token=")


@pytest.mark.parametrize("body, masked", [
    (b'{"event_type": "HEARTBEAT", "secret": "guess-1", "timestamp": "2025-12-15T10:05:00"}',
     b'{"event_type": "HEARTBEAT", "secret": "***", "timestamp": "2025-12-15T10:05:00"}'),
    (b'{"attributes": {"event_type": "HEARTBEAT", "secret": "guess-2"}}',
     b'{"attributes": {"event_type": "HEARTBEAT", "secret": "***"}}'),
    (b'{"event_type": "HEARTBEAT", "secret": 31337}',
     b'{"event_type": "HEARTBEAT", "secret": "***"}'),
], ids=["body", "wrapped", "numeric"])
def test_wrong_body_secret_is_403_and_masked(secured, body, masked):
    s, db = secured
    assert_refused(s, db, body, 403, "forbidden", "secret", kept=masked)


@pytest.mark.parametrize("query, status, code", [
    ("", 401, "unauthorized"),              # no token, and no body secret can be read
    ("?token=wrong", 403, "forbidden"),
    ("?token=s3cret", 400, "invalid_json"),  # authenticated: the body itself is the problem
])
def test_an_unparseable_body_is_authenticated_before_it_is_judged(secured, query, status, code):
    s, db = secured
    assert_refused(s, db, b'{"event_type": "ENTRY", "trade_id": ', status, code,
                   "secret" if status != 400 else "JSON", query=query)


def test_right_token_is_accepted(secured):
    s, db = secured
    status, answer = s.post(HEARTBEAT, query="?token=s3cret")
    assert status == 200 and answer["ok"] is True
    stored = db.query("SELECT raw_body, path FROM requests ORDER BY request_id DESC LIMIT 1")[0]
    assert bytes(stored["raw_body"]) == HEARTBEAT
    assert stored["path"] == WEBHOOK                  # the ?token= is never stored


def test_right_body_secret_is_accepted_and_never_stored(secured):
    s, db = secured
    body = b'{"event_type": "HEARTBEAT", "secret": "s3cret", "timestamp": "2025-12-15T10:06:00"}'
    status, answer = s.post(body, content_type="text/plain")
    assert status == 200 and answer["ok"] is True
    stored = db.query("SELECT raw_body FROM requests ORDER BY request_id DESC LIMIT 1")[0]
    assert bytes(stored["raw_body"]) == body.replace(b'"s3cret"', b'"***"')
    event = db.query("SELECT payload FROM events WHERE event_id = ?", (answer["event_id"],))[0]
    assert "secret" not in json.loads(event["payload"])
    assert b"s3cret" not in bytes(stored["raw_body"])


def test_a_secret_spelled_with_json_escapes_is_masked_too(secured):
    s, db = secured
    body = (b'{"event_type": "HEARTBEAT", "\\u0073ecret": "s3cret", '
            b'"timestamp": "2025-12-15T10:07:00"}')
    status, answer = s.post(body, content_type="text/plain")
    assert status == 200 and answer["ok"] is True             # it is the secret, once parsed
    stored = bytes(db.query("SELECT raw_body FROM requests WHERE request_id = "
                            "(SELECT request_id FROM events WHERE event_id = ?)",
                            (answer["event_id"],))[0]["raw_body"])
    assert stored == body.replace(b'"s3cret"', b'"***"')
    wrong = body.replace(b"s3cret", b"guess-3")
    assert_refused(s, db, wrong, 403, "forbidden", "secret",
                   kept=wrong.replace(b'"guess-3"', b'"***"'))


def test_a_secret_inside_batch_elements_is_never_stored(secured):
    s, db = secured
    body = json.dumps({"event_type": "MFE_UPDATE_BATCH", "secret": "s3cret",
                       "timestamp": "2025-12-15T10:08:00",
                       "signals": [{"trade_id": GOOD_ID, "no_be_mfe": 0.4, "secret": "s3cret"},
                                   {"trade_id": GOOD_ID, "no_be_mfe": 0.5,
                                    "secret": "s3cret"}]}).encode()
    status, answer = s.post(body)
    assert status == 200 and len(answer["events"]) == 2, answer
    for event in answer["events"]:
        payload = db.query("SELECT payload FROM events WHERE event_id = ?",
                           (event["event_id"],))[0]["payload"]
        assert "secret" not in json.loads(payload) and "s3cret" not in payload
    stored = bytes(db.query("SELECT raw_body FROM requests ORDER BY request_id DESC "
                            "LIMIT 1")[0]["raw_body"])
    assert b"s3cret" not in stored and stored.count(b'"secret": "***"') == 3
    status, detail = s.get(f"/api/signals/{GOOD_ID}")
    assert status == 200 and detail["events"], detail
    assert "s3cret" not in json.dumps(detail)


def test_allow_list_refuses_other_peers(tmp_path):
    s = Server(tmp_path / "allow.db", "--allow-ips", "10.9.9.9").start()
    try:
        with open_database(s.db_path) as db:
            assert_refused(s, db, HEARTBEAT, 403, "forbidden_address", "127.0.0.1")
            # X-Forwarded-For is believed only from a configured trusted proxy.
            before = counts(db)
            status, answer = http("POST", s.url + WEBHOOK, HEARTBEAT,
                                  {"Content-Type": "application/json",
                                   "X-Forwarded-For": "10.9.9.9"})
            assert status == 403 and answer["error"]["code"] == "forbidden_address"
            assert counts(db)["last_rejected"] == before["last_rejected"] + 1
            # An unparseable body from a refused address is refused for the address.
            assert_refused(s, db, b"not json", 403, "forbidden_address", "127.0.0.1",
                           "text/plain")
    finally:
        s.stop()


def test_allow_list_believes_a_trusted_proxy(tmp_path):
    s = Server(tmp_path / "proxy.db", "--allow-ips", "10.9.9.9",
               "--trusted-proxies", "127.0.0.1").start()
    try:
        status, answer = http("POST", s.url + WEBHOOK, HEARTBEAT,
                              {"Content-Type": "application/json",
                               "X-Forwarded-For": "10.9.9.9"})
        assert status == 200 and answer["ok"] is True
        with open_database(s.db_path) as db:
            assert db.query("SELECT peer FROM requests")[0]["peer"] == "10.9.9.9"
    finally:
        s.stop()


# --- flood -----------------------------------------------------------------------------------

def test_dead_letters_are_bounded_keeping_the_newest(server):
    s = server("--max-dead-letters", "50")
    sent = [b"not json #%03d" % i for i in range(300)]
    for body in sent:
        status, answer = s.post(body, content_type="text/plain")
        assert status == 400 and answer["error"]["code"] == "invalid_json"
    with open_database(s.db_path) as db:
        kept = db.query("SELECT raw_body FROM rejected ORDER BY rejected_id")
        assert len(kept) <= 50
        assert [bytes(r["raw_body"]) for r in kept] == sent[-len(kept):]
        assert len(kept) == 50


def test_dead_letters_are_bounded_in_bytes_under_a_flood_of_large_bodies(server):
    """Rows alone would let 10,000 bodies of 64 KiB (640 MiB) pile up: the byte bound holds
    the table to what the operator allowed, keeping the newest."""
    s = server("--max-dead-letter-bytes", "100000")
    sent = [b"not json #%03d " % i + b"x" * 8000 for i in range(60)]      # 480 kB in all
    for body in sent:
        status, answer = s.post(body, content_type="text/plain")
        assert status == 400 and answer["error"]["code"] == "invalid_json"
    with open_database(s.db_path) as db:
        kept = [bytes(r["raw_body"]) for r in
                db.query("SELECT raw_body FROM rejected ORDER BY rejected_id")]
        assert kept == sent[-len(kept):] and 9 <= len(kept) <= 12
        assert sum(map(len, kept)) <= 100000
    status, metrics = s.get("/metrics")
    assert status == 200
    assert f"\nsigsync_dead_letter_bytes {sum(map(len, kept))}\n" in metrics.decode()
