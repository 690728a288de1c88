//! `chaincore params` and `chaincore genesis`: what a network is made of.

use anyhow::Result;
use serde_json::json;

use crate::consensus::address::{Address, PubKeyHash};
use crate::consensus::hash::hash160;
use crate::consensus::params::{Network, GENESIS_PHRASE};
use crate::encoding::Encode;

pub fn print_params(network: Network) -> Result<()> {
    let p = network.params();
    let value = json!({
        "network": network,
        "magic": hex::encode(p.magic),
        "default_p2p_port": p.default_p2p_port,
        "default_api_port": p.default_api_port,
        "address_version": p.address_version,
        "pow_limit_bits": format!("{:08x}", p.pow_limit_bits),
        "genesis_hash": p.genesis_hash(),
        "initial_subsidy": p.initial_subsidy.units(),
        "halving_interval": p.halving_interval,
        "coinbase_maturity": p.coinbase_maturity,
        "target_spacing_secs": p.target_spacing_secs,
        "retarget_interval": p.retarget_interval,
        "max_retarget_factor": p.max_retarget_factor,
        "no_retargeting": p.no_retargeting,
        "max_future_block_time_secs": p.max_future_block_time_secs,
        "max_block_size": crate::consensus::limits::MAX_BLOCK_SIZE,
    });
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

pub fn print_genesis(network: Network) -> Result<()> {
    let p = network.params();
    let block = p.genesis_block();
    let coinbase = &block.transactions[0];
    let value = json!({
        "network": network,
        "hash": block.hash(),
        "height": 0,
        "version": block.header.version,
        "prev_hash": block.header.prev_hash,
        "merkle_root": block.header.merkle_root,
        "time": block.header.time,
        "bits": format!("{:08x}", block.header.bits),
        "nonce": block.header.nonce,
        "coinbase_txid": coinbase.txid(),
        "coinbase_address": Address::new(network, PubKeyHash(hash160(GENESIS_PHRASE))).to_string(),
        "reward": coinbase.outputs[0].amount.units(),
        "hex": hex::encode(block.to_bytes()),
    });
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
