//! `ChangeFeed`: PostgreSQL NOTIFY/LISTEN between replicas of one database. SQLite has one
//! replica and no feed. Every wait here is bounded, so a lost notification fails the test
//! instead of hanging it.
use super::*;
use keygate::store::changes::{ChangeFeed, ChangeSink, PgChangeFeed};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Payload(String),
    Reconnected,
}

/// Forwards what the feed delivers to the test.
struct Collect(mpsc::UnboundedSender<Heard>);

impl ChangeSink for Collect {
    fn reconnected(&self) {
        let _ = self.0.send(Heard::Reconnected);
    }

    fn deliver(&self, payload: &str) {
        let _ = self.0.send(Heard::Payload(payload.to_owned()));
    }
}

/// A replica's feed, listening into a channel until `stop` is sent `true`.
struct Listening {
    feed: Arc<PgChangeFeed>,
    heard: mpsc::UnboundedReceiver<Heard>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A feed of its own store on `db`, as a second replica would have.
async fn feed(db: &TestDb) -> Arc<PgChangeFeed> {
    let sea = open_sea(db).await;
    Arc::new(PgChangeFeed::of(&sea, &db.url).expect("a PostgreSQL store has a feed"))
}

async fn listen(db: &TestDb) -> Listening {
    let feed = feed(db).await;
    let (tx, heard) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let f = feed.clone();
    let task = tokio::spawn(async move { f.listen(&Collect(tx), stop_rx).await });
    Listening {
        feed,
        heard,
        stop,
        task,
    }
}

impl Listening {
    /// The next thing heard, or `None` after `WAIT`.
    async fn next(&mut self) -> Option<Heard> {
        tokio::time::timeout(WAIT, self.heard.recv())
            .await
            .ok()
            .flatten()
    }

    /// Announces `probe` on `from` until this listener hears it: LISTEN starts in the
    /// background, and what is sent before it is in place is (rightly) not delivered.
    async fn wait_until_listening(&mut self, from: &dyn ChangeFeed, probe: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            from.announce(probe.to_owned());
            let heard = tokio::time::timeout(Duration::from_millis(100), self.heard.recv()).await;
            if let Ok(Some(Heard::Payload(p))) = heard {
                if p == probe {
                    return self.drain_probes(probe);
                }
            }
        }
        panic!("the listener never heard {probe:?}");
    }

    /// Drops late copies of `probe` already queued (extra announcements sent while
    /// waiting) so the test sees only what it announces next.
    fn drain_probes(&mut self, probe: &str) {
        while let Ok(h) = self.heard.try_recv() {
            assert_eq!(h, Heard::Payload(probe.to_owned()));
        }
    }

    /// The payloads heard until each of `expected` has been, ignoring `probe` copies.
    async fn collect(&mut self, expected: &[&str], probe: &str) -> HashSet<String> {
        let want: HashSet<String> = expected.iter().map(|s| s.to_string()).collect();
        let mut got = HashSet::new();
        while !want.is_subset(&got) {
            match self.next().await {
                Some(Heard::Payload(p)) if p == probe => {}
                Some(Heard::Payload(p)) => {
                    got.insert(p);
                }
                Some(Heard::Reconnected) => panic!("unexpected reconnection"),
                None => panic!("heard only {got:?} of {want:?}"),
            }
        }
        got
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("listen returns once told to stop")
            .unwrap();
    }
}

/// A fresh PostgreSQL database, or `None` outside CI when PostgreSQL is down.
async fn pg() -> Option<TestDb> {
    TestDb::new(Db::Postgres).await
}

#[tokio::test]
async fn a_sqlite_store_has_no_feed() {
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    let sea = open_sea(&db).await;
    assert!(PgChangeFeed::of(&sea, &db.url).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_announcement_reaches_the_other_replica_and_its_own() {
    let Some(db) = pg().await else { return };
    let mut b = listen(&db).await;
    let a = feed(&db).await;
    b.wait_until_listening(a.as_ref(), "probe").await;
    for p in ["key:k1", "tenant:acme", "key:k2"] {
        a.announce(p.to_owned());
    }
    // Its own announcements reach a replica's listener too.
    b.feed.announce("plan:pro".to_owned());
    let got = b
        .collect(&["key:k1", "tenant:acme", "key:k2", "plan:pro"], "probe")
        .await;
    assert_eq!(got.len(), 4, "{got:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_listener_hears_each_announcement_once() {
    let Some(db) = pg().await else { return };
    let mut b = listen(&db).await;
    let mut c = listen(&db).await;
    let a = feed(&db).await;
    b.wait_until_listening(a.as_ref(), "probe").await;
    c.wait_until_listening(a.as_ref(), "probe").await;
    b.drain_probes("probe");
    a.announce("key:k1".to_owned());
    for l in [&mut b, &mut c] {
        assert_eq!(l.collect(&["key:k1"], "probe").await.len(), 1);
    }
    // Announced last, heard after key:k1: had key:k1 come twice it would show here.
    a.announce("key:k2".to_owned());
    for l in [&mut b, &mut c] {
        loop {
            match l.next().await {
                Some(Heard::Payload(p)) if p == "probe" => {}
                other => {
                    assert_eq!(other, Some(Heard::Payload("key:k2".into())));
                    break;
                }
            }
        }
    }
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listen_returns_when_stopped() {
    let Some(db) = pg().await else { return };
    let mut b = listen(&db).await;
    let a = feed(&db).await;
    b.wait_until_listening(a.as_ref(), "probe").await;
    b.stop().await;
    // Stopped at once, likely before it has connected: returns as well.
    let l = listen(&db).await;
    l.stop().await;
}

/// A lost listening connection is reported as a reconnection (what was announced meanwhile
/// is gone), and announcements reach the listener again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_listener_connection_reports_its_reconnection() {
    let Some(db) = pg().await else { return };
    let mut b = listen(&db).await;
    let a = feed(&db).await;
    b.wait_until_listening(a.as_ref(), "probe").await;
    let admin = open_sea(&db).await;
    let killed = admin
        .connection()
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%' \
             AND pid <> pg_backend_pid()",
        ))
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one listening connection");
    assert!(killed[0].try_get::<bool>("", "killed").unwrap());
    loop {
        match b.next().await {
            Some(Heard::Reconnected) => break,
            Some(Heard::Payload(p)) if p == "probe" => {}
            other => panic!("expected a reconnection, got {other:?}"),
        }
    }
    b.wait_until_listening(a.as_ref(), "probe").await;
    a.announce("key:k1".to_owned());
    assert_eq!(b.collect(&["key:k1"], "probe").await.len(), 1);
    b.stop().await;
}
