//! The store test harness: runs a contract test on a fresh SQLite store and, when
//! `FLOWRUN_TEST_DATABASE_URL` names a PostgreSQL server, on a freshly created database that is
//! dropped afterwards (also when the test panics).

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;

use flowrun_store::Store;
use sqlx::Connection;
use uuid::Uuid;

pub type Db = Arc<dyn Store>;

/// Runs `test` on a fresh SQLite store and, when configured, on a fresh PostgreSQL database.
pub async fn on_each_backend<F, Fut>(test: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowrun.db");
    let store = flowrun_store::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    test(store).await;

    let Some(url) = std::env::var("FLOWRUN_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        return;
    };
    let name = format!("flowrun_store_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    // Run in a task so the database is dropped even when the test panics.
    let outcome = match flowrun_store::open(&database_url(&url, &name)).await {
        Ok(store) => {
            assert_eq!(store.backend(), "postgres");
            tokio::spawn(test(store)).await.map_err(|e| e.into_panic())
        }
        Err(e) => Err(Box::new(format!("opening {name}: {e}")) as Box<dyn std::any::Any + Send>),
    };
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// `url` with its database name replaced by `name`.
pub fn database_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
