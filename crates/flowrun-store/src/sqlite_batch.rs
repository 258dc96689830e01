//! Write batches on SQLite: one transaction, one fsync for whatever is queued.
//!
//! The SQLite driver runs each connection on its own thread and every query is a round trip
//! to it (two thread wake-ups); on a small machine those wake-ups and the commit's fsync, not
//! the SQL, are what a write costs. So:
//! - the [`CommitQueue`] merges the hot writes of every caller (execution enqueues, step and
//!   terminal writes with their staged deliveries, delivery attempt records) into one
//!   transaction per turn: a group commit across kinds. A job whose transaction fails is
//!   retried alone, so one bad job fails only itself. Attempt records, which no caller waits
//!   on, yield: when urgent writes wait too, the records go into the turn after theirs.
//! - the transaction runs on a thread of its own, directly on the writer connection's SQLite
//!   handle (borrowed from the driver, whose thread waits meanwhile): single-row statements,
//!   prepared once and kept from one transaction to the next ([`KeptHandle`]), then only
//!   bound and stepped. Multi-row statements sent through the driver had a new shape for
//!   every mix of row counts, and preparing those cost about as much as running them.
//! - the fsync is taken out of the serial stage: a transaction commits with
//!   `synchronous = NORMAL` (no fsync inside COMMIT, so the write lock is free again at once)
//!   and a flusher thread then fsyncs the WAL file; only after that does anyone hear that the
//!   write is done. The next transaction is written while the previous one's fsync runs, and
//!   one fsync covers every transaction committed before it started. Nothing is answered
//!   before it is on disk: the WAL frames of a COMMIT that returned are written, an fsync of
//!   the file makes them durable, and a checkpoint (which may move them into the database
//!   file first) syncs the WAL before and the database after it also with `NORMAL`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::sqlite_hot::Hot;
use crate::webhooks::{AttemptWrite, DeliveryRow};
use crate::{DocWrite, ExecUpdate, ExecutionRow, Result, StoreError};

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
    /// From the checkpoint thread: complete its checkpoint before the next transaction.
    FinishCheckpoint,
}

/// The queue of the single writer task.
pub(crate) struct CommitQueue {
    tx: mpsc::UnboundedSender<Job>,
    /// Dropped with the queue: stops the checkpoint thread.
    _checkpoints: Option<std::sync::mpsc::Sender<()>>,
}

/// How long a batch of attempt records alone waits for other writes to share its commit:
/// records are not on any caller's critical path, step commits are.
const RECORD_LINGER: Duration = Duration::from_millis(2);

impl CommitQueue {
    /// Starts the writer thread and its flusher thread; `wal` is the database's WAL file
    /// (none for an in-memory database). Runs inside the Tokio runtime the pool belongs to.
    pub(crate) fn start(writer: SqlitePool, wal: Option<PathBuf>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let checkpoints = wal.as_ref().map(|wal| {
            let (stop, stopped) = std::sync::mpsc::channel();
            let db = database_of(wal);
            let jobs = tx.downgrade();
            std::thread::Builder::new()
                .name("flowrun-wal-checkpoint".into())
                .spawn(move || run_checkpointer(&db, &stopped, &jobs))
                .expect("the WAL checkpoint thread starts");
            stop
        });
        std::thread::Builder::new()
            .name("flowrun-wal-sync".into())
            .spawn(move || run_flusher(wal, flush_rx))
            .expect("the WAL flusher thread starts");
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("flowrun-sqlite-writer".into())
            .spawn(move || run_writer(&runtime, writer, rx, flush_tx))
            .expect("the SQLite writer thread starts");
        Self {
            tx,
            _checkpoints: checkpoints,
        }
    }

    async fn submit<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(job(reply)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once the rows committed, with the future of their fsync.
    pub(crate) async fn insert(
        &self,
        rows: Vec<ExecutionRow>,
        deliveries: Vec<DeliveryRow>,
        docs: &[DocWrite],
        routed: &[String],
        now_ms: i64,
    ) -> Result<crate::Durable> {
        let (committed, committed_rx) = oneshot::channel();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Insert {
                rows,
                deliveries,
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

/// Jobs whose transaction committed without fsync, with their results, waiting for the flusher.
type Committed = Vec<(Job, Vec<bool>)>;

/// The writer thread: takes what is queued, writes it as one transaction, hands it to the
/// flusher. Waits (for jobs, the connection) through the runtime's handle.
fn run_writer(
    runtime: &tokio::runtime::Handle,
    writer: SqlitePool,
    mut rx: mpsc::UnboundedReceiver<Job>,
    flusher: mpsc::UnboundedSender<Committed>,
) {
    // Timers and the pool's tasks need the runtime's context on this thread too.
    let _context = runtime.enter();
    // Declared after `writer`, so dropped (its statements finalized) before the pool.
    let mut kept: Option<KeptHandle> = None;
    let mut jobs: Vec<Job> = Vec::new();
    // Attempt records held back from the last turn's script; they go into this one.
    let mut carried: Vec<Job> = Vec::new();
    loop {
        if carried.is_empty() {
            match rx.blocking_recv() {
                Some(first) => jobs.push(first),
                None => break,
            }
        }
        drain(&mut rx, &mut jobs);
        let is_record = |j: &Job| matches!(j, Job::Attempts { .. });
        if carried.is_empty()
            && jobs.iter().all(is_record)
            && let Ok(Some(next)) = runtime.block_on(tokio::time::timeout(RECORD_LINGER, rx.recv()))
        {
            jobs.push(next);
            drain(&mut rx, &mut jobs);
        }
        // Enqueues and step writes are on their callers' critical path, attempt records are
        // not: when both wait, the first script takes the urgent ones alone (a shorter
        // commit for them) and the records follow in the next, with whatever came meanwhile.
        let mut batch = if carried.is_empty() && !jobs.iter().all(is_record) {
            let (records, urgent): (Vec<Job>, Vec<Job>) =
                std::mem::take(&mut jobs).into_iter().partition(is_record);
            carried = records;
            urgent
        } else {
            let mut all = std::mem::take(&mut carried);
            all.append(&mut jobs);
            all
        };
        let finish = batch.iter().any(|j| matches!(j, Job::FinishCheckpoint));
        batch.retain(|j| !matches!(j, Job::FinishCheckpoint));
        if batch.is_empty() {
            if finish {
                runtime.block_on(finish_checkpoint(&writer, &mut kept));
            }
            continue;
        }
        let mut committed: Committed =
            match runtime.block_on(run_jobs(&writer, &mut kept, &batch, finish)) {
                Ok(results) => batch.into_iter().zip(results).collect(),
                Err(_) if batch.len() > 1 => {
                    // Find the culprit: every job on its own.
                    let mut committed = Vec::new();
                    for job in batch {
                        let one = std::slice::from_ref(&job);
                        match runtime.block_on(run_jobs(&writer, &mut kept, one, false)) {
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

/// How often the checkpoint thread looks at the WAL.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The database file whose WAL is `wal`.
fn database_of(wal: &std::path::Path) -> PathBuf {
    let name = wal.as_os_str().to_string_lossy();
    PathBuf::from(name.strip_suffix("-wal").unwrap_or(&name).to_string())
}

/// Checkpoints the WAL on a connection of its own every [`CHECKPOINT_EVERY`]. The writer
/// connection does not checkpoint (`wal_autocheckpoint = 0`, see `SqliteStore::open`): done
/// inside a commit, copying a few megabytes into the database file and syncing it held up
/// the serial writer for milliseconds every hundred runs or so. A passive checkpoint runs
/// beside the writer and syncs the WAL before it copies frames, as an automatic one does,
/// but it cannot copy what is appended meanwhile, and only a checkpoint that copied every
/// frame lets the next transaction restart the WAL from its start. So while writes come in,
/// the writer finishes it between two transactions ([`Job::FinishCheckpoint`]): a few frames
/// to copy instead of megabytes.
fn run_checkpointer(
    db: &std::path::Path,
    stopped: &std::sync::mpsc::Receiver<()>,
    jobs: &mpsc::WeakUnboundedSender<Job>,
) {
    let mut conn: Option<rusqlite::Connection> = None;
    let mut seen = 0;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stopped.recv_timeout(CHECKPOINT_EVERY)
    {
        if conn.is_none() {
            match rusqlite::Connection::open_with_flags(
                db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "the WAL checkpoint connection did not open");
                    continue;
                }
            }
        }
        let Some(c) = &conn else { continue };
        // (busy, frames in the WAL, frames copied)
        match c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            // Frames it counted are copied; those written since are not, and while the WAL
            // keeps changing the writer finishes (an idle WAL is left alone).
            Ok(frames) if frames != seen => {
                seen = frames;
                match jobs.upgrade() {
                    Some(jobs) => {
                        let _ = jobs.send(Job::FinishCheckpoint);
                    }
                    None => break,
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                conn = None;
            }
        }
    }
}

/// Completes a checkpoint on the writer connection (see [`run_checkpointer`]).
async fn finish_checkpoint(writer: &SqlitePool, kept: &mut Option<KeptHandle>) {
    if let Err(e) = on_writer_handle(writer, kept, |db| (checkpoint(db), true)).await {
        tracing::warn!(error = %e, "WAL checkpoint failed");
    }
}

fn checkpoint(db: &rusqlite::Connection) -> Result<()> {
    db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    Ok(())
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
        Job::FinishCheckpoint => {}
    }
}

/// The writer connection's SQLite handle as rusqlite sees it, kept from one transaction to
/// the next with the hot statements in its statement cache: prepared again in every
/// transaction they cost about a tenth of the writer's instructions.
///
/// The driver owns the handle and would panic closing it while statements of ours are
/// unfinalized, so this is dropped (finalizing them) before the driver can close it: before
/// the writer closes a connection it found unfit, and before the pool when the writer ends.
/// The pool never closes the connection on its own (no idle timeout, no maximum lifetime, no
/// ping). A handle that differs from the kept one means a new connection.
struct KeptHandle {
    raw: *mut rusqlite::ffi::sqlite3,
    db: rusqlite::Connection,
}

/// Runs the jobs as one transaction on the writer connection's SQLite handle and returns
/// each job's applied flags (empty for an insert). On an error nothing is committed.
///
/// With `finish_checkpoint`, first completes the checkpoint thread's checkpoint (see
/// [`run_checkpointer`]).
async fn run_jobs(
    writer: &SqlitePool,
    kept: &mut Option<KeptHandle>,
    jobs: &[Job],
    finish_checkpoint: bool,
) -> Result<Vec<Vec<bool>>> {
    on_writer_handle(writer, kept, |db| {
        if finish_checkpoint && let Err(e) = checkpoint(db) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
        let result = write_jobs(db, jobs);
        let usable = result.is_ok() || end_failed(db);
        (result, usable)
    })
    .await
}

/// Runs `f` on the writer connection's SQLite handle, borrowed from the driver (whose
/// thread waits meanwhile) and seen through `kept`; `f` also says whether the connection is
/// fit for reuse (if not, it is closed).
async fn on_writer_handle<T>(
    writer: &SqlitePool,
    kept: &mut Option<KeptHandle>,
    f: impl FnOnce(&rusqlite::Connection) -> (Result<T>, bool),
) -> Result<T> {
    let mut conn = writer.acquire().await?;
    let (result, usable) = {
        let mut locked = conn.lock_handle().await?;
        let raw = locked.as_raw_handle().as_ptr();
        if kept.as_ref().is_none_or(|k| k.raw != raw) {
            *kept = None;
            // SAFETY: the handle is only used while `locked` keeps the driver's thread off
            // it; the wrapper does not close it and is dropped before the driver closes it
            // (see `KeptHandle`).
            let db = unsafe { rusqlite::Connection::from_handle(raw) }?;
            db.set_prepared_statement_cache_capacity(crate::sqlite_hot::SQL_COUNT + 8);
            *kept = Some(KeptHandle { raw, db });
        }
        f(&kept.as_ref().expect("set above").db)
    };
    if !usable {
        *kept = None;
        let _ = conn.detach().close().await;
    }
    result
}

/// Ends a transaction that failed (a statement left it open, or COMMIT failed) and restores
/// the connection's default durability; false when the connection is not fit for reuse.
fn end_failed(db: &rusqlite::Connection) -> bool {
    (db.is_autocommit() || db.execute_batch("ROLLBACK").is_ok()) && run(db, RESTORE).is_ok()
}

/// The connection's default durability, restored after every hot transaction.
const RESTORE: &str = "PRAGMA synchronous = FULL";

/// Runs one statement that returns nothing, prepared once (kept in the statement cache).
fn run(db: &rusqlite::Connection, sql: &str) -> Result<()> {
    db.prepare_cached(sql)?.raw_execute()?;
    Ok(())
}

/// The transaction: every job's statements in queue order. Statements are `OR ROLLBACK`
/// (a constraint failure ends the transaction at once, without a statement journal).
fn write_jobs(db: &rusqlite::Connection, jobs: &[Job]) -> Result<Vec<Vec<bool>>> {
    // Unsynced: see the module notes. Other writes on the connection keep `FULL`.
    run(db, "PRAGMA synchronous = NORMAL")?;
    run(db, "BEGIN IMMEDIATE")?;
    let mut hot = Hot::new(db);
    let mut applied = Vec::with_capacity(jobs.len());
    for job in jobs {
        applied.push(match job {
            Job::Insert {
                rows,
                deliveries,
                docs,
                routed,
                now_ms,
                ..
            } => {
                for id in routed {
                    hot.mark_routed(id, *now_ms)?;
                }
                for r in rows {
                    hot.insert_execution(r)?;
                }
                for d in deliveries {
                    hot.insert_delivery(d)?;
                }
                for d in docs {
                    hot.write_doc(d, *now_ms)?;
                }
                Vec::new()
            }
            Job::Exec { updates, .. } => updates
                .iter()
                .map(|u| hot.update_execution(u))
                .collect::<Result<_>>()?,
            Job::Attempts { writes, .. } => writes
                .iter()
                .map(|w| hot.record_attempt(w))
                .collect::<Result<_>>()?,
            // Taken out of every batch before it is written (see `run_writer`).
            Job::FinishCheckpoint => Vec::new(),
        });
    }
    drop(hot);
    run(db, "COMMIT")?;
    run(db, RESTORE)?;
    Ok(applied)
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

    /// Frames in the WAL of `db` (a passive checkpoint reports them).
    fn wal_frames(db: &rusqlite::Connection) -> i64 {
        db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    #[tokio::test]
    async fn a_checkpoint_the_writer_finishes_lets_the_wal_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .pragma("wal_autocheckpoint", "0");
        let writer = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x TEXT)")
            .execute(&writer)
            .await
            .unwrap();
        let insert = |n: usize| {
            let writer = writer.clone();
            async move {
                for _ in 0..n {
                    sqlx::query("INSERT INTO t VALUES (hex(randomblob(2000)))")
                        .execute(&writer)
                        .await
                        .unwrap();
                }
            }
        };
        insert(200).await;
        // The checkpoint thread's checkpoint is left behind by writes that came while it ran:
        // a reader's snapshot stands in for the moment it started (it copies up to there).
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .unwrap();
        insert(20).await;
        let side = rusqlite::Connection::open(&path).unwrap();
        let before = wal_frames(&side);
        reader.execute_batch("COMMIT").unwrap();
        // Without the writer finishing it, the WAL only grows.
        insert(1).await;
        let grown = wal_frames(&side);
        assert!(grown > before, "{grown} frames after {before}");
        finish_checkpoint(&writer, &mut None).await;
        insert(1).await;
        let after = wal_frames(&side);
        assert!(
            after < 10,
            "the WAL restarted from its start: {after} frames"
        );
    }
}
