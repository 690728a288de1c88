//! Handshake and ping: the version exchange, self-connection detection, what follows a completed handshake.

use super::*;

impl Protocol {
    /// Our `version` for peer `id`; the nonce is remembered for an outbound
    /// peer (as in Core: a nonce we sent to an inbound peer coming back
    /// proves nothing but that the peer passed it on).
    pub(super) fn version_message(&mut self, id: PeerId) -> Message {
        let nonce = rand::random::<u64>();
        if let Some(peer) = self.peers.get_mut(&id).filter(|p| !p.inbound) {
            if let Some(old) = peer.version_nonce.replace(nonce) {
                self.our_nonces.remove(&old);
            }
            self.our_nonces.insert(nonce, id);
        }
        let start_height = self.reader.published().tip.1;
        Message::Version(Version {
            protocol_version: PROTOCOL_VERSION,
            services: SERVICE_NETWORK,
            timestamp: u64::from(unix_now()),
            start_height,
            nonce,
            listen_port: self.listen_port,
            user_agent: USER_AGENT.to_string(),
        })
    }

    pub(super) fn on_version(
        &mut self,
        id: PeerId,
        version: Version,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let peer = self.peers.get(&id).expect("checked by caller");
        if peer.version.is_some() {
            self.misbehaving(id, "duplicate_version", actions);
            return;
        }
        if let Some(&ours) = self.our_nonces.get(&version.nonce) {
            // Our own `version` came back: the peer we sent it to is us.
            tracing::info!(peer = id, "connected to ourselves: disconnecting");
            let dialed = self.peers.get(&ours).and_then(|p| p.dialed);
            if let Some(dialed) = dialed.or(peer.dialed) {
                self.remember_self_address(dialed, now);
            }
            actions.push(Action::Disconnect(id, "self_connection"));
            if ours != id {
                actions.push(Action::Disconnect(ours, "self_connection"));
            }
            return;
        }
        if version.protocol_version < MIN_PROTOCOL_VERSION {
            actions.push(Action::Disconnect(id, "obsolete_version"));
            return;
        }
        let inbound = peer.inbound;
        let addr = peer.addr;
        let listen_addr = (inbound && version.listen_port != 0)
            .then(|| SocketAddr::new(addr.ip(), version.listen_port));
        if let Some(listen) = listen_addr {
            self.addrbook
                .add_new(listen, addr.ip(), unix_now(), unix_now());
        }
        let peer = self.peers.get_mut(&id).expect("checked");
        peer.version = Some(version);
        peer.listen_addr = listen_addr;
        if inbound && !peer.sent_version {
            let our = self.version_message(id);
            self.peers.get_mut(&id).expect("checked").sent_version = true;
            actions.push(Action::Send(id, our));
        }
        actions.push(Action::Send(id, Message::Verack));
        if self.peers[&id].handshaken() {
            self.on_handshake(id, now, actions);
        }
    }

    pub(super) fn on_handshake(&mut self, id: PeerId, now: Instant, actions: &mut Vec<Action>) {
        let peer = &self.peers[&id];
        tracing::info!(
            peer = id,
            addr = %peer.addr,
            inbound = peer.inbound,
            agent = peer.version.as_ref().map_or("", |v| v.user_agent.as_str()),
            height = peer.version.as_ref().map_or(0, |v| v.start_height),
            "peer connected"
        );
        if let Some(dialed) = peer.dialed {
            let feeler = peer.feeler;
            self.manual_failures.remove(&dialed);
            if self.addrbook.mark_good(dialed, unix_now()) {
                self.addrbook_unsaved_tried = true;
                self.save_new_tried_address(now);
            }
            if feeler {
                // It answered: that was all a feeler wanted to know.
                actions.push(Action::Disconnect(id, "feeler"));
                return;
            }
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.addr_limit.expect_answer();
            }
            actions.push(Action::Send(id, Message::GetAddr));
        }
        actions.push(Action::Send(id, Message::SendHeaders));
        self.send_getheaders(id, now, actions);
    }
}
