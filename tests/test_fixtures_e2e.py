"""The original indicator's real payloads, end to end against a real `sigsync.py serve` process.

Every fixture of tests/fixtures/origin-payloads.json (a copy of shared/fixtures) is posted
twice, as `application/json` and as `text/plain` (SPEC §1.1, §7.1; every other one text/plain
first), to one server. The expected answers and the expected signal rows are worked out here
from the payloads and SPEC §1-§2, not copied from what the code returns.
"""

import json
import re

import pytest

import sigsync
from conftest import Server, load_fixtures, open_database, signal_row

FIXTURES = load_fixtures()
CONTENT_TYPES = ("application/json", "text/plain")
SNAPSHOTS = {"UNIFIED_SNAPSHOT_V1", "INDICATOR_EXPORT_V2", "ALL_SIGNALS_EXPORT"}
TRADE_TYPES = {"SIGNAL_CREATED", "ENTRY", "CONFIRMED", "MFE_UPDATE", "BE_TRIGGERED", "EXIT_BE",
               "EXIT_BREAK_EVEN", "EXIT_SL", "EXIT_STOP_LOSS", "EXIT_TP", "EXIT_TAKE_PROFIT",
               "CANCELLED", "SIGNAL_CANCELLED"}
# SPEC §1.4, written independently of sigsync's own pattern: ASCII digits, a real date.
CANONICAL_ID = re.compile(r"(?a)\A(20\d\d)(0[1-9]|1[0-2])([0-2]\d|3[01])_([01]\d|2[0-3])[0-5]\d"
                          r"[0-5]\d(\d{3})?_(BULLISH|BEARISH)\Z")

T094200 = "20251215_094200000_BULLISH"
T110200 = "20251215_110200000_BEARISH"
T103100 = "20251215_103100000_BEARISH"
T_DOC = "20251212_104200000_BULLISH"
T140113 = "20251213_140113000_BULLISH"
T143636 = "20251213_143636000_BULLISH"
T120000 = "20251213_120000000_BULLISH"
T094500 = "20251215_094500000_BULLISH"
T104500 = "20251212_104500000_BULLISH"
T100400 = "20251209_100400000_BULLISH"
T103900 = "20251209_103900000_BULLISH"
T_WRAPPED = "20250101_120000000_BULLISH"


def expected_outcome(entry):
    """(status, code or None, number of events) implied by SPEC §1.3/§1.4 for one fixture."""
    if "_raw_body" in entry:
        return 400, "invalid_json", 0
    data = {k: v for k, v in entry.items() if not k.startswith("_")}
    if "event_type" not in data and isinstance(data.get("attributes"), dict):
        data = data["attributes"]
    event_type = data.get("event_type")
    if event_type is None:
        return 400, "missing_field", 0
    if event_type in SNAPSHOTS:
        return 400, "unsupported_event_type", 0
    if event_type == "MFE_UPDATE_BATCH":
        return 200, None, len(data["signals"])
    if event_type in TRADE_TYPES:
        trade_id = data.get("trade_id", data.get("signal_id"))
        if not (isinstance(trade_id, str) and CANONICAL_ID.match(trade_id)):
            return 400, "invalid_trade_id", 0
    return 200, None, 1


def message_names(code, entry):
    """What the error message must mention so a person knows what to fix."""
    return {"invalid_json": "JSON", "missing_field": "event_type",
            "unsupported_event_type": entry.get("event_type"),
            "invalid_trade_id": "trade_id"}[code]


def posting_order(index):
    """Every other fixture goes as text/plain first, so that both content types are folded
    as a first delivery (and both are recognised as the duplicate of the other)."""
    return CONTENT_TYPES if index % 2 == 0 else CONTENT_TYPES[::-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One server; every fixture posted as JSON and as text/plain, in file order, answers in
    the order they were posted (posting_order)."""
    s = Server(tmp_path_factory.mktemp("fixtures_e2e") / "server.db").start()
    results = []
    try:
        for index, (entry, body) in enumerate(FIXTURES):
            answers = [s.post(body, content_type=ct) for ct in posting_order(index)]
            results.append((entry, body, answers))
        yield s, results
    finally:
        s.stop()


@pytest.fixture(scope="module")
def rows(run):
    """Readers for the server's database (it is still running: WAL readers see every commit)."""
    s, _ = run
    with open_database(s.db_path) as db:
        yield db


def events_of(db, trade_id):
    out = db.query("SELECT * FROM events WHERE trade_id = ? ORDER BY event_id", (trade_id,))
    for e in out:
        e["payload"] = json.loads(e["payload"])
    return out


# --- answers ---------------------------------------------------------------------------------

def test_fixture_file_is_the_one_described(run):
    _, results = run
    assert len(results) == 33
    assert sum("_raw_body" in entry for entry, _, _ in results) == 1


def test_every_fixture_gets_the_status_the_spec_implies(run):
    _, results = run
    for index, (entry, body, answers) in enumerate(results):
        status, code, n_events = expected_outcome(entry)
        label = f"{entry.get('_event')} / {entry.get('trade_id') or entry.get('signal_id')}"
        for content_type, (got_status, answer) in zip(posting_order(index), answers):
            where = f"{label} as {content_type}"
            assert got_status == status, (where, answer)
            assert isinstance(answer, dict), (where, answer)
            if status == 200:
                assert answer["ok"] is True, where
                continue
            assert answer["ok"] is False, where
            assert answer["error"]["code"] == code, (where, answer)
            assert message_names(code, entry) in answer["error"]["message"], (where, answer)


def test_second_delivery_is_a_duplicate_of_the_first(run):
    _, results = run
    for entry, body, answers in results:
        status, _, n_events = expected_outcome(entry)
        if status != 200:
            continue
        (_, first), (_, second) = answers
        label = f"{entry.get('_event')} / {entry.get('trade_id')}"
        if n_events == 0:                      # the empty batch: nothing to deduplicate
            assert first["event_id"] is None and second["event_id"] is None, label
            continue
        assert first["duplicate"] is False, label
        assert second["duplicate"] is True, label
        assert second["event_id"] == first["event_id"], label
        assert isinstance(first["event_id"], int), label
        if entry.get("event_type") != "MFE_UPDATE_BATCH":
            data = entry.get("attributes", entry)
            assert first["trade_id"] == data.get("trade_id"), label
        else:
            assert [e["duplicate"] for e in first["events"]] == [False] * n_events, label
            assert [e["duplicate"] for e in second["events"]] == [True] * n_events, label
            assert [e["trade_id"] for e in first["events"]] == [
                el["trade_id"] for el in entry["signals"]], label


# --- the log and the dead letters ----------------------------------------------------------

def test_every_refused_request_is_a_dead_letter_with_its_raw_body(run, rows):
    _, results = run
    refused = [(entry, body) for entry, body, _ in results if expected_outcome(entry)[0] != 200]
    assert len(refused) == 12
    dead = rows.query("SELECT * FROM rejected ORDER BY rejected_id")
    assert len(dead) == 2 * len(refused)
    by_body = {}
    for d in dead:
        by_body.setdefault(bytes(d["raw_body"]), []).append(d)
    for entry, body in refused:
        _, code, _ = expected_outcome(entry)
        kept = by_body.get(body)
        assert kept is not None and len(kept) == 2, entry.get("_event")
        assert sorted(d["content_type"] for d in kept) == sorted(CONTENT_TYPES)
        for d in kept:
            assert d["status"] == 400
            assert d["code"] == code
            assert d["body_size"] == len(body)
            assert d["path"] == "/api/automated-signals/webhook"
            assert d["peer"] == "127.0.0.1"
            assert message_names(code, entry) in d["message"]


def test_every_accepted_delivery_is_kept_byte_for_byte(run, rows):
    _, results = run
    accepted = [(index, body) for index, (entry, body, _) in enumerate(results)
                if expected_outcome(entry)[0] == 200]
    assert len(accepted) == 21
    requests = rows.query("SELECT raw_body, content_type, path FROM requests ORDER BY request_id")
    assert [bytes(r["raw_body"]) for r in requests] == [b for _, b in accepted for _ in (0, 1)]
    assert [r["content_type"] for r in requests] == [
        ct for index, _ in accepted for ct in posting_order(index)]
    assert {r["content_type"] for r in requests[::2]} == set(CONTENT_TYPES)   # both first
    assert {r["path"] for r in requests} == {"/api/automated-signals/webhook"}


def test_events_are_stored_once_under_canonical_names(run, rows):
    events = rows.query("SELECT * FROM events ORDER BY event_id")
    # 16 single events + batches of 2, 0, 1, 2 and 1 elements.
    assert len(events) == 22
    counts = {}
    for e in events:
        counts[e["event_type"]] = counts.get(e["event_type"], 0) + 1
    assert counts == {"SIGNAL_CREATED": 4, "ENTRY": 4, "MFE_UPDATE": 7, "BE_TRIGGERED": 1,
                      "EXIT_BE": 1, "EXIT_SL": 1, "CANCELLED": 3, "HEARTBEAT": 1}
    for e in events:
        payload = json.loads(e["payload"])
        assert payload["event_type"] == e["event_type"]
        assert "secret" not in payload


def test_batches_expand_into_one_mfe_update_per_element(run, rows):
    _, results = run
    batches = [(entry, answers) for entry, _, answers in results
               if entry.get("event_type") == "MFE_UPDATE_BATCH"]
    assert [len(entry["signals"]) for entry, _ in batches] == [2, 0, 1, 2, 1]
    for entry, answers in batches:
        first = answers[0][1]
        ids = [e["event_id"] for e in first["events"]]
        assert len(ids) == len(entry["signals"])
        for index, (event_id, element) in enumerate(zip(ids, entry["signals"])):
            stored = rows.query("SELECT * FROM events WHERE event_id = ?", (event_id,))[0]
            assert stored["event_type"] == "MFE_UPDATE"
            assert stored["trade_id"] == element["trade_id"]
            assert stored["batch_index"] == index
    # The empty batch was answered 200 and stored as two requests, but no event.
    empty = [answers for entry, answers in batches if not entry["signals"]][0]
    assert [status for status, _ in empty] == [200, 200]
    assert all(answer["events"] == [] for _, answer in empty)
    # The single MFE_UPDATE (not in a batch) has no batch index.
    single = rows.query("SELECT batch_index FROM events WHERE event_type = 'MFE_UPDATE' "
                        "AND trade_id = ?", (T140113,))
    assert single == [{"batch_index": None}]


def test_exit_aliases_are_stored_under_the_canonical_names(rows):
    types = [e["event_type"] for e in events_of(rows, T094200)]
    assert "EXIT_BE" in types and "EXIT_SL" in types
    all_types = {r["event_type"] for r in rows.query("SELECT DISTINCT event_type FROM events")}
    assert not all_types & {"EXIT_BREAK_EVEN", "EXIT_STOP_LOSS", "signal_completed", "entry"}
    exit_sl = [e for e in events_of(rows, T094200) if e["event_type"] == "EXIT_SL"][0]["payload"]
    assert exit_sl["final_mfe"] == pytest.approx(1.538961039)
    assert "final_mfe_R" not in exit_sl
    assert exit_sl["stop_loss"] == 25645.0 and exit_sl["exit_price"] == 25645.0


def test_heartbeat_is_stored_without_a_trade(rows):
    beats = rows.query("SELECT * FROM events WHERE event_type = 'HEARTBEAT'")
    assert len(beats) == 1
    assert beats[0]["trade_id"] is None
    assert beats[0]["event_time"] == "2025-12-15T15:05:00.000Z"     # 10:05 New York (EST)
    assert json.loads(beats[0]["payload"])["signal_count"] == 1578


def test_one_row_per_signal(rows):
    ids = {r["trade_id"] for r in rows.query("SELECT trade_id FROM signals")}
    assert ids == {T094200, T110200, T103100, T_DOC, T140113, T143636, T120000, T094500,
                   T104500, T100400, T103900, T_WRAPPED}


# --- the signal rows, field by field -------------------------------------------------------

class ReadColumns(dict):
    """A signal row that remembers which columns the test looked at."""

    def __init__(self, row):
        super().__init__(row)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def test_complete_bullish_lifecycle(rows):
    """SIGNAL_CREATED, ENTRY, BE_TRIGGERED, EXIT_BREAK_EVEN, EXIT_STOP_LOSS and two batches:
    every column of the signal row is checked (fold_state is the fold's own bookkeeping)."""
    s = ReadColumns(signal_row(rows, T094200))
    events = events_of(rows, T094200)
    by_type = {}
    for e in events:
        by_type.setdefault(e["event_type"], []).append(e)
    assert sorted(by_type) == ["BE_TRIGGERED", "ENTRY", "EXIT_BE", "EXIT_SL", "MFE_UPDATE",
                               "SIGNAL_CREATED"]
    assert len(by_type["MFE_UPDATE"]) == 2        # v1 batch and v3 batch elements
    assert s["event_count"] == 7                  # resends are not counted twice

    assert s["status"] == "EXITED"
    assert s["be_state"] == "STOPPED"
    assert s["has_signal_created"] == 1 and s["has_entry"] == 1
    assert s["id_direction"] == "Bullish" and s["direction"] == "Bullish"
    assert s["symbol"] == "MNQ1!"
    assert s["timeframe"] == "1"
    # Triangle bar 09:42 New York in December (EST, UTC-5); not the EXIT's 11:02 timestamp.
    assert s["signal_time"] == "2025-12-15T14:42:00.000Z"
    assert s["id_time"] == "2025-12-15T14:42:00.000Z"
    assert s["signal_date"] == "2025-12-15"
    assert s["session"] == "NY AM"
    # HTF alignment as SIGNAL_CREATED saw it (the EXIT_SL carries the bearish 11:02 chart's).
    htf = {k: s["htf_alignment"][k] for k in ("daily", "h4", "h1", "m15", "m5", "m1")}
    assert htf == {"daily": "Bullish", "h4": "Bearish", "h1": "Bullish", "m15": "Bullish",
                   "m5": "Bullish", "m1": "Bullish"}
    assert s["market_state"]["trend_regime"] == "Bullish"
    assert s["entry_price"] == 25683.5
    assert s["stop_loss"] == 25645.0
    assert s["risk"] == pytest.approx(38.5)
    assert s["targets"] == {"tp1_price": 25722.0, "tp2_price": 25760.5, "tp3_price": 25799.0}
    assert s["no_be_mfe"] == pytest.approx(1.538961039)
    assert s["be_mfe"] == pytest.approx(1.538961039)
    assert s["be_mfe"] <= s["no_be_mfe"]
    assert s["mae"] == pytest.approx(-1.0649350649)
    assert s["exit_price"] == 25645.0
    assert s["be_exit_price"] == 25683.5
    assert s["exit_reason"] == "original_stop_loss_hit"
    assert s["final_mfe"] == pytest.approx(1.538961039)
    # Alert times are bounded by arrival (SPEC §1.4 quirk), never the payload's triangle time.
    assert s["be_triggered_at"] == by_type["BE_TRIGGERED"][0]["received_at"]
    assert s["exit_be_at"] == by_type["EXIT_BE"][0]["received_at"]
    assert s["exit_sl_at"] == by_type["EXIT_SL"][0]["received_at"]
    assert s["exit_tp_at"] is None
    # The only price sample: the v1 batch's current_price at 10:05 New York.
    assert s["last_price"] == 25731.25
    assert s["last_price_at"] == "2025-12-15T15:05:00.000Z"
    # Every fixture is posted twice (JSON and text/plain): the second copy of each MFE
    # update is a repeat, which keeps the trade alive without being counted again.
    repeats = rows.query("SELECT r.received_at FROM event_repeats AS r JOIN events AS e "
                         "USING (event_id) WHERE e.trade_id = ?", (T094200,))
    assert len(repeats) == sum(e["event_type"] == "MFE_UPDATE" for e in events) > 0
    assert s["event_count"] == len(events)
    assert s["last_update_at"] == max([r["received_at"] for r in repeats] + [
        e["received_at"] for e in events if e["event_type"] != "SIGNAL_CREATED"])
    assert s["first_received_at"] == min(e["received_at"] for e in events)
    assert s["last_received_at"] == max(e["received_at"] for e in events)
    # The v3 batch carries the confirmation time (09:45 NY); nothing may invent another one.
    assert s["confirmation_time"] == "2025-12-15T14:45:00.000Z"
    assert s["provenance"]["confirmation_time"] == ["indicator", 1.0]
    assert s["cancelled_at"] is None and s["cancelled_by"] is None
    assert s["cancel_reason"] is None and s["bars_pending"] is None
    assert s["conflicts"] == {}
    prov = s["provenance"]
    assert prov["entry_price"] == ["indicator", 1.0]
    assert prov["stop_loss"] == ["indicator", 1.0]
    assert prov["htf_alignment"] == ["signal_created", 1.0]
    assert prov["signal_time"] == ["signal_created", 1.0]
    assert prov["session"] == ["signal_created", 1.0]
    assert prov["no_be_mfe"] == ["indicator", 1.0]
    assert prov["mae"] == ["indicator", 1.0]
    assert prov["exit_price"] == ["indicator", 1.0]
    assert prov["risk"][0] == "calculated" and prov["risk"][1] == 1.0
    assert s["trade_id"] == T094200
    # The signal moment as SIGNAL_CREATED saw it (ENTRY, BE and exits carry later variants).
    assert s["setup"] == {"setup_family": "FVG_CORE", "setup_variant": "PENDING_CONFIRMATION",
                          "setup_id": "FVG_CORE_PENDING_CONFIRMATION", "signal_strength": 75}
    assert prov["setup"] == ["signal_created", 1.0]
    # The first evidence of an entry: the earliest arrival of anything but SIGNAL_CREATED.
    assert s["entry_received_at"] == min(e["received_at"] for e in events
                                         if e["event_type"] != "SIGNAL_CREATED")
    # Only the refused snapshot formats carry bars_to_confirm; no pass has run to fill targets.
    assert s["bars_to_confirmation"] is None and s["targets_extended"] is None
    missing = set(sigsync.SIGNAL_COLUMNS) - {"fold_state"} - s.read
    assert not missing, f"columns not checked: {sorted(missing)}"


def test_bearish_entry_only(rows):
    s = signal_row(rows, T110200)
    assert s["status"] == "ACTIVE"
    assert s["be_state"] == "NONE"
    assert s["has_entry"] == 1 and s["has_signal_created"] == 0
    assert s["direction"] == "Bearish" and s["id_direction"] == "Bearish"
    assert s["symbol"] == "MNQ1!"
    assert s["entry_price"] == 25710.25
    assert s["stop_loss"] == 25731.5
    assert s["risk"] == pytest.approx(21.25)
    assert s["targets"] == {"tp1_price": 25689.0, "tp2_price": 25667.75, "tp3_price": 25646.5}
    # be_mfe 0, no_be_mfe 0, mae_global_r 0 are values, not "missing" (SPEC §7.3).
    assert s["no_be_mfe"] == 0.0
    assert s["be_mfe"] == 0.0
    assert s["mae"] == 0.0
    assert s["session"] is None   # no triangle time received: unknown until Tier 3 parses the trade_id
    assert s["htf_alignment"]["h1"] == "Bearish"
    assert s["provenance"]["htf_alignment"] == ["indicator", 1.0]
    # The ENTRY's event_timestamp is not taken as the signal time (SPEC §1.4 quirk): until a
    # pass runs Tier 3 on the trade_id (0.9), the signal time is honestly unknown.
    assert s["signal_time"] is None and s["signal_date"] is None
    assert "signal_time" not in s["provenance"]
    assert s["exit_price"] is None and s["exit_sl_at"] is None
    assert s["conflicts"] == {}


def test_wrapped_entry_keeps_zero_excursions(rows):
    s = signal_row(rows, T_WRAPPED)
    assert s["status"] == "ACTIVE"
    assert s["direction"] == "Bullish"
    assert s["entry_price"] == 24000.0
    assert s["stop_loss"] == 23950.0
    assert s["risk"] == pytest.approx(50.0)
    assert s["targets"] == {"tp1_price": 24100.0, "tp2_price": 24200.0, "tp3_price": 24300.0}
    assert s["no_be_mfe"] == 0.0          # mfe_R 0
    assert s["mae"] == 0.0                # mae_R 0
    assert s["provenance"]["entry_price"] == ["indicator", 1.0]
    (event,) = events_of(rows, T_WRAPPED)
    assert event["event_type"] == "ENTRY"
    assert event["event_time"] == "2025-11-21T01:05:00.000Z"    # a Z time is taken as it is
    assert event["payload"]["mae_global_r"] == 0
    assert "attributes" not in event["payload"]


def test_doc_signal_created_cancelled_and_entry_conflict(rows):
    """Three doc fixtures share one trade_id: the ENTRY contradicts the CANCELLED (SPEC §3.4)."""
    s = signal_row(rows, T_DOC)
    events = {e["event_type"]: e for e in events_of(rows, T_DOC)}
    assert sorted(events) == ["CANCELLED", "ENTRY", "SIGNAL_CREATED"]
    assert s["status"] == "ACTIVE"
    assert s["has_signal_created"] == 1 and s["has_entry"] == 1
    conflict = s["conflicts"]["entry_and_cancelled"]
    assert sorted(conflict["event_ids"]) == sorted(
        [events["ENTRY"]["event_id"], events["CANCELLED"]["event_id"]])
    # signal_time (10:42 NY), not the doc's bogus 2023 epoch `timestamp`.
    assert s["signal_time"] == "2025-12-12T15:42:00.000Z"
    assert s["signal_date"] == "2025-12-12"
    assert s["session"] == "NY AM"
    assert s["htf_alignment"] == {"daily": "Bullish", "h4": "Neutral", "h1": "Bullish",
                                  "m15": "Bullish", "m5": "Bullish", "m1": "Bullish"}
    assert s["provenance"]["htf_alignment"] == ["signal_created", 1.0]
    assert s["entry_price"] == 25680.0
    assert s["stop_loss"] == 25645.0
    assert s["risk"] == pytest.approx(35.0)
    assert s["targets"] == {"tp1_price": 25715.0, "tp2_price": 25750.0, "tp3_price": 25785.0}
    assert s["confirmation_time"] == "2025-12-12T15:45:00.000Z"
    assert s["bars_to_confirmation"] == 3
    # What the CANCELLED said is kept, beside the contradiction, for a person to judge.
    assert s["cancelled_at"] == "2025-12-12T15:45:00.000Z"       # cancelled_time alias
    assert s["cancelled_by"] == "20251212_104500000_BEARISH"
    assert s["cancel_reason"] == "opposite_signal_appeared"
    assert s["bars_pending"] == 3
    assert events["CANCELLED"]["payload"]["cancelled_at"] == "2025-12-12T15:45:00.000Z"
    assert "cancelled_time" not in events["CANCELLED"]["payload"]
    assert events["SIGNAL_CREATED"]["event_time"] == "2023-12-12T14:02:00.000Z"


def test_cancelled_fixtures(rows):
    s = signal_row(rows, T143636)
    assert s["status"] == "CANCELLED"
    assert s["be_state"] == "NONE"
    assert s["direction"] == "Bullish"
    assert s["cancel_reason"] == "opposite_signal_appeared"
    assert s["cancelled_by"] == "20251213_140000000_BEARISH"
    assert s["bars_pending"] == 2
    assert s["cancelled_at"] == "2025-12-13T19:38:36.120Z"
    assert s["signal_time"] == "2025-12-13T19:36:36.000Z"         # 14:36:36 NY on 2025-12-13
    assert s["signal_date"] == "2025-12-13"
    assert s["provenance"]["cancelled_by"] == ["indicator", 1.0]
    assert s["entry_price"] is None and s["no_be_mfe"] is None and s["mae"] is None

    s = signal_row(rows, T103100)                 # the Pine's (dead-code) CANCELLED shape
    assert s["status"] == "CANCELLED"
    assert s["direction"] == "Bearish"
    assert s["symbol"] == "MNQ1!"
    assert s["cancel_reason"] == "opposite_signal_before_confirmation"
    assert s["cancelled_at"] == "2025-12-15T15:31:00.000Z"
    assert s["cancelled_by"] is None and s["bars_pending"] is None
    assert s["entry_price"] is None and s["stop_loss"] is None
    assert s["conflicts"] == {}


def test_signal_created_then_single_mfe_update(rows):
    """LONG on the wire is stored as Bullish; entry/stop from an MFE_UPDATE are indicator data."""
    s = signal_row(rows, T140113)
    assert s["status"] == "ACTIVE"                # MFE evidence of an entry (SPEC §2)
    assert s["has_signal_created"] == 1 and s["has_entry"] == 0
    assert s["direction"] == "Bullish"
    assert s["signal_time"] == "2025-12-13T19:01:13.000Z"
    assert s["signal_date"] == "2025-12-13"
    assert s["htf_alignment"]["h4"] == "Neutral"
    assert s["provenance"]["htf_alignment"] == ["signal_created", 1.0]
    assert s["entry_price"] == 25683.5
    assert s["stop_loss"] == 25645.0
    assert s["risk"] == pytest.approx(38.5)
    assert s["provenance"]["entry_price"] == ["indicator", 1.0]
    assert s["no_be_mfe"] == pytest.approx(0.51)
    assert s["be_mfe"] == pytest.approx(0.51)
    assert s["mae"] == pytest.approx(-0.05)
    assert s["last_price"] == 25703.0
    assert s["last_price_at"] == "2025-12-13T19:09:13.000Z"
    assert s["be_state"] == "NONE"
    assert s["conflicts"] == {}
    mfe = [e for e in events_of(rows, T140113) if e["event_type"] == "MFE_UPDATE"][0]
    assert mfe["payload"]["direction"] == "Bullish"
    assert mfe["event_time"] == "2025-12-13T19:09:13.000Z"


def test_signal_created_only_stays_pending(rows):
    s = signal_row(rows, T120000)
    assert s["status"] == "PENDING"
    assert s["be_state"] == "NONE"
    assert s["has_signal_created"] == 1 and s["has_entry"] == 0
    assert s["signal_time"] == "2025-12-13T17:00:00.000Z"
    assert s["signal_date"] == "2025-12-13"
    assert s["htf_alignment"] == {"daily": "Bullish", "h1": "Bullish", "m15": "Bullish"}
    assert s["entry_price"] is None and s["risk"] is None
    assert s["no_be_mfe"] is None and s["mae"] is None


def test_batch_only_trades(rows):
    s = signal_row(rows, T094500)                 # v2 batch: confirmation-bar id
    assert s["status"] == "ACTIVE"
    assert s["has_entry"] == 0 and s["has_signal_created"] == 0
    assert s["be_state"] == "TRIGGERED"
    assert s["direction"] == "Bullish"
    assert s["session"] is None   # no triangle time received: unknown until Tier 3 parses the trade_id
    assert s["entry_price"] == 25683.5 and s["stop_loss"] == 25645.0
    assert s["risk"] == pytest.approx(38.5)
    assert s["no_be_mfe"] == pytest.approx(1.538961039)
    assert s["be_mfe"] == pytest.approx(1.538961039)
    assert s["mae"] == pytest.approx(-0.3246753247)
    assert s["last_price"] == 25731.25
    assert s["last_price_at"] == "2025-12-15T15:05:00.000Z"
    (event,) = events_of(rows, T094500)
    assert s["be_triggered_at"] == event["received_at"]
    assert event["event_time"] == "2025-12-15T15:05:00.000Z"

    s = signal_row(rows, T104500)
    assert s["status"] == "ACTIVE"
    assert s["be_state"] == "NONE"
    assert s["entry_price"] == 25601.75 and s["stop_loss"] == 25570.25
    assert s["risk"] == pytest.approx(31.5)
    assert s["no_be_mfe"] == pytest.approx(0.3174603175)
    assert s["mae"] == pytest.approx(-0.8571428571)

    s = signal_row(rows, T103900)                 # test batch, 22:30 New York
    assert s["status"] == "ACTIVE"
    assert s["be_state"] == "TRIGGERED"
    assert s["no_be_mfe"] == pytest.approx(2.8)
    assert s["be_mfe"] == pytest.approx(2.3)
    assert s["mae"] == pytest.approx(-0.1)
    assert s["last_price"] == 25685.5
    assert s["last_price_at"] == "2025-12-10T03:30:00.000Z"
    assert s["entry_price"] is None and s["risk"] is None
    assert "be_mfe_above_no_be_mfe" not in s["conflicts"]

    s = signal_row(rows, T100400)
    assert s["status"] == "ACTIVE"
    assert s["no_be_mfe"] == pytest.approx(1.5)
    assert s["be_mfe"] == pytest.approx(1.5)
    assert s["mae"] == pytest.approx(-0.2)
    assert s["last_price"] == 25680.0


# --- coercion on the real server -----------------------------------------------------------

def test_numbers_as_strings_and_long_direction_are_normalised(server):
    """The self-test ENTRY's shape (strings, LONG, NY_AM) with a canonical trade_id."""
    s = server()
    trade_id = "20251215_093500000_BULLISH"
    body = {"trade_id": trade_id, "event_type": "ENTRY", "symbol": "NQ", "direction": "LONG",
            "entry_price": "18500.00", "stop_loss": "18450.00", "session": "NY_AM",
            "mae_global_R": "0", "be_mfe": "0", "no_be_mfe_R": "0.0"}
    status, answer = s.post(json.dumps(body).encode(), content_type="text/plain")
    assert status == 200 and answer["trade_id"] == trade_id
    exit_body = {"trade_id": trade_id, "event_type": "EXIT_BE", "exit_price": "18500.00",
                 "final_be_mfe": "1.0", "final_no_be_mfe": "1.5"}
    assert s.post(exit_body)[0] == 200
    with open_database(s.db_path) as db:
        row = signal_row(db, trade_id)
        entry = events_of(db, trade_id)[0]["payload"]
    assert entry["entry_price"] == 18500.0 and entry["stop_loss"] == 18450.0
    assert entry["direction"] == "Bullish"
    assert entry["session"] == "NY AM"
    assert row["direction"] == "Bullish"
    assert row["entry_price"] == 18500.0 and row["stop_loss"] == 18450.0
    assert row["risk"] == pytest.approx(50.0)
    assert row["mae"] == 0.0 and row["be_mfe"] == 1.0 and row["no_be_mfe"] == 1.5
    assert row["be_exit_price"] == 18500.0
    assert row["status"] == "ACTIVE" and row["be_state"] == "STOPPED"
    assert row["session"] is None   # no triangle time received: unknown until Tier 3 parses the trade_id
