//! The store test harness: runs a contract test on a fresh SQLite store and, when
//! `FLOWRUN_TEST_DATABASE_URL` names a PostgreSQL server, on a freshly created database that is
//! dropped afterwards (also when the test panics).

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;

use flowrun_store::{DeliveryRow, EndpointRow, Store};
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

/// An active, healthy `http` endpoint of `owner`.
pub fn endpoint(owner: &str, created_at: i64) -> EndpointRow {
    EndpointRow {
        id: Uuid::now_v7(),
        owner_id: owner.to_string(),
        kind: "http".to_string(),
        url: Some("https://example.com/hook".to_string()),
        description: Some("Hook".to_string()),
        event_types: vec!["a.b".to_string()],
        state: "ACTIVE".to_string(),
        health: "healthy".to_string(),
        blocked_at: None,
        blocked_reason: None,
        secret: "whsec_AAAA".to_string(),
        created_by: Some("actor".to_string()),
        created_at,
        updated_at: created_at,
        consecutive_dead: 0,
        failing_since: None,
    }
}

/// A `pending` delivery to `e`, due at `due`.
pub fn delivery(e: &EndpointRow, created_at: i64, due: Option<i64>) -> DeliveryRow {
    DeliveryRow {
        id: Uuid::now_v7(),
        owner_id: e.owner_id.clone(),
        endpoint_id: e.id,
        event_id: Uuid::now_v7().to_string(),
        event_type: "a.b".to_string(),
        source: "workflows".to_string(),
        occurred_at: created_at,
        data: r#"{"x":1}"#.to_string(),
        status: "pending".to_string(),
        attempts: 0,
        last_status_code: None,
        last_error: None,
        duration_ms: None,
        is_test: false,
        created_at,
        completed_at: None,
        created_by: None,
        next_attempt_at: due,
        lease_owner: None,
    }
}
