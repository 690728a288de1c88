//! The explorer in the browser (`/`) against real node processes: its files
//! and headers, `--api-cors`, and every page in a real headless Chromium
//! (Debian's `chromium` and `chromium-driver`), its content checked through
//! the DOM against the REST answers, a screenshot of each page saved, and a
//! new block shown on the open page without a reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaincore::api::explorer_site;
use chaincore::consensus::amount::Amount;
use chaincore::consensus::block::Block;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::{OutPoint, Transaction, TxOut};
use chaincore::encoding::Encode;
use chaincore::testkit::peer::{Hello, HostilePeer};
use chaincore::testkit::process::{http, Node};
use chaincore::testkit::{key, signed_spend, TestChain};
use serde_json::{json, Value};

use crate::common::{block_file, chain_with_spends, chaincore, prefix, NodeProcess};
use crate::webdriver::{artifacts_dir, Browser};

const LONG: Duration = Duration::from_secs(120);
const PAYMENT: u64 = 1_000_000;
const FEE: u64 = 1_000;
/// A peer's user agent that is markup: the peers page must show it as text.
const MARKUP_AGENT: &str = "<img src=x onerror=\"window.__xss=1\"><b>/evil:1/</b>";

/// One request with extra header lines; status, headers (lower-case names)
/// and body.
fn request(
    api: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    chaincore::testkit::process::http_request(api, method, path, extra, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn get_json(api: SocketAddr, path: &str) -> Value {
    let (status, body) = http(api, "GET", path, "");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn tip_height(api: SocketAddr) -> u32 {
    http(api, "GET", "/blocks/tip/height", "")
        .1
        .trim()
        .parse()
        .unwrap()
}

fn wait_tip(api: SocketAddr, height: u32) {
    let deadline = Instant::now() + LONG;
    while tip_height(api) < height {
        assert!(Instant::now() < deadline, "node did not reach {height}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A regtest node on its genesis block with `extra` flags; its API address.
fn bare_node(dir: &Path, extra: &[&str]) -> (Node, SocketAddr) {
    let mut node = NodeProcess::start(dir, extra);
    let api = node.api_addr();
    (node, api)
}

#[test]
fn the_explorer_is_served_with_its_content_types_a_strict_csp_and_validators() {
    let dir = tempfile::tempdir().unwrap();
    let (node, api) = bare_node(&dir.path().join("n"), &["--connect-only"]);
    for asset in [
        &explorer_site::INDEX,
        &explorer_site::APP_JS,
        &explorer_site::STYLE_CSS,
    ] {
        let (status, headers, body) = request(api, "GET", asset.path, "", "");
        assert_eq!(status, 200, "{}", asset.path);
        assert_eq!(header(&headers, "content-type"), Some(asset.content_type));
        assert_eq!(body, asset.body, "{}", asset.path);
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        let etag = header(&headers, "etag").expect("an ETag").to_string();
        let (status, headers, body) = request(
            api,
            "GET",
            asset.path,
            &format!("If-None-Match: {etag}\r\n"),
            "",
        );
        assert_eq!(status, 304, "{}", asset.path);
        assert!(body.is_empty());
        assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    }
    let (_, headers, _) = request(api, "GET", "/", "", "");
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some(explorer_site::CONTENT_SECURITY_POLICY)
    );
    let csp = explorer_site::CONTENT_SECURITY_POLICY;
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    // Unknown paths keep the API's JSON 404, known ones their 405.
    for path in ["/explorer/nope.js", "/index.html", "/explorer"] {
        let (status, _, body) = request(api, "GET", path, "", "");
        assert_eq!(status, 404, "{path}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["code"], "not-found", "{path}");
    }
    let (status, _, body) = request(api, "POST", "/", "", "");
    assert_eq!(status, 405);
    assert!(body.contains("method-not-allowed"), "{body}");
    node.stop();
}

#[test]
fn api_cors_answers_only_the_origins_given() {
    let dir = tempfile::tempdir().unwrap();
    let origin = "https://explorer.example";
    let other = "https://other.example";
    let preflight = |api: SocketAddr, from: &str, method: &str| {
        request(
            api,
            "OPTIONS",
            "/tx",
            &format!(
                "Origin: {from}\r\nAccess-Control-Request-Method: {method}\r\n\
                 Access-Control-Request-Headers: content-type\r\n"
            ),
            "",
        )
    };
    let read_from = |api: SocketAddr, from: &str| {
        let (status, headers, _) = request(
            api,
            "GET",
            "/blocks/tip/height",
            &format!("Origin: {from}\r\n"),
            "",
        );
        assert_eq!(status, 200);
        headers
    };

    // Without the flag: no CORS header for anyone, and no preflight.
    let (plain, api) = bare_node(&dir.path().join("plain"), &["--connect-only"]);
    let headers = read_from(api, origin);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        None,
        "{headers:?}"
    );
    let (status, headers, _) = preflight(api, origin, "POST");
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    plain.stop();

    // With it: the origins given, and no other.
    let (listed, api) = bare_node(
        &dir.path().join("listed"),
        &[
            "--connect-only",
            "--api-cors",
            "https://Explorer.Example/",
            "--api-cors",
            "http://127.0.0.1:9,http://localhost:9",
        ],
    );
    let headers = read_from(api, origin);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(origin),
        "{headers:?}"
    );
    let exposed = header(&headers, "access-control-expose-headers").unwrap_or_default();
    for name in ["link", "chaincore-tip"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    assert!(
        header(&headers, "vary").is_some_and(|v| v.contains("origin")),
        "a cache must not hand one origin's answer to another: {headers:?}"
    );
    let headers = read_from(api, "http://localhost:9");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("http://localhost:9")
    );
    let headers = read_from(api, other);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        None,
        "{headers:?}"
    );
    let (status, headers, _) = preflight(api, origin, "POST");
    assert!(status == 200 || status == 204, "{status} {headers:?}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some(origin)
    );
    let methods = header(&headers, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    assert!(!methods.contains("DELETE"), "{methods}");
    let allowed = header(&headers, "access-control-allow-headers").unwrap_or_default();
    assert!(allowed.contains("content-type"), "{allowed}");
    let (_, headers, _) = preflight(api, other, "POST");
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    // Admin endpoints keep their rule: a page of an allowed origin sending
    // a request to the node on loopback is not the local operator.
    let add = r#"{"addr": "127.0.0.1:9"}"#;
    let json = "Content-Type: application/json\r\n";
    let (status, _, body) = request(
        api,
        "POST",
        "/peers",
        &format!("{json}Origin: {origin}\r\n"),
        add,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin-only"), "{body}");
    let (status, _, body) = request(api, "POST", "/peers", json, add);
    assert_eq!(status, 200, "the same request without Origin: {body}");
    listed.stop();

    // '*' only when asked for.
    let (any, api) = bare_node(
        &dir.path().join("any"),
        &["--connect-only", "--api-cors", "*"],
    );
    assert_eq!(
        header(&read_from(api, other), "access-control-allow-origin"),
        Some("*")
    );
    any.stop();

    // What is not an origin stops the node at once, saying why.
    for bad in [
        "explorer.example",
        "https://explorer.example/path",
        "*,https://a.example",
    ] {
        let out = chaincore()
            .args([
                "node",
                "--network",
                "regtest",
                "--api-cors",
                bad,
                "--data-dir",
            ])
            .arg(dir.path().join("bad"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--api-cors"), "{bad}: {err}");
    }
}

/// Outputs of key(6) that block 15 creates: block 16 spends 30 of them,
/// and the 101 left fill more than the address page's 100 per page.
const FAN_OUT: u32 = 131;

/// The browser test's chain: 12 blocks mined to key(1); 13 and 14 with two
/// payments each to key(2); 15 fans a coin out to `FAN_OUT` outputs of
/// key(6); 16 spends 30 of them, paying key(7) 30 times (31 transactions:
/// two pages).
struct Fixture {
    chain: TestChain,
    /// Block 13: a coinbase and two payments to key(2).
    payments: Block,
    /// Block 16, with 31 transactions.
    busy: Block,
    /// key(2) pays key(5) from block 13's first payment: left to the mempool.
    pending: Transaction,
}

fn fixture() -> Fixture {
    let base = prefix(12);
    let (mut chain, paying) = chain_with_spends(&base, 2, 2, &key(2), &key(3));
    let (outpoint, coin) = chain.spendable(key(1).pubkey_hash())[0];
    let mut outputs = vec![
        TxOut {
            amount: Amount::from_units(PAYMENT),
            owner: key(6).pubkey_hash(),
        };
        FAN_OUT as usize
    ];
    outputs.push(TxOut {
        amount: Amount::from_units(coin.output.amount.units() - u64::from(FAN_OUT) * PAYMENT - FEE),
        owner: key(1).pubkey_hash(),
    });
    let fan = signed_spend(&[(outpoint, coin.output, &key(1))], outputs);
    let block = chain.build_block(key(3).pubkey_hash(), vec![fan.clone()]);
    chain.apply(block);
    let spends = (0..30u32)
        .map(|vout| {
            signed_spend(
                &[(
                    OutPoint::new(fan.txid(), vout),
                    fan.outputs[vout as usize],
                    &key(6),
                )],
                vec![TxOut {
                    amount: Amount::from_units(PAYMENT - FEE),
                    owner: key(7).pubkey_hash(),
                }],
            )
        })
        .collect();
    let busy = chain.build_block(key(3).pubkey_hash(), spends);
    chain.apply(busy.clone());
    let paid = &paying[0].transactions[1];
    let pending = signed_spend(
        &[(OutPoint::new(paid.txid(), 0), paid.outputs[0], &key(2))],
        vec![
            TxOut {
                amount: Amount::from_units(400_000),
                owner: key(5).pubkey_hash(),
            },
            TxOut {
                amount: Amount::from_units(PAYMENT - 400_000 - FEE),
                owner: key(2).pubkey_hash(),
            },
        ],
    );
    Fixture {
        chain,
        payments: paying[0].clone(),
        busy,
        pending,
    }
}

/// `n` with thousands separated by commas, as the page writes counts.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The explorer open in the browser, and where its screenshots go.
struct Explorer {
    browser: Browser,
    base: String,
    shots: PathBuf,
}

impl Explorer {
    /// Goes to `#route` and waits until the page has rendered it.
    fn open(&self, route: &str) {
        self.browser.goto(&format!("{}#{route}", self.base));
        self.wait_route(route);
    }

    fn wait_route(&self, route: &str) {
        self.browser.wait_for(
            &format!("page #{route}"),
            "const v = document.getElementById('view');
             return v.dataset.state === 'ready' && v.dataset.route === '#' + arguments[0];",
            json!([route]),
        );
    }

    fn page(&self) -> String {
        self.browser
            .execute(
                "return document.getElementById('view').dataset.page",
                json!([]),
            )
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The text of every element with this data-testid, in order.
    fn texts(&self, testid: &str) -> Vec<String> {
        let found = self.browser.execute(
            "return [...document.querySelectorAll(`[data-testid='${arguments[0]}']`)]
                .map(e => e.textContent.trim())",
            json!([testid]),
        );
        serde_json::from_value(found).unwrap()
    }

    fn text(&self, testid: &str) -> String {
        self.texts(testid)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element with data-testid={testid}"))
    }

    /// A data attribute (`data-KEY`) of every element with this data-testid.
    fn data(&self, testid: &str, key: &str) -> Vec<String> {
        let found = self.browser.execute(
            "return [...document.querySelectorAll(`[data-testid='${arguments[0]}']`)]
                .map(e => e.dataset[arguments[1]])",
            json!([testid, key]),
        );
        serde_json::from_value(found).unwrap()
    }

    fn wait_text(&self, testid: &str, expected: &str) {
        self.browser.wait_for(
            &format!("[data-testid={testid}] to read {expected:?}"),
            "const e = document.querySelector(`[data-testid='${arguments[0]}']`);
             return e !== null && e.textContent.trim() === arguments[1];",
            json!([testid, expected]),
        );
    }

    fn shot(&self, name: &str) {
        self.browser
            .screenshot(&self.shots.join(format!("{name}.png")));
    }

    /// Whether the document fits the viewport's width (no sideways scroll).
    fn fits_width(&self) -> bool {
        self.browser
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                json!([]),
            )
            .as_bool()
            .unwrap()
    }

    fn search(&self, query: &str) {
        self.browser
            .type_into("#search", &format!("{query}\u{E007}"));
    }
}

#[test]
fn explorer_pages_show_the_nodes_data_in_headless_chromium() {
    let started = Instant::now();
    let net = Network::Regtest;
    let Fixture {
        mut chain,
        payments,
        busy,
        pending,
    } = fixture();
    let dir = tempfile::tempdir().unwrap();
    let file = block_file(dir.path(), "chain.dat", &chain.blocks[1..]);
    let (mut node, p2p) = NodeProcess::start_p2p(
        &dir.path().join("n"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    node.wait_for("import done", LONG);
    let api = node.api_addr();
    wait_tip(api, 16);
    let (status, body) = http(api, "POST", "/tx", &hex::encode(pending.to_bytes()));
    assert_eq!(status, 200, "{body}");
    let pending_txid = pending.txid().to_string();
    let mut peer = HostilePeer::connect(p2p, net).unwrap();
    peer.handshake(
        &Hello {
            user_agent: MARKUP_AGENT.into(),
            ..Hello::default()
        },
        LONG,
    )
    .unwrap();

    let shots = artifacts_dir("explorer");
    println!("explorer screenshots: {}", shots.display());
    let x = Explorer {
        browser: Browser::start(1280, 1000),
        base: format!("http://{api}/"),
        shots,
    };

    // Home: the tip, the latest ten blocks, sync and the mempool.
    x.open("/");
    assert_eq!(x.page(), "home");
    assert_eq!(x.text("tip-height"), "16");
    let heights = x.data("block-row", "height");
    assert_eq!(
        heights,
        (7..=16).rev().map(|h| h.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(x.data("block-row", "hash")[0], busy.hash().to_string());
    assert_eq!(x.text("home-mempool-count"), "1 tx");
    let status = get_json(api, "/status");
    assert_eq!(
        x.text("home-sync"),
        format!("{:.1} %", status["sync"]["percent"].as_f64().unwrap())
    );
    assert!(x.fits_width());
    x.shot("home");
    x.browser.click("[data-testid=older-blocks]");
    x.browser.wait_for(
        "older blocks",
        "return document.querySelectorAll('[data-testid=block-row]').length === 17",
        json!([]),
    );

    // A block: header fields, confirmations, 31 transactions in two pages.
    let busy_hash = busy.hash().to_string();
    x.open(&format!("/block/{busy_hash}"));
    assert_eq!(x.text("block-height"), "16");
    assert_eq!(x.text("block-hash"), busy_hash);
    assert_eq!(x.text("block-confirmations"), "1");
    assert_eq!(x.text("block-tx-count"), "31");
    assert_eq!(x.text("block-prev"), busy.header.prev_hash.to_string());
    let first_page = x.data("tx-card", "txid");
    let txids: Vec<String> = busy
        .transactions
        .iter()
        .map(|t| t.txid().to_string())
        .collect();
    assert_eq!(first_page, txids[..25]);
    assert_eq!(x.texts("block-txs-range")[0], "1–25 of 31");
    x.shot("block");
    x.browser.click("[data-testid=block-txs-next]");
    x.wait_route(&format!("/block/{busy_hash}/25"));
    assert_eq!(x.data("tx-card", "txid"), txids[25..]);
    assert_eq!(x.texts("block-txs-range")[0], "26–31 of 31");
    x.shot("block-page-2");

    // A transaction: inputs with what they spent, outputs with their
    // spenders, fee, confirmations and the merkle proof.
    let paid = &payments.transactions[1];
    let paid_txid = paid.txid().to_string();
    x.open(&format!("/tx/{paid_txid}"));
    assert_eq!(x.page(), "tx");
    assert_eq!(x.text("txid"), paid_txid);
    assert_eq!(x.data("tx-fee", "units"), ["1000"]);
    assert_eq!(x.text("tx-fee"), "0.00001000 CC");
    assert_eq!(x.text("tx-confirmations"), "4");
    let spent = chain.blocks[1].transactions[0].outputs[0];
    assert_eq!(
        paid.inputs[0].prevout(),
        OutPoint::new(chain.blocks[1].transactions[0].txid(), 0)
    );
    assert_eq!(x.texts("vin-address"), [key(1).address(net).to_string()]);
    assert_eq!(
        x.data("vin-value", "units"),
        [spent.amount.units().to_string()]
    );
    let values: Vec<String> = paid
        .outputs
        .iter()
        .map(|o| o.amount.units().to_string())
        .collect();
    assert_eq!(x.data("vout-value", "units"), values);
    assert_eq!(
        x.texts("vout-address"),
        [
            key(2).address(net).to_string(),
            key(1).address(net).to_string()
        ]
    );
    // Output 0 is what the pending payment spends.
    assert_eq!(x.data("vout", "spent"), ["true", "false"]);
    assert!(
        x.texts("vout-spent")[0].contains("(unconfirmed)"),
        "{:?}",
        x.texts("vout-spent")
    );
    let proof = get_json(api, &format!("/tx/{paid_txid}/merkle-proof"));
    assert_eq!(x.text("merkle-height"), "13");
    assert_eq!(x.text("merkle-pos"), "1");
    let branch: Vec<String> = x.browser.execute(
        "return [...document.querySelectorAll('[data-testid=merkle-branch] li')].map(e => e.textContent)",
        json!([]),
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_str().unwrap().to_string())
    .collect();
    assert_eq!(json!(branch), proof["merkle"]);
    x.shot("tx");
    let coinbase = payments.transactions[0].txid().to_string();
    x.open(&format!("/tx/{coinbase}"));
    assert_eq!(x.texts("coinbase").len(), 1);
    assert_eq!(x.data("tx-fee", "units"), ["0"]);
    x.shot("tx-coinbase");

    // An address: balances as the REST API tells them, UTXOs and history.
    let payee = key(2).address(net).to_string();
    x.open(&format!("/address/{payee}"));
    assert_eq!(x.text("address"), payee);
    let info = get_json(api, &format!("/address/{payee}"));
    let sum = |stats: &Value, field: &str| stats[field].as_u64().unwrap() as i64;
    let confirmed =
        sum(&info["chain_stats"], "funded_txo_sum") - sum(&info["chain_stats"], "spent_txo_sum");
    let pending_change = sum(&info["mempool_stats"], "funded_txo_sum")
        - sum(&info["mempool_stats"], "spent_txo_sum");
    assert_eq!(confirmed, 4 * PAYMENT as i64);
    assert_eq!(pending_change, -(400_000 + FEE as i64));
    assert_eq!(x.data("addr-confirmed", "units"), [confirmed.to_string()]);
    assert_eq!(x.text("addr-confirmed"), "0.04000000 CC");
    assert_eq!(
        x.data("addr-pending", "units"),
        [pending_change.to_string()]
    );
    let utxos = get_json(api, &format!("/address/{payee}/utxo"));
    let mut listed: Vec<String> = x
        .data("utxo-row", "txid")
        .into_iter()
        .zip(x.data("utxo-row", "vout"))
        .map(|(t, v)| format!("{t}:{v}"))
        .collect();
    let mut expected: Vec<String> = utxos
        .as_array()
        .unwrap()
        .iter()
        .map(|u| format!("{}:{}", u["txid"].as_str().unwrap(), u["vout"]))
        .collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    let history = x.data("addr-tx", "txid");
    assert_eq!(history.len(), 5, "4 confirmed payments and the pending one");
    assert_eq!(history[0], pending_txid, "unconfirmed first");
    assert_eq!(x.data("net-change", "units")[0], pending_change.to_string());
    x.shot("address");
    // History in pages of 25: key(7) was paid 30 times.
    let busy_payee = key(7).address(net).to_string();
    x.open(&format!("/address/{busy_payee}"));
    assert_eq!(x.data("addr-tx", "txid").len(), 25);
    x.browser.click("[data-testid=addr-more]");
    x.browser.wait_for(
        "the next page of history",
        "return document.querySelectorAll('[data-testid=addr-tx]').length === 30",
        json!([]),
    );
    let mut all = x.data("addr-tx", "txid");
    let mut paid_to = txids[1..].to_vec();
    all.sort();
    paid_to.sort();
    assert_eq!(all, paid_to, "every payment once, no page repeated");
    x.shot("address-paged");
    // Unspent outputs 100 at a time (the node's Link header names the next
    // page): key(6) keeps 101 of block 15's outputs.
    let fanned = key(6).address(net).to_string();
    x.open(&format!("/address/{fanned}"));
    assert_eq!(x.data("utxo-row", "txid").len(), 100);
    x.browser.click("[data-testid=utxo-more]");
    x.browser.wait_for(
        "the next page of unspent outputs",
        "return document.querySelectorAll('[data-testid=utxo-row]').length === 101
            && document.querySelector('[data-testid=utxo-more]').hidden",
        json!([]),
    );
    let mut listed: Vec<String> = x
        .data("utxo-row", "txid")
        .into_iter()
        .zip(x.data("utxo-row", "vout"))
        .map(|(t, v)| format!("{t}:{v}"))
        .collect();
    let mut expected: Vec<String> = get_json(api, &format!("/address/{fanned}/utxo"))
        .as_array()
        .unwrap()
        .iter()
        .map(|u| format!("{}:{}", u["txid"].as_str().unwrap(), u["vout"]))
        .collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "every unspent output once");

    // The mempool: count, size, fees and the fee histogram.
    x.open("/mempool");
    let mempool = get_json(api, "/mempool");
    assert_eq!(x.text("mempool-count"), "1");
    assert_eq!(
        x.text("mempool-vsize"),
        format!("{} B", grouped(mempool["vsize"].as_u64().unwrap()))
    );
    assert_eq!(x.data("mempool-fee", "units"), ["1000"]);
    assert_eq!(
        x.data("fee-bar", "vsize")
            .iter()
            .map(|v| v.parse::<u64>().unwrap())
            .sum::<u64>(),
        mempool["vsize"].as_u64().unwrap()
    );
    assert_eq!(x.data("recent-row", "txid"), [pending_txid.as_str()]);
    x.shot("mempool");

    // Peers and sync: the peer's user agent is shown as text, never run.
    x.open("/peers");
    assert_eq!(x.text("status-height"), "16");
    assert_eq!(x.data("peer-row", "addr").len(), 1);
    assert_eq!(x.text("peer-agent"), MARKUP_AGENT);
    let injected = x.browser.execute(
        "return window.__xss === undefined && document.querySelector('#view img') === null",
        json!([]),
    );
    assert_eq!(injected, json!(true), "markup from a peer reached the DOM");
    x.shot("peers");

    // Search: a height, a txid, a block hash (tried as a txid first), an
    // address, and what is none of them.
    x.search("13");
    x.wait_route(&format!("/block/{}", payments.hash()));
    x.search(&pending_txid);
    x.wait_route(&format!("/tx/{pending_txid}"));
    assert_eq!(x.text("tx-confirmations"), "0");
    x.search(&busy_hash.to_uppercase());
    x.wait_route(&format!("/block/{busy_hash}"));
    x.search(&payee);
    x.wait_route(&format!("/address/{payee}"));
    x.search("99999");
    x.wait_text("search-error", "no block at height 99999");
    x.search("not-a-thing");
    x.browser.wait_for(
        "the search to refuse a query",
        "return document.getElementById('search-error').textContent.startsWith('Search for')",
        json!([]),
    );
    x.shot("search");
    x.browser.execute(
        "const s = document.getElementById('search'); s.value = ''; s.blur()",
        json!([]),
    );

    // Live: a new block appears on the open home page without a reload,
    // and an open transaction page counts its confirmations.
    x.open("/");
    x.browser
        .execute("window.__explorerMarker = 'same document'", json!([]));
    x.browser.wait_for(
        "the event stream to be live",
        "return document.getElementById('live').dataset.state === 'live'",
        json!([]),
    );
    let block17 = chain.build_block(key(3).pubkey_hash(), vec![pending.clone()]);
    chain.apply(block17.clone());
    let (status, body) = http(
        api,
        "POST",
        "/mining/submit",
        &hex::encode(block17.to_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    x.wait_text("tip-height", "17");
    x.browser.wait_for(
        "block 17 at the top of the list",
        "const row = document.querySelector('[data-testid=block-row]');
         return row.dataset.height === '17' && row.dataset.hash === arguments[0];",
        json!([block17.hash().to_string()]),
    );
    let kept = x
        .browser
        .execute("return window.__explorerMarker", json!([]));
    assert_eq!(kept, json!("same document"), "the page was reloaded");
    x.shot("home-live");
    x.open(&format!("/tx/{pending_txid}"));
    assert_eq!(x.text("tx-confirmations"), "1");
    let block18 = chain.build_block(key(3).pubkey_hash(), Vec::new());
    chain.apply(block18.clone());
    let (status, body) = http(
        api,
        "POST",
        "/mining/submit",
        &hex::encode(block18.to_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    x.wait_text("tx-confirmations", "2");
    let kept = x
        .browser
        .execute("return window.__explorerMarker", json!([]));
    assert_eq!(kept, json!("same document"), "the page was reloaded");

    // A phone: one column, nothing wider than the screen.
    x.browser.emulate_phone(Some((390, 844)));
    for (route, name) in [
        ("/".to_string(), "phone-home"),
        (format!("/block/{busy_hash}"), "phone-block"),
        (format!("/tx/{paid_txid}"), "phone-tx"),
        (format!("/address/{payee}"), "phone-address"),
        ("/mempool".to_string(), "phone-mempool"),
        ("/peers".to_string(), "phone-peers"),
    ] {
        x.open(&route);
        assert!(x.fits_width(), "{route} is wider than a phone");
        x.shot(name);
    }
    x.browser.emulate_phone(None);

    drop(x);
    drop(peer);
    node.stop();
    println!(
        "explorer browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
