//! `chaincore monitor`: a live terminal view of several nodes, from their
//! `/status`, redrawn in place; it says whether the nodes agree on the tip.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde::Deserialize;

use crate::client::NodeClient;

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// A node's REST URL (repeatable).
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Print one snapshot (no screen control) and exit.
    #[arg(long)]
    once: bool,
}

/// The parts of `/status` the monitor shows.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    pub network: String,
    pub tip: Tip,
    pub best_header: Header,
    pub peers: u64,
    pub mempool: Pool,
    pub sync: Sync,
    pub mining: Mining,
    pub uptime_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tip {
    pub height: u32,
    pub hash: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub height: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pool {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sync {
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Mining {
    pub hashrate: u64,
}

pub fn run(args: MonitorArgs) -> Result<()> {
    let clients = args
        .nodes
        .iter()
        .map(|url| NodeClient::new(url))
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let live = !args.once && std::io::stdout().is_terminal();
    runtime.block_on(async {
        let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(100)));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let answers = futures_util::future::join_all(
                clients.iter().map(|c| c.get::<NodeStatus>("/status")),
            )
            .await;
            let rows: Vec<(String, Result<NodeStatus, String>)> = clients
                .iter()
                .zip(answers)
                .map(|(c, a)| (c.base_url().to_string(), a.map_err(|e| e.to_string())))
                .collect();
            let mut out = std::io::stdout().lock();
            if live {
                // Home the cursor and clear the screen, then redraw.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            write!(out, "{}", render(&rows))?;
            out.flush()?;
            if args.once {
                if rows.iter().all(|(_, r)| r.is_err()) {
                    bail!("no node answered");
                }
                return Ok(());
            }
        }
    })
}

/// The table for one refresh: a row per node, then whether they agree.
pub fn render(rows: &[(String, Result<NodeStatus, String>)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>8} {:<18} {:>5} {:>8} {:>10} {:>7} {:>11} {:>8}",
        "node", "height", "tip", "peers", "mempool", "pool KiB", "sync %", "hash rate", "uptime"
    );
    for (url, row) in rows {
        match row {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "{:<28} {:>8} {:<18} {:>5} {:>8} {:>10.1} {:>7.2} {:>11} {:>7}s",
                    url,
                    s.tip.height,
                    format!("{}…", s.tip.hash.chars().take(16).collect::<String>()),
                    s.peers,
                    s.mempool.count,
                    s.mempool.bytes as f64 / 1024.0,
                    s.sync.percent,
                    hashrate(s.mining.hashrate),
                    s.uptime_secs,
                );
                if s.best_header.height > s.tip.height {
                    let _ = writeln!(
                        out,
                        "{:<28} syncing: headers at {}, {} blocks to go",
                        "",
                        s.best_header.height,
                        s.best_header.height - s.tip.height
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "{url:<28} unreachable: {e}");
            }
        }
    }
    let up: Vec<&NodeStatus> = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let networks: std::collections::BTreeSet<&str> =
        up.iter().map(|s| s.network.as_str()).collect();
    let tips: std::collections::BTreeSet<&str> = up.iter().map(|s| s.tip.hash.as_str()).collect();
    let _ = match (up.len(), tips.len(), networks.len()) {
        (0, _, _) => writeln!(out, "no node answered"),
        (_, _, n) if n > 1 => writeln!(out, "nodes are on different networks: {networks:?}"),
        (n, 1, _) => writeln!(
            out,
            "{n} of {} nodes agree: height {} tip {}",
            rows.len(),
            up[0].tip.height,
            up[0].tip.hash
        ),
        (n, t, _) => writeln!(out, "{n} nodes answered with {t} different tips"),
    };
    out
}

fn hashrate(rate: u64) -> String {
    match rate {
        0 => "-".into(),
        r if r >= 1_000_000 => format!("{:.2} MH/s", r as f64 / 1e6),
        r => format!("{:.1} kH/s", r as f64 / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(height: u32, hash: &str) -> NodeStatus {
        NodeStatus {
            network: "regtest".into(),
            tip: Tip {
                height,
                hash: hash.into(),
            },
            best_header: Header { height },
            peers: 2,
            mempool: Pool {
                count: 3,
                bytes: 2048,
            },
            sync: Sync { percent: 100.0 },
            mining: Mining {
                hashrate: 5_200_000,
            },
            uptime_secs: 9,
        }
    }

    #[test]
    fn the_table_says_whether_nodes_agree() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let agree = render(&[
            ("http://n0".into(), Ok(status(5, &a))),
            ("http://n1".into(), Ok(status(5, &a))),
            ("http://n2".into(), Err("connection refused".into())),
        ]);
        assert!(agree.contains("2 of 3 nodes agree: height 5"), "{agree}");
        assert!(agree.contains("unreachable: connection refused"));
        assert!(agree.contains("5.20 MH/s"));
        let split = render(&[
            ("http://n0".into(), Ok(status(5, &a))),
            ("http://n1".into(), Ok(status(6, &b))),
        ]);
        assert!(
            split.contains("2 nodes answered with 2 different tips"),
            "{split}"
        );
    }
}
