//! Write batches on SQLite: one transaction, one round trip, one fsync for whatever is queued.
//!
//! The SQLite driver runs each connection on its own thread and every query is a round trip
//! to it (two thread wake-ups); on a small machine those wake-ups and the commit's fsync, not
//! the SQL, are what a write costs. So:
//! - a [`Script`] is a whole transaction — `BEGIN IMMEDIATE`, the statements (several rows
//!   each), `COMMIT` — sent as one multi-statement query;
//! - the [`CommitQueue`] merges the hot writes of every caller (execution enqueues, step and
//!   terminal writes with their staged deliveries, delivery attempt records) into one script
//!   per turn: a group commit across kinds. A job whose script fails is retried alone, so one
//!   bad job fails only itself.
//! - the fsync is taken out of the serial stage: a script commits with `synchronous = NORMAL`
//!   (no fsync inside COMMIT, so the write lock is free again at once) and a flusher thread
//!   then fsyncs the WAL file; only after that does anyone hear that the write is done. The
//!   next script is written while the previous one's fsync runs, and one fsync covers every
//!   script committed before it started. Nothing is answered before it is on disk: the WAL
//!   frames of a COMMIT that returned are written, an fsync of the file makes them durable,
//!   and a checkpoint (which may move them into the database file first) syncs the WAL
//!   before and the database after it also with `NORMAL`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};
use sqlx::{Connection, QueryBuilder, Row};
use tokio::sync::{mpsc, oneshot};

use crate::webhooks::{AttemptWrite, DeliveryRow};
use crate::{DocWrite, ExecUpdate, ExecutionRow, Result, StoreError};

/// A transaction being written as one query.
pub(crate) struct Script<'a> {
    qb: QueryBuilder<'a, Sqlite>,
}

impl<'a> Script<'a> {
    /// A transaction whose COMMIT does not fsync: the caller makes it durable (see the
    /// module notes) before telling anyone it is done. Other writes on the connection keep
    /// `synchronous = FULL`.
    fn unsynced() -> Self {
        Self {
            qb: QueryBuilder::new("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE; "),
        }
    }

    /// The builder to append statements to; each statement ends with `; `.
    pub(crate) fn sql(&mut self) -> &mut QueryBuilder<'a, Sqlite> {
        &mut self.qb
    }

    /// Runs the transaction on the pool's (single) writer connection and returns the rows the
    /// statements returned, in order. On an error nothing is committed.
    pub(crate) async fn run(mut self, writer: &SqlitePool) -> Result<Vec<SqliteRow>> {
        self.qb.push("COMMIT; PRAGMA synchronous = FULL;");
        let mut conn = writer.acquire().await?;
        // Kept prepared: under a steady load the same shapes (kinds and row counts) come back,
        // and parsing a multi-row script costs about as much as running it.
        let result = self.qb.build().persistent(true).fetch_all(&mut *conn).await;
        match result {
            Ok(rows) => Ok(rows),
            Err(e) => {
                // The failed statement left the transaction open (or COMMIT failed): end it,
                // and give up the connection if even that fails.
                let restored = match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    Ok(_) => true,
                    Err(sqlx::Error::Database(d)) if d.message().contains("no transaction") => true,
                    Err(_) => false,
                } && sqlx::query("PRAGMA synchronous = FULL")
                    .execute(&mut *conn)
                    .await
                    .is_ok();
                if !restored {
                    let _ = conn.detach().close().await;
                }
                Err(StoreError::Database(e))
            }
        }
    }
}

/// One caller's write waiting for the next group commit.
pub(crate) enum Job {
    /// New execution rows, the deliveries their first steps staged, definition writes and
    /// routed events (an enqueue).
    Insert {
        rows: Vec<ExecutionRow>,
        deliveries: Vec<DeliveryRow>,
        docs: Vec<DocWrite>,
        routed: Vec<String>,
        now_ms: i64,
        /// Hears when the script committed (visible, not yet durable).
        committed: Option<oneshot::Sender<()>>,
        /// Hears when it is durable, or why it failed.
        reply: oneshot::Sender<Result<()>>,
    },
    /// Fenced execution writes; replies which applied.
    Exec {
        updates: Vec<ExecUpdate>,
        reply: oneshot::Sender<Result<Vec<bool>>>,
    },
    /// Delivery attempt records without health changes; replies which applied.
    Attempts {
        writes: Vec<AttemptWrite>,
        reply: oneshot::Sender<Result<Vec<bool>>>,
    },
}

/// The queue of the single writer task.
pub(crate) struct CommitQueue {
    tx: mpsc::UnboundedSender<Job>,
}

/// How long a batch of attempt records alone waits for other writes to share its commit:
/// records are not on any caller's critical path, step commits are.
const RECORD_LINGER: Duration = Duration::from_millis(2);

impl CommitQueue {
    /// Starts the writer task and its flusher thread; `wal` is the database's WAL file (none
    /// for an in-memory database).
    pub(crate) fn start(writer: SqlitePool, wal: Option<PathBuf>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("flowrun-wal-sync".into())
            .spawn(move || run_flusher(wal, flush_rx))
            .expect("the WAL flusher thread starts");
        tokio::spawn(run_queue(writer, rx, flush_tx));
        Self { tx }
    }

    async fn submit<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(job(reply)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once the rows committed, with the future of their fsync.
    pub(crate) async fn insert(
        &self,
        rows: &[ExecutionRow],
        deliveries: &[DeliveryRow],
        docs: &[DocWrite],
        routed: &[String],
        now_ms: i64,
    ) -> Result<crate::Durable> {
        let (committed, committed_rx) = oneshot::channel();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Insert {
                rows: rows.to_vec(),
                deliveries: deliveries.to_vec(),
                docs: docs.to_vec(),
                routed: routed.to_vec(),
                now_ms,
                committed: Some(committed),
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        let durable = async move { rx.await.map_err(|_| StoreError::Closed)? };
        match committed_rx.await {
            Ok(()) => Ok(Box::pin(durable)),
            // No commit: the reply says why.
            Err(_) => {
                durable.await?;
                Ok(Box::pin(std::future::ready(Ok(()))))
            }
        }
    }

    pub(crate) async fn exec(&self, updates: &[ExecUpdate]) -> Result<Vec<bool>> {
        self.submit(|reply| Job::Exec {
            updates: updates.to_vec(),
            reply,
        })
        .await
    }

    pub(crate) async fn attempts(&self, writes: Vec<AttemptWrite>) -> Result<Vec<bool>> {
        self.submit(|reply| Job::Attempts { writes, reply }).await
    }
}

/// Jobs whose script committed without fsync, with their results, waiting for the flusher.
type Committed = Vec<(Job, Vec<bool>)>;

async fn run_queue(
    writer: SqlitePool,
    mut rx: mpsc::UnboundedReceiver<Job>,
    flusher: mpsc::UnboundedSender<Committed>,
) {
    let mut jobs: Vec<Job> = Vec::new();
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        drain(&mut rx, &mut jobs);
        if jobs.iter().all(|j| matches!(j, Job::Attempts { .. }))
            && let Ok(Some(next)) = tokio::time::timeout(RECORD_LINGER, rx.recv()).await
        {
            jobs.push(next);
            drain(&mut rx, &mut jobs);
        }
        let batch = std::mem::take(&mut jobs);
        let mut committed: Committed = match run_jobs(&writer, &batch).await {
            Ok(results) => batch.into_iter().zip(results).collect(),
            Err(_) if batch.len() > 1 => {
                // Find the culprit: every job on its own.
                let mut committed = Vec::new();
                for job in batch {
                    match run_jobs(&writer, std::slice::from_ref(&job)).await {
                        Ok(mut r) => committed.push((job, r.pop().unwrap_or_default())),
                        Err(e) => reply(job, Err(e)),
                    }
                }
                committed
            }
            Err(e) => {
                for job in batch {
                    reply(job, Err(StoreError::Batch(e.to_string())));
                }
                Vec::new()
            }
        };
        for (job, _) in &mut committed {
            if let Job::Insert { committed, .. } = job
                && let Some(c) = committed.take()
            {
                let _ = c.send(());
            }
        }
        if !committed.is_empty()
            && let Err(mpsc::error::SendError(lost)) = flusher.send(committed)
        {
            for (job, _) in lost {
                reply(job, Err(StoreError::Closed));
            }
        }
    }
}

/// Makes committed scripts durable and only then answers their jobs: one fsync of the WAL
/// for every script that committed before it started.
fn run_flusher(wal: Option<PathBuf>, mut rx: mpsc::UnboundedReceiver<Committed>) {
    let mut file: Option<(std::fs::File, u64)> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut done = first;
        while let Ok(more) = rx.try_recv() {
            done.extend(more);
        }
        let synced = wal
            .as_ref()
            .map_or(Ok(()), |wal| sync_wal(wal, &mut file))
            .map_err(|e| {
                tracing::error!(error = %e, "fsync of the WAL failed");
                format!("fsync of the WAL failed: {e}")
            });
        for (job, result) in done {
            reply(
                job,
                synced.clone().map(|()| result).map_err(StoreError::Batch),
            );
        }
    }
}

/// fsyncs the WAL file through a kept descriptor, opened again when the path names another
/// file (SQLite deletes and recreates the WAL when the last connection closes).
fn sync_wal(wal: &std::path::Path, file: &mut Option<(std::fs::File, u64)>) -> std::io::Result<()> {
    let inode = std::fs::metadata(wal)?.ino();
    let kept = match file {
        Some((f, ino)) if *ino == inode => f,
        _ => &file.insert((std::fs::File::open(wal)?, inode)).0,
    };
    kept.sync_data()
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < 256 {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

fn reply(job: Job, result: Result<Vec<bool>>) {
    match job {
        Job::Insert { reply, .. } => {
            let _ = reply.send(result.map(|_| ()));
        }
        Job::Exec { reply, .. } | Job::Attempts { reply, .. } => {
            let _ = reply.send(result);
        }
    }
}

/// Tags of returned rows: the job's index and the round within it.
fn tag(job: usize, round: usize) -> i64 {
    ((job as i64) << 20) | round as i64
}

/// Runs jobs in one script; returns each job's applied flags (empty for an insert).
async fn run_jobs(writer: &SqlitePool, jobs: &[Job]) -> Result<Vec<Vec<bool>>> {
    let mut script = Script::unsynced();
    let mut plans: Vec<Vec<Vec<usize>>> = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.iter().enumerate() {
        match job {
            Job::Insert {
                rows,
                deliveries,
                docs,
                routed,
                now_ms,
                ..
            } => {
                crate::sqlite_events::push_mark_routed(script.sql(), routed, *now_ms);
                crate::sqlite_exec::push_insert_executions(script.sql(), rows);
                crate::sqlite_webhooks::push_insert_deliveries(script.sql(), deliveries);
                for d in docs {
                    crate::sqlite::push_write_doc(script.sql(), d, *now_ms);
                }
                plans.push(Vec::new());
            }
            Job::Exec { updates, .. } => {
                let rs = crate::write_rounds(updates.iter().map(|u| u.id));
                for (r, round) in rs.iter().enumerate() {
                    // 9 binds per update, 22 per delivery; SQLite allows 32766 per statement.
                    for chunk in round.chunks(300) {
                        crate::sqlite_exec::push_exec_updates(
                            script.sql(),
                            updates,
                            chunk,
                            tag(j, r),
                        );
                    }
                }
                plans.push(rs);
            }
            Job::Attempts { writes, .. } => {
                let rs = crate::write_rounds(writes.iter().map(|w| w.delivery_id));
                for (r, round) in rs.iter().enumerate() {
                    for chunk in round.chunks(1000) {
                        crate::sqlite_webhooks::push_attempts(
                            script.sql(),
                            writes,
                            chunk,
                            tag(j, r),
                        );
                    }
                }
                plans.push(rs);
            }
        }
    }
    let hit: HashSet<(i64, String)> = script
        .run(writer)
        .await?
        .iter()
        .map(|r| (r.get::<i64, _>(1), r.get::<String, _>(0)))
        .collect();
    Ok(jobs
        .iter()
        .zip(plans)
        .enumerate()
        .map(|(j, (job, rs))| {
            let ids: Vec<String> = match job {
                Job::Insert { .. } => return Vec::new(),
                Job::Exec { updates, .. } => updates.iter().map(|u| u.id.to_string()).collect(),
                Job::Attempts { writes, .. } => {
                    writes.iter().map(|w| w.delivery_id.to_string()).collect()
                }
            };
            let mut applied = vec![false; ids.len()];
            for (r, round) in rs.iter().enumerate() {
                for &i in round {
                    applied[i] = hit.contains(&(tag(j, r), ids[i].clone()));
                }
            }
            applied
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_is_synced_through_the_file_the_path_names_now() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        let mut kept = None;
        assert!(sync_wal(&wal, &mut kept).is_err(), "no file, no sync");
        std::fs::write(&wal, b"frames").unwrap();
        sync_wal(&wal, &mut kept).unwrap();
        let first = kept.as_ref().map(|(_, ino)| *ino).unwrap();
        sync_wal(&wal, &mut kept).unwrap();
        assert_eq!(
            kept.as_ref().map(|(_, ino)| *ino),
            Some(first),
            "kept descriptor"
        );
        // SQLite deleted and recreated the WAL: the kept descriptor is of the old file.
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"new frames").unwrap();
        sync_wal(&wal, &mut kept).unwrap();
        let again = kept.as_ref().map(|(_, ino)| *ino).unwrap();
        assert_eq!(again, std::fs::metadata(&wal).unwrap().ino());
    }
}
