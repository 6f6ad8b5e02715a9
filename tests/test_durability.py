"""Nothing is lost: crash under load, storage trouble answers 503, stalled clients block no one.

Every test here talks to a real `python sigsync.py serve` process over loopback.
"""

import http.client
import json
import random
import socket
import threading
import time

import apsw
import pytest

from conftest import open_database


def mfe_body(i, salt):
    trade = f"20251215_{9 + i % 6:02d}{i % 60:02d}00000_{'BULLISH' if i % 2 else 'BEARISH'}"
    return json.dumps({"event_type": "MFE_UPDATE", "trade_id": trade, "symbol": "MNQ1!",
                       "no_be_mfe": round(i * 0.001 + salt, 6), "be_mfe": 0.1,
                       "mae_global_r": -0.05, "current_price": 25600 + i,
                       "event_timestamp": f"2025-12-15T10:{i % 60:02d}:00"}).encode()


def post_until_killed(url, bodies, acked, stop):
    """Post bodies on one keep-alive connection; record (event_id, body) for every 2xx."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    for body in bodies:
        if stop.is_set():
            break
        try:
            conn.request("POST", "/api/automated-signals/webhook", body,
                         {"Content-Type": "text/plain"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            break                                   # the server died mid-request: not acked
        if 200 <= response.status < 300:
            acked.append((json.loads(data)["event_id"], body))
    conn.close()


@pytest.mark.parametrize("round_", range(5))
def test_sigkill_under_load_loses_no_acknowledged_event(server, tmp_path, round_):
    db_path = tmp_path / "crash.db"
    rng = random.Random(round_)
    salt = round_ * 10.0
    s = server(db_path=db_path)
    bodies = [mfe_body(i, salt) for i in range(4000)]
    acked, stop = [], threading.Event()
    clients = [threading.Thread(target=post_until_killed, args=(s.url, bodies[k::4], acked, stop))
               for k in range(4)]
    for c in clients:
        c.start()
    target = rng.randint(150, 600)
    deadline = time.monotonic() + 30
    while len(acked) < target and time.monotonic() < deadline:
        time.sleep(0.005)                        # waiting for load, not asserting on time
    s.kill()                                     # SIGKILL mid-load
    stop.set()
    for c in clients:
        c.join(timeout=10)
    assert len(acked) >= target

    restarted = server(db_path=db_path)          # recovery happens on open
    with open_database(db_path) as db:
        assert db.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
        stored = {r["event_id"]: json.loads(r["payload"])
                  for r in db.query("SELECT event_id, payload FROM events")}
        requests = db.query("SELECT count(*) AS n FROM requests")[0]["n"]
    for event_id, body in acked:
        assert event_id in stored, f"acknowledged event {event_id} lost"
        assert stored[event_id]["no_be_mfe"] == json.loads(body)["no_be_mfe"]
    # Each body carries its own no_be_mfe: an event stored twice would show one value twice.
    sent = {json.loads(b)["no_be_mfe"] for b in bodies}
    values = [p["no_be_mfe"] for p in stored.values()]
    assert len(values) == len(set(values)), "an event was stored twice"
    assert set(values) <= sent
    # Acknowledged plus those in flight at the kill (stored, unanswered): nothing more.
    assert len(acked) <= len(stored) <= len(acked) + len(clients)
    assert requests == len(stored)
    # TradingView resends what got no answer, and a client may resend what did: the acked
    # events come back as duplicates with their first event_id, and still nothing is twice.
    resend = [body for _, body in acked[-20:]] + bodies[-20:]
    for body in resend:
        status, answer = restarted.post(body, content_type="text/plain")
        assert status == 200
        known = [i for i, b in acked if b == body]
        if known:
            assert answer["duplicate"] is True and answer["event_id"] == known[0]
    restarted.stop()
    with open_database(db_path) as db:
        after = [json.loads(r["payload"])["no_be_mfe"]
                 for r in db.query("SELECT payload FROM events")]
    # exactly what was stored before plus the resent bodies it lacked, each once
    assert sorted(after) == sorted(set(values) | {json.loads(b)["no_be_mfe"] for b in resend})


def test_resending_acknowledged_events_after_a_crash_stores_nothing_twice(server, tmp_path):
    db_path = tmp_path / "resend.db"
    s = server(db_path=db_path)
    bodies = [mfe_body(i, 0.5) for i in range(50)]
    ids = [s.post(b, content_type="text/plain")[1]["event_id"] for b in bodies]
    s.kill()
    s = server(db_path=db_path)
    for body, event_id in zip(bodies, ids):
        status, answer = s.post(body)
        assert status == 200 and answer["duplicate"] is True and answer["event_id"] == event_id
    s.stop()
    with open_database(db_path) as db:
        assert db.query("SELECT count(*) AS n FROM events")[0]["n"] == 50


def hold_exclusive_lock(db_path):
    conn = apsw.Connection(str(db_path))
    conn.set_busy_timeout(10_000)      # the server may be mid-write (its start-up pass)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


def test_locked_database_answers_503_quickly_and_stores_nothing(server, tmp_path):
    db_path = tmp_path / "locked.db"
    s = server(db_path=db_path)
    assert s.post(mfe_body(1, 0))[0] == 200
    blocker = hold_exclusive_lock(db_path)
    try:
        started = time.monotonic()
        status, answer = s.post(mfe_body(2, 0))
        elapsed = time.monotonic() - started
        assert status == 503
        assert answer["error"]["code"] == "storage_unavailable"
        assert elapsed < 2.5, f"503 took {elapsed:.2f}s; TradingView gives up at 3 s"
        # bad input while storage is down is not silently dropped either: 503, so it is resent
        status, answer = s.post(b"{not json")
        assert status == 503
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    status, answer = s.post(mfe_body(2, 0))
    assert status == 200 and answer["duplicate"] is False
    s.stop()
    with open_database(db_path) as db:
        assert db.query("SELECT count(*) AS n FROM events")[0]["n"] == 2
        assert db.query("SELECT count(*) AS n FROM requests")[0]["n"] == 2


def test_503_carries_the_one_error_shape_and_retry_after(server, tmp_path):
    db_path = tmp_path / "shape.db"
    s = server(db_path=db_path)
    blocker = hold_exclusive_lock(db_path)
    try:
        host, port = s.url.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("POST", "/webhook", mfe_body(3, 0), {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 503 and response.getheader("Retry-After") == "5"
        assert body == {"ok": False, "error": {"code": "storage_unavailable",
                                               "message": body["error"]["message"]}}
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_stalled_clients_do_not_delay_a_normal_webhook(server, tmp_path):
    s = server(db_path=tmp_path / "stall.db")
    host, port = s.url.split("//")[1].split(":")
    stalled = []
    try:
        for _ in range(20):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /api/automated-signals/webhook HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n"
                         b'{"event_type": "ENTRY", "trade_id": "2025')   # half a request
            stalled.append(sock)
        for attempt in range(3):
            started = time.monotonic()
            status, answer = s.post(mfe_body(10 + attempt, 0))
            elapsed = time.monotonic() - started
            assert status == 200 and answer["ok"] is True
            assert elapsed < 1.0, f"a normal webhook waited {elapsed:.2f}s behind stalled clients"
    finally:
        for sock in stalled:
            sock.close()
