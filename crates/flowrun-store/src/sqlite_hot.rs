//! The statements of the hot writes on SQLite (see `sqlite_batch`): single-row statements,
//! prepared once on the writer connection and then only bound and stepped, transaction after
//! transaction (they wait in the statement cache of the writer's kept handle).
//!
//! They keep the semantics of the schema and of the other backends: fenced writes apply only
//! under their condition and report whether they did, and what a write brings along (a
//! step's staged deliveries, a delivery's attempt row) is stored exactly when it applies.
//! The status CHECKs of their tables are equality chains (migration 0008), which SQLite
//! evaluates without building a table of the allowed values on every run.

use std::sync::LazyLock;

use rusqlite::{CachedStatement, Connection, params};

use crate::webhooks::{AttemptWrite, DeliveryRow};
use crate::{DocWrite, ExecUpdate, ExecutionRow, Result};

/// The hot statements, by index into [`SQL`].
#[derive(Clone, Copy)]
enum Sql {
    MarkRouted,
    InsertExecution,
    InsertDelivery,
    PutDoc,
    DeleteDoc,
    FinishExecution,
    ProgressExecution,
    RecordDelivery,
    InsertAttempt,
}

pub(crate) const SQL_COUNT: usize = Sql::InsertAttempt as usize + 1;

/// Every statement is `OR ROLLBACK`: a constraint failure ends the transaction at once,
/// without a statement journal.
static SQL: LazyLock<[String; SQL_COUNT]> = LazyLock::new(|| {
    let params = |n: usize| {
        (1..=n)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    [
        "UPDATE OR ROLLBACK events SET routed_at = ?1 WHERE routed_at IS NULL AND id = ?2".into(),
        format!(
            "INSERT OR ROLLBACK INTO executions ({}) VALUES ({})",
            crate::sqlite_exec::COLS,
            params(23)
        ),
        format!(
            "INSERT OR ROLLBACK INTO webhook_deliveries ({}) VALUES ({})",
            crate::sqlite_webhooks::DELIVERY_COLS,
            params(19)
        ),
        crate::sqlite::PUT_DOC.into(),
        crate::sqlite::DELETE_DOC.into(),
        "UPDATE OR ROLLBACK executions SET status = ?4, error = ?5, finished_at = ?6, \
         state = ?7, search_text = COALESCE(?8, search_text), \
         started_at = CASE WHEN ?9 THEN NULL ELSE started_at END, \
         lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = ?1 AND status = 'running' AND lease_owner = ?2 AND attempt = ?3"
            .into(),
        "UPDATE OR ROLLBACK executions SET state = ?4 \
         WHERE id = ?1 AND status = 'running' AND lease_owner = ?2 AND attempt = ?3"
            .into(),
        // Every right-hand side reads the row as it was: a delivery that is no longer pending
        // (skipped meanwhile) keeps its status and completion.
        "UPDATE OR ROLLBACK webhook_deliveries SET attempts = ?3, last_status_code = ?4, \
         last_error = ?5, duration_ms = ?6, \
         completed_at = CASE WHEN status = 'pending' THEN ?7 ELSE completed_at END, \
         next_attempt_at = CASE WHEN status = 'pending' THEN ?8 ELSE NULL END, \
         lease_owner = NULL, \
         status = CASE WHEN status = 'pending' THEN ?9 ELSE status END \
         WHERE id = ?1 AND attempts = ?2"
            .into(),
        format!(
            "INSERT OR ROLLBACK INTO webhook_attempts ({}) VALUES ({}) ON CONFLICT DO NOTHING",
            crate::sqlite_webhooks::ATTEMPT_COLS,
            params(13)
        ),
    ]
});

/// One transaction's hot statements on `db`, taken from its statement cache when first
/// needed (and given back when the transaction's writing is done).
pub(crate) struct Hot<'db> {
    db: &'db Connection,
    prepared: [Option<CachedStatement<'db>>; SQL_COUNT],
}

impl<'db> Hot<'db> {
    pub(crate) fn new(db: &'db Connection) -> Self {
        Self {
            db,
            prepared: Default::default(),
        }
    }

    fn stmt(&mut self, which: Sql) -> Result<&mut CachedStatement<'db>> {
        let slot = &mut self.prepared[which as usize];
        if slot.is_none() {
            *slot = Some(self.db.prepare_cached(&SQL[which as usize])?);
        }
        Ok(slot.as_mut().expect("prepared above"))
    }

    pub(crate) fn mark_routed(&mut self, id: &str, now_ms: i64) -> Result<()> {
        self.stmt(Sql::MarkRouted)?.execute(params![now_ms, id])?;
        Ok(())
    }

    pub(crate) fn insert_execution(&mut self, r: &ExecutionRow) -> Result<()> {
        self.stmt(Sql::InsertExecution)?.execute(params![
            r.id.to_string(),
            r.owner_id,
            r.flow_id.to_string(),
            r.trigger_id.to_string(),
            r.kind,
            r.status,
            r.device_id.map(|d| d.to_string()),
            r.invocation_id,
            r.event_id,
            r.error,
            r.flow_name,
            r.trigger_name,
            r.created_by,
            r.enqueued_at,
            r.started_at,
            r.finished_at,
            r.attempt,
            r.lease_owner,
            r.lease_expires_at,
            r.graph_hash,
            r.snapshot,
            r.state,
            r.search_text,
        ])?;
        Ok(())
    }

    pub(crate) fn insert_delivery(&mut self, d: &DeliveryRow) -> Result<()> {
        self.stmt(Sql::InsertDelivery)?.execute(params![
            d.id.to_string(),
            d.owner_id,
            d.endpoint_id.to_string(),
            d.event_id,
            d.event_type,
            d.source,
            d.occurred_at,
            d.data,
            d.status,
            d.attempts,
            d.last_status_code,
            d.last_error,
            d.duration_ms,
            d.is_test,
            d.created_at,
            d.completed_at,
            d.created_by,
            d.next_attempt_at,
            d.lease_owner,
        ])?;
        Ok(())
    }

    pub(crate) fn write_doc(&mut self, w: &DocWrite, now_ms: i64) -> Result<()> {
        match &w.json {
            Some(json) => self.stmt(Sql::PutDoc)?.execute(params![
                w.kind.as_str(),
                w.id,
                w.owner_id,
                json,
                now_ms
            ])?,
            None => self
                .stmt(Sql::DeleteDoc)?
                .execute(params![w.kind.as_str(), w.id])?,
        };
        Ok(())
    }

    /// A fenced execution write: applies only while the row is `running` under the writer's
    /// lease and attempt; the step's staged deliveries are stored exactly when it applies.
    pub(crate) fn update_execution(&mut self, u: &ExecUpdate) -> Result<bool> {
        let id = u.id.to_string();
        let changed = match u
            .status
            .as_deref()
            .filter(|s| crate::executions::is_terminal(s))
        {
            Some(status) => self.stmt(Sql::FinishExecution)?.execute(params![
                id,
                u.lease_owner,
                u.attempt,
                status,
                u.error,
                u.finished_at,
                u.state,
                u.search_text,
                u.clear_started,
            ])?,
            // A progress write (a non-terminal status is one too: the row stays running).
            None => self.stmt(Sql::ProgressExecution)?.execute(params![
                id,
                u.lease_owner,
                u.attempt,
                u.state
            ])?,
        };
        if changed == 0 {
            return Ok(false);
        }
        for d in &u.deliveries {
            self.insert_delivery(d)?;
        }
        Ok(true)
    }

    /// A delivery's attempt record: applies only while the delivery still has the attempt
    /// count its claimer read; the attempt row is stored exactly when it applies.
    pub(crate) fn record_attempt(&mut self, w: &AttemptWrite) -> Result<bool> {
        let changed = self.stmt(Sql::RecordDelivery)?.execute(params![
            w.delivery_id.to_string(),
            w.expected_attempts,
            w.attempts,
            w.last_status_code,
            w.last_error,
            w.duration_ms,
            w.completed_at,
            w.next_attempt_at,
            w.status,
        ])?;
        if changed == 0 {
            return Ok(false);
        }
        if let Some(a) = &w.attempt {
            self.stmt(Sql::InsertAttempt)?.execute(params![
                a.delivery_id.to_string(),
                a.attempt_no,
                a.sent_at,
                a.request_url,
                a.request_method,
                a.request_headers,
                a.request_body,
                a.signed,
                a.response_status,
                a.response_headers,
                a.response_snippet,
                a.duration_ms,
                a.error,
            ])?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    /// The status CHECKs of the hot tables run as comparisons (no temporary table of the
    /// allowed values per statement run) and still refuse what the schema does not allow.
    #[tokio::test]
    async fn hot_tables_check_their_status_without_a_temporary_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = crate::sqlite::SqliteStore::open(path.to_str().unwrap())
            .await
            .unwrap();
        let db = rusqlite::Connection::open(&path).unwrap();
        for table in ["executions", "webhook_deliveries"] {
            // A row of the table with `status` as given and every other required column set.
            let required: Vec<String> = db
                .prepare(
                    "SELECT name FROM pragma_table_info(?1) \
                     WHERE \"notnull\" AND dflt_value IS NULL AND name <> 'status'",
                )
                .unwrap()
                .query_map([table], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let insert = |status: &str| {
                format!(
                    "INSERT INTO {table} ({}, status) VALUES ({}, '{status}')",
                    required.join(", "),
                    vec!["'1'"; required.len()].join(", ")
                )
            };
            let mut explain = db
                .prepare(&format!("EXPLAIN {}", insert("pending")))
                .unwrap();
            let ops: Vec<String> = explain
                .query_map([], |r| r.get(1))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{table}: {ops:?}"
            );
            let err = db.execute(&insert("bogus"), []).unwrap_err().to_string();
            assert!(err.contains("CHECK constraint failed"), "{table}: {err}");
            db.execute(&insert("pending"), []).unwrap();
        }
        drop(store);
    }
}
