//! Misbehaviour: counting, disconnecting and discouraging peers that break the rules.

use super::*;

impl Protocol {
    pub(super) fn misbehaving(
        &mut self,
        id: PeerId,
        reason: &'static str,
        actions: &mut Vec<Action>,
    ) {
        let ip = self.peers.get(&id).map(|peer| {
            tracing::info!(peer = id, addr = %peer.addr, reason, "peer misbehaved: disconnecting");
            peer.addr.ip()
        });
        self.record_misbehaviour(ip, reason);
        actions.push(Action::Disconnect(id, reason));
    }

    /// Counts `reason` and discourages `ip`, if known. As Bitcoin Core:
    /// local peers are disconnected but never discouraged, or every local
    /// peer would be refused.
    pub(super) fn record_misbehaviour(&mut self, ip: Option<IpAddr>, reason: &'static str) {
        *self
            .counters
            .misbehaviour
            .entry(reason.to_string())
            .or_default() += 1;
        if let Some(ip) = ip.filter(|ip| !is_local(ip)) {
            self.discouraged
                .insert(ip, Instant::now() + DISCOURAGE_DURATION);
        }
    }

    /// A socket task reported a framing error or a malformed message.
    pub fn on_violation(&mut self, id: PeerId, reason: &'static str) -> Vec<Action> {
        let mut actions = Vec::new();
        self.misbehaving(id, reason, &mut actions);
        actions
    }

    pub fn on_unknown_command(&mut self, id: PeerId, command: &str) {
        self.counters.unknown_commands += 1;
        tracing::debug!(peer = id, command, "ignoring unknown command");
    }

    pub fn is_discouraged(&self, ip: &IpAddr, now: Instant) -> bool {
        self.discouraged.get(ip).is_some_and(|until| *until > now)
    }
}
