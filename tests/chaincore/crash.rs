//! Crash safety with real processes: the node is killed with SIGKILL at
//! random moments while it connects blocks and reorganises, restarted each
//! time, and `chaincore check` must pass every time with no block lost that
//! the node had reported connected.

use std::time::Duration;

use chaincore::consensus::hash::Hash256;
use chaincore::store::schema::status;
use chaincore::store::{Store, StoreOptions};
use chaincore::testkit::key;
use rand::Rng;

use crate::common::{chain_with_spends, chaincore, log_field, prefix, NodeProcess};

/// Kills before the final, uninterrupted run.
const KILLS: usize = 24;

#[test]
fn sigkill_at_random_moments_never_corrupts_state_or_loses_connected_blocks() {
    // Every round imports a new branch from the same fork point, one block
    // longer than the last, so every round reorganises 50 to 75 blocks deep
    // and connects as many, each block carrying signed spends.
    let base = prefix(30);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let write_branch = |round: usize| {
        let (chain, blocks) =
            chain_with_spends(&base, 50 + round, 10, &key(3), &key(10 + round as u8));
        let file = dir.path().join(format!("round-{round}.dat"));
        let all: Vec<_> = base.blocks[1..].iter().chain(&blocks).cloned().collect();
        chaincore::chain::block_file::write_blocks(std::fs::File::create(&file).unwrap(), &all)
            .unwrap();
        (chain.tip().hash(), file)
    };

    let mut rng = rand::thread_rng();
    let mut reported: Vec<Hash256> = Vec::new();
    let mut kills_mid_import = 0;
    for round in 0..KILLS {
        let (_, file) = write_branch(round);
        let mut node = NodeProcess::start(&data_dir, &["--import", file.to_str().unwrap()]);
        node.wait_for("chain state loaded", Duration::from_secs(30));
        // Kill after a random number of block disconnects and connects:
        // somewhere inside this round's reorganisation, whatever the speed.
        let reorg_steps = 2 * (50 + round);
        let target = rng.gen_range(1..reorg_steps);
        let mut seen = 0;
        while seen < target {
            match node.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if line.contains("block connected") || line.contains("block disconnected") {
                        seen += 1;
                    }
                    let done = line.contains("import done");
                    node.log.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => panic!("round {round}: the node stopped logging"),
            }
        }
        let log = node.kill();
        if !log.iter().any(|l| l.contains("import done")) {
            kills_mid_import += 1;
        }
        reported.extend(
            log.iter()
                .filter(|l| l.contains("block connected"))
                .filter_map(|l| log_field(l, "hash")?.parse::<Hash256>().ok()),
        );

        let check = chaincore()
            .args(["check", "--data-dir"])
            .arg(&data_dir)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "round {round} (killed after {seen} block events): check failed:\n{}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let (store, _) = Store::open_existing(&data_dir, &StoreOptions::default()).unwrap();
        for hash in &reported {
            let entry = store
                .block_index_entry(hash)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: reported block {hash} lost"));
            assert!(
                entry.has(status::VALID),
                "round {round}: {hash} not valid after restart"
            );
        }
    }
    eprintln!("{kills_mid_import} of {KILLS} kills landed before the import finished");
    assert!(
        kills_mid_import >= KILLS / 2,
        "only {kills_mid_import} of {KILLS} kills landed mid-import: make the work longer"
    );

    let (final_tip, file) = write_branch(KILLS);
    let mut node = NodeProcess::start(&data_dir, &["--import", file.to_str().unwrap()]);
    let done = node.wait_for("import done", Duration::from_secs(120));
    node.kill();
    assert_eq!(
        log_field(&done, "tip"),
        Some(final_tip.to_string().as_str())
    );
    let check = chaincore()
        .args(["check", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
