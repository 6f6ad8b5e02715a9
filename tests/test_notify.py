"""serve() speaks the systemd notify protocol: READY=1 once listening, then WATCHDOG=1 every
WATCHDOG_USEC/2 but only while the database really answers (SPEC.md section 6)."""

import os
import signal
import socket
import tempfile
import threading
import time

import apsw
import pytest

import sigsync
from conftest import Server


class NotifySocket:
    """The AF_UNIX datagram socket systemd would listen on (NOTIFY_SOCKET)."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received = []

    def next(self, deadline):
        """The next message as a set of lines, or None once `deadline` (monotonic) passes."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        lines = set(data.decode().splitlines())
        self.received.append(lines)
        return lines

    def wait_for(self, line, timeout):
        """Wait until a message containing `line` arrives; True if it did."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(deadline)
            if message is None:
                return False
            if line in message:
                return True

    def drain(self):
        """Discard whatever is already queued."""
        self.sock.setblocking(False)
        try:
            while True:
                self.received.append(set(self.sock.recv(4096).decode().splitlines()))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    # An AF_UNIX path must stay under ~107 bytes; pytest's tmp_path can be longer.
    directory = str(tmp_path)
    if len(directory) > 80:
        directory = tempfile.mkdtemp(prefix="sigsync-notify-")
    ns = NotifySocket(directory)
    yield ns
    ns.close()


def wait_for_log(server, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in list(server.log_lines)):
            return True
        if server.proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def test_watchdog_pings_only_while_the_database_answers(tmp_path, notify_socket):
    db_path = tmp_path / "notify.db"
    server = Server(db_path, env={"NOTIFY_SOCKET": notify_socket.path,
                                  "WATCHDOG_USEC": "1000000"})     # a ping every 0.5 s
    server.start()
    holder = None
    try:
        assert notify_socket.wait_for("READY=1", timeout=10), notify_socket.received
        # Pings come, repeatedly.
        for _ in range(2):
            assert notify_socket.wait_for("WATCHDOG=1", timeout=3), notify_socket.received

        # Make the database unavailable: another connection holds the write lock. sigsync's
        # check (BEGIN IMMEDIATE) then gives up after its busy timeout and must not ping.
        holder = apsw.Connection(str(db_path))
        holder.setbusytimeout(5000)
        holder.execute("BEGIN EXCLUSIVE")
        # A check that finished just before the lock was taken may still ping; wait until a
        # check has failed, then everything queued so far is from before.
        assert wait_for_log(server, "what=watchdog outcome=skipped", timeout=5), \
            "".join(server.log_lines)
        notify_socket.drain()
        quiet_until = time.monotonic() + 3.0          # at least two more failed checks
        while (message := notify_socket.next(quiet_until)) is not None:
            assert "WATCHDOG=1" not in message, "pinged while the database was locked"
        assert server.proc.poll() is None, "".join(server.log_lines)

        # The database answers again: pings resume.
        holder.execute("ROLLBACK")
        holder.close()
        holder = None
        assert notify_socket.wait_for("WATCHDOG=1", timeout=5), notify_socket.received
    finally:
        if holder is not None:
            holder.close()
        server.stop()
    assert server.proc.returncode == 0, "".join(server.log_lines)
    assert notify_socket.wait_for("STOPPING=1", timeout=2), notify_socket.received


def test_no_watchdog_pings_without_watchdog_usec(tmp_path, notify_socket):
    env = {"NOTIFY_SOCKET": notify_socket.path}
    server = Server(tmp_path / "nowd.db", env=env)
    server.env.pop("WATCHDOG_USEC", None)
    server.start()
    try:
        assert notify_socket.wait_for("READY=1", timeout=10), notify_socket.received
        deadline = time.monotonic() + 1.0
        while (message := notify_socket.next(deadline)) is not None:
            assert "WATCHDOG=1" not in message
    finally:
        server.stop()


def test_a_long_pass_holds_up_neither_the_watchdog_nor_the_stop(tmp_path, notify_socket,
                                                                  monkeypatch):
    # SPEC §6: the reconciliation loop has a thread of its own. A pass longer than the
    # watchdog period must not stop the pings (systemd would kill the service mid-pass), and a
    # stop during a pass reaches it (the real pass checks between chunks).
    in_pass = threading.Event()
    seen = {}

    def slow_pass(db, clock, config, stop=None):
        seen["thread"] = threading.current_thread().name
        in_pass.set()
        seen["stopped"] = stop.wait(30)

    monkeypatch.setattr(sigsync, "job_sync", slow_pass)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")               # a ping every 0.2 s
    config = sigsync.Config(db=str(tmp_path / "jobs.db"), host="127.0.0.1", port=0,
                            sync_seconds=1)
    stop = threading.Event()
    outcome = {}

    def drive():
        try:
            outcome["ready"] = notify_socket.wait_for("READY=1", timeout=10)
            outcome["in_pass"] = in_pass.wait(10)
            notify_socket.drain()
            outcome["pings"] = sum(notify_socket.wait_for("WATCHDOG=1", timeout=2)
                                   for _ in range(3))
            outcome["pass_still_running"] = "stopped" not in seen
        finally:
            stop.set()

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        assert sigsync.serve(config, stop=stop) == 0      # serve() needs the main thread
    finally:
        stop.set()
        for s, handler in handlers.items():
            signal.signal(s, handler)
    driver.join(10)
    assert outcome == {"ready": True, "in_pass": True, "pings": 3, "pass_still_running": True}
    assert seen == {"thread": "jobs", "stopped": True}
    assert notify_socket.wait_for("STOPPING=1", timeout=2), notify_socket.received
