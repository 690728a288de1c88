//! Transaction gossip across real nodes on 127.0.0.1.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chaincore::consensus::amount::Amount;
use chaincore::consensus::hash::Txid;
use chaincore::consensus::keys::PrivateKey;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::{OutPoint, Transaction, TxOut};
use chaincore::encoding::Encode;
use chaincore::testkit::process::http;
use chaincore::testkit::{key, signed_spend};

use crate::common::{block_file, prefix, NodeProcess};

const LONG: Duration = Duration::from_secs(120);

fn pool(api: SocketAddr) -> HashSet<Txid> {
    let (status, body) = http(api, "GET", "/mempool/txids", "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<Txid>>(&body)
        .unwrap()
        .into_iter()
        .collect()
}

fn submit(api: SocketAddr, tx: &Transaction) -> (u16, String) {
    http(api, "POST", "/tx", &hex::encode(tx.to_bytes()))
}

/// Waits until `check` holds for the pools of all `apis`.
fn wait_pools(
    apis: &[SocketAddr],
    what: &str,
    check: impl Fn(&HashSet<Txid>) -> bool,
) -> Vec<HashSet<Txid>> {
    let deadline = Instant::now() + LONG;
    loop {
        let pools: Vec<_> = apis.iter().map(|a| pool(*a)).collect();
        if pools.iter().all(&check) {
            return pools;
        }
        assert!(Instant::now() < deadline, "{what}: pools are {pools:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spend(coin: (OutPoint, TxOut), to: &PrivateKey, fee: u64) -> Transaction {
    let (outpoint, output) = coin;
    signed_spend(
        &[(outpoint, output, &key(1))],
        vec![TxOut {
            amount: Amount::from_units(output.amount.units() - fee),
            owner: to.pubkey_hash(),
        }],
    )
}

#[test]
fn transactions_reach_every_mempool_and_leave_with_the_block() {
    let chain = prefix(14);
    let coins: Vec<(OutPoint, TxOut)> = chain
        .spendable(key(1).pubkey_hash())
        .into_iter()
        .map(|(o, u)| (o, u.output))
        .collect();
    assert!(coins.len() >= 3);
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", &chain.blocks[1..]);
    let paths: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();

    // A line A-B-C-D-E: not fully meshed, every transaction crosses hops.
    let (mut a, a_p2p) = NodeProcess::start_p2p(
        &paths[0],
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    a.wait_for("import done", LONG);
    let mut nodes = vec![a];
    let mut p2p = vec![a_p2p];
    for path in &paths[1..] {
        let previous = p2p.last().unwrap().to_string();
        let (node, addr) = NodeProcess::start_p2p(path, &["--connect-only", "--peer", &previous]);
        nodes.push(node);
        p2p.push(addr);
    }
    let apis: Vec<SocketAddr> = nodes.iter_mut().map(|n| n.api_addr()).collect();
    for node in &mut nodes {
        node.wait_for_height(chain.height(), LONG);
    }

    // Submitted at A, seen everywhere.
    let tx1 = spend(coins[0], &key(2), 10_000);
    let (status, body) = submit(apis[0], &tx1);
    assert_eq!(
        (status, body.as_str()),
        (200, tx1.txid().to_string().as_str())
    );
    wait_pools(&apis, "tx1 everywhere", |p| p.contains(&tx1.txid()));

    // A double spend submitted at B once it has tx1: refused, nowhere.
    let rival = spend(coins[0], &key(3), 20_000);
    let (status, body) = submit(apis[1], &rival);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("mempool-conflict"), "{body}");

    // Two spends of one coin submitted at both ends at the same moment:
    // every node keeps exactly one of them, never both.
    let left = spend(coins[1], &key(2), 10_000);
    let right = spend(coins[1], &key(3), 10_000);
    let (l, r) = std::thread::scope(|s| {
        let l = s.spawn(|| submit(apis[0], &left));
        let r = s.spawn(|| submit(apis[4], &right));
        (l.join().unwrap(), r.join().unwrap())
    });
    // Each end accepts its own unless the other's arrived first, in which
    // case it refuses it as a conflict; at least one is accepted.
    for (status, body) in [&l, &r] {
        assert!(
            *status == 200 || body.contains("mempool-conflict"),
            "{status} {body}"
        );
    }
    assert!(l.0 == 200 || r.0 == 200, "{l:?} {r:?}");
    std::thread::sleep(Duration::from_secs(3));
    let pools = wait_pools(&apis, "one of the two", |p| {
        p.contains(&left.txid()) ^ p.contains(&right.txid())
    });
    assert!(pools.iter().all(|p| !p.contains(&rival.txid())));

    // The original API's pool listing pages by txid (as text).
    let mut listed: Vec<String> = pools[2].iter().map(|t| t.to_string()).collect();
    listed.sort();
    let mut cursor = String::new();
    for (i, txid) in listed.iter().enumerate() {
        let (status, body) = http(
            apis[2],
            "GET",
            &format!("/transaction_pool?limit=1&cursor={cursor}"),
            "",
        );
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["count"], listed.len(), "{page}");
        assert_eq!(page["transactions"][0]["txid"], txid.as_str(), "{page}");
        let last = i + 1 == listed.len();
        assert_eq!(page["next_cursor"].is_null(), last, "{page}");
        cursor = txid.clone();
    }

    // A node that joins later learns the pending set from its peer.
    let (mut f, _) = NodeProcess::start_p2p(
        &dir.path().join("f"),
        &["--connect-only", "--peer", &p2p[2].to_string()],
    );
    let f_api = f.api_addr();
    let expected = &pools[2];
    wait_pools(&[f_api], "late joiner learns the pool", |p| p == expected);

    // A restarts (its pool comes back from disk) and mines one block with
    // the node's miner on two threads.
    let a = nodes.remove(0);
    let a_pool = pool(apis[0]);
    a.stop();
    let miner = key(4).address(Network::Regtest).to_string();
    let mut a = NodeProcess::start(
        &paths[0],
        &[
            "--connect-only",
            "--p2p-port",
            &a_p2p.port().to_string(),
            "--mine-to",
            &miner,
            "--mine-blocks",
            "1",
            "--mine-threads",
            "2",
        ],
    );
    let reloaded = a.wait_for("mempool reloaded", LONG);
    assert!(
        reloaded.contains(&format!("loaded={}", a_pool.len())),
        "{reloaded}"
    );
    let mined = a.wait_for_height(chain.height() + 1, LONG);
    let a_api = a.api_addr();
    let (_, body) = http(a_api, "GET", &format!("/tx/{}", tx1.txid()), "");
    assert!(
        body.contains("\"confirmed\":true"),
        "tx1 is in the mined block: {body}"
    );

    // The block empties every pool: tx1 confirmed, the losing double spend
    // of coin 1 conflicts with the winner.
    let mut all_apis = apis[1..].to_vec();
    all_apis.push(a_api);
    all_apis.push(f_api);
    for node in nodes.iter_mut().chain([&mut f]) {
        assert_eq!(node.wait_for_height(chain.height() + 1, LONG), mined);
    }
    wait_pools(&all_apis, "pools empty after the block", |p| p.is_empty());
}

/// A child relayed before its parent (they travel different paths) waits
/// at the node as an orphan; the node asks its sender for the parent, and
/// both enter the pool once the parent comes.
#[test]
fn a_child_relayed_before_its_parent_enters_the_pool_after_it() {
    use chaincore::testkit::peer::{Hello, HostilePeer};
    use chaincore::wire::message::{InvKind, Message};
    let chain = prefix(14);
    let (outpoint, output) = chain
        .spendable(key(1).pubkey_hash())
        .into_iter()
        .map(|(o, u)| (o, u.output))
        .next()
        .unwrap();
    let parent = spend((outpoint, output), &key(1), 10_000);
    let child = spend(
        (OutPoint::new(parent.txid(), 0), parent.outputs[0]),
        &key(2),
        10_000,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", &chain.blocks[1..]);
    let (mut node, p2p) = NodeProcess::start_p2p(
        &dir.path().join("node"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    node.wait_for("import done", LONG);
    node.wait_for_height(chain.height(), LONG);
    let api = node.api_addr();
    let mut peer = HostilePeer::connect(p2p, Network::Regtest).unwrap();
    peer.handshake(&Hello::default(), LONG).unwrap();

    peer.send(&Message::Tx(Box::new(child.clone()))).unwrap();
    peer.receive_until("getdata for the parent", LONG, |m| {
        matches!(m, Message::GetData(items)
            if items.iter().any(|i| i.kind == InvKind::Tx && i.hash == parent.txid()))
    })
    .unwrap();
    assert!(
        !pool(api).contains(&child.txid()),
        "a child entered before its parent"
    );
    peer.send(&Message::Tx(Box::new(parent.clone()))).unwrap();
    wait_pools(&[api], "parent and child", |p| {
        p.contains(&parent.txid()) && p.contains(&child.txid())
    });
    node.fail_if_exited();
}
