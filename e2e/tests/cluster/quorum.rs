//! What a replicated ClickHouse gives the exactly-once argument, measured on the real
//! replicas with the settings every Tally process uses on a cluster
//! (`tally_platform::store::cluster_settings`).

use std::time::{Duration, Instant};

use tally_platform::{migrate, store};

use crate::nodes::Cluster;

/// Writes and reads as Tally's processes do, through replica `i`.
fn client(cluster: &Cluster, i: usize, database: &str) -> clickhouse::Client {
    store::connect(&cluster.clickhouse_config(i, database))
}

async fn count(db: &clickhouse::Client, id: &str) -> u64 {
    db.query("SELECT count() FROM quorum_probe WHERE id = ?")
        .bind(id)
        .fetch_one()
        .await
        .expect("count")
}

async fn insert(db: &clickhouse::Client, id: &str, at: u32) -> Result<(), String> {
    db.query("INSERT INTO quorum_probe (id, at) VALUES (?, ?)")
        .bind(id)
        .bind(at)
        .execute()
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cluster: scripts/cluster.sh test"]
async fn a_quorum_write_is_on_every_replica_or_fails() {
    let cluster = Cluster::from_env();
    let database = format!("cl_quorum_{}", std::process::id());
    let cfg = cluster.clickhouse_config(0, &database);
    let server = store::server(&cfg);
    for sql in [
        format!("CREATE DATABASE IF NOT EXISTS {database}"),
        "CREATE TABLE IF NOT EXISTS quorum_probe (id String, at DateTime) ENGINE = MergeTree() ORDER BY id".to_owned(),
    ] {
        let sql = migrate::prepared(&sql, &cfg).expect("cluster form");
        server.query(&sql).execute().await.expect(&sql);
    }
    let (first, second) = (
        client(&cluster, 0, &database),
        client(&cluster, 1, &database),
    );

    // 1. A write that returned is on the other replica at once: no wait, every time.
    for i in 0..20 {
        let id = format!("now-{i}");
        insert(&first, &id, 1).await.expect("quorum insert");
        assert_eq!(
            count(&second, &id).await,
            1,
            "{id}: read on the other replica right after the write returned"
        );
    }

    // 2. A retried block counts once only if it is byte-identical: the same row again is
    //    dropped by ReplicatedMergeTree's block deduplication, the same row with another
    //    timestamp (what a `DEFAULT now()` column does to a retry) is a second row. Tally sets
    //    every column in the client and never relies on this: an aggregator retry is a new
    //    batch id and the failed attempt is aborted.
    insert(&first, "retried", 1).await.expect("insert");
    insert(&first, "retried", 1).await.expect("identical retry");
    assert_eq!(
        count(&second, "retried").await,
        1,
        "identical block deduplicated"
    );
    insert(&first, "retried", 2)
        .await
        .expect("retry with another timestamp");
    assert_eq!(count(&second, "retried").await, 2, "a changed block is new");

    // 3. A replica down: the write cannot reach its quorum and fails (after the timeout), the
    //    next fails at once, nothing is acknowledged; once the replica is back the failed write
    //    is found on both replicas, because a timed-out quorum write is "unknown status", not
    //    "not written". So a failed attempt must be aborted, never assumed absent.
    cluster.node("kill", "clickhouse", 2);
    let started = Instant::now();
    let failed = insert(&first, "while-down", 1)
        .await
        .expect_err("no quorum with a replica down");
    let waited = started.elapsed();
    assert!(
        failed.contains("319") || failed.contains("285") || failed.contains("286"),
        "{failed}"
    );
    let next = insert(&first, "while-down-2", 1)
        .await
        .expect_err("the next write fails too");
    println!(
        "quorum: with replica 2 down the write failed after {:.1}s ({}), the next one at once ({})",
        waited.as_secs_f64(),
        &failed[..failed.len().min(90)],
        &next[..next.len().min(90)]
    );
    let restarted = Instant::now();
    cluster.node("start", "clickhouse", 2);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match insert(&first, "after", 1).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "writes never recovered after the replica came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "quorum: quorum writes work again {:.1}s after the replica was started",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(
        count(&second, "while-down").await,
        1,
        "the failed write is on the replica that was down"
    );
    assert_eq!(count(&second, "after").await, 1);
    let _ = server
        .query(&format!(
            "DROP DATABASE IF EXISTS {database} ON CLUSTER tally"
        ))
        .execute()
        .await;
}
