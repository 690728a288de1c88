//! The clients in the binary against a real devnet: `devnet`, `mine`,
//! `wallet` and `monitor`, end to end.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chaincore::consensus::amount::Amount;
use chaincore::consensus::params::Network;
use chaincore::consensus::pow::block_subsidy;
use chaincore::testkit::process::http;
use serde_json::Value;

use crate::common::chaincore;

/// A running `chaincore devnet`, stopped with SIGTERM (as Ctrl-C would) when
/// dropped.
struct Devnet {
    child: Child,
    urls: Vec<String>,
}

impl Devnet {
    fn start(nodes: usize, dir: &Path) -> Devnet {
        let mut child = chaincore()
            .args(["devnet", "--nodes", &nodes.to_string(), "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start devnet");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut urls = Vec::new();
        for line in stdout.lines() {
            let line = line.expect("devnet output");
            if let Some(url) = line.split_whitespace().skip_while(|w| *w != "rest").nth(1) {
                urls.push(url.to_string());
            }
            if line.starts_with("ready") {
                break;
            }
        }
        assert_eq!(urls.len(), nodes, "devnet printed a REST URL per node");
        Devnet { child, urls }
    }

    fn api(&self, i: usize) -> SocketAddr {
        self.urls[i].trim_start_matches("http://").parse().unwrap()
    }

    /// Stops the devnet as Ctrl-C does; returns whether it exited cleanly.
    fn stop(mut self) -> bool {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status.success()
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs `chaincore ARGS`, asserting success; returns stdout.
fn run_ok(args: &[&str]) -> String {
    let out = chaincore().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "chaincore {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `chaincore ARGS`, asserting failure; returns stderr.
fn run_err(args: &[&str]) -> String {
    let out = chaincore().args(args).output().unwrap();
    assert!(!out.status.success(), "chaincore {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn get_json(api: SocketAddr, path: &str) -> Value {
    let (status, body) = http(api, "GET", path, "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `check` every 50 ms until it holds, or panics after `timeout`.
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn height(api: SocketAddr) -> u64 {
    http(api, "GET", "/blocks/tip/height", "")
        .1
        .parse()
        .unwrap()
}

#[test]
fn devnet_wallet_send_is_relayed_mined_and_every_node_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let wallet = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (a, b, c) = (wallet("a.json"), wallet("b.json"), wallet("c.json"));
    let pass = dir.path().join("pass.txt");
    std::fs::write(&pass, "hunter2 but longer\n").unwrap();
    let pass = pass.to_str().unwrap();

    // Three wallets; A's key sealed with a passphrase.
    let last_line = |s: String| s.lines().last().unwrap().to_string();
    let addr_a = last_line(run_ok(&[
        "wallet",
        "new",
        "--network",
        "regtest",
        "--wallet",
        &a,
        "--encrypt",
        "--passphrase-file",
        pass,
    ]));
    let addr_b = last_line(run_ok(&[
        "wallet",
        "new",
        "--network",
        "regtest",
        "--wallet",
        &b,
    ]));
    let addr_c = last_line(run_ok(&[
        "wallet",
        "new",
        "--network",
        "regtest",
        "--wallet",
        &c,
    ]));
    assert_eq!(
        last_line(run_ok(&["wallet", "address", "--wallet", &a])),
        addr_a
    );
    assert!(
        run_err(&["wallet", "new", "--network", "regtest", "--wallet", &b])
            .contains("refusing to overwrite")
    );
    assert!(!std::fs::read_to_string(&a).unwrap().contains("\"plain\""));

    let devnet = Devnet::start(3, &dir.path().join("net"));
    let apis: Vec<SocketAddr> = (0..3).map(|i| devnet.api(i)).collect();
    let urls = devnet.urls.clone();

    // Mine 11 blocks to A through node 0's REST API on two threads:
    // rewards of heights 1 and 2 are mature for the next block (regtest
    // maturity 10), the other nine are not.
    run_ok(&[
        "mine",
        "--node",
        &urls[0],
        "--address",
        &addr_a,
        "--threads",
        "2",
        "--blocks",
        "11",
    ]);
    eventually("every node at height 11", Duration::from_secs(30), || {
        apis.iter().all(|api| height(*api) == 11)
    });
    let params = Network::Regtest.params();
    let reward = block_subsidy(params, 1).units();
    let balance = |w: &str, url: &str| -> Value {
        serde_json::from_str(&run_ok(&[
            "wallet", "balance", "--json", "--wallet", w, "--node", url,
        ]))
        .unwrap()
    };
    let before = balance(&a, &urls[1]);
    assert_eq!(before["confirmed"], 11 * reward);
    assert_eq!(before["spendable"], 2 * reward);
    assert_eq!(before["immature"], 9 * reward);

    // `wallet send` from A through node 1.
    let send = |to: &str, amount: &str, passphrase_file: &str, extra: &[&str]| {
        let mut args = vec![
            "wallet",
            "send",
            "--wallet",
            &a,
            "--node",
            &urls[1],
            "--to",
            to,
            "--amount",
            amount,
            "--passphrase-file",
            passphrase_file,
        ];
        args.extend_from_slice(extra);
        chaincore().args(&args).output().unwrap()
    };
    // Too much for the mature coins: refused with the amounts.
    let refused = send(
        &addr_b,
        &Amount::from_units(3 * reward).to_string(),
        pass,
        &[],
    );
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(refusal.contains("insufficient funds"), "{refusal}");
    assert!(
        refusal.contains(&Amount::from_units(2 * reward).to_string()),
        "{refusal}"
    );
    // A wrong passphrase unlocks nothing.
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&wrong, "nope").unwrap();
    let refused = send(&addr_b, "1", wrong.to_str().unwrap(), &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("wrong passphrase"));

    // Sends from A, and waits until the payment is in every mempool.
    let pay = |amount: &str, fee_rate: &str| -> String {
        let sent = send(&addr_b, amount, pass, &["--fee-rate", fee_rate]);
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
        let txid = last_line(String::from_utf8(sent.stdout).unwrap());
        for api in &apis {
            eventually(
                "the payment in every mempool",
                Duration::from_secs(10),
                || http(*api, "GET", "/mempool/txids", "").1.contains(&txid),
            );
        }
        txid
    };

    // A pays B 3.5 CC at 2 units/byte through node 1.
    let amount = Amount::from_units(350_000_000);
    let txid = pay("3.5", "2");
    let tx = get_json(apis[2], &format!("/tx/{txid}"));
    let fee = tx["fee"].as_u64().unwrap();
    assert_eq!(fee, 2 * tx["size"].as_u64().unwrap());
    // Its coin is spent in the mempool; its change is A's own and spendable.
    let change = reward - amount.units() - fee;
    let pending = balance(&a, &urls[2]);
    assert_eq!(pending["spendable"], reward + change);
    assert_eq!(pending["pending"], -(amount.units() as i64) - fee as i64);

    // A pays B 60 CC more before any block: more than its last confirmed
    // coin, so the unconfirmed change must fund it too.
    let second = Amount::from_units(60 * 100_000_000);
    let txid2 = pay("60", "1");
    let tx2 = get_json(apis[0], &format!("/tx/{txid2}"));
    let fee2 = tx2["fee"].as_u64().unwrap();
    let spent: Vec<&str> = tx2["vin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["txid"].as_str().unwrap())
        .collect();
    assert!(
        spent.contains(&txid.as_str()),
        "spends the first payment's change"
    );
    let unconfirmed = get_json(apis[1], &format!("/address/{addr_a}/txs/mempool"));
    assert_eq!(unconfirmed.as_array().unwrap().len(), 2);
    let history = |url: &str| -> Value {
        serde_json::from_str(&run_ok(&[
            "wallet", "history", "--json", "--wallet", &a, "--node", url,
        ]))
        .unwrap()
    };
    let before = history(&urls[1]);
    assert!(
        before[0]["height"].is_null() && before[1]["height"].is_null(),
        "{before}"
    );

    // A block from node 2, paying C, confirms both everywhere.
    run_ok(&[
        "mine",
        "--node",
        &urls[2],
        "--address",
        &addr_c,
        "--threads",
        "1",
        "--blocks",
        "1",
    ]);
    for api in &apis {
        eventually(
            "both payments confirmed everywhere",
            Duration::from_secs(30),
            || {
                [&txid, &txid2]
                    .iter()
                    .all(|t| get_json(*api, &format!("/tx/{t}/status"))["confirmed"] == true)
            },
        );
    }
    let paid = amount.units() + second.units();
    let expect_a = 11 * reward - paid - fee - fee2;
    for (api, url) in apis.iter().zip(&urls) {
        assert_eq!(
            get_json(*api, &format!("/address/{addr_b}"))["balance"],
            paid
        );
        assert_eq!(
            get_json(*api, &format!("/address/{addr_a}"))["balance"],
            expect_a
        );
        assert_eq!(
            get_json(*api, &format!("/address/{addr_c}"))["balance"],
            reward + fee + fee2
        );
        assert_eq!(balance(&b, url)["confirmed"], paid);
        assert_eq!(balance(&a, url)["confirmed"], expect_a);
        assert_eq!(get_json(*api, "/mempool")["count"], 0);
        // The protocol refreshes its progress every 250 ms tick.
        eventually("sync at 100%", Duration::from_secs(5), || {
            get_json(*api, "/status")["sync"]["percent"] == 100.0
        });
    }
    // A's history: the two payments newest first, and its nets add up to
    // the balance.
    let after = history(&urls[0]);
    let rows = after.as_array().unwrap();
    assert_eq!(rows.len(), 13);
    assert_eq!(rows[0]["txid"], txid2.as_str());
    assert_eq!(rows[1]["txid"], txid.as_str());
    assert_eq!(rows[1]["net"], -((amount.units() + fee) as i64));
    let total: i64 = rows.iter().map(|r| r["net"].as_i64().unwrap()).sum();
    assert_eq!(total, expect_a as i64);

    // Metrics: the payment crossed the wire into nodes 0 and 2, blocks into
    // node 1, and the REST calls above were timed by route.
    let metric = |api: SocketAddr, series: &str| -> u64 {
        let (_, text) = http(api, "GET", "/metrics", "");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}")) as u64
    };
    for api in [apis[0], apis[2]] {
        assert!(
            metric(
                api,
                r#"chaincore_p2p_messages_total{command="tx",direction="in"}"#
            ) >= 1
        );
        assert!(
            metric(
                api,
                r#"chaincore_p2p_bytes_total{command="tx",direction="in"}"#
            ) > 24
        );
    }
    assert!(
        metric(
            apis[1],
            r#"chaincore_p2p_messages_total{command="block",direction="in"}"#
        ) >= 12
    );
    assert!(
        metric(
            apis[1],
            r#"chaincore_api_request_duration_seconds_count{method="GET",route="/address/{address}"}"#
        ) >= 3
    );

    // The monitor sees three nodes on one tip.
    let mut monitor = vec!["monitor", "--once"];
    for url in &urls {
        monitor.extend(["--node", url.as_str()]);
    }
    let view = run_ok(&monitor);
    assert!(view.contains("3 of 3 nodes agree: height 12"), "{view}");

    assert!(devnet.stop(), "devnet exits cleanly on SIGTERM");
    // Every node stopped with it: their REST ports no longer answer.
    for api in &apis {
        assert!(std::net::TcpStream::connect_timeout(api, Duration::from_secs(1)).is_err());
    }
}

#[test]
fn clients_report_an_unreachable_node_and_a_wrong_network_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.json");
    let w = w.to_str().unwrap();
    run_ok(&["wallet", "new", "--network", "test", "--wallet", w]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = format!("http://127.0.0.1:{port}");
    let error = run_err(&["wallet", "balance", "--wallet", w, "--node", &dead]);
    assert!(error.contains("cannot reach the node"), "{error}");
    let error = run_err(&["monitor", "--once", "--node", &dead]);
    assert!(error.contains("no node answered"), "{error}");

    // A regtest node refuses a test-network wallet's use.
    let mut node = crate::common::NodeProcess::start(&dir.path().join("n"), &["--connect-only"]);
    let url = format!("http://{}", node.api_addr());
    let error = run_err(&["wallet", "balance", "--wallet", w, "--node", &url]);
    assert!(
        error.contains("runs regtest, the wallet is for test"),
        "{error}"
    );
    let error = run_err(&[
        "mine",
        "--node",
        &url,
        "--address",
        "nonsense",
        "--blocks",
        "1",
    ]);
    assert!(
        error.contains("invalid-address") || error.contains("address"),
        "{error}"
    );
    node.drain();
}

/// Asserts that no piece of `error` of 12 or more characters, cut at
/// ": ", is said twice (an error that writes its cause into its message
/// and then has it printed again as the cause).
fn said_once(error: &str) {
    let parts: Vec<&str> = error.trim().split(": ").filter(|p| p.len() >= 12).collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "{part:?} said twice in {error:?}"
        );
    }
}

#[test]
fn a_newcomers_common_mistakes_get_one_clear_error_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    // A wallet file that is not there, and one in a directory that is not.
    let error = run_err(&["wallet", "balance", "--wallet", &path("none.json")]);
    assert!(
        error.contains("no wallet file at") && error.contains("wallet new"),
        "{error}"
    );
    said_once(&error);
    let error = run_err(&[
        "wallet",
        "new",
        "--network",
        "regtest",
        "--wallet",
        &path("no/dir/w.json"),
    ]);
    assert!(error.contains("does not exist"), "{error}");
    said_once(&error);

    // A data dir another node holds (once it serves: it holds the store).
    let mut node = crate::common::NodeProcess::start(&dir.path().join("n"), &["--connect-only"]);
    node.api_addr();
    let out = chaincore()
        .args(["node", "--network", "regtest", "--p2p-bind", "127.0.0.1"])
        .args([
            "--p2p-port",
            "0",
            "--api-port",
            "0",
            "--data-dir",
            &path("n"),
        ])
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(error.contains("in use by another process"), "{error}");
    said_once(error.lines().last().unwrap_or_default());
    node.drain();
    drop(node);
    // A mirror check against a server that is not there: PostgreSQL's
    // error writes its cause into its message, said once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let error = run_err(&[
        "mirror",
        "verify",
        "--data-dir",
        &path("n"),
        "--postgres-url",
        &format!("postgres://u@127.0.0.1:{port}/db"),
    ]);
    assert!(error.contains("onnect"), "{error}");
    said_once(&error);

    // A PostgreSQL URL that can never connect, and a file to import that is
    // not there: refused at start, not retried or logged while running.
    let out = chaincore()
        .args(["node", "--network", "regtest", "--data-dir", &path("p")])
        .args([
            "--postgres-url",
            "postgres://u:pw-s3cret@127.0.0.1:notaport/db",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("not a PostgreSQL URL"), "{error}");
    assert!(!error.contains("s3cret"), "the password echoed: {error}");
    assert!(!dir.path().join("p").exists(), "a data dir was made");
    let out = chaincore()
        .args(["node", "--network", "regtest", "--data-dir", &path("i")])
        .args([
            "--p2p-port",
            "0",
            "--api-port",
            "0",
            "--import",
            &path("blocks.dat"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("--import") && error.contains("blocks.dat"),
        "{error}"
    );
    said_once(error.lines().last().unwrap_or_default());

    // Secrets given in the environment stay out of --help.
    for args in [&["node", "--help"][..], &["mirror", "verify", "--help"]] {
        let out = chaincore()
            .args(args)
            .env("CHAINCORE_API_ADMIN_TOKEN", "token-s3cret")
            .env(
                "CHAINCORE_POSTGRES_URL",
                "postgres://u:pw-s3cret@127.0.0.1/db",
            )
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("CHAINCORE_POSTGRES_URL"), "{help}");
        assert!(!help.contains("s3cret"), "{help}");
    }

    // A second devnet on a directory a devnet runs in.
    let devnet = Devnet::start(1, &dir.path().join("net"));
    let error = run_err(&["devnet", "--nodes", "1", "--data-dir", &path("net")]);
    assert!(error.contains("a devnet already runs in"), "{error}");
    assert!(devnet.stop());
}

/// What a lying node answers (status, body) to a request (method, path,
/// body, the real node), or `None` to forward it.
type Lie = fn(&str, &str, &str, SocketAddr) -> Option<(u16, String)>;

/// A node in front of `real` that answers what `lie` answers (given the
/// method, path, body and `real`) and forwards every other request. One
/// request per connection.
fn lying_node(real: SocketAddr, lie: Lie) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut parts = request_line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let body = String::from_utf8(body).unwrap();
                let (status, answer) = lie(&method, &path, &body, real)
                    .unwrap_or_else(|| http(real, &method, &path, &body));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    addr
}

/// A regtest node that mined 15 blocks to a new wallet (5 mature rewards):
/// the wallet file, its address and the node.
fn funded_wallet(dir: &Path) -> (String, String, chaincore::testkit::process::Node) {
    let wallet = dir.join("w.json").to_str().unwrap().to_string();
    let address = run_ok(&["wallet", "new", "--network", "regtest", "--wallet", &wallet])
        .lines()
        .last()
        .unwrap()
        .to_string();
    let mut node = crate::common::NodeProcess::start(
        &dir.join("n"),
        &[
            "--connect-only",
            "--mine-to",
            &address,
            "--mine-blocks",
            "15",
        ],
    );
    node.wait_for_height(15, Duration::from_secs(60));
    (wallet, address, node)
}

/// A node that asks an absurd fee rate (4 000 000 units/byte: about 9 CC
/// of fee on a 1 CC payment) is refused by the wallet's fee limit and
/// nothing is sent. A node that answers another txid than the wallet
/// computed is refused too. `--fee` (which unit?) and a decimal
/// `--fee-rate` are refused as ambiguous.
#[test]
fn wallet_refuses_a_lying_nodes_fee_and_txid() {
    let dir = tempfile::tempdir().unwrap();
    let (wallet, _, mut node) = funded_wallet(dir.path());
    let api = node.api_addr();
    let to = chaincore::testkit::key(9)
        .address(Network::Regtest)
        .to_string();
    let send = |node_url: &str, extra: &[&str]| {
        let mut args = vec![
            "wallet", "send", "--wallet", &wallet, "--node", node_url, "--to", &to, "--amount", "1",
        ];
        args.extend_from_slice(extra);
        chaincore().args(&args).output().unwrap()
    };
    let greedy = lying_node(api, |method, path, _, _| {
        (method == "GET" && path == "/fee-estimates").then(|| {
            let rates: serde_json::Map<String, Value> = ["1", "2", "3", "6", "12", "25", "144"]
                .iter()
                .map(|t| (t.to_string(), serde_json::json!(4_000_000.0)))
                .collect();
            (200, Value::Object(rates).to_string())
        })
    });
    let greedy = format!("http://{greedy}");
    let out = send(&greedy, &[]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && error.contains("over the wallet's limit"),
        "{error}"
    );
    assert_eq!(get_json(api, "/mempool")["count"], 0, "nothing was sent");
    let out = send(&greedy, &["--max-fee", "10"]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && error.contains("over the wallet's limit"),
        "the relative limit holds too: {error}"
    );
    assert_eq!(get_json(api, "/mempool")["count"], 0, "nothing was sent");

    // A node that broadcasts but answers another txid.
    let forger = lying_node(api, |method, path, body, real| {
        (method == "POST" && path == "/tx").then(|| {
            let (status, _) = http(real, method, path, body);
            (status, "ab".repeat(32))
        })
    });
    let out = send(&format!("http://{forger}"), &["--fee-rate", "2"]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && error.contains(&format!("answered txid \"{}\"", "ab".repeat(32))),
        "{error}"
    );

    // Ambiguous units.
    let url = format!("http://{api}");
    let out = send(&url, &["--fee", "1000"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--fee-cc"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = send(&url, &["--fee-rate", "0.5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("whole base units per byte"));
    // An honest node: the printed txid is the wallet's own.
    let out = send(&url, &["--fee-rate", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let txid = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert_eq!(
        get_json(api, &format!("/tx/{txid}"))["txid"],
        Value::String(txid.clone())
    );
    node.stop();
}

/// More than 50 (the node's page) unconfirmed transactions of the wallet:
/// it reads them all, so each next payment spends change that is really
/// unspent (reading only 50, it picked change the unseen ones had spent,
/// and the node refused the payment as a double spend).
#[test]
fn wallet_with_more_than_50_pending_transactions_still_pays() {
    let dir = tempfile::tempdir().unwrap();
    let (wallet, address, mut node) = funded_wallet(dir.path());
    let api = node.api_addr();
    let url = format!("http://{api}");
    let to = chaincore::testkit::key(9)
        .address(Network::Regtest)
        .to_string();
    for n in 0..60 {
        let out = chaincore()
            .args([
                "wallet", "send", "--wallet", &wallet, "--node", &url, "--to", &to,
            ])
            .args(["--amount", "0.01", "--fee-rate", "2"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "payment {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(get_json(api, "/mempool")["count"], 60);
    // Newest first, a page of 50, then the rest.
    let first = get_json(api, &format!("/address/{address}/txs/mempool"));
    let first = first.as_array().unwrap();
    assert_eq!(first.len(), 50);
    let seen: Vec<u64> = first
        .iter()
        .map(|t| t["first_seen"].as_u64().unwrap())
        .collect();
    assert!(
        seen.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {seen:?}"
    );
    let last = &first[49];
    let rest = get_json(
        api,
        &format!(
            "/address/{address}/txs/mempool?cursor={}:{}",
            last["first_seen"],
            last["txid"].as_str().unwrap()
        ),
    );
    assert_eq!(rest.as_array().unwrap().len(), 10);
    let history: Value = serde_json::from_str(&run_ok(&[
        "wallet", "history", "--json", "--wallet", &wallet, "--node", &url, "--limit", "100",
    ]))
    .unwrap();
    let pending = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["height"].is_null())
        .count();
    assert_eq!(pending, 60);
    node.stop();
}

/// `chaincore mine` with about 900 KB of transactions in the mempool: the
/// block it finds (1.8 MB of hex) is accepted (before, `/mining/submit`
/// refused any body over 201 KB, and the miner lost every such block).
#[test]
fn mine_submits_a_900_kb_block() {
    use chaincore::consensus::amount::Amount;
    use chaincore::consensus::transaction::TxOut;
    use chaincore::encoding::Encode;
    use chaincore::testkit::{key, signed_spend};
    let dir = tempfile::tempdir().unwrap();
    let base = crate::common::prefix(20);
    let file = crate::common::block_file(dir.path(), "chain.dat", &base.blocks[1..]);
    let mut node = crate::common::NodeProcess::start(
        &dir.path().join("n"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    node.wait_for("import done", Duration::from_secs(60));
    let api = node.api_addr();
    let owner = key(1);
    // Nine transactions just under the standard size, each spending one
    // mature reward into many small outputs.
    let outputs = 3_500;
    let mut total = 0;
    for (outpoint, utxo) in base.spendable(owner.pubkey_hash()).into_iter().take(9) {
        let value = 1_000u64;
        let fee = 200_000u64;
        let mut outs = vec![
            TxOut {
                amount: Amount::from_units(value),
                owner: key(8).pubkey_hash()
            };
            outputs
        ];
        outs.push(TxOut {
            amount: Amount::from_units(utxo.output.amount.units() - value * outputs as u64 - fee),
            owner: owner.pubkey_hash(),
        });
        let tx = signed_spend(&[(outpoint, utxo.output, &owner)], outs);
        total += tx.encoded_len();
        let (status, body) = http(api, "POST", "/tx", &hex::encode(tx.to_bytes()));
        assert_eq!(status, 200, "{body}");
    }
    assert!(total > 880_000, "{total} bytes of transactions");
    let miner = key(2).address(Network::Regtest).to_string();
    // The miner keeps mining until a block is accepted: a refused block
    // would keep it running, so it gets a deadline.
    let mut mine = chaincore()
        .args([
            "mine",
            "--node",
            &format!("http://{api}"),
            "--address",
            &miner,
        ])
        .args(["--blocks", "1", "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = mine.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            mine.kill().unwrap();
            let mut log = String::new();
            std::io::Read::read_to_string(&mut mine.stderr.take().unwrap(), &mut log).unwrap();
            panic!("chaincore mine found no accepted block in 120 s:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    assert_eq!(height(api), 21);
    let tip = http(api, "GET", "/blocks/tip/hash", "").1;
    let block = get_json(api, &format!("/block/{tip}"));
    assert_eq!(block["tx_count"], 10);
    assert!(block["size"].as_u64().unwrap() > 880_000, "{block}");
    node.stop();
}
