//! `StoreHealth`: a store that answers pings, and one that cannot says so as a transient
//! failure (UNAVAILABLE, so gateways apply their failure mode), not as a bug.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;
use crate::support::Proxy;

#[track_caller]
fn assert_unavailable(r: keygate::error::Result<()>) {
    match r {
        Err(Error::Unavailable { what, .. }) => assert_eq!(what, "database"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

async fn ping_answers(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    s.health.ping().await.unwrap();
    // Repeatedly, and from several tasks at once.
    let pings: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.health.ping().await })
        })
        .collect();
    for p in pings {
        p.await.unwrap().unwrap();
    }
}

async fn a_closed_store_is_unavailable(db: Db) {
    let Some(db) = TestDb::new(db).await else {
        return;
    };
    let sea = open_sea(&db).await;
    let s = Stores::of(sea.clone());
    s.health.ping().await.unwrap();
    sea.connection().clone().close().await.unwrap();
    assert_unavailable(s.health.ping().await);
}

on_both_stores!(ping_answers, a_closed_store_is_unavailable);

/// PostgreSQL out of reach (every connection cut) is UNAVAILABLE within the store's
/// timeout, and the same store answers again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_out_of_reach_is_unavailable_then_recovers() {
    let Some(db) = TestDb::new(Db::Postgres).await else {
        return;
    };
    // Only the migrations need the database direct; the store under test goes through
    // the proxy.
    drop(open_sea(&db).await);
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let url = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let conn = keygate::store::connect(&url, 2, Duration::from_millis(500))
        .await
        .unwrap();
    let s = Stores::of(SeaStore::new(conn));
    s.health.ping().await.unwrap();
    proxy.cut();
    let r = tokio::time::timeout(Duration::from_secs(10), s.health.ping())
        .await
        .expect("a ping of an unreachable store returns within its timeout");
    assert_unavailable(r);
    proxy.restore();
    let mut answered = false;
    for _ in 0..40 {
        if s.health.ping().await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answered,
        "the store answers again once PostgreSQL is reachable"
    );
}
