-- sigsync schema: the event log, the state derived from it, and the dead letters.
--
-- Grouped by concept: a table, then its indexes, then (after the @views marker) the views that
-- hold rules. Tables above the marker change only through numbered migrations in sigsync.py;
-- everything below the marker is dropped and re-created on every start.
--
-- Times are TEXT in UTC ISO-8601 with millisecond precision and a 'Z' suffix
-- ('2025-12-15T14:42:00.000Z'), so they sort and compare as strings.
-- Prices are REAL in the instrument's points; excursions are REAL in R (multiples of the risk).

------------------------------------------------------------------------------------------------
-- The log. Append-only: ingest and reconciliation only ever INSERT here.
------------------------------------------------------------------------------------------------

-- Every request that was accepted (answered 2xx), byte for byte, once per delivery:
-- duplicates and resends are kept here too, so the log shows exactly what arrived.
CREATE TABLE requests (
    request_id   INTEGER PRIMARY KEY,
    received_at  TEXT NOT NULL,            -- server clock when the request arrived
    peer         TEXT,                     -- client address (after trusted-proxy resolution)
    path         TEXT NOT NULL,            -- the URL path only: the ?token= is never stored
    content_type TEXT,                     -- as sent; the body is parsed whatever it says
    raw_body     BLOB NOT NULL,            -- the body as received, except that the value of a
                                           -- top-level "secret" field is replaced by "***"
    source       TEXT NOT NULL DEFAULT 'webhook'
                 CHECK (source IN ('webhook', 'import', 'replay', 'demo'))
);
-- The only index: every webhook writes each index of the log, and each page it touches is
-- written to the WAL and fsynced before the answer. It serves "last webhook" and "requests in
-- the rate window" (by source, so a long import cannot slow them), and import's "seen?" (one
-- seek per source).
CREATE INDEX requests_source_received ON requests(source, received_at);

-- One row per distinct event. A batch request yields one row per element; an exact duplicate
-- (same type, trade and content) yields none (it is acknowledged with "duplicate": true).
CREATE TABLE events (
    event_id     INTEGER PRIMARY KEY,      -- arrival order: "first received" means lowest id
    request_id   INTEGER NOT NULL REFERENCES requests(request_id),
    received_at  TEXT NOT NULL,            -- copied from the request (server clock)
    event_type   TEXT NOT NULL CHECK (event_type IN (
                     'SIGNAL_CREATED', 'ENTRY', 'MFE_UPDATE', 'BE_TRIGGERED', 'EXIT_BE',
                     'EXIT_SL', 'EXIT_TP', 'CANCELLED', 'HEARTBEAT', 'BAR')),
    trade_id     TEXT,                     -- NULL only for HEARTBEAT and BAR
    symbol       TEXT,                     -- as sent, NULL when the event carries none
    event_time   TEXT,                     -- the event's own time from the payload (UTC), NULL
                                           -- when it carried none; never the server clock
    batch_index  INTEGER,                  -- position in an MFE_UPDATE_BATCH, NULL otherwise
    payload      TEXT NOT NULL,            -- normalised JSON: canonical event and field names,
                                           -- numbers coerced, times in UTC, secret removed
    dedup_key    TEXT NOT NULL UNIQUE      -- sha256 of type, trade and canonical content
);
CREATE INDEX events_trade ON events(trade_id, event_id);
-- No index by type: counts by type are kept in `counters` ('events:<TYPE>').

-- Repeats: an MFE_UPDATE that arrived again, in a later request, after it was stored. Not a new
-- event and not counted again, but the indicator still reporting the trade: a trade that
-- stopped moving sends the same update every bar (a v3 batch element has no time of its own).
-- It moves the trade's last_update_at and its market's activity (the stale_mfe gap reads
-- both), and rebuild replays it. One row per (event, request).
CREATE TABLE event_repeats (
    event_id     INTEGER NOT NULL REFERENCES events(event_id),
    request_id   INTEGER NOT NULL REFERENCES requests(request_id),
    received_at  TEXT NOT NULL,            -- the repeat's arrival (server clock)
    symbol_key   TEXT,                     -- the market it counted for (symbol_activity), as
                                           -- known when it arrived; NULL when none was
    PRIMARY KEY (event_id, request_id)     -- a trade's repeats: events_trade, then this
) WITHOUT ROWID;

------------------------------------------------------------------------------------------------
-- Dead letters: requests that were refused with a 4xx. Not part of the log: bounded (the oldest
-- are dropped beyond the configured count), kept for a person to inspect and replay.
------------------------------------------------------------------------------------------------
CREATE TABLE rejected (
    rejected_id  INTEGER PRIMARY KEY,
    received_at  TEXT NOT NULL,
    peer         TEXT,
    path         TEXT,
    content_type TEXT,
    status       INTEGER NOT NULL,         -- the HTTP status answered (400, 401, 403, 413, 500)
    code         TEXT NOT NULL,            -- machine-readable reason, e.g. 'invalid_field'
    message      TEXT NOT NULL,            -- the message sent back, naming the field
    raw_body     BLOB NOT NULL,            -- as received (secret value masked); for 413 only the
                                           -- first max_body bytes
    body_size    INTEGER NOT NULL,         -- the full size in bytes, even when truncated
    replayed_at  TEXT,                     -- when replay-rejected ingested it successfully
    replay_event_id INTEGER                -- the event it became (NULL: not replayed, or a dup)
);
CREATE INDEX rejected_received ON rejected(received_at);

------------------------------------------------------------------------------------------------
-- Derived state: rebuilt from `events` by `sigsync.py rebuild`, maintained at ingest by one code
-- path (sigsync.py, "lifecycle" section), so live ingestion and a rebuild give the same rows.
------------------------------------------------------------------------------------------------

-- One row per signal (trade_id). Value columns hold the current best value; `provenance` says
-- for each one where it came from and how sure it is.
CREATE TABLE signals (
    trade_id        TEXT PRIMARY KEY,
    id_time         TEXT NOT NULL,         -- the time encoded in trade_id (UTC); ordering only
    id_direction    TEXT NOT NULL CHECK (id_direction IN ('Bullish', 'Bearish')),
    status          TEXT NOT NULL CHECK (status IN ('PENDING', 'ACTIVE', 'EXITED', 'CANCELLED')),
    be_state        TEXT NOT NULL CHECK (be_state IN ('NONE', 'TRIGGERED', 'STOPPED')),
    symbol          TEXT,
    direction       TEXT CHECK (direction IN ('Bullish', 'Bearish')),
    timeframe       TEXT,
    signal_time     TEXT,                  -- triangle bar open (UTC)
    signal_date     TEXT,                  -- New York calendar date of signal_time
    session         TEXT CHECK (session IN ('ASIA', 'LONDON', 'NY PRE', 'NY AM', 'NY LUNCH',
                                            'NY PM', 'AFTER_HOURS')),
    htf_alignment   TEXT,                  -- JSON object: daily, h4, h1, m15, m5, m1 -> bias
    setup           TEXT,                  -- JSON object as sent
    market_state    TEXT,                  -- JSON object as sent
    entry_price     REAL,
    stop_loss       REAL,
    risk            REAL,                  -- |entry_price - stop_loss| in points
    targets         TEXT,                  -- JSON object: tp1_price, tp2_price, tp3_price as sent
    targets_extended TEXT,                 -- JSON object: "1", "2", "3", "5", "10", "20" (R) -> price
    confirmation_time TEXT,
    bars_to_confirmation INTEGER CHECK (bars_to_confirmation >= 1),
    be_triggered_at TEXT,                  -- when the BE trigger alert arrived (bar close bound)
    no_be_mfe       REAL CHECK (no_be_mfe >= 0),   -- running maximum, R
    be_mfe          REAL CHECK (be_mfe >= 0),      -- running maximum of the BE leg, R
    mae             REAL CHECK (mae <= 0),         -- running minimum, R; NULL = never received
    last_price      REAL,                  -- latest current_price sample of this trade
    last_price_at   TEXT,                  -- the sample's own time (payload time, else arrival)
    last_update_at  TEXT,                  -- arrival of the latest ENTRY/MFE/BE/EXIT event
    exit_be_at      TEXT,                  -- arrival of EXIT_BE (the alert fires at bar close)
    be_exit_price   REAL,
    exit_sl_at      TEXT,
    exit_tp_at      TEXT,
    exit_price      REAL,                  -- price of the trade's final exit (SL or TP)
    exit_reason     TEXT,
    final_mfe       REAL,
    cancelled_at    TEXT,
    cancelled_by    TEXT,                  -- trade_id of the opposite signal
    cancel_reason   TEXT,
    bars_pending    INTEGER,
    has_signal_created INTEGER NOT NULL DEFAULT 0 CHECK (has_signal_created IN (0, 1)),
    has_entry       INTEGER NOT NULL DEFAULT 0 CHECK (has_entry IN (0, 1)),
    entry_received_at TEXT,                -- arrival of the first evidence of an entry
    event_count     INTEGER NOT NULL DEFAULT 0,
    first_received_at TEXT NOT NULL,
    last_received_at  TEXT NOT NULL,
    provenance      TEXT NOT NULL DEFAULT '{}', -- JSON: field -> [data_source, confidence]
    conflicts       TEXT NOT NULL DEFAULT '{}', -- JSON: kind -> evidence (both values, event ids)
    fold_state      TEXT NOT NULL DEFAULT '{}'  -- JSON: bookkeeping the fold needs (ranks, first
                                                -- lifecycle event of each type); not for display
);
CREATE INDEX signals_id_time ON signals(id_time DESC, trade_id DESC);
CREATE INDEX signals_status ON signals(status, id_time DESC);
CREATE INDEX signals_symbol ON signals(symbol, signal_time, trade_id);
-- The signals a pass compares by market (the symbol without its exchange prefix, the expression
-- of symbol_key() in sigsync.py: 'CME_MINI:MNQ1!' and 'MNQ1!' are one market): the next opposite
-- signal (alternation, SPEC 3.3) and the pending ones a new signal may cancel. A query uses these
-- only when it repeats the expression exactly.
CREATE INDEX signals_market ON signals(replace(substr(symbol, instr(symbol, ':') + 1), ' ', ''), signal_time, trade_id);
CREATE INDEX signals_pending ON signals(replace(substr(symbol, instr(symbol, ':') + 1), ' ', ''), signal_time) WHERE status = 'PENDING';
-- The same by direction (coalesce(direction, id_direction), as sigsync.py writes it): the next
-- signal of the other direction and the last one of the same direction are one seek each. By
-- market and time alone they were scans over every signal of the run in between, which in a
-- market where one direction is rare is most of its history, for every pending signal of a
-- full pass (measured: tests/bench.py, README Performance).
CREATE INDEX signals_market_direction ON signals(replace(substr(symbol, instr(symbol, ':') + 1), ' ', ''), coalesce(direction, id_direction), signal_time, trade_id);
-- Signals cancelled (by alternation or by the indicator), with the time they were cancelled: a
-- late opposite signal finds the ones it now cancels first from this index alone.
CREATE INDEX signals_cancelled ON signals(replace(substr(symbol, instr(symbol, ':') + 1), ' ', ''), coalesce(direction, id_direction), signal_time, cancelled_at, trade_id) WHERE status = 'CANCELLED';
-- Open trades that a pass revisits by symbol (prices).
CREATE INDEX signals_open ON signals(symbol) WHERE status = 'ACTIVE';

-- Price bars by symbol, from BAR events (first received wins for a given bar).
CREATE TABLE bars (
    symbol     TEXT NOT NULL,
    timeframe  TEXT NOT NULL DEFAULT '',   -- '' when the event gave none
    time       TEXT NOT NULL,              -- bar open (UTC)
    open       REAL NOT NULL,
    high       REAL NOT NULL,
    low        REAL NOT NULL,
    close      REAL NOT NULL,
    event_id   INTEGER NOT NULL,
    PRIMARY KEY (symbol, timeframe, time)
) WITHOUT ROWID;

------------------------------------------------------------------------------------------------
-- Reconciliation: each pass of the loop, and every change a pass (or a late event superseding an
-- estimate) made to a signal. History, not derived state: `rebuild` keeps it and adds to it.
------------------------------------------------------------------------------------------------
CREATE TABLE sync_runs (
    run_id        INTEGER PRIMARY KEY,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,                    -- NULL while running (or if the process died)
    outcome       TEXT NOT NULL CHECK (outcome IN ('running', 'ok', 'failed', 'skipped')),
    trigger       TEXT NOT NULL CHECK (trigger IN ('schedule', 'cli', 'rebuild', 'test')),
    full_pass     INTEGER NOT NULL DEFAULT 0 CHECK (full_pass IN (0, 1)),
    from_event_id INTEGER NOT NULL,        -- events with from < event_id <= to were new to it
    to_event_id   INTEGER NOT NULL,
    examined      INTEGER NOT NULL DEFAULT 0,  -- signals looked at
    changes       INTEGER NOT NULL DEFAULT 0,  -- fields changed (= audit rows written)
    counts        TEXT NOT NULL DEFAULT '{}',  -- JSON: changes by tier, e.g. {"tier3": 12}
    error         TEXT,                        -- the exception, when outcome = 'failed'
    score_7d      REAL,                        -- v_health_summary after the pass (NULL: no
    score_all     REAL,                        -- signals in the window)
    abnormal_gaps INTEGER,
    expected_gaps INTEGER,
    gaps_by_type  TEXT                         -- JSON: {gap: {"abnormal": n, "expected": n}}
);
CREATE INDEX sync_runs_outcome ON sync_runs(outcome, run_id);

CREATE TABLE sync_audit_log (
    audit_id     INTEGER PRIMARY KEY,
    run_id       INTEGER REFERENCES sync_runs(run_id),  -- NULL: done at ingest (a received
                                                        -- event superseding an estimate)
    created_at   TEXT NOT NULL,
    trade_id     TEXT NOT NULL,
    field        TEXT NOT NULL,
    old_value    TEXT,                     -- JSON, NULL when the field was empty
    new_value    TEXT,                     -- JSON, NULL when the value was retracted
    data_source  TEXT NOT NULL,            -- of the new value (or of the retracted one)
    confidence   REAL NOT NULL,
    tier         TEXT NOT NULL CHECK (tier IN ('tier1', 'tier2', 'tier3', 'cancellation',
                                               'ingest')),
    reason       TEXT NOT NULL,
    evidence     TEXT                      -- JSON: what the value was computed from
);
CREATE INDEX sync_audit_trade ON sync_audit_log(trade_id, audit_id);
CREATE INDEX sync_audit_run ON sync_audit_log(run_id);

-- The latest price sample of each symbol (an MFE_UPDATE's current_price, or a BAR's close), with
-- its arrival, so Tier 2 can judge freshness with the server clock. symbol_key is the symbol
-- without its exchange prefix ('CME_MINI:MNQ1!' -> 'MNQ1!').
CREATE TABLE symbol_prices (
    symbol_key  TEXT PRIMARY KEY,
    price       REAL NOT NULL,
    received_at TEXT NOT NULL,
    event_id    INTEGER NOT NULL,
    trade_id    TEXT                       -- the trade whose update carried it (NULL for a BAR)
) WITHOUT ROWID;

-- The latest arrival of any event naming a symbol: "is data for this market still coming?"
CREATE TABLE symbol_activity (
    symbol_key       TEXT PRIMARY KEY,
    last_received_at TEXT NOT NULL
) WITHOUT ROWID;

------------------------------------------------------------------------------------------------
-- Health. The rules are the views below the @views marker (v_gap_rules is the gap catalogue).
-- What a view cannot compute fast over 100k+ signals is kept by triggers (below the marker):
--
--   signal_gaps        one row per (signal, gap): v_gap_rules materialised for each signal
--                      written, only the rows that change being rewritten;
--   health_hours       per hour of triangle time (and one all-time row '*'): signals, confirmed,
--   health_gap_counts  signals with their SIGNAL_CREATED, the summed penalty, gaps by type.
--
-- Clock and thresholds stay out of all three. A time rule stores a clock-free base instant
-- (`due_base`); the gap is "due" once now > due_base + its threshold (v_gap_thresholds, read
-- at query time, so a restart with new settings re-times every row at no cost). The
-- aggregates count each gap as it will be once due ("eventually"): stale_mfe abnormal (when
-- its symbol is known), no_mae abnormal, stale_pending open. v_health_summary reads the
-- aggregates and corrects them for the few rows not yet in that state: those whose deadline
-- lies ahead (due_base >= now - threshold, or for stale_mfe >= the symbol's last activity -
-- threshold), found by a range scan of signal_gaps_due. So the summary reads a few hundred
-- aggregate rows plus the recent rows, whatever the history. A 7-day window starts inside an
-- hour; that partial hour's signals are read directly.
--
-- The aggregates hold the rule set they were built with: after a change to the rules or the
-- weights (a new sigsync.py/schema.sql), `sigsync.py rebuild` recomputes them.
------------------------------------------------------------------------------------------------
CREATE TABLE signal_gaps (
    trade_id    TEXT NOT NULL,
    gap         TEXT NOT NULL,             -- a gap_types.gap
    severity    TEXT NOT NULL CHECK (severity IN ('expected', 'abnormal')),  -- once due; for
                                           -- stale_mfe only a hint (abnormal: its symbol was
                                           -- known to symbol_activity when the row was written)
                                           -- as v_gap_status judges it by the symbol's activity
    before_due  TEXT CHECK (before_due IN ('closed', 'expected')),  -- before due: not open yet,
                                           -- or open as expected; NULL when due_base is NULL
    due_base    TEXT,                      -- NULL: no time rule; else due once now > due_base +
                                           -- the gap's threshold (v_gap_thresholds)
    id_time     TEXT NOT NULL,             -- the signal's id_time: its window (copied)
    since       TEXT,                      -- when the condition started, as far as data says
    symbol_key  TEXT,                      -- stale_mfe only: is the market still sending data?
    evidence    TEXT,                      -- JSON: the values that make it a gap
    PRIMARY KEY (trade_id, gap)
) WITHOUT ROWID;
-- The rows whose state depends on the clock, by deadline: the summary's correction scan.
CREATE INDEX signal_gaps_due ON signal_gaps(gap, severity, symbol_key, due_base)
    WHERE due_base IS NOT NULL;

-- Per hour of triangle time ('YYYY-MM-DDTHH' of id_time, UTC), and for all time ('*', which
-- sorts before every hour): counts of the signals, and the sum of their penalties (min(100,
-- weights of the gaps that are abnormal once due)). Rows that fall to zero are removed.
CREATE TABLE health_hours (
    hour                TEXT PRIMARY KEY,
    signals             INTEGER NOT NULL DEFAULT 0,
    confirmed           INTEGER NOT NULL DEFAULT 0,   -- status ACTIVE or EXITED
    with_signal_created INTEGER NOT NULL DEFAULT 0,   -- confirmed, and SIGNAL_CREATED received
    penalty             INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Gap rows by hour (as health_hours), type and severity once due. Rows at zero are removed.
CREATE TABLE health_gap_counts (
    hour      TEXT NOT NULL,
    gap       TEXT NOT NULL,
    severity  TEXT NOT NULL CHECK (severity IN ('expected', 'abnormal')),
    n         INTEGER NOT NULL,
    PRIMARY KEY (hour, gap, severity)
) WITHOUT ROWID;

-- Signals by the list filters a page uses most (symbol, session, direction) and status, kept by
-- triggers on signals: the all-signals summary (counts by status under those filters) sums a
-- few of these rows instead of counting 100k signals. '' stands for "not known yet".
CREATE TABLE signal_counts (
    symbol     TEXT NOT NULL,
    session    TEXT NOT NULL,
    direction  TEXT NOT NULL,
    status     TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (symbol, session, direction, status)
) WITHOUT ROWID;

-- Thresholds the health rules read (seconds), and the running server's start time. Defaults are
-- set below the @views marker; the server writes its configured values at start.
CREATE TABLE health_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Counters that are not rows of the log (duplicates, rejections by reason): kept here so that
-- they survive restarts. Derived from nothing; never rebuilt. One is a total, not a count:
-- 'dead_letter_bytes', the bytes of the bodies in `rejected`, kept by triggers (below the views
-- marker) so that the dead letters' byte bound is checked without summing the table.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,                -- e.g. 'duplicates', 'rejected:invalid_json'
    value INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

PRAGMA user_version = 6;

-- @views ---------------------------------------------------------------------------------------
-- Re-created on every start: rules live here, data does not.

-- counters.dead_letter_bytes = the bytes of rejected.raw_body, whoever inserts or deletes (the
-- bound in sigsync.py, or an operator's DELETE in the sqlite3 shell).
DROP TRIGGER IF EXISTS rejected_ai_bytes;
CREATE TRIGGER rejected_ai_bytes AFTER INSERT ON rejected BEGIN
    INSERT INTO counters(name, value)
    VALUES ('dead_letter_bytes', length(CAST(NEW.raw_body AS BLOB)))
    ON CONFLICT(name) DO UPDATE SET value = value + excluded.value;
END;

DROP TRIGGER IF EXISTS rejected_ad_bytes;
CREATE TRIGGER rejected_ad_bytes AFTER DELETE ON rejected BEGIN
    UPDATE counters SET value = value - length(CAST(OLD.raw_body AS BLOB))
     WHERE name = 'dead_letter_bytes';
END;

DROP VIEW IF EXISTS v_signal_provenance;
-- One row per (signal, field) that has a value: where it came from and how sure it is.
--   select * from v_signal_provenance where trade_id = '20251215_094200000_BULLISH';
CREATE VIEW v_signal_provenance AS
SELECT s.trade_id,
       p.key                         AS field,
       json_extract(p.value, '$[0]') AS data_source,
       json_extract(p.value, '$[1]') AS confidence
FROM signals AS s, json_each(s.provenance) AS p;

DROP VIEW IF EXISTS v_signal_conflicts;
-- Contradictions in a signal's evidence, one row per kind, with both values.
CREATE VIEW v_signal_conflicts AS
SELECT s.trade_id, c.key AS kind, c.value AS evidence
FROM signals AS s, json_each(s.conflicts) AS c
WHERE s.conflicts <> '{}';

DROP VIEW IF EXISTS v_event_counts;
-- Events received by type (the log), for metrics and the shell.
CREATE VIEW v_event_counts AS
SELECT event_type, count(*) AS events, max(received_at) AS last_received_at
FROM events GROUP BY event_type;

-- The gap catalogue: what each gap means, which tier can fill it, and what it costs a signal's
-- score when abnormal (expected gaps cost nothing). A signal scores 100 minus the weights of its
-- abnormal gaps, never below 0.
DROP TABLE IF EXISTS gap_types;
CREATE TABLE gap_types (
    gap       TEXT PRIMARY KEY,
    weight    INTEGER NOT NULL CHECK (weight BETWEEN 0 AND 100),
    filled_by TEXT NOT NULL,
    meaning   TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO gap_types(gap, weight, filled_by, meaning) VALUES
 ('no_signal_created',    10, 'tier 3 (times, session)', 'confirmed, but its SIGNAL_CREATED never arrived'),
 ('no_entry',             10, 'MFE elements',  'MFE/BE/EXIT events but no ENTRY'),
 ('no_entry_price',       15, 'MFE elements',  'confirmed, entry price unknown'),
 ('no_stop_loss',         15, 'MFE elements',  'confirmed, stop loss unknown'),
 ('no_htf_alignment',     10, 'tier 0',        'confirmed, no HTF alignment received'),
 ('no_confirmation_time', 10, 'tiers 1, 2',    'confirmed, confirmation time unknown'),
 ('no_session',            5, 'tiers 0, 3',    'session unknown'),
 ('no_signal_date',        5, 'tiers 0, 3',    'signal date unknown'),
 ('no_targets',            5, 'tier 2',        'confirmed, no extended targets'),
 ('stale_mfe',            10, 'tiers 1, 2',    'open trade without an update for longer than the threshold'),
 ('no_mae',               10, 'tiers 1, 2',    'confirmed, MAE never received'),
 ('missed_exit',          20, 'tiers 1, 2',    'the stop was crossed, no exit arrived'),
 ('conflict',             20, 'none: a person judges', 'contradictory evidence'),
 ('stale_pending',         0, 'none',          'pending much longer than usual');

INSERT INTO health_settings(name, value)
SELECT column1, column2 FROM (VALUES
    ('stale_mfe_seconds', '600'), ('stale_pending_seconds', '3600'),
    ('silent_seconds', '900'), ('sync_seconds', '120'), ('server_started_at', ''),
    ('first_bar_grace_seconds', '60'), ('rate_window_seconds', '180'), ('rate_warn_at', '12'))
WHERE column1 NOT IN (SELECT name FROM health_settings);

DROP VIEW IF EXISTS v_settings;
-- The thresholds as one row, for the rules below.
CREATE VIEW v_settings AS
SELECT (SELECT CAST(value AS INTEGER) FROM health_settings WHERE name = 'stale_mfe_seconds') AS stale_mfe_seconds,
       (SELECT CAST(value AS INTEGER) FROM health_settings WHERE name = 'stale_pending_seconds') AS stale_pending_seconds,
       (SELECT CAST(value AS INTEGER) FROM health_settings WHERE name = 'silent_seconds') AS silent_seconds,
       (SELECT CAST(value AS INTEGER) FROM health_settings WHERE name = 'sync_seconds') AS sync_seconds,
       (SELECT value FROM health_settings WHERE name = 'server_started_at') AS server_started_at,
       (SELECT CAST(value AS INTEGER) FROM health_settings WHERE name = 'first_bar_grace_seconds') AS first_bar_grace_seconds,
       (SELECT CAST(value AS INTEGER) FROM health_settings WHERE name = 'rate_window_seconds') AS rate_window_seconds,
       (SELECT CAST(value AS INTEGER) FROM health_settings WHERE name = 'rate_warn_at') AS rate_warn_at;

DROP VIEW IF EXISTS v_gap_thresholds;
-- Which threshold (seconds, from v_settings) times each time rule: a gap row with a due_base is
-- due once now > due_base + seconds. Read at query time, never stored in a row.
CREATE VIEW v_gap_thresholds AS
SELECT 'stale_mfe' AS gap, stale_mfe_seconds AS seconds FROM v_settings
UNION ALL SELECT 'stale_pending', stale_pending_seconds FROM v_settings
UNION ALL SELECT 'no_mae', first_bar_grace_seconds FROM v_settings;

DROP VIEW IF EXISTS v_gap_rules;
-- THE GAP CATALOGUE, clock-free and threshold-free: one row per gap condition a signal meets,
-- with `severity` as it is once due. Time rules do not read the clock or the settings: they
-- give a base instant `due_base` (the gap is due once now > due_base + its threshold) and
-- `before_due` (before that: 'closed', not open yet; or 'expected'); whoever asks compares
-- them with "now" (v_gap_status).
CREATE VIEW v_gap_rules AS
SELECT trade_id, 'no_signal_created' AS gap, 'abnormal' AS severity, NULL AS before_due,
       NULL AS due_base, id_time, first_received_at AS since, NULL AS symbol_key,
       json_object('status', status) AS evidence
  FROM signals WHERE status IN ('ACTIVE', 'EXITED') AND has_signal_created = 0
UNION ALL
SELECT trade_id, 'no_entry', 'abnormal', NULL, NULL, id_time, first_received_at, NULL,
       json_object('status', status, 'events', event_count)
  FROM signals WHERE status IN ('ACTIVE', 'EXITED') AND has_entry = 0
UNION ALL
SELECT trade_id, 'no_entry_price', 'abnormal', NULL, NULL, id_time, first_received_at, NULL, NULL
  FROM signals WHERE status IN ('ACTIVE', 'EXITED') AND entry_price IS NULL
UNION ALL
SELECT trade_id, 'no_stop_loss', 'abnormal', NULL, NULL, id_time, first_received_at, NULL, NULL
  FROM signals WHERE status IN ('ACTIVE', 'EXITED') AND stop_loss IS NULL
UNION ALL
SELECT trade_id, 'no_htf_alignment', 'abnormal', NULL, NULL, id_time, first_received_at, NULL,
       NULL
  FROM signals WHERE status IN ('ACTIVE', 'EXITED') AND htf_alignment IS NULL
UNION ALL
SELECT trade_id, 'no_confirmation_time', 'abnormal', NULL, NULL, id_time, first_received_at,
       NULL, NULL
  FROM signals WHERE status IN ('ACTIVE', 'EXITED') AND confirmation_time IS NULL
UNION ALL
SELECT trade_id, 'no_session', 'abnormal', NULL, NULL, id_time, first_received_at, NULL, NULL
  FROM signals WHERE session IS NULL
UNION ALL
SELECT trade_id, 'no_signal_date', 'abnormal', NULL, NULL, id_time, first_received_at, NULL, NULL
  FROM signals WHERE signal_date IS NULL
UNION ALL
SELECT trade_id, 'no_targets', 'abnormal', NULL, NULL, id_time, first_received_at, NULL, NULL
  FROM signals WHERE status IN ('ACTIVE', 'EXITED') AND targets_extended IS NULL
UNION ALL
-- opens once the last update is older than stale_mfe_seconds; then expected while no event of
-- any kind arrives for its symbol (market closed, indicator off), abnormal when the symbol has
-- had data since the gap opened (v_gap_status). `severity` is what it becomes when data keeps
-- coming: abnormal, unless the symbol is unknown.
SELECT trade_id, 'stale_mfe',
       CASE WHEN symbol IS NULL THEN 'expected' ELSE 'abnormal' END, 'closed',
       coalesce(last_update_at, first_received_at), id_time, last_update_at,
       replace(substr(symbol, instr(symbol, ':') + 1), ' ', ''),   -- = symbol_key() in Python
       json_object('last_update_at', coalesce(last_update_at, first_received_at))
  FROM signals WHERE status = 'ACTIVE'
UNION ALL
-- expected during the entry's first bar (plus first_bar_grace_seconds for the alert's trip),
-- abnormal after. The bar's length as a date modifier, from TradingView's {{interval}}: "5" is
-- minutes, "30S" seconds, "D"/"2D" days, "W" weeks, "M"/"3M" months (capital M only); a count
-- of more than 10000 (or five digits), or anything else, counts as one minute. The same
-- reading as timeframe_step() in sigsync.py.
SELECT trade_id, 'no_mae', 'abnormal', 'expected',
       strftime('%Y-%m-%dT%H:%M:%fZ', coalesce(entry_received_at, first_received_at),
                CASE WHEN length(timeframe) BETWEEN 1 AND 5 AND timeframe NOT GLOB '*[^0-9]*'
                          AND CAST(timeframe AS INTEGER) BETWEEN 1 AND 10000
                     THEN '+' || (60 * CAST(timeframe AS INTEGER)) || ' seconds'
                     WHEN length(timeframe) BETWEEN 1 AND 6 AND timeframe GLOB '*[SDWMsdw]'
                          AND substr(timeframe, 1, length(timeframe) - 1) NOT GLOB '*[^0-9]*'
                          AND CAST(timeframe AS INTEGER) <= 10000
                     THEN '+' || (max(1, CAST(timeframe AS INTEGER))
                                  * CASE upper(substr(timeframe, -1)) WHEN 'W' THEN 7 ELSE 1 END)
                          || CASE substr(timeframe, -1) WHEN 'M' THEN ' months'
                                  ELSE CASE upper(substr(timeframe, -1)) WHEN 'S' THEN ' seconds'
                                                                         ELSE ' days' END END
                     ELSE '+60 seconds' END),
       id_time, entry_received_at, NULL, json_object('timeframe', timeframe)
  FROM signals WHERE status IN ('ACTIVE', 'EXITED') AND mae IS NULL
UNION ALL
SELECT trade_id, 'missed_exit', 'abnormal', NULL, NULL, id_time, last_update_at, NULL,
       json_object('mae', mae)
  FROM signals WHERE status = 'ACTIVE' AND mae <= -1.0
UNION ALL
SELECT trade_id, 'conflict', 'abnormal', NULL, NULL, id_time, first_received_at, NULL, conflicts
  FROM signals WHERE conflicts <> '{}'
UNION ALL
-- opens once pending for longer than stale_pending_seconds
SELECT trade_id, 'stale_pending', 'expected', 'closed', coalesce(signal_time, id_time), id_time,
       coalesce(signal_time, id_time), NULL, NULL
  FROM signals WHERE status = 'PENDING';

-- Keep signal_gaps equal to v_gap_rules for the signal just written. An update rewrites only
-- the gap rows that changed (most webhooks change none, or move one deadline).
DROP TRIGGER IF EXISTS signals_ai_gaps;
CREATE TRIGGER signals_ai_gaps AFTER INSERT ON signals BEGIN
    INSERT INTO signal_gaps(trade_id, gap, severity, before_due, due_base, id_time, since,
                            symbol_key, evidence)
    SELECT trade_id, gap, severity, before_due, due_base, id_time, since, symbol_key, evidence
      FROM v_gap_rules WHERE trade_id = NEW.trade_id;
END;

DROP TRIGGER IF EXISTS signals_au_gaps;
-- Fires only when save_signal sets one of the columns v_gap_rules reads.
CREATE TRIGGER signals_au_gaps AFTER UPDATE OF status, has_signal_created, has_entry,
    event_count, entry_price, stop_loss, htf_alignment, confirmation_time, session, signal_date,
    targets_extended, last_update_at, first_received_at, symbol, entry_received_at, timeframe,
    mae, conflicts, signal_time, id_time ON signals BEGIN
    DELETE FROM signal_gaps WHERE trade_id = NEW.trade_id
       AND gap NOT IN (SELECT gap FROM v_gap_rules WHERE trade_id = NEW.trade_id);
    INSERT INTO signal_gaps(trade_id, gap, severity, before_due, due_base, id_time, since,
                            symbol_key, evidence)
    SELECT trade_id, gap, severity, before_due, due_base, id_time, since, symbol_key, evidence
      FROM v_gap_rules WHERE trade_id = NEW.trade_id
    ON CONFLICT (trade_id, gap) DO UPDATE SET
        severity = excluded.severity, before_due = excluded.before_due,
        due_base = excluded.due_base, since = excluded.since, symbol_key = excluded.symbol_key,
        evidence = excluded.evidence
     WHERE signal_gaps.severity IS NOT excluded.severity
        OR signal_gaps.before_due IS NOT excluded.before_due
        OR signal_gaps.due_base IS NOT excluded.due_base
        OR signal_gaps.since IS NOT excluded.since
        OR signal_gaps.symbol_key IS NOT excluded.symbol_key
        OR signal_gaps.evidence IS NOT excluded.evidence;
END;

DROP TRIGGER IF EXISTS signals_ad_gaps;
CREATE TRIGGER signals_ad_gaps AFTER DELETE ON signals BEGIN
    DELETE FROM signal_gaps WHERE trade_id = OLD.trade_id;
END;

-- signal_counts: +1 for a new signal's key, -1 for a deleted one's, both when a key column
-- changes (a late SIGNAL_CREATED names the session; an ENTRY changes the status). Rows that
-- fall to zero are removed (the table holds a few hundred rows at most).
DROP TRIGGER IF EXISTS signals_ai_counts;
CREATE TRIGGER signals_ai_counts AFTER INSERT ON signals BEGIN
    INSERT INTO signal_counts VALUES (coalesce(NEW.symbol, ''), coalesce(NEW.session, ''),
                                      coalesce(NEW.direction, ''), NEW.status, 1)
    ON CONFLICT DO UPDATE SET n = n + excluded.n;
END;

DROP TRIGGER IF EXISTS signals_au_counts;
CREATE TRIGGER signals_au_counts AFTER UPDATE OF symbol, session, direction, status ON signals
WHEN OLD.symbol IS NOT NEW.symbol OR OLD.session IS NOT NEW.session
  OR OLD.direction IS NOT NEW.direction OR OLD.status IS NOT NEW.status BEGIN
    INSERT INTO signal_counts VALUES
        (coalesce(OLD.symbol, ''), coalesce(OLD.session, ''), coalesce(OLD.direction, ''),
         OLD.status, -1),
        (coalesce(NEW.symbol, ''), coalesce(NEW.session, ''), coalesce(NEW.direction, ''),
         NEW.status, 1)
    ON CONFLICT DO UPDATE SET n = n + excluded.n;
    DELETE FROM signal_counts WHERE n = 0;
END;

DROP TRIGGER IF EXISTS signals_ad_counts;
CREATE TRIGGER signals_ad_counts AFTER DELETE ON signals BEGIN
    UPDATE signal_counts SET n = n - 1 WHERE symbol = coalesce(OLD.symbol, '')
       AND session = coalesce(OLD.session, '') AND direction = coalesce(OLD.direction, '')
       AND status = OLD.status;
    DELETE FROM signal_counts WHERE n = 0;
END;

-- health_hours: the signal counts. A signal's hour never changes (id_time comes from trade_id).
DROP TRIGGER IF EXISTS signals_ai_health;
CREATE TRIGGER signals_ai_health AFTER INSERT ON signals BEGIN
    INSERT INTO health_hours(hour, signals, confirmed, with_signal_created)
    SELECT h.column1, 1, c.c, c.c * NEW.has_signal_created
      FROM (VALUES (substr(NEW.id_time, 1, 13)), ('*')) AS h,
           (SELECT NEW.status IN ('ACTIVE', 'EXITED') AS c) AS c
     WHERE true
    ON CONFLICT (hour) DO UPDATE SET signals = signals + excluded.signals,
        confirmed = confirmed + excluded.confirmed,
        with_signal_created = with_signal_created + excluded.with_signal_created;
END;

DROP TRIGGER IF EXISTS signals_au_health;
CREATE TRIGGER signals_au_health AFTER UPDATE OF status, has_signal_created ON signals
WHEN (OLD.status IN ('ACTIVE', 'EXITED')) <> (NEW.status IN ('ACTIVE', 'EXITED'))
  OR OLD.has_signal_created <> NEW.has_signal_created BEGIN
    INSERT INTO health_hours(hour, signals, confirmed, with_signal_created)
    SELECT h.column1, 0, c.n - c.o, c.n * NEW.has_signal_created - c.o * OLD.has_signal_created
      FROM (VALUES (substr(NEW.id_time, 1, 13)), ('*')) AS h,
           (SELECT NEW.status IN ('ACTIVE', 'EXITED') AS n,
                   OLD.status IN ('ACTIVE', 'EXITED') AS o) AS c
     WHERE true
    ON CONFLICT (hour) DO UPDATE SET confirmed = confirmed + excluded.confirmed,
        with_signal_created = with_signal_created + excluded.with_signal_created;
END;

DROP TRIGGER IF EXISTS signals_ad_health;
CREATE TRIGGER signals_ad_health AFTER DELETE ON signals BEGIN
    UPDATE health_hours SET signals = signals - 1,
           confirmed = confirmed - (OLD.status IN ('ACTIVE', 'EXITED')),
           with_signal_created = with_signal_created
               - (OLD.status IN ('ACTIVE', 'EXITED')) * OLD.has_signal_created
     WHERE hour IN (substr(OLD.id_time, 1, 13), '*');
    DELETE FROM health_hours WHERE hour IN (substr(OLD.id_time, 1, 13), '*')
       AND signals = 0 AND penalty = 0;
END;

-- health_gap_counts and the penalty in health_hours, from each gap row written. A signal's
-- penalty is min(100, sum of the weights of its gaps that are abnormal once due); `s` below is
-- that sum after the change, so each trigger adds the change in the capped value.
DROP TRIGGER IF EXISTS signal_gaps_ai_health;
CREATE TRIGGER signal_gaps_ai_health AFTER INSERT ON signal_gaps BEGIN
    INSERT INTO health_gap_counts(hour, gap, severity, n)
    SELECT column1, NEW.gap, NEW.severity, 1
      FROM (VALUES (substr(NEW.id_time, 1, 13)), ('*')) WHERE true
    ON CONFLICT (hour, gap, severity) DO UPDATE SET n = n + excluded.n;
    INSERT INTO health_hours(hour, penalty)
    SELECT h.column1, min(100, p.s) - min(100, p.s - p.w)
      FROM (VALUES (substr(NEW.id_time, 1, 13)), ('*')) AS h,
           (SELECT (SELECT coalesce(sum(t.weight), 0) FROM signal_gaps AS g
                      JOIN gap_types AS t ON t.gap = g.gap
                     WHERE g.trade_id = NEW.trade_id AND g.severity = 'abnormal') AS s,
                   (SELECT weight FROM gap_types WHERE gap = NEW.gap) AS w) AS p
     WHERE NEW.severity = 'abnormal' AND min(100, p.s) <> min(100, p.s - p.w)
    ON CONFLICT (hour) DO UPDATE SET penalty = penalty + excluded.penalty;
END;

DROP TRIGGER IF EXISTS signal_gaps_ad_health;
CREATE TRIGGER signal_gaps_ad_health AFTER DELETE ON signal_gaps BEGIN
    UPDATE health_gap_counts SET n = n - 1
     WHERE hour IN (substr(OLD.id_time, 1, 13), '*') AND gap = OLD.gap
       AND severity = OLD.severity;
    DELETE FROM health_gap_counts WHERE hour IN (substr(OLD.id_time, 1, 13), '*')
       AND gap = OLD.gap AND severity = OLD.severity AND n = 0;
    UPDATE health_hours SET penalty = penalty + (
        SELECT min(100, p.s) - min(100, p.s + p.w) FROM
            (SELECT (SELECT coalesce(sum(t.weight), 0) FROM signal_gaps AS g
                       JOIN gap_types AS t ON t.gap = g.gap
                      WHERE g.trade_id = OLD.trade_id AND g.severity = 'abnormal') AS s,
                    (SELECT weight FROM gap_types WHERE gap = OLD.gap) AS w) AS p)
     WHERE OLD.severity = 'abnormal' AND hour IN (substr(OLD.id_time, 1, 13), '*');
    DELETE FROM health_hours WHERE hour IN (substr(OLD.id_time, 1, 13), '*')
       AND signals = 0 AND penalty = 0;
END;

DROP TRIGGER IF EXISTS signal_gaps_au_health;
CREATE TRIGGER signal_gaps_au_health AFTER UPDATE OF severity ON signal_gaps
WHEN OLD.severity IS NOT NEW.severity BEGIN
    UPDATE health_gap_counts SET n = n - 1
     WHERE hour IN (substr(OLD.id_time, 1, 13), '*') AND gap = OLD.gap
       AND severity = OLD.severity;
    DELETE FROM health_gap_counts WHERE hour IN (substr(OLD.id_time, 1, 13), '*')
       AND gap = OLD.gap AND severity = OLD.severity AND n = 0;
    INSERT INTO health_gap_counts(hour, gap, severity, n)
    SELECT column1, NEW.gap, NEW.severity, 1
      FROM (VALUES (substr(NEW.id_time, 1, 13)), ('*')) WHERE true
    ON CONFLICT (hour, gap, severity) DO UPDATE SET n = n + excluded.n;
    UPDATE health_hours SET penalty = penalty + (
        SELECT min(100, p.s)
               - min(100, p.s - p.w * (NEW.severity = 'abnormal') + p.w * (OLD.severity = 'abnormal'))
          FROM (SELECT (SELECT coalesce(sum(t.weight), 0) FROM signal_gaps AS g
                          JOIN gap_types AS t ON t.gap = g.gap
                         WHERE g.trade_id = NEW.trade_id AND g.severity = 'abnormal') AS s,
                       (SELECT weight FROM gap_types WHERE gap = NEW.gap) AS w) AS p)
     WHERE hour IN (substr(NEW.id_time, 1, 13), '*');
    DELETE FROM health_hours WHERE hour IN (substr(NEW.id_time, 1, 13), '*')
       AND signals = 0 AND penalty = 0;
END;

DROP VIEW IF EXISTS v_now;
-- "Now" for the sqlite3 shell. The server and CLI run the views below with their own clock in
-- its place (sigsync.py: at_now), so the shell, the API and the CLI compute the same numbers.
-- To ask the shell "as of" another instant, replace it inside a transaction you roll back:
--   BEGIN; DROP VIEW v_now; CREATE VIEW v_now AS SELECT '2025-12-15T14:00:00.000Z' AS now;
--   SELECT * FROM v_health_summary; ROLLBACK;
CREATE VIEW v_now AS SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS now;

DROP VIEW IF EXISTS v_gap_status;
-- Every gap row as of now: whether it is due, open, and its severity now. `eventual` is the
-- severity the aggregates count it with (signal_gaps.severity).
CREATE VIEW v_gap_status AS
SELECT trade_id, gap, id_time, eventual,
       CASE WHEN due_at IS NULL OR now > due_at THEN 1
            ELSE before_due = 'expected' END AS open,
       CASE WHEN due_at IS NOT NULL AND NOT now > due_at THEN 'expected'
            WHEN gap = 'stale_mfe' THEN
                CASE WHEN last_activity > due_at THEN 'abnormal' ELSE 'expected' END
            ELSE eventual END AS severity,
       CASE WHEN before_due = 'closed' THEN due_at ELSE since END AS since,
       filled_by, weight, evidence
  FROM (SELECT g.trade_id, g.gap, g.id_time, g.severity AS eventual, g.before_due, g.since,
               g.evidence, t.filled_by, t.weight, n.now, a.last_received_at AS last_activity,
               strftime('%Y-%m-%dT%H:%M:%fZ', g.due_base,
                        '+' || th.seconds || ' seconds') AS due_at
          FROM signal_gaps AS g
          JOIN gap_types AS t ON t.gap = g.gap
          CROSS JOIN v_now AS n
          LEFT JOIN v_gap_thresholds AS th ON th.gap = g.gap
          LEFT JOIN symbol_activity AS a ON a.symbol_key = g.symbol_key);

DROP VIEW IF EXISTS v_signal_gaps;
-- Open gaps as of now, with their effective severity: one row per (signal, gap).
--   select gap, severity, count(*) from v_signal_gaps group by 1, 2;
CREATE VIEW v_signal_gaps AS
SELECT trade_id, gap, severity, since, filled_by, weight, evidence
  FROM v_gap_status WHERE open;

DROP VIEW IF EXISTS signal_health_metrics;
-- Per-signal health (the seeds' name): 100 minus the weights of its abnormal gaps, floor 0.
-- Per signal: a correlated look-up of its own gap rows (primary key prefix), so asking for a
-- page of signals (WHERE trade_id IN (...)) reads only their gaps, at any table size.
CREATE VIEW signal_health_metrics AS
SELECT trade_id, status, max(0, 100 - coalesce(json_extract(h, '$.penalty'), 0)) AS health_score,
       coalesce(json_extract(h, '$.open'), 0) AS open_gaps,
       coalesce(json_extract(h, '$.abnormal'), 0) AS abnormal_gaps,
       json_extract(h, '$.gaps') AS gaps
  FROM (SELECT s.trade_id, s.status,
               (SELECT json_object('penalty', sum(CASE WHEN g.severity = 'abnormal'
                                                       THEN g.weight END),
                                   'open', count(*), 'abnormal', sum(g.severity = 'abnormal'),
                                   'gaps', group_concat(g.gap || ':' || g.severity))
                  FROM v_signal_gaps AS g WHERE g.trade_id = s.trade_id) AS h
          FROM signals AS s);

DROP VIEW IF EXISTS v_health_summary;
-- The overall health, one row per window ('7d': signals of the last 7 days by triangle time;
-- 'all'): the mean per-signal score and the counts behind it. Signals without gaps score 100.
-- Read from the trigger-kept aggregates (health_hours, health_gap_counts: every gap counted as
-- it is once due), plus the signals of the 7-day window's partial first hour, corrected for
-- the gap rows whose deadline is still ahead (`near`; see the Health section of the tables).
CREATE VIEW v_health_summary AS
WITH n AS (SELECT now FROM v_now),
th AS (SELECT gap, seconds FROM v_gap_thresholds),
start7 AS (SELECT strftime('%Y-%m-%dT%H:%M:%fZ', now, '-7 days') AS since FROM n),
-- lo..hi: the whole hours of the window in the aggregates; since..edge_end: its partial hour
windows(name, since, lo, hi, edge_end) AS (
    SELECT '7d', since, strftime('%Y-%m-%dT%H', since, '+1 hour'), '9',
           substr(since, 1, 13) || ';' FROM start7
    UNION ALL SELECT 'all', '', '*', '*', ''),
edge AS MATERIALIZED (
    SELECT w.name, s.trade_id, s.status, s.has_signal_created
      FROM windows AS w CROSS JOIN signals AS s
     WHERE s.id_time >= w.since AND s.id_time < w.edge_end),
-- symbols that stale_mfe rows name, one index seek each
keys(k) AS (
    SELECT min(symbol_key) FROM signal_gaps WHERE gap = 'stale_mfe' AND severity = 'abnormal'
       AND due_base IS NOT NULL
    UNION ALL
    SELECT (SELECT min(symbol_key) FROM signal_gaps WHERE gap = 'stale_mfe'
               AND severity = 'abnormal' AND due_base IS NOT NULL AND symbol_key > k)
      FROM keys WHERE k IS NOT NULL),
-- gap rows whose state now may differ from their state once due
near(trade_id, gap) AS (
    SELECT g.trade_id, g.gap FROM symbol_activity AS a CROSS JOIN signal_gaps AS g
        ON g.gap = 'stale_mfe' AND g.severity = 'abnormal' AND g.symbol_key = a.symbol_key
       AND g.due_base >= strftime('%Y-%m-%dT%H:%M:%fZ',
               min((SELECT now FROM n), a.last_received_at),
               '-' || (SELECT seconds FROM th WHERE gap = 'stale_mfe') || ' seconds')
    UNION ALL
    SELECT g.trade_id, g.gap FROM keys CROSS JOIN signal_gaps AS g
        ON g.gap = 'stale_mfe' AND g.severity = 'abnormal' AND g.symbol_key = keys.k
       AND g.due_base IS NOT NULL
     WHERE keys.k IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM symbol_activity WHERE symbol_key = keys.k)
    UNION ALL
    SELECT g.trade_id, g.gap FROM th CROSS JOIN signal_gaps AS g
        ON g.gap = th.gap AND g.severity IN ('abnormal', 'expected') AND g.symbol_key IS NULL
       AND g.due_base >= strftime('%Y-%m-%dT%H:%M:%fZ', (SELECT now FROM n),
                                  '-' || th.seconds || ' seconds')),
near_rows AS MATERIALIZED (
    SELECT st.* FROM near CROSS JOIN v_gap_status AS st
        ON st.trade_id = near.trade_id AND st.gap = near.gap),
near_trades AS MATERIALIZED (
    SELECT st.trade_id, min(st.id_time) AS id_time,
           min(100, coalesce(sum(CASE WHEN st.eventual = 'abnormal' THEN st.weight END), 0))
               AS eventual,
           min(100, coalesce(sum(CASE WHEN st.open AND st.severity = 'abnormal'
                                      THEN st.weight END), 0)) AS current
      FROM (SELECT DISTINCT trade_id FROM near) AS t CROSS JOIN v_gap_status AS st
        ON st.trade_id = t.trade_id
     GROUP BY st.trade_id),
gap_counts(name, gap, severity, n) AS (
    SELECT w.name, c.gap, c.severity, c.n
      FROM windows AS w JOIN health_gap_counts AS c ON c.hour BETWEEN w.lo AND w.hi
    UNION ALL
    SELECT e.name, g.gap, g.severity, 1 FROM edge AS e CROSS JOIN signal_gaps AS g
        ON g.trade_id = e.trade_id
    UNION ALL
    SELECT w.name, r.gap, r.eventual, -1 FROM windows AS w JOIN near_rows AS r
        ON r.id_time >= w.since
    UNION ALL
    SELECT w.name, r.gap, r.severity, 1 FROM windows AS w JOIN near_rows AS r
        ON r.id_time >= w.since WHERE r.open),
by_type AS (
    SELECT name, gap, sum(CASE WHEN severity = 'abnormal' THEN n ELSE 0 END) AS a,
           sum(CASE WHEN severity = 'expected' THEN n ELSE 0 END) AS e
      FROM gap_counts GROUP BY name, gap HAVING a <> 0 OR e <> 0),
counted AS (
    SELECT w.name,
           coalesce((SELECT sum(signals) FROM health_hours WHERE hour BETWEEN w.lo AND w.hi), 0)
           + (SELECT count(*) FROM edge WHERE edge.name = w.name) AS signals,
           coalesce((SELECT sum(confirmed) FROM health_hours
                      WHERE hour BETWEEN w.lo AND w.hi), 0)
           + (SELECT count(*) FROM edge WHERE edge.name = w.name
                 AND status IN ('ACTIVE', 'EXITED')) AS confirmed,
           coalesce((SELECT sum(with_signal_created) FROM health_hours
                      WHERE hour BETWEEN w.lo AND w.hi), 0)
           + (SELECT count(*) FROM edge WHERE edge.name = w.name
                 AND status IN ('ACTIVE', 'EXITED') AND has_signal_created = 1)
               AS with_signal_created,
           coalesce((SELECT sum(penalty) FROM health_hours WHERE hour BETWEEN w.lo AND w.hi), 0)
           + coalesce((SELECT sum(p) FROM (
                 SELECT min(100, sum(t.weight)) AS p FROM edge AS e
                   CROSS JOIN signal_gaps AS g ON g.trade_id = e.trade_id
                   JOIN gap_types AS t ON t.gap = g.gap
                  WHERE e.name = w.name AND g.severity = 'abnormal' GROUP BY g.trade_id)), 0)
           + coalesce((SELECT sum(current - eventual) FROM near_trades
                        WHERE id_time >= w.since), 0) AS penalty
      FROM windows AS w)
SELECT c.name AS window, c.signals,
       CASE WHEN c.signals > 0 THEN round(100.0 - 1.0 * c.penalty / c.signals, 2) END AS score,
       (SELECT coalesce(sum(a), 0) FROM by_type WHERE name = c.name) AS abnormal_gaps,
       (SELECT coalesce(sum(e), 0) FROM by_type WHERE name = c.name) AS expected_gaps,
       (SELECT json_group_object(gap, json_object('abnormal', a, 'expected', e)) FROM (
            SELECT gap, a, e FROM by_type WHERE name = c.name ORDER BY gap)) AS gaps_by_type,
       c.confirmed,
       CASE WHEN c.confirmed > 0
            THEN round(1.0 * c.with_signal_created / c.confirmed, 4) END AS signal_coverage,
       (SELECT json_group_object(substr(name, 8), value) FROM counters
         WHERE name LIKE 'filled:%') AS filled_by_tier
  FROM counted AS c;

DROP VIEW IF EXISTS v_global_conditions;
-- Conditions of the whole feed, beside the per-signal gaps: one row each, active 0/1.
CREATE VIEW v_global_conditions AS
WITH n AS (SELECT now FROM v_now), st AS (SELECT * FROM v_settings),
last_request AS (SELECT max(received_at) AS at FROM requests WHERE source = 'webhook'),
last_run AS (SELECT started_at, outcome, error FROM sync_runs WHERE outcome <> 'skipped'
              ORDER BY run_id DESC LIMIT 1),
-- TradingView counts per alert, and an alert is one chart: its symbol and timeframe, read from
-- the webhooks of the rate window (an index range). A webhook that names no symbol (a
-- heartbeat, a v2 batch) could come from any alert, so it counts for every one.
recent AS (SELECT CASE WHEN json_valid(CAST(raw_body AS TEXT)) THEN CAST(raw_body AS TEXT) END
                  AS body
             FROM requests WHERE source = 'webhook' AND received_at >
                  strftime('%Y-%m-%dT%H:%M:%fZ', (SELECT now FROM n),
                           '-' || (SELECT rate_window_seconds FROM st) || ' seconds')),
keyed AS MATERIALIZED (SELECT CASE WHEN s IS NOT NULL
                      THEN replace(substr(s, instr(s, ':') + 1), ' ', '')   -- = symbol_key()
                           || coalesce(' ' || tf, '') END AS alert
            FROM (SELECT json_extract(body, '$.symbol') AS s,
                         json_extract(body, '$.timeframe') AS tf FROM recent)),
busiest AS (SELECT alert, n FROM (
                SELECT alert, count(*) + (SELECT count(*) FROM keyed WHERE alert IS NULL) AS n
                  FROM keyed WHERE alert IS NOT NULL GROUP BY alert
                UNION ALL
                SELECT NULL, count(*) FROM keyed WHERE alert IS NULL)
             ORDER BY n DESC, alert IS NULL, alert LIMIT 1)
SELECT 'indicator_silent' AS condition,
       CASE WHEN (SELECT at FROM last_request) IS NULL
                 OR (SELECT now FROM n) > strftime('%Y-%m-%dT%H:%M:%fZ', (SELECT at FROM last_request),
                        '+' || (SELECT silent_seconds FROM st) || ' seconds') THEN 1 ELSE 0 END AS active,
       json_object('last_event_at', (SELECT at FROM last_request),
                   'silent_after_seconds', (SELECT silent_seconds FROM st)) AS detail
UNION ALL
SELECT 'dead_letters_24h',
       (SELECT count(*) FROM rejected WHERE received_at >
            strftime('%Y-%m-%dT%H:%M:%fZ', (SELECT now FROM n), '-1 day')) > 0,
       json_object('count', (SELECT count(*) FROM rejected WHERE received_at >
            strftime('%Y-%m-%dT%H:%M:%fZ', (SELECT now FROM n), '-1 day')))
UNION ALL
SELECT 'sync_late',
       coalesce((SELECT now FROM n) > strftime('%Y-%m-%dT%H:%M:%fZ',
            max(coalesce((SELECT started_at FROM last_run), ''),
                coalesce((SELECT server_started_at FROM st), '')),
            '+' || (2 * (SELECT sync_seconds FROM st) + 60) || ' seconds'), 0),
       json_object('last_run_started_at', (SELECT started_at FROM last_run))
UNION ALL
SELECT 'sync_failing', coalesce((SELECT outcome = 'failed' FROM last_run), 0),
       json_object('error', (SELECT error FROM last_run))
UNION ALL
SELECT 'alert_rate_near_cutoff',
       coalesce((SELECT n FROM busiest), 0) >= (SELECT rate_warn_at FROM st),
       json_object('alert', (SELECT alert FROM busiest),
                   'requests_in_window', coalesce((SELECT n FROM busiest), 0),
                   'all_requests_in_window', (SELECT count(*) FROM recent),
                   'window_seconds', (SELECT rate_window_seconds FROM st),
                   'tradingview_cutoff', '15 alerts in 3 minutes');
