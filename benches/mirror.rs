//! PostgreSQL mirror figures: catch-up throughput for 2 000 blocks x 100
//! transactions, binary COPY against plain INSERT, the cost per block at the
//! tip and of a 10-block reorganisation with 10 000 and with 1 000 000
//! outputs and inputs already mirrored (and, as the reference, 1 000 000
//! without migration 0002's indexes), and the lag between a block
//! connecting and its rows being visible at the tip.
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

/// Heights of the scale measurement's chain: loaded in bulk up to
/// `SCALE_LOADED`, then one block per step up to `SCALE_TIP`; the reorg
/// forks at `SCALE_TIP - 10`.
const SCALE_BUSY_BLOCKS: usize = 40;
const SCALE_TXS: usize = 100;
const SCALE_REORG_DEPTH: u32 = 10;

/// A store holding `test`'s blocks (signatures off: building it is not
/// what is measured).
fn store_of(test: &chaincore::testkit::TestChain) -> (tempfile::TempDir, Chain) {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = Chain::open(
        dir.path(),
        Network::Regtest,
        ChainOptions {
            sync_writes: false,
            signature_checks: SignatureChecks::Off,
            ..ChainOptions::default()
        },
    )
    .unwrap();
    for block in &test.blocks[1..] {
        chain.process_block(Arc::new(block.clone()), None).unwrap();
    }
    (dir, chain)
}

/// Per-block tip cost (ms, mean over the steps) and the time of a
/// 10-block reorganisation (ms) with `filler` outputs and as many inputs
/// already mirrored. `indexes`: whether migration 0002's indexes exist.
async fn tip_and_reorg_at_scale(
    test: &chaincore::testkit::TestChain,
    filler: u64,
    indexes: bool,
) -> (f64, f64) {
    let (_dir, mut chain) = store_of(test);
    let tip = chain.height();
    let loaded = tip - 2 * SCALE_REORG_DEPTH;
    let tag = format!("scale_{filler}_{indexes}");
    let url = fresh_database(&tag).await;
    let mut client = mirror::connect(&url, Network::Regtest).await.unwrap();
    let mut first = 0;
    while first <= loaded {
        let last = loaded.min(first + mirror::CATCH_UP_BATCH - 1);
        let rows = mirror::read_rows(chain.store(), Network::Regtest, first, last).unwrap();
        mirror::apply(&mut client, Network::Regtest, &rows, None, LoadMode::Copy)
            .await
            .unwrap();
        first = last + 1;
    }
    if !indexes {
        client
            .batch_execute(
                "DROP INDEX inputs_by_height; DROP INDEX outputs_by_height; DROP INDEX blocks_by_time",
            )
            .await
            .unwrap();
    }
    // Filler: outputs and inputs of other addresses, spread over the
    // loaded heights, half the outputs spent.
    client
        .execute(
            "INSERT INTO outputs (txid, vout, block_height, address, amount, coinbase, spent_by_txid, spent_height)
             SELECT decode(md5('o' || n), 'hex'), 0, n % ($2::bigint + 1), 'filler' || (n % 100000), 1000, FALSE,
                    CASE WHEN n % 2 = 0 THEN decode(md5('i' || n), 'hex') END,
                    CASE WHEN n % 2 = 0 THEN n % ($2::bigint + 1) END
             FROM generate_series(1, $1::bigint) AS n",
            &[&(filler as i64), &i64::from(loaded)],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO inputs (txid, vin, block_height, prev_txid, prev_vout, address, amount)
             SELECT decode(md5('i' || n), 'hex'), 0, n % ($2::bigint + 1), decode(md5('p' || n), 'hex'), 0,
                    'filler' || (n % 100000), 1000
             FROM generate_series(1, $1::bigint) AS n",
            &[&(filler as i64), &i64::from(loaded)],
        )
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").await.unwrap();
    let start = Instant::now();
    let mut steps = 0;
    while mirror::step(
        &mut client,
        chain.store(),
        Network::Regtest,
        1,
        LoadMode::Copy,
    )
    .await
    .unwrap()
        > 0
    {
        steps += 1;
    }
    let per_block = start.elapsed().as_secs_f64() * 1000.0 / f64::from(steps);
    assert_eq!(steps, tip - loaded);
    // A branch one block longer from SCALE_REORG_DEPTH below the tip.
    let mut branch = test.clone();
    branch
        .blocks
        .truncate((tip - SCALE_REORG_DEPTH + 1) as usize);
    let mut fork = chaincore::testkit::TestChain::new(Network::Regtest);
    for block in &branch.blocks[1..] {
        fork.apply(block.clone());
    }
    for _ in 0..=SCALE_REORG_DEPTH {
        let block = fork.mine_empty(chaincore::testkit::payee(u64::MAX)).clone();
        chain.process_block(Arc::new(block), None).unwrap();
    }
    assert_eq!(chain.height(), tip + 1);
    let start = Instant::now();
    mirror::step(
        &mut client,
        chain.store(),
        Network::Regtest,
        100,
        LoadMode::Copy,
    )
    .await
    .unwrap();
    let reorg = start.elapsed().as_secs_f64() * 1000.0;
    let (height, _) = mirror::watermark(&client).await.unwrap().unwrap();
    assert_eq!(height, tip + 1);
    (per_block, reorg)
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

    // Cost at the tip and of a reorg as the database grows.
    let (small, large) = if quick {
        (10_000, 100_000)
    } else {
        (10_000, 1_000_000)
    };
    let scale = busy_chain(SCALE_BUSY_BLOCKS, SCALE_TXS);
    rt.block_on(async {
        let (tip_small, reorg_small) = tip_and_reorg_at_scale(&scale, small, true).await;
        let (tip_large, reorg_large) = tip_and_reorg_at_scale(&scale, large, true).await;
        let (tip_before, reorg_before) = tip_and_reorg_at_scale(&scale, large, false).await;
        println!(
            "per block at the tip ({} tx): {small} outputs+inputs mirrored {tip_small:.1} ms, {large} {tip_large:.1} ms ({:.2}x; goal under 2x); {large} without migration 0002 {tip_before:.1} ms",
            SCALE_TXS + 1,
            tip_large / tip_small
        );
        println!(
            "{SCALE_REORG_DEPTH}-block reorg: {small} outputs+inputs mirrored {reorg_small:.0} ms, {large} {reorg_large:.0} ms ({:.2}x; goal under 2x); {large} without migration 0002 {reorg_before:.0} ms",
            reorg_large / reorg_small
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
