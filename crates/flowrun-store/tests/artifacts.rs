//! The artifacts and repairs contract (`flowrun_store::artifacts`) against both backends: SQLite always,
//! PostgreSQL when `FLOWRUN_TEST_DATABASE_URL` names a server (each test gets a fresh
//! database, dropped at the end).

use flowrun_store::{ArtifactRow, RepairRow};
use uuid::Uuid;

mod common;

use common::on_each_backend;
fn repair(flow: Uuid, status: &str) -> RepairRow {
    RepairRow {
        id: Uuid::now_v7(),
        owner_id: "o".into(),
        flow_id: flow,
        episode: 0,
        attempt: 1,
        max_attempts: 3,
        status: status.into(),
        source_execution_id: Uuid::now_v7(),
        failed_step_index: 1,
        original_slug: "tap".into(),
        candidate_slug: String::new(),
        device_id: None,
        agent_run_id: None,
        chat_session_id: None,
        verdict: None,
        error: None,
        started_at: Some(1),
        finished_at: None,
        created_at: 1,
        updated_at: 1,
    }
}

#[tokio::test]
async fn artifacts_are_read_back_only_by_their_owner() {
    on_each_backend(|db| async move {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let a = ArtifactRow {
            id: Uuid::now_v7().to_string(),
            owner_id: "o".into(),
            execution_id: Uuid::now_v7(),
            mime_type: "image/png".into(),
            bytes,
            created_at: 5,
        };
        db.insert_artifact(&a).await.unwrap();
        assert_eq!(db.get_artifact("o", &a.id).await.unwrap(), Some(a.clone()));
        assert_eq!(db.get_artifact("other", &a.id).await.unwrap(), None);
        assert_eq!(db.get_artifact("o", "missing").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn an_open_episode_blocks_a_new_one_and_episodes_count_up() {
    on_each_backend(|db| async move {
        let flow = Uuid::now_v7();
        // Closed episodes never block: each failure opens the next one.
        for n in 1..=2 {
            let r = db.open_repair(&repair(flow, "escalated")).await.unwrap();
            assert_eq!(r.unwrap().episode, n);
        }
        let open = db.open_repair(&repair(flow, "pending")).await.unwrap();
        assert_eq!(open.unwrap().episode, 3);
        assert!(
            db.open_repair(&repair(flow, "escalated"))
                .await
                .unwrap()
                .is_none()
        );
        // Another flow is independent; reads are per owner.
        let other = db
            .open_repair(&repair(Uuid::now_v7(), "pending"))
            .await
            .unwrap();
        assert_eq!(other.unwrap().episode, 1);
        let listed = db.list_repairs("o", flow).await.unwrap();
        assert_eq!(
            listed.iter().map(|r| r.episode).collect::<Vec<_>>(),
            [3, 2, 1]
        );
        assert!(db.list_repairs("x", flow).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn concurrent_failures_open_exactly_one_episode() {
    on_each_backend(|db| async move {
        let flow = Uuid::now_v7();
        let tries: Vec<_> = (0..16)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move { db.open_repair(&repair(flow, "pending")).await.unwrap() })
            })
            .collect();
        let mut opened = 0;
        for t in tries {
            opened += t.await.unwrap().is_some() as usize;
        }
        assert_eq!(opened, 1);
        assert_eq!(db.list_repairs("o", flow).await.unwrap().len(), 1);
    })
    .await;
}
