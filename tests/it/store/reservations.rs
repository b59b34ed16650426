//! `ReservationStore`: a reservation reads back as written, settles once whoever asks
//! (also when many ask at once), expires only when open and due, and sums into totals.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;
use keygate::domain::reservation::{
    Reservation, ReservationTotals, ReservedLimits, ReservedQuota, Settlement,
};

fn reservation(id: &str, key_id: &str, reserved: u64, at_: UnixMillis) -> Reservation {
    Reservation {
        id: id.into(),
        key_id: key_id.into(),
        tenant_id: "acme".into(),
        reserved,
        reserve_time: at_,
        expire_time: UnixMillis(at_.0 + 10 * MINUTE),
        limits: vec![ReservedLimits {
            bucket: key_id.into(),
            limits: vec![per_minute("minute", 100)],
        }],
        quotas: vec![ReservedQuota {
            subject: format!("key:{key_id}"),
            period_start: T0,
            period_end: Some(at(DAY)),
            limit: 1000,
        }],
        max_overdraft: 5,
        origin: "replica-a".into(),
        limiter_fallback: true,
        settlement: None,
    }
}

fn settled(actual: u64, time: UnixMillis) -> Settlement {
    Settlement {
        actual,
        charged: actual,
        overage: 0,
        settle_time: time,
        expired: false,
        pending: false,
    }
}

async fn a_reservation_reads_back_and_settles_once(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let r = reservation("rsv_1", "k1", 100, at(1000));
    s.reservations.insert_reservation(&r).await.unwrap();
    assert_eq!(
        s.reservations.get_reservation("rsv_1").await.unwrap(),
        Some(r.clone())
    );
    assert_eq!(
        s.reservations.get_reservation("rsv_none").await.unwrap(),
        None
    );
    // The same id twice is refused, not a second reservation.
    assert!(s.reservations.insert_reservation(&r).await.is_err());

    assert!(s
        .reservations
        .settle_reservation("rsv_1", &settled(30, at(2000)))
        .await
        .unwrap());
    // Won, its charge not recorded yet: pending, and what is spent is what was reserved.
    let read = s
        .reservations
        .get_reservation("rsv_1")
        .await
        .unwrap()
        .unwrap();
    let st = read.settlement.unwrap();
    assert_eq!((st.actual, st.charged, st.pending), (30, 100, true));
    let pending = s
        .reservations
        .reservation_totals(Some("k1"), "acme", T0, at(DAY))
        .await
        .unwrap();
    assert_eq!(
        pending.settled, 100,
        "a pending settlement counts what it holds"
    );
    s.reservations.record_charge("rsv_1", 25, 5).await.unwrap();
    let read = s
        .reservations
        .get_reservation("rsv_1")
        .await
        .unwrap()
        .unwrap();
    let st = read.settlement.unwrap();
    assert_eq!(
        (st.actual, st.charged, st.overage, st.expired),
        (30, 25, 5, false)
    );
    // A second settlement writes nothing.
    assert!(!s
        .reservations
        .settle_reservation("rsv_1", &settled(99, at(3000)))
        .await
        .unwrap());
    let again = s
        .reservations
        .get_reservation("rsv_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.settlement.unwrap().actual, 30);
    assert!(!s
        .reservations
        .settle_reservation("rsv_none", &settled(1, at(3000)))
        .await
        .unwrap());
}

async fn many_settling_at_once_settle_once(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    s.reservations
        .insert_reservation(&reservation("rsv_c", "k1", 100, at(0)))
        .await
        .unwrap();
    let tries = (0..8u64).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            s.reservations
                .settle_reservation("rsv_c", &settled(i, at(10)))
                .await
                .unwrap()
        })
    });
    let mut won = 0;
    for t in tries {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
}

async fn only_open_reservations_past_their_expiry_expire(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let open_due = reservation("rsv_due", "k1", 40, at(0));
    let open_later = reservation("rsv_later", "k1", 50, at(5 * MINUTE));
    let settled_due = reservation("rsv_settled", "k1", 60, at(0));
    for r in [&open_due, &open_later, &settled_due] {
        s.reservations.insert_reservation(r).await.unwrap();
    }
    s.reservations
        .settle_reservation("rsv_settled", &settled(7, at(MINUTE)))
        .await
        .unwrap();
    // 10 minutes after the first: due, the other is not; the settled one keeps its figures.
    assert_eq!(
        s.reservations
            .expire_reservations(at(10 * MINUTE))
            .await
            .unwrap(),
        1
    );
    let due = s
        .reservations
        .get_reservation("rsv_due")
        .await
        .unwrap()
        .unwrap();
    let st = due.settlement.unwrap();
    assert_eq!(
        (st.actual, st.charged, st.overage, st.expired),
        (40, 40, 0, true)
    );
    assert!(s
        .reservations
        .get_reservation("rsv_later")
        .await
        .unwrap()
        .unwrap()
        .settlement
        .is_none());
    assert_eq!(
        s.reservations
            .get_reservation("rsv_settled")
            .await
            .unwrap()
            .unwrap()
            .settlement
            .unwrap()
            .actual,
        7
    );
    assert_eq!(
        s.reservations
            .expire_reservations(at(10 * MINUTE))
            .await
            .unwrap(),
        0
    );

    // Totals over the key, and over a range that leaves the later one out.
    s.reservations
        .record_charge("rsv_settled", 7, 0)
        .await
        .unwrap();
    let all = s
        .reservations
        .reservation_totals(Some("k1"), "acme", T0, at(DAY))
        .await
        .unwrap();
    assert_eq!(
        all,
        ReservationTotals {
            reserved: 150,
            settled: 7,
            expired: 40,
            open: 50,
            overage: 0,
        }
    );
    let early = s
        .reservations
        .reservation_totals(None, "acme", T0, at(MINUTE))
        .await
        .unwrap();
    assert_eq!((early.reserved, early.open), (100, 0));
    let other = s
        .reservations
        .reservation_totals(None, "other", T0, at(DAY))
        .await
        .unwrap();
    assert_eq!(other, ReservationTotals::default());
}

async fn stale_settlements_are_finalized_and_old_ones_pruned(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    for (id, t) in [("rsv_stale", 0), ("rsv_fresh", 5 * MINUTE)] {
        s.reservations
            .insert_reservation(&reservation(id, "k1", 80, at(t)))
            .await
            .unwrap();
        s.reservations
            .settle_reservation(id, &settled(10, at(t)))
            .await
            .unwrap();
    }
    // 5.5 minutes on: the first was won 5.5 minutes ago and never recorded, the other
    // 30 s ago.
    s.reservations
        .expire_reservations(at(5 * MINUTE + 30_000))
        .await
        .unwrap();
    let get = |id: &'static str| {
        let s = s.clone();
        async move {
            s.reservations
                .get_reservation(id)
                .await
                .unwrap()
                .unwrap()
                .settlement
                .unwrap()
        }
    };
    let stale = get("rsv_stale").await;
    assert_eq!(
        (stale.charged, stale.pending),
        (80, false),
        "what stayed spent"
    );
    assert!(
        get("rsv_fresh").await.pending,
        "its winner may still record it"
    );
    // Pruning keeps what is still pending and what is newer than the cut.
    assert_eq!(
        s.reservations.prune_reservations(at(MINUTE)).await.unwrap(),
        1
    );
    assert!(s
        .reservations
        .get_reservation("rsv_stale")
        .await
        .unwrap()
        .is_none());
    assert_eq!(s.reservations.prune_reservations(at(DAY)).await.unwrap(), 0);
    assert!(s
        .reservations
        .get_reservation("rsv_fresh")
        .await
        .unwrap()
        .is_some());
}

on_both_stores!(
    stale_settlements_are_finalized_and_old_ones_pruned,
    a_reservation_reads_back_and_settles_once,
    many_settling_at_once_settle_once,
    only_open_reservations_past_their_expiry_expire,
);
