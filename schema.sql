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
CREATE INDEX events_type_received ON events(event_type, received_at);

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
-- The few signals a pass revisits by symbol: pending ones (alternation) and open trades (prices).
CREATE INDEX signals_pending ON signals(symbol, signal_time) WHERE status = 'PENDING';
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
    error         TEXT                         -- the exception, when outcome = 'failed'
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

-- Counters that are not rows of the log (duplicates, rejections by reason): kept here so that
-- they survive restarts. Derived from nothing; never rebuilt.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,                -- e.g. 'duplicates', 'rejected:invalid_json'
    value INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

PRAGMA user_version = 1;

-- @views ---------------------------------------------------------------------------------------
-- Re-created on every start: rules live here, data does not.

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
