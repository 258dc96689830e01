//! The schedules contract (`flowrun_store::schedules`) against both backends: SQLite always,
//! PostgreSQL when `FLOWRUN_TEST_DATABASE_URL` names a server (each test gets a fresh
//! database, dropped at the end).

use std::collections::HashSet;

use flowrun_store::{ScheduleAdvance, ScheduleRow};
use uuid::Uuid;

mod common;

use common::{Db, on_each_backend};

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// A fresh (unclaimed) row restarted at `started`, next fire `next_fire` (nominal = fire
/// minus 1 s, as with a jitter).
fn row(n: u128, started: i64, next_fire: Option<i64>) -> ScheduleRow {
    ScheduleRow {
        trigger_id: id(n),
        owner_id: "owner-1".to_string(),
        rule_key: format!("rule-{n}"),
        started_at: started,
        last_handled_nominal_at: started,
        next_nominal_at: next_fire.map(|f| f + 1000),
        next_fire_at: next_fire,
        claimed_by: None,
        claimed_at: None,
        claimed_until: None,
    }
}

fn advance(r: &ScheduleRow, handled: i64, next: Option<i64>) -> ScheduleAdvance {
    ScheduleAdvance {
        trigger_id: r.trigger_id,
        claimed_by: r.claimed_by.clone().expect("claimed"),
        claimed_at: r.claimed_at.expect("claimed"),
        last_handled_nominal_at: handled,
        next_nominal_at: next,
        next_fire_at: next,
    }
}

async fn get(db: &Db, n: u128) -> ScheduleRow {
    db.get_schedule(id(n)).await.unwrap().expect("row exists")
}

#[tokio::test]
async fn put_restarts_only_changed_rules_and_delete_removes() {
    on_each_backend(|db| async move {
        let a = row(1, 1_000, Some(5_000));
        let b = row(2, 1_000, None);
        assert_eq!(
            db.put_schedules(&[a.clone(), b.clone()], true)
                .await
                .unwrap(),
            [id(1), id(2)]
        );
        assert_eq!(get(&db, 1).await, a);
        assert_eq!(get(&db, 2).await, b);
        assert_eq!(db.list_schedules().await.unwrap(), [a.clone(), b.clone()]);
        assert!(db.get_schedule(id(3)).await.unwrap().is_none());

        // Same rule key: left alone when only changed rules restart, overwritten otherwise.
        let a_later = ScheduleRow {
            started_at: 2_000,
            last_handled_nominal_at: 2_000,
            next_nominal_at: Some(9_000),
            next_fire_at: Some(9_000),
            ..a.clone()
        };
        assert!(
            db.put_schedules(std::slice::from_ref(&a_later), true)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(get(&db, 1).await, a);
        let a_new_rule = ScheduleRow {
            rule_key: "rule-1-changed".to_string(),
            ..a_later.clone()
        };
        assert_eq!(
            db.put_schedules(std::slice::from_ref(&a_new_rule), true)
                .await
                .unwrap(),
            [id(1)]
        );
        assert_eq!(get(&db, 1).await, a_new_rule);
        assert_eq!(
            db.put_schedules(std::slice::from_ref(&a_later), false)
                .await
                .unwrap(),
            [id(1)]
        );
        assert_eq!(get(&db, 1).await, a_later);

        // A restart clears a claim.
        let claimed = db
            .claim_due_schedules("n1", 10_000, 40_000, 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(get(&db, 1).await.claimed_by.as_deref(), Some("n1"));
        db.put_schedules(std::slice::from_ref(&a), false)
            .await
            .unwrap();
        assert_eq!(get(&db, 1).await, a);

        assert_eq!(db.delete_schedules(&[id(1), id(3)]).await.unwrap(), 1);
        assert_eq!(db.delete_schedules(&[]).await.unwrap(), 0);
        assert_eq!(db.list_schedules().await.unwrap(), [b]);
    })
    .await;
}

#[tokio::test]
async fn claims_take_due_rows_earliest_first_and_skip_held_and_exhausted_ones() {
    on_each_backend(|db| async move {
        db.put_schedules(
            &[
                row(1, 0, Some(3_000)),
                row(2, 0, Some(1_000)),
                row(3, 0, Some(2_000)),
                row(4, 0, Some(9_000)), // not due at 5 000
                row(5, 0, None),        // exhausted
                row(6, 0, Some(5_000)), // due exactly at 5 000
            ],
            false,
        )
        .await
        .unwrap();
        assert_eq!(db.next_schedule_wake().await.unwrap(), Some(1_000));
        assert!(
            db.claim_due_schedules("n1", 500, 30_500, 10)
                .await
                .unwrap()
                .is_empty()
        );

        let first = db
            .claim_due_schedules("n1", 5_000, 35_000, 2)
            .await
            .unwrap();
        let got: Vec<Uuid> = first.iter().map(|c| c.row.trigger_id).collect();
        assert_eq!(got, [id(2), id(3)]);
        for c in &first {
            assert_eq!(c.row.claimed_by.as_deref(), Some("n1"));
            assert_eq!(c.row.claimed_at, Some(5_000));
            assert_eq!(c.row.claimed_until, Some(35_000));
            assert_eq!(c.abandoned_claim_at, None);
            assert_eq!(get(&db, c.row.trigger_id.as_u128()).await, c.row);
        }
        // Held rows are not claimed again; the rest of the due ones are.
        let second = db
            .claim_due_schedules("n2", 5_000, 35_000, 10)
            .await
            .unwrap();
        let got: Vec<Uuid> = second.iter().map(|c| c.row.trigger_id).collect();
        assert_eq!(got, [id(1), id(6)]);
        assert!(
            db.claim_due_schedules("n3", 5_001, 35_001, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Every due row is held: the next wake is the earliest claim expiry or due time.
        assert_eq!(db.next_schedule_wake().await.unwrap(), Some(9_000));

        // n1 advances one row; the other stays held and expires.
        let r2 = &first[0].row;
        assert_eq!(
            db.advance_schedules(&[advance(r2, 1_000, Some(50_000))])
                .await
                .unwrap(),
            [true]
        );
        let after = get(&db, 2).await;
        assert_eq!(after.last_handled_nominal_at, 1_000);
        assert_eq!(after.next_fire_at, Some(50_000));
        assert_eq!(after.claimed_by, None);
        assert_eq!(after.claimed_at, None);
        assert_eq!(after.claimed_until, None);
        // At 35 000 the claims are still valid (expiry is strict); after, they are taken over
        // with the abandoned claim's time.
        let at_expiry = db
            .claim_due_schedules("n4", 35_000, 65_000, 10)
            .await
            .unwrap();
        let got: Vec<Uuid> = at_expiry.iter().map(|c| c.row.trigger_id).collect();
        assert_eq!(got, [id(4)], "only the newly due row");
        assert_eq!(at_expiry[0].abandoned_claim_at, None);
        let taken = db
            .claim_due_schedules("n4", 35_001, 65_001, 10)
            .await
            .unwrap();
        let got: Vec<(Uuid, Option<i64>)> = taken
            .iter()
            .map(|c| (c.row.trigger_id, c.abandoned_claim_at))
            .collect();
        assert_eq!(
            got,
            [
                (id(3), Some(5_000)),
                (id(1), Some(5_000)),
                (id(6), Some(5_000))
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn advances_are_fenced_by_the_claim() {
    on_each_backend(|db| async move {
        db.put_schedules(&[row(1, 0, Some(1_000))], false)
            .await
            .unwrap();
        let c = db
            .claim_due_schedules("n1", 2_000, 3_000, 10)
            .await
            .unwrap();
        let r = c[0].row.clone();
        let other_node = ScheduleAdvance {
            claimed_by: "n2".to_string(),
            ..advance(&r, 2_000, Some(9_000))
        };
        let other_time = ScheduleAdvance {
            claimed_at: 1_999,
            ..advance(&r, 2_000, Some(9_000))
        };
        assert_eq!(
            db.advance_schedules(&[other_node, other_time])
                .await
                .unwrap(),
            [false, false]
        );
        assert_eq!(get(&db, 1).await, r);

        // The claim expires and another node takes the row over: the first holder's late
        // advance no longer applies, the new holder's does, once.
        let c2 = db
            .claim_due_schedules("n2", 3_001, 33_001, 10)
            .await
            .unwrap();
        assert_eq!(c2[0].abandoned_claim_at, Some(2_000));
        let r2 = c2[0].row.clone();
        assert_eq!(
            db.advance_schedules(&[advance(&r, 2_000, Some(9_000))])
                .await
                .unwrap(),
            [false]
        );
        assert_eq!(
            db.advance_schedules(&[advance(&r2, 2_000, None), advance(&r2, 2_000, None)])
                .await
                .unwrap(),
            [true, false]
        );
        let done = get(&db, 1).await;
        assert_eq!(done.last_handled_nominal_at, 2_000);
        assert_eq!(done.next_nominal_at, None);
        assert_eq!(done.next_fire_at, None);
        assert_eq!(done.claimed_by, None);
        // Exhausted rows are never due and never wake the scheduler.
        assert_eq!(db.next_schedule_wake().await.unwrap(), None);
        assert!(
            db.claim_due_schedules("n1", i64::MAX, i64::MAX, 10)
                .await
                .unwrap()
                .is_empty()
        );

        // A deleted row cannot be advanced.
        db.put_schedules(&[row(2, 0, Some(1_000))], false)
            .await
            .unwrap();
        let c = db
            .claim_due_schedules("n1", 2_000, 3_000, 10)
            .await
            .unwrap();
        db.delete_schedules(&[id(2)]).await.unwrap();
        assert_eq!(
            db.advance_schedules(&[advance(&c[0].row, 2_000, None)])
                .await
                .unwrap(),
            [false]
        );
        assert!(db.get_schedule(id(2)).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn next_wake_is_the_earliest_unclaimed_due_time_or_claim_expiry() {
    on_each_backend(|db| async move {
        assert_eq!(db.next_schedule_wake().await.unwrap(), None);
        db.put_schedules(&[row(1, 0, Some(10_000)), row(2, 0, Some(20_000))], false)
            .await
            .unwrap();
        assert_eq!(db.next_schedule_wake().await.unwrap(), Some(10_000));
        // Claimed with an expiry before the other row's due time.
        let c = db
            .claim_due_schedules("n1", 10_000, 15_000, 10)
            .await
            .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(db.next_schedule_wake().await.unwrap(), Some(15_000));
        db.advance_schedules(&[advance(&c[0].row, 11_000, Some(30_000))])
            .await
            .unwrap();
        assert_eq!(db.next_schedule_wake().await.unwrap(), Some(20_000));
        db.delete_schedules(&[id(2)]).await.unwrap();
        assert_eq!(db.next_schedule_wake().await.unwrap(), Some(30_000));
    })
    .await;
}

#[tokio::test]
async fn start_up_expires_every_claim_but_keeps_it_visible_as_abandoned() {
    on_each_backend(|db| async move {
        db.put_schedules(&[row(1, 0, Some(1_000)), row(2, 0, Some(2_000))], false)
            .await
            .unwrap();
        db.claim_due_schedules("old-process", 5_000, 65_000, 1)
            .await
            .unwrap();
        assert_eq!(db.expire_schedule_claims(6_000).await.unwrap(), 1);
        let r = get(&db, 1).await;
        assert_eq!(r.claimed_by.as_deref(), Some("old-process"));
        assert_eq!(r.claimed_at, Some(5_000));
        assert_eq!(r.claimed_until, Some(5_999));
        assert_eq!(db.expire_schedule_claims(6_000).await.unwrap(), 0);
        let c = db
            .claim_due_schedules("new-process", 6_000, 66_000, 10)
            .await
            .unwrap();
        let got: Vec<(Uuid, Option<i64>)> = c
            .iter()
            .map(|c| (c.row.trigger_id, c.abandoned_claim_at))
            .collect();
        assert_eq!(got, [(id(1), Some(5_000)), (id(2), None)]);
    })
    .await;
}

#[tokio::test]
async fn concurrent_claimers_take_each_due_row_once() {
    on_each_backend(|db| async move {
        let rows: Vec<ScheduleRow> = (1..=300).map(|n| row(n, 0, Some(n as i64))).collect();
        db.put_schedules(&rows, false).await.unwrap();
        let mut tasks = Vec::new();
        for node in 0..6 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = db
                        .claim_due_schedules(&format!("node-{node}"), 1_000, 100_000, 7)
                        .await
                        .unwrap();
                    if got.is_empty() {
                        break;
                    }
                    mine.extend(got.into_iter().map(|c| c.row));
                }
                mine
            }));
        }
        let mut seen = HashSet::new();
        let mut advances = Vec::new();
        for t in tasks {
            for r in t.await.unwrap() {
                assert!(seen.insert(r.trigger_id), "{} claimed twice", r.trigger_id);
                advances.push(advance(&r, r.next_nominal_at.unwrap(), None));
            }
        }
        assert_eq!(seen.len(), 300);
        let applied = db.advance_schedules(&advances).await.unwrap();
        assert!(applied.iter().all(|a| *a));
        assert_eq!(db.next_schedule_wake().await.unwrap(), None);
    })
    .await;
}
