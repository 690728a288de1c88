//! The PostgreSQL mirror against a real server: the URL comes from
//! CHAINCORE_TEST_DATABASE_URL (scripts/test.sh sets it and starts a server
//! if none answers); every test creates and drops a database of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaincore::chain::Chain;
use chaincore::consensus::address::Address;
use chaincore::consensus::block::Block;
use chaincore::consensus::params::Network;
use chaincore::mirror::{self, LoadMode, MirrorStatus};
use chaincore::testkit::{key, TestChain};
use tokio_postgres::{Client, NoTls};

use crate::common::{block_file, chain_with_spends, chaincore, prefix, stored_tip, NodeProcess};

/// A database of one test, dropped when the test ends.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    fn new(rt: &tokio::runtime::Runtime) -> TestDb {
        let admin_url = std::env::var("CHAINCORE_TEST_DATABASE_URL").expect(
            "CHAINCORE_TEST_DATABASE_URL is not set: run scripts/test.sh, or point it at a PostgreSQL server",
        );
        let name = format!("chaincore_test_{:016x}", rand::random::<u64>());
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin_url, NoTls)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} does not answer: {e}"));
            tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
        });
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("database URL {admin_url} has no database part"),
        };
        TestDb {
            admin_url,
            name,
            url,
        }
    }

    async fn client(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A regtest chain in a temp dir holding `prefix_len` blocks mined to
/// key(1), then `len` blocks of `txs` spends each from key(1) to key(3);
/// with the builder of the prefix and the spending blocks.
fn spent_chain(
    prefix_len: usize,
    len: usize,
    txs: usize,
) -> (tempfile::TempDir, Chain, TestChain, Vec<Block>) {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = chaincore::testkit::regtest_chain(dir.path());
    let base = prefix(prefix_len);
    let (_, blocks) = chain_with_spends(&base, len, txs, &key(3), &key(5));
    feed(&mut chain, &base.blocks[1..]);
    feed(&mut chain, &blocks);
    (dir, chain, base, blocks)
}

fn feed(chain: &mut Chain, blocks: &[Block]) {
    for block in blocks {
        chain.process_block(Arc::new(block.clone()), None).unwrap();
    }
}

/// Steps the mirror until it holds the chain's tip.
async fn catch_up(client: &mut Client, chain: &Chain, batch: u32) {
    while mirror::step(
        client,
        chain.store(),
        Network::Regtest,
        batch,
        LoadMode::Copy,
    )
    .await
    .unwrap()
        > 0
    {}
    let (height, hash) = mirror::watermark(client).await.unwrap().unwrap();
    assert_eq!((height, hash), (chain.height(), chain.tip().hash));
}

async fn assert_consistent(client: &Client, chain: &Chain) {
    let report = mirror::verify::verify(client, chain.store(), Network::Regtest)
        .await
        .unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert!(report.addresses_compared > 0 && report.utxos_compared > 0);
    // And the balances read the way analysts query them.
    let address = Address::new(Network::Regtest, key(3).pubkey_hash()).to_string();
    let expected = chain
        .store()
        .address_stats(&key(3).pubkey_hash())
        .unwrap()
        .balance() as i64;
    let found: i64 = client
        .query_opt(
            "SELECT balance FROM address_balances WHERE address = $1",
            &[&address],
        )
        .await
        .unwrap()
        .map_or(0, |r| r.get(0));
    assert_eq!(found, expected);
}

#[test]
fn balances_match_after_blocks_and_after_reorgs_of_depth_3_and_20() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let (_dir, mut chain, base, a) = spent_chain(20, 25, 4);
    rt.block_on(async {
        let mut client = mirror::connect(&db.url, Network::Regtest).await.unwrap();
        catch_up(&mut client, &chain, 10).await;
        assert_consistent(&client, &chain).await;
        let mut base_3 = base.clone();
        for block in &a[..22] {
            base_3.apply(block.clone());
        }
        // Depth 3: a branch from a[21] that is one block longer.
        let (_, b) = chain_with_spends(&base_3, 4, 2, &key(6), &key(7));
        feed(&mut chain, &b);
        catch_up(&mut client, &chain, 10).await;
        assert_consistent(&client, &chain).await;
        // Depth 20: fork at a[5] (height 26); the tip is at 46, so 20 blocks
        // go and 21 come.
        let mut base_20 = base.clone();
        for block in &a[..6] {
            base_20.apply(block.clone());
        }
        let (_, c) = chain_with_spends(&base_20, 21, 3, &key(8), &key(9));
        feed(&mut chain, &c);
        assert_eq!(chain.tip().hash, c.last().unwrap().hash());
        catch_up(&mut client, &chain, 10).await;
        assert_consistent(&client, &chain).await;
        let events: Vec<(i64, i32)> = client
            .query(
                "SELECT fork_height, blocks_removed FROM reorg_events ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            events,
            vec![(42, 3), (26, 20)],
            "fork heights and depths recorded"
        );
    });
}

#[test]
fn terminated_connections_mid_catch_up_still_converge() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let (_dir, chain, base, blocks) = spent_chain(12, 600, 2);
    let store = chain.store().clone();
    let status = Arc::new(Mutex::new(MirrorStatus::default()));
    rt.block_on(async {
        let task = tokio::spawn(mirror::run(
            db.url.clone(),
            Network::Regtest,
            store,
            Arc::new(tokio::sync::Notify::new()),
            status.clone(),
        ));
        let admin = db.client().await;
        let mut kills = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let lag = {
                let s = status.lock().unwrap();
                s.height.map(|h| chain.height() - h)
            };
            if lag == Some(0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mirror did not converge: {:?}",
                status.lock().unwrap()
            );
            if kills < 5 && status.lock().unwrap().height.is_some() {
                let killed = admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .unwrap();
                kills += usize::from(!killed.is_empty());
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        task.abort();
        assert!(kills >= 1, "no connection was terminated during catch-up");
        let client = db.client().await;
        assert_consistent(&client, &chain).await;
        let txs: i64 = client
            .query_one("SELECT count(*) FROM transactions", &[])
            .await
            .unwrap()
            .get(0);
        let expected: usize =
            base.blocks.len() + blocks.iter().map(|b| b.transactions.len()).sum::<usize>();
        assert_eq!(txs as usize, expected);
    });
}

/// Every column of the public schema.
async fn schema_of(client: &Client) -> Vec<(String, String, String)> {
    client
        .query(
            "SELECT table_name, column_name, data_type FROM information_schema.columns
             WHERE table_schema = 'public' ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn migrations_applied_twice_change_nothing_and_verify_finds_planted_damage() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let (dir, chain, _, _) = spent_chain(12, 5, 2);
    rt.block_on(async {
        let mut client = db.client().await;
        assert_eq!(mirror::migrate::migrate(&mut client).await.unwrap(), 1);
        let before = schema_of(&client).await;
        assert_eq!(mirror::migrate::migrate(&mut client).await.unwrap(), 0);
        assert_eq!(schema_of(&client).await, before);
        let rows: i64 = client
            .query_one("SELECT count(*) FROM schema_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 1);

        catch_up(&mut client, &chain, 100).await;
        assert_consistent(&client, &chain).await;
        let address = Address::new(Network::Regtest, key(3).pubkey_hash()).to_string();
        client
            .execute(
                "UPDATE address_balances SET balance = balance + 1 WHERE address = $1",
                &[&address],
            )
            .await
            .unwrap();
        let report = mirror::verify::verify(&client, chain.store(), Network::Regtest)
            .await
            .unwrap();
        assert_eq!(report.difference_count, 1, "{report:?}");
        assert!(report.differences[0].contains(&address));
    });
    // The command line says so too, with a non-zero exit.
    drop(chain);
    let out = chaincore()
        .args(["mirror", "verify", "--data-dir"])
        .arg(dir.path())
        .args(["--postgres-url", &db.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"difference_count\": 1"));
}

#[test]
fn node_killed_during_catch_up_resumes_without_duplicates_or_gaps() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let base = prefix(12);
    let (chain, blocks) = chain_with_spends(&base, 400, 4, &key(3), &key(5));
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<_> = base.blocks[1..].iter().chain(&blocks).cloned().collect();
    let file = block_file(dir.path(), "chain.dat", &all);
    let data_dir = dir.path().join("node");
    let mut node = NodeProcess::start(
        &data_dir,
        &[
            "--postgres-url",
            &db.url,
            "--import",
            file.to_str().unwrap(),
        ],
    );
    node.wait_for("mirror caught up a range", Duration::from_secs(120));
    node.kill();
    let mid = rt.block_on(async { mirror::watermark(&db.client().await).await.unwrap() });
    let mut node = NodeProcess::start(
        &data_dir,
        &[
            "--postgres-url",
            &db.url,
            "--import",
            file.to_str().unwrap(),
        ],
    );
    node.wait_for("import done", Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(120);
    rt.block_on(async {
        let client = db.client().await;
        loop {
            if let Some((height, _)) = mirror::watermark(&client).await.unwrap() {
                if height == chain.height() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the mirror did not finish after the restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Balances in PostgreSQL equal the node's REST answers.
    let api = node.api_addr();
    rt.block_on(async {
        let client = db.client().await;
        for seed in [1u8, 3, 5] {
            let address = Address::new(Network::Regtest, key(seed).pubkey_hash()).to_string();
            let (status, body) =
                chaincore::testkit::process::http(api, "GET", &format!("/address/{address}"), "");
            assert_eq!(status, 200, "{body}");
            let rest: serde_json::Value = serde_json::from_str(&body).unwrap();
            let pg: i64 = client
                .query_one(
                    "SELECT balance FROM address_balances WHERE address = $1",
                    &[&address],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(rest["balance"].as_i64(), Some(pg), "{address}");
            assert!(pg > 0);
        }
    });
    let (_, metrics) = chaincore::testkit::process::http(api, "GET", "/metrics", "");
    assert!(
        metrics.contains(&format!("chaincore_mirror_height {}", chain.height())),
        "{metrics}"
    );
    assert!(
        metrics.contains("chaincore_mirror_lag_blocks 0"),
        "{metrics}"
    );
    node.stop();
    assert!(
        mid.is_none_or(|(h, _)| h < chain.height()),
        "killed before the mirror finished: {mid:?}"
    );
    assert_eq!(stored_tip(&data_dir).hash, chain.tip().hash());
    rt.block_on(async {
        let client = db.client().await;
        let (store, _) =
            chaincore::store::Store::open_existing(&data_dir, &Default::default()).unwrap();
        let report = mirror::verify::verify(&client, &store, Network::Regtest)
            .await
            .unwrap();
        assert!(report.is_consistent(), "{report:?}");
        let txs: i64 = client
            .query_one("SELECT count(*) FROM transactions", &[])
            .await
            .unwrap()
            .get(0);
        let expected: usize = chain.blocks.iter().map(|b| b.transactions.len()).sum();
        assert_eq!(
            txs as usize, expected,
            "no duplicate, no missing transaction"
        );
        let heights: Vec<i64> = client
            .query("SELECT height FROM blocks ORDER BY height", &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            heights,
            (0..=i64::from(chain.height())).collect::<Vec<_>>(),
            "every height once"
        );
    });
}

#[test]
fn node_keeps_running_when_postgres_is_unreachable() {
    // Nothing listens on port 1 of loopback: every connection is refused.
    let dir = tempfile::tempdir().unwrap();
    let miner = Address::new(Network::Regtest, key(1).pubkey_hash()).to_string();
    let mut node = NodeProcess::start(
        &dir.path().join("n"),
        &[
            "--postgres-url",
            "postgres://postgres@127.0.0.1:1/none",
            "--mine-to",
            &miner,
            "--mine-blocks",
            "5",
        ],
    );
    node.wait_for_height(5, Duration::from_secs(60));
    let api = node.api_addr();
    node.wait_for("mirror failed", Duration::from_secs(30));
    let (status, body) = chaincore::testkit::process::http(api, "GET", "/status", "");
    assert_eq!(status, 200);
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["tip"]["height"], 5);
    assert_eq!(value["mirror"]["connected"], false);
    assert!(
        value["mirror"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{value}"
    );
    node.stop();
}
