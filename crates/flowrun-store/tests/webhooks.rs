//! The webhooks contract (`flowrun_store::webhooks`) against both backends: SQLite always,
//! PostgreSQL when `FLOWRUN_TEST_DATABASE_URL` names a server (each test gets a fresh
//! database, dropped at the end).

use flowrun_store::{
    AttemptRow, AttemptWrite, DeliveryFilter, DeliveryRow, EndpointPatch, EndpointRow, HealthUpdate,
};

mod common;

use common::{delivery, endpoint, on_each_backend};

const OWNER: &str = "owner-1";

fn attempt(d: &DeliveryRow, n: i32) -> AttemptRow {
    AttemptRow {
        delivery_id: d.id,
        attempt_no: n,
        sent_at: 100 + n as i64,
        request_url: "https://example.com/hook".to_string(),
        request_method: "POST".to_string(),
        request_headers: Some(r#"{"webhook-id":"x"}"#.to_string()),
        request_body: Some("{}".to_string()),
        signed: true,
        response_status: Some(500),
        response_headers: None,
        response_snippet: Some("oops".to_string()),
        duration_ms: Some(3),
        error: Some("http_500".to_string()),
    }
}

fn failed_write(d: &DeliveryRow, n: i32, status: &str, next: Option<i64>) -> AttemptWrite {
    AttemptWrite {
        delivery_id: d.id,
        endpoint_id: d.endpoint_id,
        attempt: Some(attempt(d, n)),
        expected_attempts: n - 1,
        attempts: n,
        status: status.to_string(),
        last_status_code: Some(500),
        last_error: Some("http_500".to_string()),
        duration_ms: Some(3),
        completed_at: (status != "pending").then_some(200),
        next_attempt_at: next,
    }
}

#[tokio::test]
async fn endpoints_round_trip_patch_rotate_and_delete() {
    on_each_backend(|db| async move {
        let e = endpoint(OWNER, 10);
        db.insert_endpoint(&e).await.unwrap();
        db.insert_endpoint(&endpoint("other", 11)).await.unwrap();
        assert_eq!(db.get_endpoint(e.id).await.unwrap(), Some(e.clone()));
        assert_eq!(
            db.list_endpoints(Some(OWNER), false).await.unwrap().len(),
            1
        );
        assert_eq!(db.list_endpoints(None, false).await.unwrap().len(), 2);

        let patch = EndpointPatch {
            event_types: Some(vec![]),
            state: Some("DISABLED".to_string()),
            description: Some(None),
            reenable: false,
            updated_at: 20,
        };
        assert_eq!(
            db.patch_endpoint("other", e.id, &patch).await.unwrap(),
            None
        );
        let p = db
            .patch_endpoint(OWNER, e.id, &patch)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.event_types, Vec::<String>::new());
        assert_eq!(p.state, "DISABLED");
        assert_eq!(p.description, None);
        assert_eq!(p.updated_at, 20);
        assert_eq!(db.get_endpoint(e.id).await.unwrap(), Some(p.clone()));

        let r = db
            .set_endpoint_secret(OWNER, e.id, "whsec_BBBB", 30)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.secret.as_str(), r.updated_at), ("whsec_BBBB", 30));

        let pending = delivery(&e, 40, Some(40));
        db.insert_delivery(&pending).await.unwrap();
        assert!(!db.delete_endpoint("other", e.id, 50, "gone").await.unwrap());
        assert!(db.delete_endpoint(OWNER, e.id, 50, "gone").await.unwrap());
        assert!(!db.delete_endpoint(OWNER, e.id, 51, "gone").await.unwrap());
        let gone = db.get_endpoint(e.id).await.unwrap().unwrap();
        assert!(gone.is_deleted());
        assert!(
            db.list_endpoints(Some(OWNER), false)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(db.list_endpoints(Some(OWNER), true).await.unwrap().len(), 1);
        assert_eq!(db.patch_endpoint(OWNER, e.id, &patch).await.unwrap(), None);
        let d = db.get_delivery(OWNER, pending.id).await.unwrap().unwrap();
        assert_eq!(d.status, "skipped");
        assert_eq!(d.last_error.as_deref(), Some("gone"));
        assert_eq!(d.completed_at, Some(50));
        assert_eq!(db.next_delivery_due().await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn claims_take_due_rows_under_a_lease_and_attempts_are_fenced() {
    on_each_backend(|db| async move {
        let e = endpoint(OWNER, 1);
        db.insert_endpoint(&e).await.unwrap();
        let due = delivery(&e, 1, Some(100));
        let later = delivery(&e, 2, Some(500));
        let parked = delivery(&e, 3, None);
        for d in [&due, &later, &parked] {
            db.insert_delivery(d).await.unwrap();
        }
        assert_eq!(db.next_delivery_due().await.unwrap(), Some(100));
        let claimed = db.claim_deliveries("node-a", 150, 1150, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, due.id);
        assert_eq!(claimed[0].next_attempt_at, Some(1150));
        assert_eq!(claimed[0].lease_owner.as_deref(), Some("node-a"));
        // Held by the lease: nobody else gets it until it runs out.
        assert!(
            db.claim_deliveries("node-b", 160, 1160, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(db.next_delivery_due().await.unwrap(), Some(500));
        // A single-node restart makes the previous process's claims due at once.
        assert_eq!(db.release_delivery_claims("node-b", 170).await.unwrap(), 1);
        assert_eq!(db.release_delivery_claims("node-b", 170).await.unwrap(), 0);
        assert_eq!(db.next_delivery_due().await.unwrap(), Some(170));
        let again = db.claim_deliveries("node-b", 170, 1170, 1).await.unwrap();
        assert_eq!(again[0].id, due.id);
        assert_eq!(
            db.release_delivery_claims("node-b", 180).await.unwrap(),
            0,
            "own claims stay"
        );

        // A failed attempt reschedules; a stale writer (same expected count) changes nothing.
        let w = failed_write(&due, 1, "pending", Some(300));
        assert!(db.finish_attempt(&w, None).await.unwrap());
        assert!(!db.finish_attempt(&w, None).await.unwrap());
        let d = db.get_delivery(OWNER, due.id).await.unwrap().unwrap();
        assert_eq!((d.status.as_str(), d.attempts), ("pending", 1));
        assert_eq!(d.next_attempt_at, Some(300));
        assert_eq!(d.lease_owner, None);
        assert_eq!(d.last_error.as_deref(), Some("http_500"));
        assert_eq!(d.completed_at, None);

        // The last attempt ends it dead and moves the endpoint's health in the same write.
        let health = |row: &EndpointRow| {
            Some(HealthUpdate {
                health: "failing".to_string(),
                consecutive_dead: row.consecutive_dead + 1,
                failing_since: Some(200),
                blocked_at: None,
                blocked_reason: None,
            })
        };
        let w = failed_write(&due, 2, "dead", None);
        assert!(db.finish_attempt(&w, Some(&health)).await.unwrap());
        let d = db.get_delivery(OWNER, due.id).await.unwrap().unwrap();
        assert_eq!((d.status.as_str(), d.attempts), ("dead", 2));
        assert_eq!(d.completed_at, Some(200));
        assert_eq!(d.next_attempt_at, None);
        let h = db.get_endpoint(e.id).await.unwrap().unwrap();
        assert_eq!((h.health.as_str(), h.consecutive_dead), ("failing", 1));
        assert_eq!(h.failing_since, Some(200));

        let attempts = db.list_attempts(due.id).await.unwrap();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0], attempt(&due, 1));
        assert_eq!(attempts[1].attempt_no, 2);

        // Lists and stats.
        let (rows, total) = db
            .list_deliveries(OWNER, &DeliveryFilter::default(), 0, 2)
            .await
            .unwrap();
        assert_eq!(total, 3);
        assert_eq!(rows[0].id, parked.id, "created_at desc");
        let dead = DeliveryFilter {
            statuses: vec!["dead".to_string()],
            ..Default::default()
        };
        let (rows, total) = db.list_deliveries(OWNER, &dead, 0, 10).await.unwrap();
        assert_eq!((rows.len(), total), (1, 1));
        let by_event = DeliveryFilter {
            event_id: Some(later.event_id.clone()),
            endpoint_id: Some(e.id),
            since: Some(2),
            kind: Some("http".to_string()),
            ..Default::default()
        };
        let (rows, _) = db.list_deliveries(OWNER, &by_event, 0, 10).await.unwrap();
        assert_eq!(rows[0].id, later.id);
        let integration = DeliveryFilter {
            kind: Some("integration".to_string()),
            ..Default::default()
        };
        assert_eq!(
            db.list_deliveries(OWNER, &integration, 0, 10)
                .await
                .unwrap()
                .1,
            0
        );
        assert_eq!(
            db.delivery_stats(OWNER, &DeliveryFilter::default())
                .await
                .unwrap(),
            [2, 0, 0, 1]
        );
        assert_eq!(
            db.delivery_stats("other", &DeliveryFilter::default())
                .await
                .unwrap(),
            [0, 0, 0, 0]
        );
        assert_eq!(db.get_delivery("other", due.id).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn a_batch_of_attempts_commits_together_each_fenced_and_health_in_order() {
    on_each_backend(|db| async move {
        let e = endpoint(OWNER, 10);
        db.insert_endpoint(&e).await.unwrap();
        let (a, b) = (delivery(&e, 100, Some(100)), delivery(&e, 101, Some(101)));
        db.insert_delivery(&a).await.unwrap();
        db.insert_delivery(&b).await.unwrap();
        // Each dead attempt counts on the endpoint as the batch's earlier ones left it.
        let health = |row: &EndpointRow| {
            Some(HealthUpdate {
                health: "failing".to_string(),
                consecutive_dead: row.consecutive_dead + 1,
                failing_since: Some(200),
                blocked_at: None,
                blocked_reason: None,
            })
        };
        let mut stale = failed_write(&b, 1, "dead", None);
        stale.expected_attempts = 5;
        let applied = db
            .finish_attempts(vec![
                (failed_write(&a, 1, "dead", None), Some(&health)),
                (stale, Some(&health)),
                (failed_write(&b, 1, "dead", None), Some(&health)),
            ])
            .await
            .unwrap();
        assert_eq!(applied, vec![true, false, true]);
        for id in [a.id, b.id] {
            let d = db.get_delivery(OWNER, id).await.unwrap().unwrap();
            assert_eq!((d.status.as_str(), d.attempts), ("dead", 1));
            assert_eq!(db.list_attempts(id).await.unwrap().len(), 1);
        }
        let h = db.get_endpoint(e.id).await.unwrap().unwrap();
        assert_eq!((h.health.as_str(), h.consecutive_dead), ("failing", 2));
    })
    .await;
}
