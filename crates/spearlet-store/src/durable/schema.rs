//! The SQLite side of the durable store: the schema, the connection settings, and the conversion
//! between [`ExecutionRecord`]s or [`TaskRecord`]s and table rows.
//!
//! Every field of an execution is a real column, so an operator can query the file with the
//! `sqlite3` CLI. Enums are stored by their wire names (`COMPLETED`, `SYNC`, ...); the string maps
//! (`metrics`, `metadata`, the request's environment and headers) and the status timeline are
//! JSON text, readable with SQLite's `json_*` functions. Output, logs and the request input are
//! BLOBs.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Statement, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use spearlet_core::{
    ErrorCode, ExecutionMode, ExecutionRecord, ExecutionStatus, ResultEncoding, SpearError,
    SpearResult, StoredRequest, TaskRecord,
};

/// The layout version kept in `PRAGMA user_version`. A file with a larger number was written by
/// a newer spearlet and is refused rather than misread.
const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for the other connection's write transaction before failing with
/// `SQLITE_BUSY`. Batches commit in milliseconds, so this only matters when the disk stalls.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the WAL file is truncated to after a checkpoint; see [`open_connection`].
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// The whole schema. `sequence` is the rowid, so the table itself is ordered by the pagination
/// key; the unique constraint on `execution_id` gives the lookup index by id.
const CREATE_SCHEMA: &str = "
BEGIN;
CREATE TABLE IF NOT EXISTS executions (
    sequence INTEGER PRIMARY KEY,
    -- Not UNIQUE: the in-memory index maps ids to sequences and the manager never gives one id
    -- two sequences; an index here would cost page writes in every commit.
    execution_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    task_name TEXT NOT NULL,
    function_name TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at_ms INTEGER NOT NULL,
    started_at_us INTEGER,
    completed_at_us INTEGER,
    execution_time_ms INTEGER NOT NULL,
    memory_used_bytes INTEGER NOT NULL,
    output_content_type TEXT NOT NULL,
    result_encoding TEXT NOT NULL,
    error_code TEXT,
    error_message TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    metadata_json TEXT NOT NULL,
    output BLOB NOT NULL,
    logs BLOB NOT NULL,
    request_input BLOB NOT NULL,
    request_session_id TEXT NOT NULL,
    request_environment_json TEXT NOT NULL,
    request_headers_json TEXT NOT NULL,
    requested_timeout_ms INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    timeline_json TEXT NOT NULL
);
-- No secondary indexes: listing and filtering are served from the in-memory index, and every
-- index costs page writes in each group commit (profiles showed them dominating the writer).
-- The rare full scans (unfinished records at open, deleting a task's history) are cheap next to
-- that. Files from before this change lose the indexes here.
DROP INDEX IF EXISTS executions_by_task;
DROP INDEX IF EXISTS executions_by_status;
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    task_name TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    record_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_metadata (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
COMMIT;
";

/// The columns of a summary, in the order [`summary_from_row`] reads them. A macro rather than a
/// constant so that [`FULL_COLUMNS`] can extend it with `concat!`.
macro_rules! summary_columns {
    () => {
        "sequence, execution_id, task_id, task_name, function_name, mode, status, \
         submitted_at_ms, started_at_us, completed_at_us, execution_time_ms, memory_used_bytes, \
         output_content_type, result_encoding, error_code, error_message, metrics_json, attempt, \
         instance_id, request_fingerprint, metadata_json"
    };
}

/// The columns a summary leaves out, in the order [`full_record_from_row`] reads them after the
/// summary columns.
macro_rules! payload_columns {
    () => {
        "output, logs, request_input, request_session_id, request_environment_json, \
         request_headers_json, requested_timeout_ms, max_retries, timeline_json"
    };
}

/// The index of the first payload column (`output`) in [`FULL_COLUMNS`].
const FIRST_PAYLOAD_COLUMN: usize = 21;

const SUMMARY_COLUMNS: &str = summary_columns!();
const FULL_COLUMNS: &str = concat!(summary_columns!(), ", ", payload_columns!());

/// Inserts a record or replaces the row with the same sequence or the same execution id.
pub(crate) const UPSERT_EXECUTION: &str = concat!(
    "INSERT OR REPLACE INTO executions (",
    summary_columns!(),
    ", ",
    payload_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)"
);

pub(crate) const DELETE_EXECUTIONS_OF_TASK: &str = "DELETE FROM executions WHERE task_id = ?1";

pub(crate) const DELETE_EXECUTION: &str = "DELETE FROM executions WHERE sequence = ?1";

const DELETE_EXECUTION_SEQUENCE_RANGE: &str =
    "DELETE FROM executions WHERE sequence BETWEEN ?1 AND ?2";

/// Raises the persisted sequence high-water mark. It survives retention deleting the newest
/// records, so a restarted node never hands out a sequence a client has already paged past.
pub(crate) const RAISE_HIGHEST_SEQUENCE: &str = "INSERT INTO store_metadata (key, value) \
     VALUES ('highest_sequence', ?1) \
     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)";

/// Everything read from the file when the store opens.
pub(crate) struct LoadedState {
    pub tasks: Vec<TaskRecord>,
    /// Every execution without output and logs, in sequence order.
    pub summaries: Vec<ExecutionRecord>,
    /// Full records of pending and running executions, in sequence order.
    pub unfinished_executions: Vec<ExecutionRecord>,
    pub highest_sequence: u64,
}

/// Returns a closure turning a SQLite error into an internal [`SpearError`] that says what the
/// store was doing.
pub(crate) fn sqlite_failure(what: impl Display) -> impl FnOnce(rusqlite::Error) -> SpearError {
    move |error| SpearError::internal(format!("{what}: {error}"))
}

/// Opens a connection in WAL mode with `synchronous=FULL`: every commit is fsynced to the WAL
/// before it returns, so a committed batch survives `kill -9` and power loss. (`NORMAL` would
/// only survive the process dying, not the machine.)
pub(crate) fn open_connection(path: &Path) -> SpearResult<Connection> {
    let opening = format!("opening the store file {}", path.display());
    let connection = Connection::open(path).map_err(sqlite_failure(&opening))?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite_failure(&opening))?;
    let journal_mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sqlite_failure(&opening))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(SpearError::internal(format!(
            "{opening}: SQLite refused WAL mode (journal mode is {journal_mode})"
        )));
    }
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite_failure(&opening))?;
    // After a checkpoint the WAL file is truncated to this size, so one burst of writes does not
    // leave a large WAL file behind for good.
    connection
        .pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
        .map_err(sqlite_failure(&opening))?;
    Ok(connection)
}

/// Creates the tables and indexes when missing and refuses files from a newer schema.
pub(crate) fn create_schema(connection: &Connection) -> SpearResult<()> {
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite_failure("reading the store schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(SpearError::internal(format!(
            "the store file has schema version {version}, newer than this spearlet's \
             {SCHEMA_VERSION}"
        )));
    }
    connection
        .execute_batch(CREATE_SCHEMA)
        .map_err(sqlite_failure("creating the store schema"))?;
    if version < SCHEMA_VERSION {
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite_failure("recording the store schema version"))?;
    }
    Ok(())
}

/// Reads tasks, execution summaries, unfinished executions and the sequence high-water mark.
pub(crate) fn load(connection: &Connection) -> SpearResult<LoadedState> {
    let tasks = load_tasks(connection)?;

    let mut statement = connection
        .prepare(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM executions ORDER BY sequence"
        ))
        .map_err(sqlite_failure("preparing to load execution summaries"))?;
    let summaries = statement
        .query_map([], summary_from_row)
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(sqlite_failure("loading execution summaries"))?;

    let mut statement = connection
        .prepare(&format!(
            "SELECT {FULL_COLUMNS} FROM executions WHERE status IN ('{}', '{}') ORDER BY sequence",
            ExecutionStatus::Pending.as_str(),
            ExecutionStatus::Running.as_str(),
        ))
        .map_err(sqlite_failure("preparing to load unfinished executions"))?;
    let unfinished_executions = statement
        .query_map([], full_record_from_row)
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(sqlite_failure("loading unfinished executions"))?;

    let persisted_highest: Option<i64> = connection
        .query_row(
            "SELECT value FROM store_metadata WHERE key = 'highest_sequence'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(sqlite_failure("reading the sequence high-water mark"))?;
    let persisted_highest = u64::try_from(persisted_highest.unwrap_or(0)).unwrap_or(0);
    let highest_in_table = summaries.last().map_or(0, |summary| summary.sequence);

    Ok(LoadedState {
        tasks,
        summaries,
        unfinished_executions,
        highest_sequence: persisted_highest.max(highest_in_table),
    })
}

fn load_tasks(connection: &Connection) -> SpearResult<Vec<TaskRecord>> {
    let mut statement = connection
        .prepare("SELECT task_id, record_json FROM tasks ORDER BY task_id")
        .map_err(sqlite_failure("preparing to load tasks"))?;
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(sqlite_failure("loading tasks"))?;
    rows.into_iter()
        .map(|(task_id, record_json)| {
            serde_json::from_str(&record_json).map_err(|error| {
                SpearError::internal(format!("decoding the stored task {task_id}: {error}"))
            })
        })
        .collect()
}

/// Writes a task in its own transaction; with `synchronous=FULL` it is durable on return.
pub(crate) fn put_task(connection: &mut Connection, task: &TaskRecord) -> SpearResult<()> {
    let writing = format!("writing task {}", task.task_id);
    let record_json = serde_json::to_string(task)
        .map_err(|error| SpearError::internal(format!("{writing}: {error}")))?;
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_failure(&writing))?;
    transaction
        .execute(
            "INSERT OR REPLACE INTO tasks (task_id, task_name, updated_at_ms, record_json) \
             VALUES (?1, ?2, ?3, ?4)",
            params![
                task.task_id,
                task.task_name,
                task.updated_at_ms,
                record_json
            ],
        )
        .map_err(sqlite_failure(&writing))?;
    transaction.commit().map_err(sqlite_failure(&writing))
}

/// Deletes a task durably and returns whether it existed.
pub(crate) fn delete_task(connection: &mut Connection, task_id: &str) -> SpearResult<bool> {
    let deleting = format!("deleting task {task_id}");
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_failure(&deleting))?;
    let deleted_rows = transaction
        .execute("DELETE FROM tasks WHERE task_id = ?1", [task_id])
        .map_err(sqlite_failure(&deleting))?;
    transaction.commit().map_err(sqlite_failure(&deleting))?;
    Ok(deleted_rows > 0)
}

/// Reads one full record by its sequence, checking the id so that a row replaced in between is
/// not mistaken for the one asked for.
pub(crate) fn read_execution(
    connection: &Connection,
    sequence: u64,
    execution_id: &str,
) -> SpearResult<Option<ExecutionRecord>> {
    let reading = format!("reading execution {execution_id}");
    let sequence = sequence_to_sql(sequence).map_err(sqlite_failure(&reading))?;
    let mut statement = connection
        .prepare_cached(&format!(
            "SELECT {FULL_COLUMNS} FROM executions WHERE sequence = ?1 AND execution_id = ?2"
        ))
        .map_err(sqlite_failure(&reading))?;
    statement
        .query_row(params![sequence, execution_id], full_record_from_row)
        .optional()
        .map_err(sqlite_failure(&reading))
}

/// Binds every field of `record` to a prepared [`UPSERT_EXECUTION`] and runs it.
pub(crate) fn upsert_execution(
    statement: &mut Statement<'_>,
    record: &ExecutionRecord,
) -> rusqlite::Result<()> {
    let metrics_json = json_text(&record.metrics)?;
    let metadata_json = json_text(&record.metadata)?;
    let environment_json = json_text(&record.request.environment)?;
    let headers_json = json_text(&record.request.headers)?;
    let timeline_json = json_text(&record.timeline)?;
    statement.execute(params![
        sequence_to_sql(record.sequence)?,
        record.execution_id,
        record.task_id,
        record.task_name,
        record.function_name,
        mode_name(record.mode),
        record.status.as_str(),
        record.submitted_at_ms,
        record.started_at_us,
        record.completed_at_us,
        record.execution_time_ms,
        record.memory_used_bytes,
        record.output_content_type,
        result_encoding_name(record.result_encoding),
        record.error_code.map(ErrorCode::as_str),
        record.error_message,
        metrics_json,
        record.attempt,
        record.instance_id,
        record.request_fingerprint,
        metadata_json,
        &record.output[..],
        &record.logs[..],
        &record.request.input[..],
        record.request.session_id,
        environment_json,
        headers_json,
        record.request.requested_timeout_ms,
        record.request.max_retries,
        timeline_json,
    ])?;
    Ok(())
}

/// Deletes the rows with these sequences in one transaction.
pub(crate) fn delete_sequences(
    connection: &mut Connection,
    sequences: &[u64],
) -> rusqlite::Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        // Victims are mostly runs of consecutive sequences (the oldest records): one range
        // delete per run instead of one statement per row.
        let mut statement = transaction.prepare_cached(DELETE_EXECUTION_SEQUENCE_RANGE)?;
        for (first, last) in consecutive_runs(sequences) {
            statement.execute([sequence_to_sql(first)?, sequence_to_sql(last)?])?;
        }
    }
    transaction.commit()
}

/// Splits sorted-or-not sequences into runs of consecutive numbers, as (first, last) pairs.
/// Only numerically adjacent sequences are merged, so a range never covers a sequence that was
/// not in the input.
pub(crate) fn consecutive_runs(sequences: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = sequences.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for sequence in sorted {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == sequence => *last = sequence,
            _ => runs.push((sequence, sequence)),
        }
    }
    runs
}

/// SQLite integers are signed; a sequence beyond `i64::MAX` cannot be stored.
pub(crate) fn sequence_to_sql(sequence: u64) -> rusqlite::Result<i64> {
    i64::try_from(sequence)
        .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))
}

fn json_text(value: &impl Serialize) -> rusqlite::Result<String> {
    serde_json::to_string(value)
        .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))
}

/// Reads a row selected with [`SUMMARY_COLUMNS`] (or [`FULL_COLUMNS`]) into a summary: a record
/// with empty output, logs, request and timeline.
fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<ExecutionRecord> {
    let sequence: i64 = row.get(0)?;
    Ok(ExecutionRecord {
        sequence: u64::try_from(sequence).map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(0, Type::Integer, Box::new(error))
        })?,
        execution_id: row.get(1)?,
        task_id: row.get(2)?,
        task_name: row.get(3)?,
        function_name: row.get(4)?,
        mode: named_column(row, 5, mode_from_name)?,
        status: named_column(row, 6, status_from_name)?,
        submitted_at_ms: row.get(7)?,
        started_at_us: row.get(8)?,
        completed_at_us: row.get(9)?,
        execution_time_ms: row.get(10)?,
        memory_used_bytes: row.get(11)?,
        output: Bytes::new(),
        output_content_type: row.get(12)?,
        result_encoding: named_column(row, 13, result_encoding_from_name)?,
        logs: Bytes::new(),
        error_code: optional_named_column(row, 14, error_code_from_name)?,
        error_message: row.get(15)?,
        metrics: json_column(row, 16)?,
        attempt: row.get(17)?,
        instance_id: row.get(18)?,
        request_fingerprint: row.get(19)?,
        metadata: json_column(row, 20)?,
        request: StoredRequest::default(),
        timeline: Vec::new(),
    })
}

/// Reads a row selected with [`FULL_COLUMNS`] into a complete record.
fn full_record_from_row(row: &Row<'_>) -> rusqlite::Result<ExecutionRecord> {
    let mut record = summary_from_row(row)?;
    let column = FIRST_PAYLOAD_COLUMN;
    record.output = Bytes::from(row.get::<_, Vec<u8>>(column)?);
    record.logs = Bytes::from(row.get::<_, Vec<u8>>(column + 1)?);
    record.request = StoredRequest {
        input: Bytes::from(row.get::<_, Vec<u8>>(column + 2)?),
        session_id: row.get(column + 3)?,
        environment: json_column(row, column + 4)?,
        headers: json_column(row, column + 5)?,
        requested_timeout_ms: row.get(column + 6)?,
        max_retries: row.get(column + 7)?,
    };
    record.timeline = json_column(row, column + 8)?;
    Ok(record)
}

fn named_column<T>(
    row: &Row<'_>,
    column: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let name: String = row.get(column)?;
    parse(&name).ok_or_else(|| unknown_name(column, &name))
}

fn optional_named_column<T>(
    row: &Row<'_>,
    column: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<Option<T>> {
    let Some(name) = row.get::<_, Option<String>>(column)? else {
        return Ok(None);
    };
    parse(&name)
        .map(Some)
        .ok_or_else(|| unknown_name(column, &name))
}

fn unknown_name(column: usize, name: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        Type::Text,
        Box::new(SpearError::internal(format!(
            "unknown stored value '{name}'"
        ))),
    )
}

fn json_column<T: DeserializeOwned>(row: &Row<'_>, column: usize) -> rusqlite::Result<T> {
    let text: String = row.get(column)?;
    serde_json::from_str(&text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(error))
    })
}

fn status_from_name(name: &str) -> Option<ExecutionStatus> {
    match name {
        "PENDING" => Some(ExecutionStatus::Pending),
        "RUNNING" => Some(ExecutionStatus::Running),
        "COMPLETED" => Some(ExecutionStatus::Completed),
        "FAILED" => Some(ExecutionStatus::Failed),
        "CANCELLED" => Some(ExecutionStatus::Cancelled),
        "TIMEOUT" => Some(ExecutionStatus::Timeout),
        _ => None,
    }
}

fn mode_name(mode: ExecutionMode) -> &'static str {
    match mode {
        ExecutionMode::Sync => "SYNC",
        ExecutionMode::Async => "ASYNC",
        ExecutionMode::Stream => "STREAM",
    }
}

fn mode_from_name(name: &str) -> Option<ExecutionMode> {
    match name {
        "SYNC" => Some(ExecutionMode::Sync),
        "ASYNC" => Some(ExecutionMode::Async),
        "STREAM" => Some(ExecutionMode::Stream),
        _ => None,
    }
}

fn result_encoding_name(encoding: ResultEncoding) -> &'static str {
    match encoding {
        ResultEncoding::AnyBytesValue => "ANY_BYTES_VALUE",
        ResultEncoding::Payload => "PAYLOAD",
    }
}

fn result_encoding_from_name(name: &str) -> Option<ResultEncoding> {
    match name {
        "ANY_BYTES_VALUE" => Some(ResultEncoding::AnyBytesValue),
        "PAYLOAD" => Some(ResultEncoding::Payload),
        _ => None,
    }
}

fn error_code_from_name(name: &str) -> Option<ErrorCode> {
    ErrorCode::ALL
        .into_iter()
        .find(|code| code.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every enum value survives the trip through its stored name. The name functions are
    /// exhaustive matches, so a new variant fails to compile there; this table catches a variant
    /// that was given a name but no parse arm.
    #[test]
    fn stored_names_round_trip() {
        let statuses = [
            ExecutionStatus::Pending,
            ExecutionStatus::Running,
            ExecutionStatus::Completed,
            ExecutionStatus::Failed,
            ExecutionStatus::Cancelled,
            ExecutionStatus::Timeout,
        ];
        for status in statuses {
            assert_eq!(status_from_name(status.as_str()), Some(status));
        }
        for mode in [
            ExecutionMode::Sync,
            ExecutionMode::Async,
            ExecutionMode::Stream,
        ] {
            assert_eq!(mode_from_name(mode_name(mode)), Some(mode));
        }
        for encoding in [ResultEncoding::AnyBytesValue, ResultEncoding::Payload] {
            assert_eq!(
                result_encoding_from_name(result_encoding_name(encoding)),
                Some(encoding)
            );
        }
        let codes = ErrorCode::ALL;
        for code in codes {
            assert_eq!(error_code_from_name(code.as_str()), Some(code));
        }
        assert_eq!(status_from_name("UNKNOWN"), None);
    }
}

#[cfg(test)]
mod consecutive_run_tests {
    use super::consecutive_runs;

    #[test]
    fn only_adjacent_sequences_merge() {
        assert_eq!(consecutive_runs(&[]), vec![]);
        assert_eq!(
            consecutive_runs(&[5, 3, 4, 9, 10, 12]),
            vec![(3, 5), (9, 10), (12, 12)]
        );
    }
}
