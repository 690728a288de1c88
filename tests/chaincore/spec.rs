//! The protocol spec's worked examples and parameters are the code's: the
//! hex in `protocol-spec/README.md` is compared with the test vectors and the
//! network parameters, so the text cannot drift from the bytes.

use chaincore::consensus::params::Network;
use serde_json::Value;

const SPEC: &str = include_str!("../../protocol-spec/README.md");
const VECTORS: &str = include_str!("../data/vectors.json");

/// The hex cells of the table rows under the heading `heading`.
fn table_hex(heading: &str) -> String {
    let section = SPEC.split(heading).nth(1).expect("heading in the spec");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.rsplit('`').nth(1))
        .filter(|cell| cell.chars().all(|c| c.is_ascii_hexdigit()))
        .collect()
}

fn bullet(name: &str) -> &str {
    SPEC.lines()
        .find(|l| l.starts_with(&format!("- {name}")))
        .and_then(|l| l.split('`').nth(1))
        .unwrap_or_else(|| panic!("no bullet {name:?} in the spec"))
}

#[test]
fn spec_hex_matches_the_vectors() {
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    assert_eq!(
        table_hex("### A transaction"),
        vectors["transaction"]["hex"]
    );
    assert_eq!(bullet("txid:"), vectors["transaction"]["txid"]);
    assert_eq!(
        bullet("commitment preimage (hex):"),
        vectors["transaction"]["sighash_commitment_preimage"]
    );
    assert_eq!(
        bullet("commitment (raw):"),
        vectors["transaction"]["sighash_commitment"]
    );
    assert_eq!(
        bullet("sighash of input 0 (raw):"),
        vectors["transaction"]["input0_sighash"]
    );
    assert_eq!(
        table_hex("### A block header"),
        vectors["block"]["header_hex"]
    );
    assert_eq!(bullet("block hash:"), vectors["block"]["hash"]);
}

#[test]
fn spec_network_table_matches_the_parameters() {
    let row = |name: &str| {
        SPEC.lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row {name:?}"))
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_string())
            .skip(2)
            .take(3)
            .collect::<Vec<_>>()
    };
    for (i, network) in Network::ALL.into_iter().enumerate() {
        let p = network.params();
        assert_eq!(row("genesis hash")[i], p.genesis_hash().to_string());
        assert_eq!(row("genesis nonce")[i], p.genesis_nonce.to_string());
        assert_eq!(row("genesis time")[i], p.genesis_time.to_string());
        assert_eq!(row("P2P port")[i], p.default_p2p_port.to_string());
        assert_eq!(row("REST port")[i], p.default_api_port.to_string());
        assert_eq!(row("coinbase maturity")[i], p.coinbase_maturity.to_string());
        assert_eq!(row("magic")[i].replace(' ', ""), hex::encode(p.magic));
        assert_eq!(
            row("pow limit bits")[i],
            format!("{:08x}", p.pow_limit_bits)
        );
        assert_eq!(
            row("address version")[i],
            format!("{:#04x}", p.address_version)
        );
    }
}
