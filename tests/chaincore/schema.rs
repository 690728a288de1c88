//! The REST API against its own `/openapi.json`, with Schemathesis (from
//! PyPI; `scripts/test.sh` installs it and sets CHAINCORE_SCHEMATHESIS).

use std::process::Command;
use std::time::Duration;

use chaincore::testkit::key;

use crate::common::{block_file, chain_with_spends, prefix, NodeProcess};

/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "30";

fn schemathesis() -> String {
    let st = std::env::var("CHAINCORE_SCHEMATHESIS").unwrap_or_else(|_| "st".into());
    let found = Command::new(&st)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "schemathesis ({st}) is not installed: run scripts/test.sh, which installs it, \
         or set CHAINCORE_SCHEMATHESIS to its `st` command"
    );
    st
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let st = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    // A chain with payments, so blocks, transactions and addresses exist.
    let base = prefix(12);
    let (_, spends) = chain_with_spends(&base, 3, 4, &key(2), &key(3));
    let mut blocks = base.blocks[1..].to_vec();
    blocks.extend(spends);
    let file = block_file(dir.path(), "chain.dat", &blocks);
    let mut node = NodeProcess::start(
        &dir.path().join("n"),
        &["--connect-only", "--import", file.to_str().unwrap()],
    );
    node.wait_for("import done", Duration::from_secs(60));
    let api = node.api_addr();
    let report = dir.path().join("report");
    let out = Command::new(&st)
        .current_dir(dir.path())
        .args(["run", &format!("http://{api}/openapi.json")])
        .args([
            // Every check but one: "a schema-valid request is accepted"
            // cannot hold where validity needs a checksum (addresses) or
            // a decodable body (transactions, blocks), which JSON Schema
            // cannot express.
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "20261122",
            // One worker: CPython 3.11 can fail with "AST constructor
            // recursion depth mismatch" when schemathesis's threads parse
            // source at once (an internal error, not a finding).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            // Adding peers makes the node dial what it is given: tests
            // never let it reach beyond 127.0.0.1.
            "--exclude-path",
            "/peers",
            "--exclude-path-regex",
            "^/peers/",
            // The event stream answers a body that does not end while the
            // node runs, which a request-response checker cannot read to
            // its end; tests/chaincore/events.rs tests it, errors included.
            "--exclude-path",
            "/events",
            "--report-dir",
        ])
        .arg(&report)
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // It really exercised the API.
    assert!(text.contains("passed"), "{text}");
    node.drain();
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the node kept running"
    );
}
