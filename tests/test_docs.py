"""The README is part of the product: its recipes run, and it names everything there is."""

import re
import subprocess

import pytest

import sigsync
from conftest import ROOT, START, require

README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "sigsync.db"
    db = sigsync.open_db(str(path))
    try:
        sigsync.demo(db, start=START)
        body = (b'{"event_type":"ENTRY","trade_id":"20251215_094200000_BULLISH",'
                b'"direction":"Bullish","symbol":"MNQ1!","entry_price":25683.5,"stop_loss":25645}')
        sigsync.ingest(db, body, now=START)
        sigsync.ingest(db, body.replace(b"25683.5", b"25690"), now=START)   # a conflict
        sigsync.sync_once(db, now=START)
    finally:
        db.close()
    return path


def recipes():
    return re.findall(r'^sqlite3 sigsync\.db "(.+)"$', README, re.M)


def test_readme_has_sqlite3_recipes():
    assert len(recipes()) >= 8


@pytest.mark.parametrize("sql", recipes())
def test_sqlite3_recipe_runs_in_the_stock_shell(populated, sql):
    version = subprocess.run([require("sqlite3", "sqlite3"), "--version"], capture_output=True,
                             text=True).stdout
    assert version.startswith("3.")
    proc = subprocess.run(["sqlite3", "-bail", str(populated), sql], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    if "rejected where received_at" not in sql:       # that one depends on today's date
        assert proc.stdout.strip(), f"no rows from: {sql}"


def test_every_setting_is_in_the_configuration_table():
    for s in sigsync.SETTINGS:
        assert re.search(rf"^\| `{s.flag}` \| `{s.env}` \|", README, re.M), s.name


def test_every_command_is_documented():
    parser = sigsync.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in commands:
        assert f"| `{name}" in README, name


def test_every_route_is_documented(db, clock, config):
    app = sigsync.make_app(db, clock, config)
    for route in app.routes:
        path = re.sub(r"<[^>]+>", "", route.rule).rstrip("/")
        assert path in README, route.rule
