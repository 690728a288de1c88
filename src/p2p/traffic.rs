//! Messages and bytes sent and received, by command, for `/metrics`.
//! Process-wide, like a Prometheus client's default registry: every
//! connection task adds to it without any plumbing.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::wire::constants::FRAME_HEADER_LEN;

/// Counts of one command in one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub messages: u64,
    /// Frame bytes: the 24-byte header plus the payload.
    pub bytes: u64,
}

/// Both directions of one command.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommandTraffic {
    pub received: Counts,
    pub sent: Counts,
}

/// Traffic by command. Commands we do not know are counted under
/// [`UNKNOWN_COMMAND`], so a peer cannot grow the table.
pub struct Traffic(Mutex<BTreeMap<&'static str, CommandTraffic>>);

/// The label of frames with a command this node does not know.
pub const UNKNOWN_COMMAND: &str = "unknown";

/// The node's traffic.
pub static TRAFFIC: Traffic = Traffic(Mutex::new(BTreeMap::new()));

impl Traffic {
    pub fn received(&self, command: &'static str, payload_len: usize) {
        let mut table = self.0.lock().expect("traffic lock");
        add(&mut table.entry(command).or_default().received, payload_len);
    }

    pub fn sent(&self, command: &'static str, payload_len: usize) {
        let mut table = self.0.lock().expect("traffic lock");
        add(&mut table.entry(command).or_default().sent, payload_len);
    }

    /// A copy of the table, by command name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, CommandTraffic> {
        self.0.lock().expect("traffic lock").clone()
    }
}

fn add(counts: &mut Counts, payload_len: usize) {
    counts.messages += 1;
    counts.bytes += (FRAME_HEADER_LEN + payload_len) as u64;
}
