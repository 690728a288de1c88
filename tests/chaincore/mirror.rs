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
        // The server probes the session after 30 s idle: a node that died
        // holding the mirror's lock frees it in about a minute, not hours.
        // (Over TCP: on a Unix socket PostgreSQL reads it as 0.)
        let row = client
            .query_one(
                "SELECT current_setting('tcp_keepalives_idle'), inet_server_addr() IS NULL",
                &[],
            )
            .await
            .unwrap();
        let (idle, socket): (String, bool) = (row.get(0), row.get(1));
        assert_eq!(idle, if socket { "0" } else { "30" });
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

async fn blocks_mirrored(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM blocks", &[])
        .await
        .unwrap()
        .get(0)
}

#[test]
fn migrations_applied_twice_change_nothing_and_verify_finds_planted_damage() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let (dir, chain, _, _) = spent_chain(12, 5, 2);
    rt.block_on(async {
        let mut client = db.client().await;
        let all = mirror::migrate::MIGRATIONS.len();
        assert_eq!(mirror::migrate::migrate(&mut client).await.unwrap(), all);
        let before = schema_of(&client).await;
        assert_eq!(mirror::migrate::migrate(&mut client).await.unwrap(), 0);
        assert_eq!(schema_of(&client).await, before);
        let rows: i64 = client
            .query_one("SELECT count(*) FROM schema_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows as usize, all);

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

        // A watermark another program set past u32 (it read as height 5
        // once truncated, and the mirror deleted every block above it): an
        // error, and a step deletes nothing.
        let before = blocks_mirrored(&client).await;
        client
            .execute("UPDATE mirror_state SET height = 4294967301", &[])
            .await
            .unwrap();
        let error = mirror::watermark(&client).await.unwrap_err();
        assert!(error.to_string().contains("height 4294967301"), "{error}");
        let step = mirror::step(
            &mut client,
            chain.store(),
            Network::Regtest,
            100,
            LoadMode::Copy,
        )
        .await;
        assert!(step.is_err(), "{step:?}");
        assert_eq!(blocks_mirrored(&client).await, before);
        client
            .execute(
                "UPDATE mirror_state SET height = $1",
                &[&i64::from(chain.height())],
            )
            .await
            .unwrap();
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

/// Reorg events recorded so far: (fork height, blocks removed).
async fn reorg_events(client: &Client) -> Vec<(i64, i32)> {
    client
        .query(
            "SELECT fork_height, blocks_removed FROM reorg_events ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The node's store is a strict prefix of what PostgreSQL holds (its data
/// dir wiped and re-synced against the database): the mirror waits for the
/// node on the same branch, and rolls PostgreSQL back to the node's chain
/// on another. Before the fix, `step` underflowed (`first = tip + 1 >
/// last`) and panicked.
#[test]
fn store_behind_the_mirror_waits_on_its_branch_and_rolls_back_another() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let (_dir, chain, base, blocks) = spent_chain(12, 20, 2);
    assert_eq!(chain.height(), 32);
    let full_tip = (chain.height(), chain.tip().hash);
    // The data dir wiped and re-synced up to height 25 of the same chain.
    let resynced_dir = tempfile::tempdir().unwrap();
    let mut resynced = chaincore::testkit::regtest_chain(resynced_dir.path());
    feed(&mut resynced, &base.blocks[1..]);
    feed(&mut resynced, &blocks[..13]);
    assert_eq!(resynced.height(), 25);
    // Another node's chain: forks from height 20, ends at 25.
    let mut fork_base = base.clone();
    for block in &blocks[..8] {
        fork_base.apply(block.clone());
    }
    let (_, other_branch) = chain_with_spends(&fork_base, 5, 1, &key(6), &key(7));
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = chaincore::testkit::regtest_chain(other_dir.path());
    feed(&mut other, &base.blocks[1..]);
    feed(&mut other, &blocks[..8]);
    feed(&mut other, &other_branch);
    assert_eq!(other.height(), 25);
    rt.block_on(async {
        let mut client = mirror::connect(&db.url, Network::Regtest).await.unwrap();
        catch_up(&mut client, &chain, 10).await;
        let loaded = mirror::step(
            &mut client,
            resynced.store(),
            Network::Regtest,
            10,
            LoadMode::Copy,
        )
        .await
        .unwrap();
        assert_eq!(loaded, 0, "waits for the node on the same branch");
        assert_eq!(
            mirror::watermark(&client).await.unwrap().unwrap(),
            full_tip,
            "nothing the node will bring back is deleted"
        );
        feed(&mut resynced, &blocks[13..]);
        catch_up(&mut client, &resynced, 10).await;
        assert_consistent(&client, &resynced).await;
        assert_eq!(reorg_events(&client).await, vec![]);

        // A store behind the mirror on another branch: rolled back to it.
        catch_up(&mut client, &other, 10).await;
        let report = mirror::verify::verify(&client, other.store(), Network::Regtest)
            .await
            .unwrap();
        assert!(report.is_consistent(), "{report:?}");
        assert_eq!(reorg_events(&client).await, vec![(20, 12)]);
    });
}

/// A reorganisation between reading the watermark and reading the rows:
/// the rows of the new branch do not link to the mirrored block below
/// them, and loading them is refused (before the fix they were loaded on
/// top of the old branch, and the watermark then matched the store, so the
/// damage was never repaired). The next steps follow the reorg.
#[test]
fn rows_read_across_a_reorg_are_refused_and_the_mirror_follows_the_fork() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let (_dir, mut chain, base, a) = spent_chain(12, 10, 2);
    assert_eq!(chain.height(), 22);
    rt.block_on(async {
        let mut client = mirror::connect(&db.url, Network::Regtest).await.unwrap();
        catch_up(&mut client, &chain, 10).await;
        let watermark = mirror::watermark(&client).await.unwrap().unwrap();
        // The mirror saw its watermark on the active chain (height 22); then
        // the store reorganises to a branch forking at height 18.
        let mut fork_base = base.clone();
        for block in &a[..6] {
            fork_base.apply(block.clone());
        }
        let (_, b) = chain_with_spends(&fork_base, 6, 2, &key(6), &key(7));
        feed(&mut chain, &b);
        assert_eq!(chain.tip().hash, b.last().unwrap().hash());
        let rows = mirror::read_rows(chain.store(), Network::Regtest, 23, 24).unwrap();
        let loaded =
            mirror::apply(&mut client, Network::Regtest, &rows, None, LoadMode::Copy).await;
        assert!(
            loaded.is_err(),
            "rows of another branch were loaded above the watermark"
        );
        assert_eq!(
            mirror::watermark(&client).await.unwrap().unwrap(),
            watermark
        );
        catch_up(&mut client, &chain, 10).await;
        assert_consistent(&client, &chain).await;
        assert_eq!(reorg_events(&client).await, vec![(18, 4)]);
    });
}

/// Each migration is recorded with the checksum of its SQL; a database
/// whose recorded migrations differ from the binary's, or that a newer
/// binary migrated, is refused (by the node and by `mirror verify`); one
/// recorded before checksums existed gets them recorded.
#[test]
fn migrations_with_another_checksum_or_from_a_newer_binary_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    rt.block_on(async {
        let mut client = db.client().await;
        mirror::migrate::migrate(&mut client).await.unwrap();
        let recorded: Vec<(i32, String)> = client
            .query("SELECT version, checksum FROM schema_migrations ORDER BY version", &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: Vec<(i32, String)> = mirror::migrate::MIGRATIONS
            .iter()
            .map(|(v, _, sql)| (*v, mirror::migrate::checksum(sql)))
            .collect();
        assert_eq!(recorded, expected);

        client
            .execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1", &[])
            .await
            .unwrap();
        let error = mirror::migrate::migrate(&mut client).await.unwrap_err().to_string();
        assert!(error.contains("migration 1 (0001_init)") && error.contains("differs"), "{error}");
        let error = mirror::connect(&db.url, Network::Regtest).await.unwrap_err().to_string();
        assert!(error.contains("differs"), "{error}");
        let error = mirror::connect_read_only(&db.url, Network::Regtest).await.unwrap_err().to_string();
        assert!(error.contains("differs"), "{error}");

        client
            .execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 1", &[&expected[0].1])
            .await
            .unwrap();
        client
            .execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (999, '0999_future', 'x')", &[])
            .await
            .unwrap();
        let error = mirror::migrate::migrate(&mut client).await.unwrap_err().to_string();
        assert!(error.contains("999") && error.contains("newer"), "{error}");
        let error = mirror::connect_read_only(&db.url, Network::Regtest).await.unwrap_err().to_string();
        assert!(error.contains("newer"), "{error}");

        // A database migrated before checksums were recorded.
        client
            .batch_execute("DELETE FROM schema_migrations WHERE version = 999;
                            ALTER TABLE schema_migrations DROP COLUMN checksum")
            .await
            .unwrap();
        assert_eq!(mirror::migrate::migrate(&mut client).await.unwrap(), 0);
        let recorded: Vec<(i32, String)> = client
            .query("SELECT version, checksum FROM schema_migrations ORDER BY version", &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(recorded, expected);
    });
}

/// Every statement the mirror runs per block and per reorg, and an
/// analyst's first queries, can use an index (with sequential scans
/// disabled the planner still picks one only when no index serves): the
/// EXPLAIN that justifies each index of migration 0002.
#[test]
fn mirror_statements_and_analyst_queries_use_indexes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let (_dir, chain, _, _) = spent_chain(12, 5, 2);
    rt.block_on(async {
        let mut client = mirror::connect(&db.url, Network::Regtest).await.unwrap();
        catch_up(&mut client, &chain, 100).await;
        client.batch_execute("ANALYZE; SET enable_seqscan = off").await.unwrap();
        let address = Address::new(Network::Regtest, key(3).pubkey_hash()).to_string();
        let statements = [
            // Per block: what its inputs spend.
            "UPDATE outputs o SET spent_by_txid = i.txid, spent_height = i.block_height
             FROM inputs i WHERE i.block_height BETWEEN 10 AND 12
             AND o.txid = i.prev_txid AND o.vout = i.prev_vout".to_string(),
            // Per reorg: the touched addresses, what the removed blocks
            // spent, and the rows DELETE FROM blocks cascades to.
            "SELECT address FROM outputs WHERE block_height > 10
             UNION SELECT address FROM inputs WHERE block_height > 10".to_string(),
            "UPDATE outputs SET spent_by_txid = NULL, spent_height = NULL WHERE spent_height > 10".to_string(),
            "DELETE FROM blocks WHERE height > 10".to_string(),
            "DELETE FROM outputs WHERE block_height = 10".to_string(),
            "DELETE FROM inputs WHERE block_height = 10".to_string(),
            "DELETE FROM transactions WHERE block_height = 10".to_string(),
            // The fork search.
            "SELECT height, hash FROM blocks WHERE height BETWEEN 0 AND 10".to_string(),
            // An analyst: balance, UTXOs and history by address, blocks by time.
            format!("SELECT balance FROM address_balances WHERE address = '{address}'"),
            format!("SELECT txid, vout, amount FROM outputs WHERE address = '{address}' AND spent_by_txid IS NULL"),
            format!("SELECT txid, block_height FROM outputs WHERE address = '{address}'
                     UNION SELECT txid, block_height FROM inputs WHERE address = '{address}'
                     ORDER BY block_height DESC LIMIT 50"),
            "SELECT height, hash FROM blocks WHERE time BETWEEN 1000 AND 2000 ORDER BY time".to_string(),
        ];
        for statement in statements {
            let plan: Vec<String> = client
                .query(&format!("EXPLAIN {statement}"), &[])
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            let plan = plan.join("\n");
            assert!(!plan.contains("Seq Scan"), "{statement}\n{plan}");
        }
    });
}

/// Two nodes pointed at one database: the first holds it (an advisory
/// lock); the second's mirror is refused with a clear error in `/status`
/// and leaves the first node's rows alone.
#[test]
fn a_second_node_on_the_same_database_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = TestDb::new(&rt);
    let dir = tempfile::tempdir().unwrap();
    let first_miner = Address::new(Network::Regtest, key(1).pubkey_hash()).to_string();
    let second_miner = Address::new(Network::Regtest, key(2).pubkey_hash()).to_string();
    let mut first = NodeProcess::start(
        &dir.path().join("first"),
        &[
            "--postgres-url",
            &db.url,
            "--mine-to",
            &first_miner,
            "--mine-blocks",
            "5",
        ],
    );
    first.wait_for_height(5, Duration::from_secs(60));
    let first_api = first.api_addr();
    let (_, body) = chaincore::testkit::process::http(first_api, "GET", "/status", "");
    let first_tip: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first_tip = first_tip["tip"]["hash"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        let client = db.client().await;
        // (An error: the node has not created the tables yet.)
        while mirror::watermark(&client)
            .await
            .ok()
            .flatten()
            .map(|(h, _)| h)
            != Some(5)
        {
            assert!(
                Instant::now() < deadline,
                "the first node's mirror did not load its chain"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut second = NodeProcess::start(
        &dir.path().join("second"),
        &[
            "--postgres-url",
            &db.url,
            "--mine-to",
            &second_miner,
            "--mine-blocks",
            "7",
        ],
    );
    second.wait_for_height(7, Duration::from_secs(60));
    second.wait_for("mirror failed", Duration::from_secs(30));
    let (_, body) = chaincore::testkit::process::http(second.api_addr(), "GET", "/status", "");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["mirror"]["connected"], false, "{status}");
    let error = status["mirror"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("in use by another node"), "{status}");
    assert_eq!(status["mirror"]["lag"], 8, "{status}");
    rt.block_on(async {
        let client = db.client().await;
        let (height, hash) = mirror::watermark(&client).await.unwrap().unwrap();
        assert_eq!((height, hash.to_string()), (5, first_tip.clone()));
    });
    second.stop();
    first.stop();
}

/// A mirror database that refuses the node (here: it does not exist)
/// shows PostgreSQL's own message in `/status`, not just "db error".
#[test]
fn the_database_s_own_message_reaches_status() {
    let dir = tempfile::tempdir().unwrap();
    let admin_url =
        std::env::var("CHAINCORE_TEST_DATABASE_URL").expect("CHAINCORE_TEST_DATABASE_URL");
    let url = format!(
        "{}/chaincore_absent_database",
        admin_url.rsplit_once('/').unwrap().0
    );
    let mut node = NodeProcess::start(&dir.path().join("n"), &["--postgres-url", &url]);
    node.wait_for("mirror failed", Duration::from_secs(30));
    let (_, body) = chaincore::testkit::process::http(node.api_addr(), "GET", "/status", "");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = status["mirror"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"chaincore_absent_database\" does not exist"),
        "{status}"
    );
    // That message is the operator's: a request that may not use the
    // admin endpoints (here: proxied) is told that the mirror failed.
    let response = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(node.api_addr()).unwrap();
        stream
            .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let public: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let error = public["mirror"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("the mirror failed") && !error.contains("chaincore_absent_database"),
        "{public}"
    );
    node.stop();
}

/// PostgreSQL (a server of the test's own) stops during catch-up while the
/// node goes on receiving blocks: `/status` and `/metrics` report the lag
/// (tip minus mirrored height) and the error; started again, the mirror
/// converges and `mirror verify` passes.
#[test]
fn postgres_stopped_during_catch_up_is_reported_and_the_mirror_converges() {
    let server = crate::pg_server::PgServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&server.url("postgres"), NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("CREATE DATABASE chaincore_fault")
            .await
            .unwrap();
    });
    let url = server.url("chaincore_fault");
    let base = prefix(12);
    let (chain, blocks) = chain_with_spends(&base, 400, 4, &key(3), &key(5));
    let dir = tempfile::tempdir().unwrap();
    let imported: Vec<_> = base.blocks[1..]
        .iter()
        .chain(&blocks[..390])
        .cloned()
        .collect();
    let file = block_file(dir.path(), "chain.dat", &imported);
    let data_dir = dir.path().join("node");
    let mut node = NodeProcess::start(
        &data_dir,
        &["--postgres-url", &url, "--import", file.to_str().unwrap()],
    );
    node.wait_for("mirror caught up a range", Duration::from_secs(120));
    server.stop();
    node.wait_for("import done", Duration::from_secs(120));
    let api = node.api_addr();
    // Blocks keep arriving while PostgreSQL is down.
    for block in &blocks[390..] {
        let hex = hex::encode(chaincore::encoding::Encode::to_bytes(block));
        let (code, body) = chaincore::testkit::process::http(api, "POST", "/mining/submit", &hex);
        assert_eq!(code, 200, "{body}");
    }
    let tip = chain.height();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let (_, body) = chaincore::testkit::process::http(api, "GET", "/status", "");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status["mirror"]["connected"] == false && status["mirror"]["last_error"].is_string() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror never reported the stopped server: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["tip"]["height"], tip);
    let mirrored = status["mirror"]["height"]
        .as_u64()
        .expect("a height was mirrored") as u32;
    assert!(mirrored < tip, "{status}");
    assert_eq!(status["mirror"]["lag"], tip - mirrored, "{status}");
    let (_, metrics) = chaincore::testkit::process::http(api, "GET", "/metrics", "");
    assert!(
        metrics.contains(&format!("chaincore_mirror_lag_blocks {}", tip - mirrored)),
        "{metrics}"
    );
    assert!(
        metrics.contains("chaincore_mirror_connected 0"),
        "{metrics}"
    );

    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = chaincore::testkit::process::http(api, "GET", "/status", "");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status["mirror"]["height"] == tip && status["mirror"]["lag"] == 0 {
            assert_eq!(status["mirror"]["connected"], true);
            assert!(status["mirror"]["last_error"].is_null(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror did not converge: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    node.stop();
    let out = chaincore()
        .args(["mirror", "verify", "--data-dir"])
        .arg(&data_dir)
        .args(["--postgres-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
