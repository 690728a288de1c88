//! The `chaincore` binary's informational commands.

use std::process::Command;

use chaincore::consensus::params::Network;
use serde_json::Value;

fn chaincore(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chaincore"))
        .args(args)
        .output()
        .expect("run chaincore")
}

#[test]
fn genesis_command_prints_each_networks_genesis() {
    for network in Network::ALL {
        let out = chaincore(&["genesis", "--network", network.name()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            value["hash"].as_str().unwrap(),
            network.params().genesis_hash().to_string()
        );
        assert_eq!(value["network"].as_str().unwrap(), network.name());
    }
}

#[test]
fn params_command_prints_json_and_rejects_unknown_networks() {
    let out = chaincore(&["params", "--network", "regtest"]);
    assert!(out.status.success());
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["coinbase_maturity"], 10);
    assert_eq!(value["magic"], hex::encode(Network::Regtest.params().magic));

    let out = chaincore(&["params", "--network", "moon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown network"));
}
