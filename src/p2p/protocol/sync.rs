//! Header and block sync: headers-first download with the work threshold and pre-sync, block requests per peer, stalls, and announcing our tip.

use super::*;
use crate::consensus::validation::check_header_hashed;

/// Work handed to the chain task that judges its sender.
#[derive(Debug, Clone, Copy)]
pub(super) enum Work {
    Headers,
    Block,
    Tx,
}

impl Protocol {
    pub(super) fn send_getheaders(&mut self, id: PeerId, now: Instant, actions: &mut Vec<Action>) {
        let locator = self.reader.headers().read().locator();
        self.headers_request = Some((id, now));
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.getheaders_sent = Some(now);
        }
        actions.push(Action::Send(
            id,
            Message::GetHeaders(GetHeaders {
                locator,
                stop: Hash256::ZERO,
            }),
        ));
    }

    /// `send_getheaders` for what a peer sent of its own accord (an `inv`
    /// of an unknown block, a block whose parent is unknown): not while
    /// the peer has one of ours unanswered, younger than
    /// `HEADERS_RESPONSE_TIMEOUT` (Bitcoin Core's `MaybeSendGetHeaders`),
    /// so that a stream of 37-byte messages cannot each make us build a
    /// locator and send it.
    pub(super) fn maybe_send_getheaders(
        &mut self,
        id: PeerId,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let waiting = self.peers.get(&id).and_then(|p| p.getheaders_sent);
        if waiting.is_some_and(|sent| now.duration_since(sent) < HEADERS_RESPONSE_TIMEOUT) {
            return;
        }
        self.send_getheaders(id, now, actions);
    }

    pub(super) fn on_headers(
        &mut self,
        id: PeerId,
        headers: Vec<crate::consensus::block::BlockHeader>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if self.headers_request.is_some_and(|(p, _)| p == id) {
            self.headers_request = None;
        }
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.getheaders_sent = None;
            peer.answered_empty = headers.is_empty();
        }
        if headers.is_empty() {
            return;
        }
        // Each header must build on the one before it: only then do the
        // batch's claimed work and its last header speak for all of it.
        let hashes: Vec<BlockHash> = headers.iter().map(|h| h.hash()).collect();
        if headers
            .iter()
            .skip(1)
            .zip(&hashes)
            .any(|(header, prev)| header.prev_hash != *prev)
        {
            self.misbehaving(id, "non_continuous_headers", actions);
            return;
        }
        // Each header must meet its own bits, within the network's limit,
        // before the batch's claimed work counts for anything (Bitcoin
        // Core's `CheckHeadersPoW`). A forged target (`bits` of 1) claims
        // 2^255 of work for nothing: a batch of cheap real headers ending in
        // one would clear the work threshold, and its real headers be
        // indexed, however little work they carry, if something (a time
        // too new) stopped the indexing before the forged one.
        let params = self.reader.params();
        if headers
            .iter()
            .zip(&hashes)
            .any(|(header, hash)| check_header_hashed(header, hash, params).is_err())
        {
            self.misbehaving(id, "invalid_header", actions);
            return;
        }
        let clock_now = self.chain_clock_now();
        let peer = self.peers.get_mut(&id).expect("checked");
        if let Some(sync) = peer.headers_sync.as_mut() {
            if headers[0].prev_hash == sync.expected_parent() {
                let step = sync.on_headers(&headers, clock_now);
                self.on_sync_step(id, step, now, actions);
                return;
            }
            // Something else (a new block announced meanwhile): the pre-sync
            // cannot continue from it; the headers take the normal path.
            tracing::debug!(peer = id, "headers pre-sync interrupted");
            peer.headers_sync = None;
        }
        let full = headers.len() == MAX_HEADERS;
        let last = hashes[hashes.len() - 1];
        // Batches the header tree can judge alone never reach the chain
        // task: one that ends in a header already indexed (it adds
        // nothing), and, while none of the peer's batches waits to be
        // indexed, one whose first parent is unknown (it cannot connect).
        // A peer resending the node's own tip, or one stray header, costs a
        // lookup, not a closure on the chain task and a store write.
        let waiting = self.awaiting.get(&id).is_some_and(|a| a.headers > 0);
        // Headers are indexed only if their chain has enough work; a full
        // batch below that starts a pre-sync, a short one is ignored.
        let presync = {
            let chain = self.reader.headers().read();
            let known_last = chain.index_entry(&last).is_some_and(|e| !e.is_failed());
            if known_last {
                drop(chain);
                // A batch of the peer's still waits to be indexed: its
                // outcome asks for the next one (from a locator that has it).
                self.headers_known(id, last, full && !waiting, now, actions);
                return;
            }
            match chain.index_entry(&headers[0].prev_hash) {
                Some(parent) => {
                    let claimed = headers
                        .iter()
                        // Each header's work is real (checked above); the
                        // sum saturates all the same.
                        .fold(parent.chain_work, |w, h| {
                            w.saturating_add(work_from_compact(h.bits))
                        });
                    let threshold = chain.headers_work_threshold();
                    if claimed >= threshold {
                        None
                    } else if full {
                        chain
                            .header_anchor(&headers[0].prev_hash, TIME_HISTORY)
                            .map(|anchor| {
                                HeadersSync::new(
                                    self.reader.params(),
                                    &anchor,
                                    threshold,
                                    clock_now,
                                )
                            })
                    } else {
                        tracing::debug!(
                            peer = id,
                            count = headers.len(),
                            "headers of a low-work chain: ignored"
                        );
                        return;
                    }
                }
                None if !waiting => {
                    drop(chain);
                    self.headers_unconnected(id, now, actions);
                    return;
                }
                None => None,
            }
        };
        if let Some(mut sync) = presync {
            tracing::info!(
                peer = id,
                "peer's headers lack work: starting a headers pre-sync"
            );
            let step = sync.on_headers(&headers, clock_now);
            self.peers.get_mut(&id).expect("checked").headers_sync = Some(Box::new(sync));
            self.on_sync_step(id, step, now, actions);
            return;
        }
        self.index_headers(id, headers, full, actions);
    }

    /// A batch ending in a header the tree holds: nothing to index. The
    /// peer has that chain; `ask_more` asks for the next batch.
    fn headers_known(
        &mut self,
        id: PeerId,
        last: BlockHash,
        ask_more: bool,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let peer = self.peers.get_mut(&id).expect("checked");
        peer.known.insert(last);
        peer.best_known = Some(last);
        peer.unconnecting_headers = 0;
        if ask_more {
            self.send_getheaders(id, now, actions);
        }
        self.request_blocks(now, actions);
    }

    /// A batch whose first parent the tree lacks (an announcement of a
    /// block beyond a gap, or a stray header): the gap is asked for, as the
    /// chain task's `unconnected` outcome would ask. After
    /// `MAX_UNCONNECTING_HEADERS` in a row with nothing connecting between
    /// them, further ones are ignored until a batch connects: a peer
    /// replaying one header cannot make the node send a `getheaders` per
    /// message (the periodic look for a peer ahead still asks it).
    fn headers_unconnected(&mut self, id: PeerId, now: Instant, actions: &mut Vec<Action>) {
        let peer = self.peers.get_mut(&id).expect("checked");
        peer.unconnecting_headers = peer.unconnecting_headers.saturating_add(1);
        if peer.unconnecting_headers > MAX_UNCONNECTING_HEADERS {
            tracing::debug!(peer = id, "unconnecting headers ignored");
            return;
        }
        self.send_getheaders(id, now, actions);
    }

    pub(super) fn chain_clock_now(&self) -> u32 {
        self.reader.clock().now()
    }

    /// Hands headers whose chain has enough work to the chain task to
    /// index; `on_headers_processed` goes on from there.
    pub(super) fn index_headers(
        &mut self,
        id: PeerId,
        headers: Vec<crate::consensus::block::BlockHeader>,
        ask_more: bool,
        actions: &mut Vec<Action>,
    ) {
        self.await_judgement(id, Work::Headers);
        actions.push(Action::ProcessHeaders {
            peer: id,
            headers,
            ask_more,
        });
    }

    /// What the chain task made of headers `id` sent: punish what was
    /// invalid, then ask for more headers (a full batch, or a gap before
    /// an announcement) and for the blocks.
    pub fn on_headers_processed(
        &mut self,
        id: PeerId,
        outcome: Result<HeadersOutcome, String>,
        ask_more: bool,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let sender = self.judged(id, Work::Headers);
        if !self.peers.get(&id).is_some_and(|p| p.ready()) {
            // Gone meanwhile: invalid headers still cost its address.
            if let (
                Ok(HeadersOutcome {
                    invalid: Some(rejection),
                    ..
                }),
                Some(ip),
            ) = (&outcome, sender)
            {
                let reason = rejection.reason();
                tracing::info!(peer = id, %ip, reason, "peer gone before its headers were judged");
                self.record_misbehaviour(Some(ip), reason);
            }
            self.request_blocks(now, &mut actions);
            return actions;
        }
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "storing headers failed");
                return actions;
            }
        };
        if let Some(rejection) = outcome.invalid {
            self.misbehaving(id, rejection.reason(), &mut actions);
            return actions;
        }
        let peer = self.peers.get_mut(&id).expect("checked");
        if let Some(last) = outcome.last {
            peer.known.insert(last);
            peer.best_known = Some(last);
            peer.unconnecting_headers = 0;
        }
        if outcome.deferred {
            // Too far ahead of our clock: not invalid, and not the peer's
            // fault. Ask again once the clock may have caught up.
            tracing::info!(
                peer = id,
                "header time too far ahead of our clock: retrying later"
            );
            peer.headers_retry_at = Some(now + TIME_TOO_NEW_RETRY);
        } else if outcome.unconnected || ask_more {
            // An announcement whose parent we lack asks for the gap; a full
            // batch asks for the next one.
            self.send_getheaders(id, now, &mut actions);
        }
        self.request_blocks(now, &mut actions);
        actions
    }

    /// Acts on what the peer's headers pre-sync decided.
    pub(super) fn on_sync_step(
        &mut self,
        id: PeerId,
        step: SyncStep,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        match step {
            SyncStep::Request(locator) => self.send_locator(id, locator, now, actions),
            SyncStep::Commit { headers, next } => {
                if next.is_none() {
                    tracing::info!(
                        peer = id,
                        "headers pre-sync done: the chain has enough work"
                    );
                    self.peers.get_mut(&id).expect("checked").headers_sync = None;
                }
                // The next request goes out at once while the pre-sync
                // goes on (its locator is its own); once it is done, the
                // next `getheaders` waits for the headers to be indexed, so
                // its locator starts from them.
                match next {
                    Some(locator) => {
                        if !headers.is_empty() {
                            self.index_headers(id, headers, false, actions);
                        }
                        self.send_locator(id, locator, now, actions);
                    }
                    None if headers.is_empty() => self.send_getheaders(id, now, actions),
                    None => self.index_headers(id, headers, true, actions),
                }
            }
            SyncStep::Abandoned(reason) => {
                tracing::info!(peer = id, reason, "headers pre-sync abandoned");
                self.peers.get_mut(&id).expect("checked").headers_sync = None;
            }
            SyncStep::Invalid(reason) => {
                self.peers.get_mut(&id).expect("checked").headers_sync = None;
                self.misbehaving(id, reason, actions);
            }
        }
    }

    pub(super) fn send_locator(
        &mut self,
        id: PeerId,
        locator: Vec<BlockHash>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.headers_request = Some((id, now));
        actions.push(Action::Send(
            id,
            Message::GetHeaders(GetHeaders {
                locator,
                stop: Hash256::ZERO,
            }),
        ));
    }

    /// Memory held by headers pre-syncs, in bytes (for tests and metrics).
    pub fn headers_sync_bytes(&self) -> usize {
        self.peers
            .values()
            .filter_map(|p| p.headers_sync.as_ref())
            .map(|s| s.memory_bytes())
            .sum()
    }

    pub(super) fn on_block(
        &mut self,
        id: PeerId,
        block: crate::consensus::block::Block,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let hash = block.hash();
        tracing::debug!(peer = id, %hash, "block received");
        let peer = self.peers.get_mut(&id).expect("checked");
        peer.known.insert(hash);
        let requested = peer.in_flight.remove(&hash).is_some();
        peer.arrived.remove(&hash);
        if requested {
            peer.stalls = peer.stalls.saturating_sub(1);
        }
        if self.in_flight.get(&hash) == Some(&id) {
            self.in_flight.remove(&hash);
        }
        if !requested {
            // What the chain would drop unseen is dropped here, freeing its
            // memory at once instead of behind a chain task busy
            // connecting: a block already stored, or one on a chain with
            // too little work. One whose parent the published tree lacks
            // goes on: the parent may be queued for the chain task ahead
            // of it.
            let (stored, wanted) = {
                let tree = self.reader.headers().read();
                (
                    tree.has_block(&hash),
                    tree.unrequested_block_wanted(&block.header),
                )
            };
            // A block without its own proof of work goes on to the chain,
            // which refuses it and blames its sender.
            let worked = check_header_hashed(&block.header, &hash, self.reader.params()).is_ok();
            if worked && (stored || wanted == Some(false)) {
                tracing::debug!(peer = id, %hash, stored, "unrequested block dropped unjudged");
                if stored {
                    // As for a duplicate the chain judged: the peer has it.
                    self.note_best_known(id, hash);
                }
                return;
            }
        }
        self.processing.insert(hash, id);
        if requested {
            self.processing_requested.insert(hash);
        }
        self.await_judgement(id, Work::Block);
        actions.push(Action::ProcessBlock {
            peer: id,
            block: Arc::new(block),
            requested,
        });
        // The peer has room again: keep its pipe full while the chain task
        // connects.
        self.request_blocks(now, actions);
    }

    /// What the chain task made of a block `id` sent (`on_block`): punish
    /// what was invalid, ask for what is missing, and ask for more.
    pub fn on_block_processed(
        &mut self,
        id: PeerId,
        hash: BlockHash,
        outcome: Result<BlockOutcome, String>,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.processing.get(&hash) == Some(&id) {
            self.processing.remove(&hash);
            self.processing_requested.remove(&hash);
        }
        let sender_ip = self.judged(id, Work::Block);
        if self.peers.get(&id).is_some_and(|p| p.ready()) {
            self.after_block(id, hash, outcome, now, &mut actions);
        } else {
            // Gone meanwhile: an invalid block still costs its address.
            let reason = match outcome {
                Ok(BlockOutcome::Invalid(_)) => Some("invalid_block"),
                Ok(BlockOutcome::InvalidAncestor) => Some("block_on_invalid_chain"),
                Err(e) => {
                    tracing::error!(error = %e, %hash, "storing a block failed");
                    None
                }
                Ok(_) => None,
            };
            if let (Some(reason), Some(ip)) = (reason, sender_ip) {
                tracing::info!(peer = id, %ip, reason, "peer gone before its block was judged");
                self.record_misbehaviour(Some(ip), reason);
            }
        }
        self.request_blocks(now, &mut actions);
        self.announce_tip(&mut actions);
        actions
    }

    fn after_block(
        &mut self,
        id: PeerId,
        hash: BlockHash,
        outcome: Result<BlockOutcome, String>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if matches!(outcome, Ok(BlockOutcome::Accepted { .. })) {
            self.peers.get_mut(&id).expect("checked").last_block_at = Some(now);
        }
        match outcome {
            Ok(BlockOutcome::Invalid(error)) => {
                tracing::info!(peer = id, %hash, %error, "invalid block");
                self.misbehaving(id, "invalid_block", actions);
            }
            Ok(BlockOutcome::InvalidAncestor) => {
                self.misbehaving(id, "block_on_invalid_chain", actions)
            }
            Ok(BlockOutcome::Orphan) => self.maybe_send_getheaders(id, now, actions),
            Ok(BlockOutcome::Deferred(error)) => {
                tracing::info!(peer = id, %hash, %error, "block refused for now");
                let peer = self.peers.get_mut(&id).expect("checked");
                peer.headers_retry_at = Some(now + TIME_TOO_NEW_RETRY);
            }
            Ok(BlockOutcome::NotStored) => {
                tracing::debug!(peer = id, %hash, "unrequested low-work block dropped");
            }
            Ok(BlockOutcome::Accepted { .. } | BlockOutcome::Duplicate) => {
                self.note_best_known(id, hash);
            }
            Err(e) => tracing::error!(error = %e, %hash, "storing a block failed"),
        }
    }

    /// `id` has block `hash`: its best known block if it extends the one
    /// known so far.
    fn note_best_known(&mut self, id: PeerId, hash: BlockHash) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let better = {
            let tree = self.reader.headers().read();
            peer.best_known.is_none_or(|b| tree.is_ancestor(&b, &hash))
        };
        if better {
            peer.best_known = Some(hash);
        }
    }

    /// Runs the chain task's actions (`ProcessBlock`, `ProcessHeaders`,
    /// `AcceptTx`) at once on `chain`, on this thread, as the task would,
    /// feeding each outcome back: for tests and benchmarks that drive the
    /// protocol without threads. Returns every other action.
    pub fn process_inline(
        &mut self,
        chain: &mut Chain,
        actions: Vec<Action>,
        now: Instant,
    ) -> Vec<Action> {
        let mut queue: VecDeque<Action> = actions.into();
        let mut rest = Vec::new();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::ProcessBlock {
                    peer,
                    block,
                    requested,
                } => {
                    let hash = block.hash();
                    let outcome = chain
                        .process_new_block(block, Some(peer), requested)
                        .map_err(|e| e.to_string());
                    queue.extend(self.on_block_processed(peer, hash, outcome, now));
                }
                Action::ProcessHeaders {
                    peer,
                    headers,
                    ask_more,
                } => {
                    let outcome = chain.process_headers(&headers).map_err(|e| e.to_string());
                    queue.extend(self.on_headers_processed(peer, outcome, ask_more, now));
                }
                Action::AcceptTx { peer, tx } => {
                    let txid = tx.txid();
                    let (result, orphan) =
                        crate::p2p::accept_keeping_orphan(&self.mempool, chain, tx);
                    queue.extend(self.on_tx_processed(
                        peer,
                        txid,
                        result,
                        orphan.map(|tx| *tx),
                        now,
                    ));
                }
                other => rest.push(other),
            }
        }
        rest
    }

    /// A block from a peer reached our queue (it may wait for its turn): a
    /// request is stalled only if nothing arrived, however late it is
    /// handled.
    pub fn on_block_arrived(&mut self, id: PeerId, hash: BlockHash) {
        if let Some(peer) = self.peers.get_mut(&id) {
            if peer.in_flight.contains_key(&hash) {
                peer.arrived.insert(hash);
                // The block the window waited for is on its way; another
                // block of the peer's arriving changes nothing.
                if peer.window_hold.as_ref().is_some_and(|h| h.hash == hash) {
                    peer.window_hold = None;
                }
            }
        }
    }

    /// Disconnects a peer that has held back the download window for
    /// longer than `block_stalling_timeout` (see `BLOCK_STALLING_TIMEOUT`),
    /// doubling the allowance for the next; each block the chain connected
    /// since the last call brings the allowance back down.
    pub(super) fn judge_window_stallers(&mut self, actions: &mut Vec<Action>) {
        let tip = self.reader.published().tip.1;
        while self.stalling_timeout_tip < tip
            && self.block_stalling_timeout > BLOCK_STALLING_TIMEOUT
        {
            self.stalling_timeout_tip += 1;
            self.block_stalling_timeout = self
                .block_stalling_timeout
                .mul_f64(BLOCK_STALLING_TIMEOUT_DECAY)
                .max(BLOCK_STALLING_TIMEOUT);
        }
        self.stalling_timeout_tip = tip;
        let timeout = self.block_stalling_timeout;
        let stallers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.window_hold.as_ref().is_some_and(|hold| {
                    hold.held > timeout
                        && p.in_flight.contains_key(&hold.hash)
                        && !p.arrived.contains(&hold.hash)
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stallers {
            tracing::info!(
                peer = id,
                timeout_s = timeout.as_secs_f64(),
                "peer held back the block download window: disconnecting"
            );
            self.peers.get_mut(&id).expect("listed").window_hold = None;
            actions.push(Action::Disconnect(id, "stalling_window"));
            self.block_stalling_timeout =
                (self.block_stalling_timeout * 2).min(BLOCK_STALL_TIMEOUT);
        }
    }

    /// Asks each peer for blocks of its best chain that we lack, within its
    /// in-flight cap; the least busy peers choose first.
    pub(super) fn request_blocks(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.ready()
                    && p.best_known.is_some()
                    && p.in_flight.len() < MAX_BLOCKS_IN_FLIGHT_PER_PEER
            })
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            // No peer is idle for want of blocks: nobody holds anyone back.
            self.mark_window_holder(None, now);
            return;
        }
        ids.sort_by_key(|id| (self.peers[id].in_flight.len(), self.peers[id].stalls, *id));
        let chain = self.reader.headers().read();
        let mut window_held_by = None;
        for peer_id in ids {
            let peer = self.peers.get_mut(&peer_id).expect("listed above");
            let best = peer.best_known.expect("filtered above");
            let capacity = MAX_BLOCKS_IN_FLIGHT_PER_PEER - peer.in_flight.len();
            let in_flight = &self.in_flight;
            let processing = &self.processing;
            let not_found = &peer.not_found;
            let plan = chain.blocks_to_download(
                &best,
                &mut peer.last_common,
                BLOCK_DOWNLOAD_WINDOW,
                capacity,
                &|h| {
                    in_flight.contains_key(h) || processing.contains_key(h) || not_found.contains(h)
                },
            );
            let wanted = plan.blocks;
            if wanted.is_empty() {
                // An idle peer that could download if the window were one
                // larger: the window waits for its lowest missing block.
                if let Some(hash) = plan.waiting_for.filter(|_| peer.in_flight.is_empty()) {
                    match in_flight.get(&hash) {
                        Some(&holder) if holder != peer_id => window_held_by = Some((holder, hash)),
                        _ => {}
                    }
                }
                continue;
            }
            let mut items = Vec::with_capacity(wanted.len());
            for (hash, _) in wanted {
                peer.in_flight.insert(hash, now);
                self.in_flight.insert(hash, peer_id);
                items.push(InvItem {
                    kind: InvKind::Block,
                    hash,
                });
            }
            actions.push(Action::Send(peer_id, Message::GetData(items)));
        }
        drop(chain);
        self.mark_window_holder(window_held_by, now);
    }

    /// Keeps `window_hold` exact: the peer whose block holds back the
    /// window (unless that block has arrived) adds the time since it was
    /// last seen doing so; every other peer's hold is cleared. While the
    /// chain task has a requested block to work on, every clock pauses,
    /// after counting the time up to now.
    fn mark_window_holder(&mut self, holder: Option<(PeerId, BlockHash)>, now: Instant) {
        if !self.processing_requested.is_empty() {
            for peer in self.peers.values_mut() {
                if let Some(hold) = &mut peer.window_hold {
                    hold.count_to(now);
                }
            }
            return;
        }
        for (id, peer) in &mut self.peers {
            match holder {
                Some((held_by, hash)) if held_by == *id && !peer.arrived.contains(&hash) => {
                    match &mut peer.window_hold {
                        Some(hold) if hold.hash == hash => {
                            hold.count_to(now);
                            hold.seen_at = Some(now);
                        }
                        other => {
                            *other = Some(WindowHold {
                                hash,
                                held: Duration::ZERO,
                                seen_at: Some(now),
                            })
                        }
                    }
                }
                _ => peer.window_hold = None,
            }
        }
    }

    /// Announces a new tip to every peer that does not have it.
    pub(super) fn announce_tip(&mut self, actions: &mut Vec<Action>) {
        let published = self.reader.published();
        let (tip, header) = (published.tip.0, published.tip_header);
        if tip == self.announced_tip {
            return;
        }
        self.announced_tip = tip;
        for (id, peer) in self.peers.iter_mut().filter(|(_, p)| p.ready()) {
            if peer.known.contains(&tip) {
                continue;
            }
            peer.known.insert(tip);
            let message = if peer.send_headers {
                Message::Headers(vec![header])
            } else {
                Message::Inv(vec![InvItem {
                    kind: InvKind::Block,
                    hash: tip,
                }])
            };
            actions.push(Action::Send(*id, message));
        }
    }

    /// Counts work `id` handed to the chain task.
    pub(super) fn await_judgement(&mut self, id: PeerId, work: Work) {
        let ip = self.peers[&id].addr.ip();
        let entry = self.awaiting.entry(id).or_insert(Awaiting {
            ip,
            headers: 0,
            blocks: 0,
            txs: 0,
        });
        match work {
            Work::Headers => entry.headers += 1,
            Work::Block => entry.blocks += 1,
            Work::Tx => entry.txs += 1,
        }
    }

    /// Counts work of `id` the chain task judged; its sender's address.
    pub(super) fn judged(&mut self, id: PeerId, work: Work) -> Option<IpAddr> {
        let entry = self.awaiting.get_mut(&id)?;
        let count = match work {
            Work::Headers => &mut entry.headers,
            Work::Block => &mut entry.blocks,
            Work::Tx => &mut entry.txs,
        };
        *count = count.saturating_sub(1);
        let ip = entry.ip;
        if entry.headers == 0 && entry.blocks == 0 && entry.txs == 0 {
            self.awaiting.remove(&id);
        }
        Some(ip)
    }

    /// Whether any header batch waits for the chain task.
    pub(super) fn headers_being_indexed(&self) -> bool {
        self.awaiting.values().any(|a| a.headers > 0)
    }

    pub(super) fn update_progress(&mut self, now: Instant) {
        let published = self.reader.published();
        let (header_height, block_height) = (published.best_header.1, published.tip.1);
        let best_peer = self
            .peers
            .values()
            .filter_map(|p| p.version.as_ref().map(|v| v.start_height))
            .max()
            .unwrap_or(0);
        let target = header_height.max(best_peer);
        self.progress.header_height = header_height;
        self.progress.block_height = block_height;
        // Caught up (a new chain at genesis included) is 100%.
        self.progress.percent = if block_height >= target {
            100.0
        } else {
            f64::from(block_height) * 100.0 / f64::from(target)
        };
        self.progress.peers = self.peers.values().filter(|p| p.ready()).count();
        self.progress.blocks_in_flight = self.in_flight.len();
        let (since, height_then) = self.last_progress;
        let elapsed = now.duration_since(since);
        if elapsed < PROGRESS_LOG_INTERVAL {
            return;
        }
        let rate = f64::from(block_height.saturating_sub(height_then)) / elapsed.as_secs_f64();
        self.progress.blocks_per_sec = rate;
        self.last_progress = (now, block_height);
        if block_height < header_height {
            tracing::info!(
                headers = header_height,
                blocks = block_height,
                percent = format!("{:.1}", self.progress.percent),
                blocks_per_sec = format!("{rate:.1}"),
                in_flight = self.in_flight.len(),
                "syncing"
            );
        }
    }
}
