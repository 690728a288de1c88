//! Every REST endpoint against a real node: success and error cases,
//! pagination over several pages, an address with more than 1 000 UTXOs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use chaincore::consensus::amount::Amount;
use chaincore::consensus::hash::Hash256;
use chaincore::consensus::merkle::root_from_branch;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::{OutPoint, Transaction, TxOut};
use chaincore::encoding::Decode;
use chaincore::testkit::process::{http, http_with_headers, Node};
use chaincore::testkit::{fan_out_chain, key, signed_spend};
use serde_json::{json, Value};

use crate::common::{block_file, closed_within, NodeProcess};

/// A node that imported `blocks` (those after genesis), and its API address.
fn node_with(
    blocks: &[chaincore::consensus::block::Block],
) -> (tempfile::TempDir, Node, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", blocks);
    let mut node = NodeProcess::start(
        &dir.path().join("n"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    node.wait_for("import done", Duration::from_secs(120));
    let api = node.api_addr();
    (dir, node, api)
}

/// Asserts that the request is refused with `status` and the JSON error `code`.
fn refuses(api: SocketAddr, method: &str, path: &str, body: &str, status: u16, code: &str) {
    assert_eq!(
        error_code(api, method, path, body),
        (status, code.to_string()),
        "{method} {path}"
    );
}

/// Sends `request` as is and returns the response's status code.
fn raw_status(api: SocketAddr, request: &str) -> u16 {
    let response = raw_response(api, request);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// The whole response to `request` (which should ask `Connection: close`).
fn raw_response(api: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn get(api: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http(api, "GET", path, "");
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, value)
}

/// The next page a response's `Link` header names (RFC 8288).
fn next_link(headers: &[(String, String)]) -> Option<String> {
    let (_, link) = headers.iter().find(|(k, _)| k == "link")?;
    let (target, rel) = link.split_once(';')?;
    assert_eq!(rel.trim(), "rel=\"next\"", "{link}");
    Some(
        target
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string(),
    )
}

fn error_code(api: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, body) = http(api, method, path, body);
    let value: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("error body is not JSON: {body}"));
    assert!(value["error"].is_string(), "{value}");
    (status, value["code"].as_str().unwrap().to_string())
}

#[test]
fn rest_endpoints_answer_and_refuse_as_documented() {
    let rich = key(4);
    let mut chain = fan_out_chain(1_200, |_| rich.pubkey_hash());
    // A block of 30 spends of the fanned-out coins: 31 transactions.
    let coins: Vec<(OutPoint, TxOut)> = chain
        .utxos
        .iter()
        .filter(|(_, u)| u.output.owner == rich.pubkey_hash() && u.output.amount.units() == 1_000)
        .map(|(o, u)| (*o, u.output))
        .take(30)
        .collect();
    let spends: Vec<Transaction> = coins
        .iter()
        .map(|(o, out)| {
            signed_spend(
                &[(*o, *out, &rich)],
                vec![TxOut {
                    amount: Amount::from_units(800),
                    owner: key(5).pubkey_hash(),
                }],
            )
        })
        .collect();
    let busy = chain.build_block(key(9).pubkey_hash(), spends.clone());
    chain.apply(busy.clone());
    for _ in 0..7 {
        chain.mine_empty(key(9).pubkey_hash());
    }
    let (_dir, node, api) = node_with(&chain.blocks[1..]);
    let tip = chain.tip().hash().to_string();
    let height = chain.height();

    // Tip and blocks.
    assert_eq!(get(api, "/blocks/tip/height").1, json!(height));
    assert_eq!(http(api, "GET", "/blocks/tip/hash", "").1, tip);
    assert_eq!(get(api, "/blocks/tip").1["id"], json!(tip));
    let (status, page) = get(api, "/blocks?start_height=5&limit=3");
    assert_eq!(status, 200);
    let heights: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["height"].as_u64().unwrap())
        .collect();
    assert_eq!(heights, vec![5, 4, 3]);
    refuses(api, "GET", "/blocks?limit=0", "", 400, "invalid-limit");
    refuses(api, "GET", "/blocks?limit=1000", "", 400, "invalid-limit");
    let busy_hash = busy.hash().to_string();
    let (status, headers, body) = http_with_headers(api, "GET", &format!("/block/{busy_hash}"), "");
    assert_eq!(status, 200);
    let block: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(block["tx_count"], 31);
    // Its body has `confirmations` and `in_best_chain`, which change with
    // every block even this deep: never cached as immutable.
    assert!(block["confirmations"].is_u64() && block["in_best_chain"] == true);
    let control = |headers: &[(String, String)]| {
        headers
            .iter()
            .find(|(k, _)| k == "cache-control")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(control(&headers), "no-cache", "deep block: {headers:?}");
    let (_, headers, _) = http_with_headers(api, "GET", &format!("/block/{tip}"), "");
    assert_eq!(control(&headers), "no-cache", "{headers:?}");
    // What the hash fixes is immutable, however shallow.
    for path in [
        format!("/block/{tip}/header"),
        format!("/block/{tip}/txids"),
    ] {
        let (status, headers, _) = http_with_headers(api, "GET", &path, "");
        assert_eq!(status, 200);
        assert!(
            control(&headers).contains("immutable"),
            "{path}: {headers:?}"
        );
    }
    refuses(
        api,
        "GET",
        &format!("/block/{}", "ab".repeat(32)),
        "",
        404,
        "not-found",
    );
    refuses(api, "GET", "/block/xyz", "", 400, "invalid-hash");
    assert_eq!(
        http(api, "GET", &format!("/block-height/{}", height - 7), "").1,
        busy_hash
    );
    refuses(api, "GET", "/block-height/99999", "", 404, "not-found");
    refuses(api, "GET", "/block-height/minus", "", 400, "invalid-height");
    assert_eq!(
        http(api, "GET", &format!("/block/{busy_hash}/header"), "").1,
        hex::encode(busy.header.to_array())
    );

    // A block's transactions, 25 per page, as esplora's.
    let (_, headers, body) = http_with_headers(api, "GET", &format!("/block/{busy_hash}/txs"), "");
    let first: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(first.len(), 25);
    let next = next_link(&headers).expect("a second page");
    assert_eq!(next, format!("/block/{busy_hash}/txs/25"));
    let (_, headers, body) = http_with_headers(api, "GET", &next, "");
    let second: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(second.len(), 6);
    assert_eq!(next_link(&headers), None);
    let txids: Vec<Value> = first
        .iter()
        .chain(&second)
        .map(|t| t["txid"].clone())
        .collect();
    assert_eq!(
        json!(txids),
        get(api, &format!("/block/{busy_hash}/txids")).1
    );
    assert_eq!(json!(busy.txids()), json!(txids));
    assert_eq!(
        http(api, "GET", &format!("/block/{busy_hash}/txid/30"), "").1,
        busy.transactions[30].txid().to_string()
    );
    refuses(
        api,
        "GET",
        &format!("/block/{busy_hash}/txid/31"),
        "",
        404,
        "not-found",
    );
    refuses(
        api,
        "GET",
        &format!("/block/{busy_hash}/txs/7"),
        "",
        400,
        "invalid-start-index",
    );
    refuses(
        api,
        "GET",
        &format!("/block/{busy_hash}/txs/50"),
        "",
        404,
        "not-found",
    );
    let (_, status) = get(api, &format!("/block/{busy_hash}/status"));
    assert_eq!(status["in_best_chain"], true);
    assert_eq!(status["height"], height - 7);
    assert_eq!(
        status["next_best"],
        json!(chain.blocks[(height - 6) as usize].hash())
    );

    // Transactions.
    let spend = &spends[3];
    let txid = spend.txid().to_string();
    let (_, tx) = get(api, &format!("/tx/{txid}"));
    assert_eq!(tx["status"]["confirmed"], true);
    // Inputs carry the outputs they spent (from the undo data), and the fee
    // is what they hold beyond the outputs.
    let vin = tx["vin"].as_array().unwrap();
    assert_eq!(vin.len(), spend.inputs.len());
    let mut spent_total = 0;
    for (input, entry) in spend.inputs.iter().zip(vin) {
        assert_eq!(entry["txid"], json!(input.prevout().txid));
        assert_eq!(entry["vout"], input.prevout().vout);
        let (_, parent) = get(api, &format!("/tx/{}", input.prevout().txid));
        let out = &parent["vout"][input.prevout().vout as usize];
        assert_eq!(entry["prevout"], *out);
        spent_total += out["value"].as_u64().unwrap();
    }
    let vout = tx["vout"].as_array().unwrap();
    for (output, entry) in spend.outputs.iter().zip(vout) {
        assert_eq!(entry["value"], output.amount.units());
        assert_eq!(
            entry["scriptpubkey_address"],
            json!(
                chaincore::consensus::address::Address::new(Network::Regtest, output.owner)
                    .to_string()
            )
        );
        assert_eq!(
            entry["scriptpubkey"],
            json!(format!("76a914{}88ac", hex::encode(output.owner.0)))
        );
    }
    let paid: u64 = spend.outputs.iter().map(|o| o.amount.units()).sum();
    assert_eq!(tx["fee"], spent_total - paid);
    assert!(spent_total > paid);
    assert_eq!(
        get(api, &format!("/tx/{txid}/status")).1["block_hash"],
        json!(busy_hash)
    );
    let raw = hex::decode(http(api, "GET", &format!("/tx/{txid}/hex"), "").1).unwrap();
    assert_eq!(Transaction::from_bytes(&raw).unwrap(), *spend);
    let (_, proof) = get(api, &format!("/tx/{txid}/merkle-proof"));
    let branch: Vec<Hash256> = proof["merkle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().parse().unwrap())
        .collect();
    let pos = proof["pos"].as_u64().unwrap() as usize;
    assert_eq!(
        root_from_branch(spend.txid(), pos, &branch),
        busy.header.merkle_root
    );
    let unknown = "cd".repeat(32);
    // As esplora's: a transaction it does not know is not confirmed.
    assert_eq!(
        get(api, &format!("/tx/{unknown}/status")),
        (200, json!({ "confirmed": false }))
    );
    for path in [
        format!("/tx/{unknown}"),
        format!("/tx/{unknown}/hex"),
        format!("/tx/{unknown}/merkle-proof"),
    ] {
        assert_eq!(
            error_code(api, "GET", &path, ""),
            (404, "not-found".into()),
            "{path}"
        );
    }
    refuses(api, "GET", "/tx/nothex/status", "", 400, "invalid-txid");
    refuses(api, "DELETE", "/status", "", 405, "method-not-allowed");
    refuses(api, "GET", "/no/such/thing", "", 404, "not-found");

    // Addresses: more than 1 000 UTXOs over two pages.
    let address = rich.address(Network::Regtest).to_string();
    let (_, summary) = get(api, &format!("/address/{address}"));
    let utxo_count = summary["chain_stats"]["funded_txo_count"].as_u64().unwrap()
        - summary["chain_stats"]["spent_txo_count"].as_u64().unwrap();
    assert!(utxo_count > 1_000, "{summary}");
    refuses(
        api,
        "GET",
        &format!("/address/{address}/utxo"),
        "",
        400,
        "too-many-utxos",
    );
    let (_, headers1, body) = http_with_headers(
        api,
        "GET",
        &format!("/address/{address}/utxo?limit=1000"),
        "",
    );
    let page1: Vec<Value> = serde_json::from_str(&body).unwrap();
    let next = next_link(&headers1).expect("a second page");
    let (_, headers2, body) = http_with_headers(api, "GET", &next, "");
    let page2: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(next_link(&headers2), None);
    let tip_of = |headers: &[(String, String)]| {
        headers
            .iter()
            .find(|(k, _)| k == "chaincore-tip")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(tip_of(&headers1), Some(tip.clone()));
    assert_eq!(tip_of(&headers2), Some(tip.clone()));
    let all: HashSet<String> = page1
        .iter()
        .chain(&page2)
        .map(|u| format!("{}:{}", u["txid"].as_str().unwrap(), u["vout"]))
        .collect();
    assert_eq!(
        all.len() as u64,
        utxo_count,
        "every UTXO once across the pages"
    );
    let sum: u64 = page1
        .iter()
        .chain(&page2)
        .map(|u| u["value"].as_u64().unwrap())
        .sum();
    assert_eq!(json!(sum), summary["balance"]);
    assert!(page1.iter().all(|u| u["status"]["confirmed"] == true
        && u["status"]["block_hash"].is_string()
        && u["status"]["block_time"].is_u64()));
    // Payments, not block rewards: all spendable.
    assert!(page1
        .iter()
        .all(|u| u["coinbase"] == false && u["mature"] == true));
    assert_eq!(
        error_code(
            api,
            "GET",
            &format!("/address/{address}/utxo?limit=1001"),
            ""
        ),
        (400, "invalid-limit".into())
    );
    assert_eq!(
        error_code(
            api,
            "GET",
            &format!("/address/{address}/utxo?cursor=nope"),
            ""
        ),
        (400, "invalid-cursor".into())
    );
    let mut history = Vec::new();
    let mut path = format!("/address/{address}/txs/chain?limit=10");
    loop {
        let (_, headers, body) = http_with_headers(api, "GET", &path, "");
        let page: Vec<Value> = serde_json::from_str(&body).unwrap();
        history.extend(page.iter().map(|t| t["txid"].as_str().unwrap().to_string()));
        match next_link(&headers) {
            Some(next) => path = next,
            None => break,
        }
    }
    assert_eq!(json!(history.len()), summary["chain_stats"]["tx_count"]);
    assert_eq!(history.iter().collect::<HashSet<_>>().len(), history.len());
    let mut corrupted = address.clone().into_bytes();
    let last = corrupted.len() - 1;
    corrupted[last] = if corrupted[last] == b'a' { b'b' } else { b'a' };
    let corrupted = String::from_utf8(corrupted).unwrap();
    refuses(
        api,
        "GET",
        &format!("/address/{corrupted}"),
        "",
        400,
        "bad-checksum",
    );
    // A URL-long "address" is refused before its Base58 is decoded (that
    // took seconds of a worker per request).
    let huge = "z".repeat(60_000);
    for path in ["", "/utxo", "/txs"] {
        refuses(
            api,
            "GET",
            &format!("/address/{huge}{path}"),
            "",
            400,
            "invalid-address",
        );
    }
    let mainnet = rich.address(Network::Main).to_string();
    for path in ["", "/utxo", "/txs", "/txs/mempool"] {
        refuses(
            api,
            "GET",
            &format!("/address/{mainnet}{path}"),
            "",
            400,
            "wrong-network",
        );
    }
    // Nothing pending for this address: an empty list.
    assert_eq!(
        get(api, &format!("/address/{address}/txs/mempool")),
        (200, json!([]))
    );
    // Malformed query strings are refused in the API's JSON shape.
    refuses(
        api,
        "GET",
        &format!("/address/{address}/utxo?limit=-1"),
        "",
        400,
        "invalid-query",
    );
    let other = key(5).address(Network::Regtest).to_string();
    let (status, body) = http(
        api,
        "POST",
        "/addresses/balances",
        &json!({"addresses": [address, other, address]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let balances: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(balances[0]["balance"], summary["balance"]);
    assert_eq!(balances[1]["balance"], json!(30 * 800));
    // An address named twice is answered twice, in the request's order.
    assert_eq!(balances.as_array().unwrap().len(), 3);
    assert_eq!(balances[2], balances[0]);
    assert_eq!(
        error_code(api, "POST", "/addresses/balances", "{\"addresses\": 5}").0,
        422
    );
    assert_eq!(
        error_code(
            api,
            "POST",
            "/addresses/balances",
            &json!({"addresses": [mainnet]}).to_string()
        ),
        (400, "wrong-network".into())
    );
    let many: Vec<String> = vec![other.clone(); 1_001];
    assert_eq!(
        error_code(
            api,
            "POST",
            "/addresses/balances",
            &json!({"addresses": many}).to_string()
        ),
        (400, "too-many-addresses".into())
    );

    // Chain state, peers, mempool, submission errors, unknown paths.
    let (_, state) = get(api, "/chainstate");
    assert_eq!(state["height"], json!(height));
    assert_eq!(state["tip"], json!(tip));
    assert!(state["utxo_digest"].as_str().unwrap().len() == 64);
    assert_eq!(get(api, "/peers").1, json!([]));
    assert_eq!(get(api, "/mempool").1["count"], 0);
    refuses(api, "POST", "/tx", "zz", 400, "invalid-hex");
    refuses(api, "POST", "/tx", "00", 400, "invalid-transaction");
    refuses(
        api,
        "POST",
        "/tx",
        &"00".repeat(300_000),
        413,
        "body-too-large",
    );
    refuses(api, "GET", "/no/such/thing", "", 404, "not-found");
    node.stop();
}

#[test]
fn miners_get_templates_and_submit_blocks_or_headers() {
    use chaincore::consensus::block::Block;
    use chaincore::encoding::Encode;
    use chaincore::mining::solve_block;

    let chain = crate::common::prefix(14);
    let (_dir, node, api) = node_with(&chain.blocks[1..]);
    let (outpoint, utxo) = chain.spendable(key(1).pubkey_hash())[0];
    let tx = signed_spend(
        &[(outpoint, utxo.output, &key(1))],
        vec![TxOut {
            amount: Amount::from_units(utxo.output.amount.units() - 50_000),
            owner: key(2).pubkey_hash(),
        }],
    );
    // An output below the dust limit is refused with its own code.
    let dusty = signed_spend(
        &[(outpoint, utxo.output, &key(1))],
        vec![
            TxOut {
                amount: Amount::from_units(utxo.output.amount.units() - 60_000),
                owner: key(2).pubkey_hash(),
            },
            TxOut {
                amount: Amount::from_units(chaincore::mempool::DUST_LIMIT - 1),
                owner: key(3).pubkey_hash(),
            },
        ],
    );
    refuses(
        api,
        "POST",
        "/tx",
        &hex::encode(dusty.to_bytes()),
        400,
        "dust",
    );
    assert_eq!(http(api, "POST", "/tx", &hex::encode(tx.to_bytes())).0, 200);

    let miner = key(6).address(Network::Regtest).to_string();
    let (status, template) = get(api, &format!("/mining/template?address={miner}"));
    assert_eq!(status, 200, "{template}");
    assert_eq!(template["height"], json!(chain.height() + 1));
    assert_eq!(template["fees"], 50_000);
    assert_eq!(template["tx_count"], 2);
    let mut block =
        Block::from_bytes(&hex::decode(template["block_hex"].as_str().unwrap()).unwrap()).unwrap();
    solve_block(&mut block);
    let (status, body) = http(
        api,
        "POST",
        "/mining/submit",
        &hex::encode(block.to_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("accepted"));
    assert_eq!(get(api, "/blocks/tip/height").1, json!(chain.height() + 1));
    assert_eq!(
        get(api, &format!("/tx/{}/status", tx.txid())).1["confirmed"],
        true
    );
    assert_eq!(
        get(api, &format!("/address/{miner}")).1["balance"],
        template["coinbase_value"]
    );
    // The same block again is a duplicate, not an error.
    assert!(http(
        api,
        "POST",
        "/mining/submit",
        &hex::encode(block.to_bytes())
    )
    .1
    .contains("duplicate"));

    // Header-only submission of a template the node handed out: solved,
    // then only its header sent.
    let submit_solved_header = |template: &Value| {
        let mut block =
            Block::from_bytes(&hex::decode(template["block_hex"].as_str().unwrap()).unwrap())
                .unwrap();
        solve_block(&mut block);
        let (status, body) = http(
            api,
            "POST",
            "/mining/submit",
            &hex::encode(block.header.to_array()),
        );
        assert_eq!(status, 200, "{body}");
    };
    let (_, template) = get(api, &format!("/mining/template?address={miner}"));
    submit_solved_header(&template);
    assert_eq!(get(api, "/blocks/tip/height").1, json!(chain.height() + 2));
    // Templates asked in a row at one tip share their choice of pool
    // transactions (for a few seconds), each with its own coinbase: the
    // second is as good a block as the first.
    let (_, first) = get(api, &format!("/mining/template?address={miner}"));
    let (_, second) = get(api, &format!("/mining/template?address={miner}"));
    assert_eq!(first["tx_count"], second["tx_count"]);
    assert_ne!(first["header_hex"], second["header_hex"]);
    submit_solved_header(&second);
    assert_eq!(get(api, "/blocks/tip/height").1, json!(chain.height() + 3));

    // Errors.
    refuses(api, "GET", "/mining/template", "", 400, "missing-address");
    refuses(
        api,
        "GET",
        "/mining/template?address=nope",
        "",
        400,
        "invalid-address",
    );
    refuses(api, "POST", "/mining/submit", "xyz", 400, "invalid-hex");
    // A header that does not meet its own bits is refused for that first,
    // before any template is looked up; one that does, but belongs to no
    // template handed out, is refused as unknown.
    refuses(
        api,
        "POST",
        "/mining/submit",
        &"11".repeat(80),
        400,
        "invalid-block",
    );
    let (_, template) = get(api, &format!("/mining/template?address={miner}"));
    let mut unknown =
        Block::from_bytes(&hex::decode(template["block_hex"].as_str().unwrap()).unwrap()).unwrap();
    unknown.header.merkle_root = Hash256([5; 32]);
    solve_block(&mut unknown);
    refuses(
        api,
        "POST",
        "/mining/submit",
        &hex::encode(unknown.header.to_array()),
        400,
        "unknown-template",
    );
    refuses(api, "POST", "/mining/submit", "0011", 400, "invalid-block");
    let (_, template) = get(api, &format!("/mining/template?address={miner}"));
    let mut stray =
        Block::from_bytes(&hex::decode(template["block_hex"].as_str().unwrap()).unwrap()).unwrap();
    stray.header.prev_hash = Hash256([7; 32]);
    solve_block(&mut stray);
    assert_eq!(
        error_code(
            api,
            "POST",
            "/mining/submit",
            &hex::encode(stray.to_bytes())
        ),
        (400, "orphan".into())
    );
    // Not kept waiting for its parent either.
    assert_eq!(get(api, "/orphaned_blocks").1["count"], 0);
    // A block on a chain with less work than the tip (forking from
    // genesis) is not stored: a client cannot fill the disk with cheap
    // blocks. A miner's block extends the tip.
    let mut fork =
        Block::from_bytes(&hex::decode(template["block_hex"].as_str().unwrap()).unwrap()).unwrap();
    fork.header.prev_hash = chain.blocks[0].hash();
    solve_block(&mut fork);
    assert_eq!(
        error_code(api, "POST", "/mining/submit", &hex::encode(fork.to_bytes())),
        (400, "low-work".into())
    );
    assert_eq!(get(api, &format!("/block/{}", fork.hash())).0, 404);
    node.stop();
}

#[test]
fn operator_adds_and_removes_peers_and_reads_fee_estimates() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, a_p2p) = NodeProcess::start_p2p(&dir.path().join("a"), &["--connect-only"]);
    let (mut b, _) = NodeProcess::start_p2p(&dir.path().join("b"), &["--connect-only"]);
    let api = b.api_addr();
    assert_eq!(get(api, "/peers").1, json!([]));
    let (status, body) = http(
        api,
        "POST",
        "/peers",
        &json!({ "addr": a_p2p.to_string() }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    b.wait_for("peer connected", Duration::from_secs(30));
    // /peers shows the status the network refreshes every tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let peers = loop {
        let (_, peers) = get(api, "/peers");
        if peers != json!([]) {
            break peers;
        }
        assert!(std::time::Instant::now() < deadline, "peer not listed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(peers[0]["addr"], json!(a_p2p.to_string()));
    // A lists B as inbound: its address for the operator, `null` for a
    // request that may not use the admin endpoints (here: proxied).
    let a_api = a.api_addr();
    let inbound = loop {
        let (_, peers) = get(a_api, "/peers");
        if peers != json!([]) {
            break peers;
        }
        assert!(std::time::Instant::now() < deadline, "peer not listed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(inbound[0]["inbound"], json!(true), "{inbound}");
    assert!(inbound[0]["addr"].is_string(), "{inbound}");
    let response = raw_response(
        a_api,
        "GET /peers HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n",
    );
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let public: Value = serde_json::from_str(body).unwrap();
    assert_eq!(public[0]["addr"], Value::Null, "{public}");
    assert_eq!(public[0]["inbound"], json!(true), "{public}");
    let (status, body) = http(api, "DELETE", &format!("/peers/{a_p2p}"), "");
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while get(api, "/peers").1 != json!([]) {
        assert!(std::time::Instant::now() < deadline, "peer not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        error_code(
            api,
            "POST",
            "/peers",
            &json!({ "addr": "nowhere" }).to_string()
        ),
        (400, "invalid-peer".into())
    );
    refuses(api, "DELETE", "/peers/nowhere", "", 400, "invalid-peer");
    // DNS rebinding: a page of attacker.example whose name now resolves to
    // 127.0.0.1; and a request relayed by a local reverse proxy.
    let add = json!({ "addr": a_p2p.to_string() }).to_string();
    for (host, extra) in [
        (format!("attacker.example:{}", api.port()), ""),
        ("127.0.0.1".to_string(), "X-Forwarded-For: 198.51.100.7\r\n"),
    ] {
        let request = format!(
            "POST /peers HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{add}",
            add.len()
        );
        assert_eq!(raw_status(api, &request), 403, "{host} {extra}");
    }
    assert_eq!(get(api, "/peers").1, json!([]), "no peer was added");
    let (status, estimates) = get(api, "/fee-estimates");
    assert_eq!(status, 200);
    for target in ["1", "2", "3", "6", "12", "25", "144"] {
        assert_eq!(
            estimates[target],
            json!(1.0),
            "an empty pool asks only the relay minimum"
        );
    }
    b.stop();
    a.stop();
}

#[test]
fn the_original_apis_paths_still_answer() {
    let chain = crate::common::prefix(12);
    let (_dir, node, api) = node_with(&chain.blocks[1..]);
    let address = key(1).address(Network::Regtest).to_string();
    let (status, balance) = get(api, &format!("/balance/{address}"));
    assert_eq!(status, 200);
    assert_eq!(balance["balance"], json!(12 * 50 * 100_000_000u64));
    assert_eq!(balance["balance_cc"], "600.00000000");
    assert_eq!(
        get(api, &format!("/utxos/{address}")).1["utxos"]
            .as_array()
            .unwrap()
            .len(),
        12
    );
    assert_eq!(
        get(api, &format!("/transactions/{address}")).1["transactions"]
            .as_array()
            .unwrap()
            .len(),
        12
    );
    assert_eq!(get(api, "/transaction_pool").1["count"], 0);
    let (_, range) = get(api, "/blocks/range?start=2&end=4");
    let heights: Vec<u64> = range["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["height"].as_u64().unwrap())
        .collect();
    assert_eq!(heights, vec![2, 3, 4]);
    refuses(
        api,
        "GET",
        "/blocks/range?start=5&end=1",
        "",
        400,
        "invalid-range",
    );
    refuses(
        api,
        "GET",
        "/blocks/range?start=0&end=500",
        "",
        400,
        "invalid-range",
    );
    assert_eq!(get(api, "/chain/info").1["height"], 12);
    assert_eq!(
        get(api, "/stats").1["total_supply"],
        json!(13 * 50 * 100_000_000u64)
    );
    assert_eq!(get(api, "/orphaned_blocks").1["count"], 0);
    assert_eq!(
        get(api, "/network_config").1["genesis_hash"],
        json!(Network::Regtest.params().genesis_hash().to_string())
    );
    refuses(api, "GET", "/balance/bad", "", 400, "invalid-address");
    node.stop();
}

#[test]
fn every_documented_path_answers_from_a_handler() {
    let chain = crate::common::prefix(12);
    let (_dir, node, api) = node_with(&chain.blocks[1..]);
    let (status, doc) = get(api, "/openapi.json");
    assert_eq!(status, 200);
    let address = key(1).address(Network::Regtest).to_string();
    let tip = chain.tip().hash().to_string();
    let txid = chain.tip().transactions[0].txid().to_string();
    let script_hash = hex::encode(chaincore::store::schema::script_hash(&key(1).pubkey_hash()));
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(op) = item.get("get") else { continue };
        let mut url = path
            .replace("{address}", &address)
            .replace("/scripthash/{hash}", &format!("/scripthash/{script_hash}"))
            .replace("{hash}", &tip)
            .replace("{txid}", &txid)
            .replace("{last_seen_txid}", &txid)
            .replace("{height}", "1")
            .replace("{start_height}", "1")
            .replace("{start_index}", "0")
            .replace("{index}", "0")
            .replace("{vout}", "0");
        let query: Vec<String> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query" && p["required"] == true)
            .map(|p| match p["name"].as_str().unwrap() {
                "address" => format!("address={address}"),
                name => format!("{name}=1"),
            })
            .collect();
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        if op["responses"]["200"]["content"]
            .get("text/event-stream")
            .is_some()
        {
            // A stream does not end: its status line and content type are
            // the answer (tests/chaincore/events.rs reads the events).
            use std::io::{BufRead, Write};
            let mut s = std::net::TcpStream::connect(api).unwrap();
            write!(s, "GET {url} HTTP/1.1\r\nHost: {api}\r\n\r\n").unwrap();
            let mut head = String::new();
            let mut reader = std::io::BufReader::new(s);
            while reader.read_line(&mut head).unwrap() > 2 && !head.ends_with("\r\n\r\n") {}
            assert!(head.starts_with("HTTP/1.1 200"), "{url}: {head}");
            assert!(head.contains("text/event-stream"), "{url}: {head}");
            continue;
        }
        let (status, body) = http(api, "GET", &url, "");
        assert!(
            !body.contains("no such endpoint"),
            "{url} fell through to the fallback"
        );
        assert_eq!(status, 200, "{url}: {body}");
        let json = op["responses"]["200"]["content"]
            .get("application/json")
            .is_some();
        if json {
            let value = serde_json::from_str::<Value>(&body)
                .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"));
            // The script hash routes find key(1), the miner of every block.
            if path.starts_with("/scripthash/") && !path.contains("mempool") {
                assert!(
                    value["chain_stats"]["tx_count"].as_u64() > Some(0)
                        || value.as_array().is_some_and(|a| !a.is_empty())
                        || path.contains("{last_seen_txid}"),
                    "{url}: {value}"
                );
            }
        } else {
            assert!(!body.is_empty(), "{url}: an empty answer");
        }
    }
    node.stop();
}

/// Connections that hold their slot (idle, or with a request half sent)
/// are bounded: with every slot taken a newcomer waits, the holders are
/// closed once idle for the timeout, and the newcomer is then answered.
#[test]
fn rest_connections_are_bounded_and_idle_ones_are_closed() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(
        &dir.path().join("n"),
        &[
            "--connect-only",
            "--api-max-connections",
            "4",
            "--api-idle-timeout-secs",
            "2",
            "--api-request-timeout-secs",
            "3",
        ],
    );
    let api = node.api_addr();
    let opened = std::time::Instant::now();
    let mut holders: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(api).unwrap())
        .collect();
    // Two send part of a request, one of them then trickling a byte every
    // half second (slowloris: never idle for 2 s, cut at the 3 s request
    // timeout), and two send nothing (cut at the 2 s idle timeout).
    for holder in &mut holders[..2] {
        holder
            .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
    }
    let mut trickler = holders[0].try_clone().unwrap();
    std::thread::spawn(move || {
        while trickler.write_all(b"X").is_ok() {
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    // Every slot is taken: a newcomer's complete request waits.
    let mut newcomer = std::net::TcpStream::connect(api).unwrap();
    newcomer
        .write_all(b"GET /blocks/tip/height HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    newcomer
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answer = Vec::new();
    assert!(
        newcomer.read_to_end(&mut answer).is_err() && answer.is_empty(),
        "answered while every slot was held: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The holders are closed after the idle timeout, not before.
    for holder in &mut holders {
        assert!(closed_within(holder, Duration::from_secs(10)));
    }
    assert!(opened.elapsed() >= Duration::from_secs(2));
    // Then the newcomer is answered.
    newcomer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    newcomer.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n0"), "{answer}");
    // A quiet event stream is not idle: its keep-alive comments come at
    // half the timeout.
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let listening = std::time::Instant::now();
    while listening.elapsed() < Duration::from_secs(5) {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("the stream stays open");
        assert!(n > 0, "the stream was closed");
    }
    drop(stream);
    // A connection in use is not idle: a client that sends a request every
    // second keeps its connection past the timeout.
    let mut busy = std::net::TcpStream::connect(api).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..4 {
        busy.write_all(b"GET /blocks/tip/height HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = busy.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_secs(1));
    }
}
