//! PostgreSQL mirror figures: catch-up throughput for 2 000 blocks x 100
//! transactions, binary COPY against plain INSERT, and the lag between a
//! block connecting and its rows being visible at the tip.
//!
//! Needs a PostgreSQL server: CHAINCORE_TEST_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres); a database is created and
//! dropped per measurement.
//! Run: `cargo bench --profile dev --bench mirror` (`-- quick` for small sizes).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaincore::chain::{Chain, ChainOptions};
use chaincore::consensus::params::Network;
use chaincore::consensus::validation::SignatureChecks;
use chaincore::mirror::{self, LoadMode, MirrorStatus};
use chaincore::testkit::busy_chain;
use tokio_postgres::NoTls;

fn admin_url() -> String {
    std::env::var("CHAINCORE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn fresh_database(tag: &str) -> String {
    let admin = admin_url();
    let (client, conn) = tokio_postgres::connect(&admin, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} does not answer: {e}"));
    tokio::spawn(conn);
    let name = format!("chaincore_bench_{tag}");
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

async fn catch_up(chain: &Chain, mode: LoadMode, tag: &str, up_to: u32) -> (f64, usize) {
    let url = fresh_database(tag).await;
    let mut client = mirror::connect(&url, Network::Regtest).await.unwrap();
    let network = Network::Regtest;
    let mut rows = 0usize;
    let start = Instant::now();
    let mut first = 0u32;
    while first <= up_to {
        let last = up_to.min(first + mirror::CATCH_UP_BATCH - 1);
        let batch = mirror::read_rows(chain.store(), network, first, last).unwrap();
        rows += batch.row_count();
        mirror::apply(&mut client, network, &batch, None, mode)
            .await
            .unwrap();
        first = last + 1;
    }
    (start.elapsed().as_secs_f64(), rows)
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (blocks, txs, insert_blocks) = if quick {
        (200, 100, 50)
    } else {
        (2_000, 100, 200)
    };
    let test = busy_chain(blocks, txs);
    let dir = tempfile::tempdir().unwrap();
    let mut chain = Chain::open(
        dir.path(),
        Network::Regtest,
        ChainOptions {
            sync_writes: false,
            // Building the store is not what is measured.
            signature_checks: SignatureChecks::Off,
            ..ChainOptions::default()
        },
    )
    .unwrap();
    for block in &test.blocks[1..test.blocks.len() - 10] {
        chain.process_block(Arc::new(block.clone()), None).unwrap();
    }
    let height = chain.height();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (secs, rows) = catch_up(&chain, LoadMode::Copy, "copy", height).await;
        println!(
            "catch-up with COPY: {} blocks, {} rows in {:.1} s: {:.0} blocks/s, {:.0} rows/s",
            height + 1,
            rows,
            secs,
            f64::from(height + 1) / secs,
            rows as f64 / secs
        );
        let (copy_secs, copy_rows) = catch_up(&chain, LoadMode::Copy, "copy_small", insert_blocks).await;
        let (insert_secs, insert_rows) = catch_up(&chain, LoadMode::Insert, "insert", insert_blocks).await;
        println!(
            "first {} blocks: COPY {:.0} rows/s ({:.2} s), INSERT {:.0} rows/s ({:.2} s): COPY is {:.1}x faster",
            insert_blocks + 1,
            copy_rows as f64 / copy_secs,
            copy_secs,
            insert_rows as f64 / insert_secs,
            insert_secs,
            insert_secs / copy_secs
        );
    });

    // Lag at the tip: the mirror task follows; each of the last 10 blocks
    // connects and we wait until its height is the watermark.
    let url = rt.block_on(fresh_database("tip"));
    let wake = Arc::new(tokio::sync::Notify::new());
    let status = Arc::new(Mutex::new(MirrorStatus::default()));
    let _guard = rt.enter();
    rt.spawn(mirror::run(
        url.clone(),
        Network::Regtest,
        chain.store().clone(),
        wake.clone(),
        status.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(600);
    while status.lock().unwrap().height != Some(chain.height()) {
        assert!(Instant::now() < deadline, "mirror did not catch up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut lags = Vec::new();
    for block in &test.blocks[test.blocks.len() - 10..] {
        let start = Instant::now();
        chain.process_block(Arc::new(block.clone()), None).unwrap();
        let connected = start.elapsed();
        wake.notify_one();
        let target = chain.height();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(conn);
            loop {
                if let Some((h, _)) = mirror::watermark(&client).await.unwrap() {
                    if h == target {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        lags.push((start.elapsed() - connected).as_secs_f64() * 1000.0);
    }
    lags.sort_by(f64::total_cmp);
    println!(
        "lag from block connected to rows visible ({} blocks of {} tx): p50 {:.1} ms, max {:.1} ms",
        lags.len(),
        txs + 1,
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
}
