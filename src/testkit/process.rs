//! Running `chaincore node` processes from tests and benchmarks: start one
//! on ephemeral ports, follow its log, wait for heights, stop or kill it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `chaincore node` whose log lines arrive on a channel.
pub struct Node {
    pub binary: PathBuf,
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Node {
    pub fn start(binary: &Path, data_dir: &Path, extra: &[&str]) -> Node {
        let mut args = vec!["node", "--p2p-bind", "127.0.0.1"];
        // Regtest unless the caller picks the network.
        if !extra.contains(&"--network") {
            args.extend(["--network", "regtest"]);
        }
        // Ephemeral ports unless the caller picks its own.
        for flag in ["--p2p-port", "--api-port"] {
            if !extra.contains(&flag) {
                args.extend([flag, "0"]);
            }
        }
        let mut child = Command::new(binary)
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("CHAINCORE_LOG", "info,chaincore::p2p::protocol=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chaincore node");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Node {
            binary: binary.to_path_buf(),
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Collects the lines logged so far.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// Waits until a logged line contains `needle`, or panics after `timeout`
    /// with the log so far.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) if Instant::now() < deadline => self.fail_if_exited(),
                Err(_) => panic!(
                    "no log line with {needle:?} within {timeout:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("kill node");
        self.child.wait().expect("reap node");
        self.drain();
        std::mem::take(&mut self.log)
    }
}

/// A process's resident memory, from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss: u64,
    /// Highest resident since start or the last `reset_peak_memory`
    /// (`VmHWM`).
    pub peak: u64,
}

/// The resident memory of process `pid`, or `None` if it is gone.
pub fn process_memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some(Memory {
        rss: kib("VmRSS:")?,
        peak: kib("VmHWM:")?,
    })
}

/// CPU time process `pid` has used so far, user and system, over all its
/// threads (`/proc/<pid>/stat`, in clock ticks of 10 ms on Linux), or
/// `None` if it is gone.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the C library.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|&t| t > 0)?;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

impl Node {
    /// The node's resident memory now and at its peak.
    pub fn memory(&self) -> Memory {
        process_memory(self.child.id()).expect("the node's /proc status is readable")
    }

    /// Restarts the node's peak (`VmHWM`) from its current resident size
    /// (Linux: writing 5 to `/proc/<pid>/clear_refs`), so that a peak read
    /// later belongs to what happened in between.
    pub fn reset_peak_memory(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("reset the node's peak resident memory");
    }

    /// The node's CPU time so far (user and system, all threads).
    pub fn cpu(&self) -> Duration {
        process_cpu(self.child.id()).expect("the node's /proc stat is readable")
    }
}

/// The value of `field=` in a log line.
pub fn log_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    line[start..].split_whitespace().next()
}

impl Node {
    /// Starts a node and waits until its P2P listener is bound; returns it
    /// with the listening address.
    pub fn start_p2p(
        binary: &Path,
        data_dir: &Path,
        extra: &[&str],
    ) -> (Node, std::net::SocketAddr) {
        let mut node = Node::start(binary, data_dir, extra);
        let line = node.wait_for("p2p listening", Duration::from_secs(30));
        let addr = log_field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (node, addr)
    }

    /// Waits until the node logs a connected block at `height` or above and
    /// returns the hash it logged for the highest such block so far.
    pub fn wait_for_height(&mut self, height: u32, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(hash) = self
                .log
                .iter()
                .rev()
                .filter(|l| l.contains("block connected"))
                .find(|l| {
                    log_field(l, "height").and_then(|h| h.parse::<u32>().ok()) >= Some(height)
                })
                .and_then(|l| log_field(l, "hash"))
            {
                return hash.to_string();
            }
            self.fail_if_exited();
            if Instant::now() > deadline {
                panic!(
                    "height {height} not reached within {timeout:?}; last lines:\n{}",
                    self.log
                        .iter()
                        .rev()
                        .take(30)
                        .rev()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The REST API's address (waits for the node to log it).
    pub fn api_addr(&mut self) -> std::net::SocketAddr {
        let line = self.wait_for("api listening", Duration::from_secs(30));
        log_field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Panics with the log if the node has exited.
    pub fn fail_if_exited(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            self.drain();
            panic!("node exited early with {status}:\n{}", self.log.join("\n"));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("reap node");
        self.drain();
        assert!(
            status.success(),
            "node exited with {status}:\n{}",
            self.log.join("\n")
        );
        std::mem::take(&mut self.log)
    }
}

impl Drop for Node {
    /// A node left running by a failing test is killed, never leaked.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 exchange for tests: returns the status code and body.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with_headers(addr, method, path, body);
    (status, body)
}

/// As `http`, also returning the response headers (lower-cased names).
pub fn http_with_headers(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let content_type = if body.trim_start().starts_with(['{', '[']) {
        "application/json"
    } else {
        "text/plain"
    };
    http_request(
        addr,
        method,
        path,
        &format!("Content-Type: {content_type}\r\n"),
        body,
    )
}

/// One request with `extra` header lines (each ending in CRLF): status,
/// headers (lower-cased names) and body.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the REST API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    // A server may answer (413) and close before a large body is sent:
    // a failed write is fine as long as an answer can be read.
    .ok();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the response from {addr}: {e}"),
        }
    }
    let response = String::from_utf8_lossy(&raw).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The time of day, in seconds, of the RFC 3339 timestamp a log line starts
/// with (all nodes of a test share the machine's clock).
pub fn log_time(line: &str) -> Option<f64> {
    let time = line.split('T').nth(1)?.split('Z').next()?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}
