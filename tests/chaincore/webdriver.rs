//! A small W3C WebDriver client over std's TcpStream: enough to drive
//! Debian's headless Chromium through its chromedriver from a test (open a
//! session, navigate, run a script, type, click, take a screenshot).
//!
//! chromedriver runs in a process group of its own, with the Chromium it
//! starts: dropping the `Browser` ends the session and then kills the
//! whole group, so a failing test leaves no browser behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Debian's `chromium` package.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's `chromium-driver` package.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page may take to show what a test waits for.
pub const WAIT: Duration = Duration::from_secs(15);

/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium, driven through chromedriver.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// A port nobody listens on now (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// One HTTP/1.1 exchange with chromedriver: status and body; an error
/// rather than a panic (Drop uses it on a driver that may be gone).
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps connections open whatever the request says: read
    // the head, then exactly the body it announces.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let complete = |raw: &[u8]| -> bool {
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let body = &raw[end + 4..];
        if let Some(length) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            body.len() >= length
        } else if head.contains("transfer-encoding: chunked") {
            body.ends_with(b"0\r\n\r\n")
        } else {
            false
        }
    };
    while !complete(&raw) {
        match stream.read(&mut chunk)? {
            0 => break,
            n => raw.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        match usize::from_str_radix(size.trim(), 16) {
            Ok(size) if size > 0 && rest.len() >= size => {
                out.push_str(&rest[..size]);
                body = rest[size..].trim_start_matches("\r\n");
            }
            _ => break,
        }
    }
    out
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// with a fresh profile and a `width` x `height` window. Fails (never
    /// skips) if either program is missing.
    pub fn start(width: u32, height: u32) -> Browser {
        for (program, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: install Debian's `{package}` package \
                 (scripts/test.sh installs it) to run the explorer's browser test"
            );
        }
        let profile = tempfile::tempdir().expect("browser profile dir");
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = exchange(addr, "GET", "/status", None, Duration::from_secs(2))
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!(
                    "chromedriver exited with {status}: {}",
                    browser.driver_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {port} within {WAIT:?}: {}",
                browser.driver_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let user_data = browser._profile.path().join("chromium");
        let args = vec![
            // Headless, as root in a sandbox, on a machine with no network
            // beyond loopback: nothing that phones home.
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            "--mute-audio".into(),
            "--lang=en-US".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", user_data.display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "script": 10_000, "pageLoad": 20_000, "implicit": 0 },
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }
            }
        });
        let answer = browser.call("POST", "/session", Some(capabilities));
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_string();
        browser
    }

    fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self._profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A WebDriver command; returns its `value`, panics with the driver's
    /// error otherwise.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = exchange(
            self.addr,
            method,
            path,
            body.as_ref(),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}\n{}", self.driver_log()));
        let answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {text}"));
        assert!(
            status == 200,
            "WebDriver {method} {path} answered {status}: {}",
            answer["value"]
        );
        answer["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Loads `url` and waits for the document to load.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Polls `script` until it returns something other than null, false or
    /// "", and returns that; panics after `WAIT` with `what` and the page's
    /// text.
    pub fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.execute(script, args.clone());
            if !matches!(&value, Value::Null | Value::Bool(false)) && value.as_str() != Some("") {
                return value;
            }
            if Instant::now() > deadline {
                let page = self.execute(
                    "return location.href + '\\n' + document.body.innerText.slice(0, 3000)",
                    json!([]),
                );
                panic!(
                    "waited {WAIT:?} for {what}; the page shows:\n{}",
                    page.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The element `css` selects (panics if none).
    fn element(&self, css: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// Empties the field `css` selects and types `text` into it, as
    /// keystrokes ("\u{E007}" is Enter).
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.session_call(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        );
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks the element `css` selects.
    pub fn click(&self, css: &str) {
        let element = self.element(css);
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Shows the page as a phone would (`width` x `height` CSS pixels, a
    /// mobile viewport), or as the window again with `None`.
    pub fn emulate_phone(&self, size: Option<(u32, u32)>) {
        let (cmd, params) = match size {
            Some((width, height)) => (
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 2, "mobile": true }),
            ),
            None => ("Emulation.clearDeviceMetricsOverride", json!({})),
        };
        self.session_call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        );
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let encoded = self.session_call("GET", "/screenshot", None);
        let png = base64_decode(encoded.as_str().expect("screenshot is base64"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    /// Ends the session (Chromium quits), then kills chromedriver's process
    /// group, whatever is left of it.
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = exchange(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
                Duration::from_secs(10),
            );
        }
        let group = self.driver.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group
        // chromedriver leads (it was started with process_group(0)).
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// Standard base64 (RFC 4648, with padding), as WebDriver's screenshots.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("{c:?} is not base64"),
        }
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// Where a test's screenshots go: `$CHAINCORE_TEST_ARTIFACTS/NAME`, or
/// `test-artifacts/NAME` in the target directory (emptied of old PNGs).
pub fn artifacts_dir(name: &str) -> PathBuf {
    let root = match std::env::var_os("CHAINCORE_TEST_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    // .../target/debug/chaincore
                    Path::new(env!("CARGO_BIN_EXE_chaincore"))
                        .ancestors()
                        .nth(2)
                        .expect("the binary is in a target directory")
                        .to_path_buf()
                });
            target.join("test-artifacts")
        }
    };
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    dir
}

#[test]
fn base64_decodes_rfc_4648_vectors() {
    for (text, bytes) in [
        ("", &b""[..]),
        ("Zg==", b"f"),
        ("Zm8=", b"fo"),
        ("Zm9v", b"foo"),
        ("Zm9vYg==", b"foob"),
        ("Zm9vYmE=", b"fooba"),
        ("Zm9vYmFy", b"foobar"),
    ] {
        assert_eq!(base64_decode(text), bytes, "{text}");
    }
}
