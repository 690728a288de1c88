//! REST throughput: `GET /address/{address}` on a node holding at least
//! 1 000 000 UTXOs over 100 000 addresses, loaded by wrk from another
//! process (random addresses, keep-alive connections).
//!
//! `cargo bench --profile dev --bench api [-- quick]`; needs `wrk` (Debian
//! package `wrk`).

use std::process::Command;
use std::time::{Duration, Instant};

use chaincore::consensus::address::Address;
use chaincore::consensus::params::Network;
use chaincore::testkit::process::{http, Node};
use chaincore::testkit::{fan_out_chain, payee, regtest_chain};

/// wrk's load: threads, connections, seconds.
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: [u32; 2] = [16, 64];
const WRK_SECONDS: &str = "15";

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (utxos, addresses) = if quick {
        (100_000usize, 10_000usize)
    } else {
        (1_000_000, 100_000)
    };
    assert!(
        Command::new("wrk").arg("--version").output().is_ok(),
        "wrk is not installed: apt-get install wrk"
    );

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let start = Instant::now();
    let test = fan_out_chain(utxos, |i| payee((i % addresses) as u64));
    {
        let mut chain = regtest_chain(&data);
        for block in &test.blocks[1..] {
            chain
                .process_block(std::sync::Arc::new(block.clone()), None)
                .unwrap();
        }
        println!(
            "chain: {} UTXOs over {addresses} addresses, height {}, built in {:.1} s",
            chain.tip().utxo_count,
            chain.tip().height,
            start.elapsed().as_secs_f64()
        );
    }

    let mut node = Node::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_chaincore")),
        &data,
        &["--connect-only"],
    );
    let api = node.api_addr();
    node.drain();
    // Sanity: a payee's balance as the node reports it.
    let probe = Address::new(Network::Regtest, payee(7)).to_string();
    let (status, body) = http(api, "GET", &format!("/address/{probe}"), "");
    assert_eq!(status, 200, "{body}");

    // wrk picks a random address per request from this list.
    let list: Vec<String> = (0..addresses as u64)
        .map(|n| format!("\"{}\"", Address::new(Network::Regtest, payee(n))))
        .collect();
    let script = dir.path().join("addresses.lua");
    std::fs::write(
        &script,
        format!(
            "local a = {{{}}}\nmath.randomseed(7)\nrequest = function()\n  \
             return wrk.format(\"GET\", \"/address/\" .. a[math.random(#a)])\nend\n",
            list.join(",")
        ),
    )
    .unwrap();

    // The same addresses' histories: esplora's `/address/{a}/txs`, each
    // confirmed transaction read from its block with what it spent.
    let history = dir.path().join("history.lua");
    std::fs::write(
        &history,
        format!(
            "local a = {{{}}}\nmath.randomseed(7)\nrequest = function()\n  \
             return wrk.format(\"GET\", \"/address/\" .. a[math.random(#a)] .. \"/txs\")\nend\n",
            list.join(",")
        ),
    )
    .unwrap();
    let (status, body) = http(api, "GET", &format!("/address/{probe}/txs"), "");
    assert_eq!(status, 200, "{body}");
    let txs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    println!(
        "history of one address: {} transactions in {} blocks",
        txs.len(),
        txs.iter()
            .map(|t| t["status"]["block_hash"].to_string())
            .collect::<std::collections::HashSet<_>>()
            .len()
    );

    // The reference, in the same run: the cheapest route (two point reads,
    // no JSON), so the figure shows what the HTTP stack and wrk themselves
    // cost on this machine. Once as a fixed URL, and once built per request
    // by a script as the address requests are, which costs wrk itself more
    // of the two cores it shares with the node.
    let tip = dir.path().join("tip.lua");
    std::fs::write(
        &tip,
        "request = function()\n  return wrk.format(\"GET\", \"/blocks/tip/height\")\nend\n",
    )
    .unwrap();
    let run =
        |connections, script, label| println!("{}", wrk(&node, api, connections, script, label));
    for connections in WRK_CONNECTIONS {
        run(connections, None, "GET /blocks/tip/height (reference)");
        if connections == WRK_CONNECTIONS[0] {
            run(
                connections,
                Some(&tip),
                "GET /blocks/tip/height (reference, scripted)",
            );
        }
        run(connections, Some(&script), "GET /address/{random}");
    }
    run(
        WRK_CONNECTIONS[0],
        Some(&history),
        "GET /address/{random}/txs (esplora history)",
    );
    std::thread::sleep(Duration::from_millis(100));
}

/// Runs wrk against the node's API (at `/blocks/tip/height`, or with
/// `script`'s requests) and returns a line with req/s, p50, p99 and the
/// node's CPU time per request (all its threads, user and system).
fn wrk(
    node: &Node,
    api: std::net::SocketAddr,
    connections: u32,
    script: Option<&std::path::Path>,
    label: &str,
) -> String {
    let mut command = Command::new("wrk");
    command
        .args(["-t", WRK_THREADS, "-c", &connections.to_string(), "-d"])
        .arg(format!("{WRK_SECONDS}s"))
        .arg("--latency");
    let url = match script {
        Some(script) => {
            command.arg("-s").arg(script);
            format!("http://{api}")
        }
        None => format!("http://{api}/blocks/tip/height"),
    };
    let cpu_before = node.cpu();
    let out = command.arg(url).output().expect("run wrk");
    let cpu = node.cpu().saturating_sub(cpu_before);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
            .unwrap_or_else(|| "?".into())
    };
    // "  123456 requests in 15.00s, ..."
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    let per_request = match requests {
        Some(n) if n > 0 => format!("{:.1} µs", cpu.as_secs_f64() * 1e6 / n as f64),
        _ => "?".into(),
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "{label} ({connections} connections, wrk {WRK_THREADS} threads, {WRK_SECONDS} s): \
         {} req/s, p50 {}, p99 {}, node CPU {per_request} per request ({:.1} s in all){}",
        field("Requests/sec:"),
        field("50%"),
        field("99%"),
        cpu.as_secs_f64(),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" [{errors}]")
        }
    )
}
