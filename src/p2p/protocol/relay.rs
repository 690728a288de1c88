//! Relay and inventory: transaction announcements and requests, `notfound`, the mempool exchange, and serving `getdata` as the peer's socket drains.

use super::sync::Work;
use super::*;
use crate::mempool::{TipState, MAX_STANDARD_TX_SIZE};

impl Protocol {
    /// Asks each peer once for its mempool, as soon as our chain has caught
    /// up with it: earlier, its transactions would spend blocks we lack.
    pub(super) fn request_mempools(&mut self, actions: &mut Vec<Action>) {
        let published = self.reader.published();
        let (synced, height) = (published.best_header.0 == published.tip.0, published.tip.1);
        if !synced {
            return;
        }
        for (id, peer) in self.peers.iter_mut() {
            let caught_up = peer
                .version
                .as_ref()
                .is_some_and(|v| v.start_height <= height);
            if peer.ready() && !peer.mempool_requested && caught_up {
                peer.mempool_requested = true;
                actions.push(Action::Send(*id, Message::Mempool));
            }
        }
    }

    /// Answers a peer's `mempool`, once per connection (as `getaddr`):
    /// one `inv` of the pool's `MAX_MEMPOOL_ANSWER` best-paying txids the
    /// peer does not know of. The pool's lock is held to read that many
    /// from its fee-rate index, not to sort the whole pool; a repeat is
    /// ignored.
    pub(super) fn on_mempool(&mut self, id: PeerId, actions: &mut Vec<Action>) {
        let peer = self.peers.get_mut(&id).expect("checked");
        if peer.answered_mempool {
            tracing::debug!(peer = id, "repeated mempool request ignored");
            return;
        }
        peer.answered_mempool = true;
        let view = self.reader.view();
        let txids = {
            let mut pool = self.mempool.lock().expect("mempool lock");
            if let Ok(view) = &view {
                pool.catch_up_step(view);
            }
            pool.best_txids(MAX_MEMPOOL_ANSWER)
        };
        let peer = self.peers.get_mut(&id).expect("checked");
        let items: Vec<InvItem> = txids
            .into_iter()
            .filter(|t| !peer.known.contains(t))
            .map(|hash| InvItem {
                kind: InvKind::Tx,
                hash,
            })
            .collect();
        for item in &items {
            peer.known.insert(item.hash);
        }
        if !items.is_empty() {
            actions.push(Action::Send(id, Message::Inv(items)));
        }
    }

    /// What a new tip changes for relay: empties `recent_rejects` when the
    /// tip moved since it was filled; orphans the new tip confirmed leave,
    /// and those whose missing parent it confirmed are judged again (two
    /// tx-index reads per orphan kept, at most `MAX_ORPHANS`).
    pub(super) fn refresh_for_tip(&mut self) {
        let tip = self.reader.published().tip.0;
        if self.rejects_tip != Some(tip) {
            self.recent_rejects.clear();
            self.rejects_tip = Some(tip);
        }
        // In a catch-up the tip moves every block: the orphans wait for its
        // end (or their expiry), then are swept once.
        if self.orphans_swept_tip != Some(tip) && !self.catching_up() {
            if self.orphans.is_empty() {
                self.orphans_swept_tip = Some(tip);
            } else if let Ok(view) = self.reader.view() {
                let confirmed: Vec<Txid> = self
                    .orphans
                    .txids()
                    .iter()
                    .filter(|t| view.is_confirmed(t).unwrap_or(false))
                    .copied()
                    .collect();
                for txid in confirmed {
                    self.orphans.take(&txid);
                }
                // Those whose missing parent the tip confirmed are judged
                // again: no pool entry would wake them (one more tx-index
                // read per orphan).
                let woken: Vec<Txid> = self
                    .orphans
                    .waiting()
                    .filter(|(_, parent)| view.is_confirmed(parent).unwrap_or(false))
                    .map(|(txid, _)| txid)
                    .collect();
                for txid in woken {
                    self.orphans.woken(&txid);
                    self.queue_orphan(txid);
                }
                self.orphans_swept_tip = Some(tip);
            }
        }
    }

    pub(super) fn on_tx(
        &mut self,
        id: PeerId,
        tx: crate::consensus::transaction::Transaction,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let txid = tx.txid();
        let peer = self.peers.get_mut(&id).expect("checked");
        peer.known.insert(txid);
        peer.tx_in_flight.remove(&txid);
        if let Some(request) = self.tx_requests.remove(&txid) {
            for announcer in request.announcers {
                if let Some(p) = self.peers.get_mut(&announcer) {
                    p.tx_announced.remove(&txid);
                }
            }
        }
        // Judged against a view of the chain. A view a block behind the
        // pool's tip cannot judge it, and the chain task does, against its
        // own tip; in a catch-up (where views trail by thousands of blocks)
        // the transaction is ignored, as Bitcoin Core does in its initial
        // block download: it would spend outputs the node lacks, and the
        // chain task has blocks to connect. Peers' pools are asked for
        // once the node has caught up.
        if self.catching_up() {
            tracing::debug!(peer = id, %txid, "transaction ignored while catching up");
            return;
        }
        // Refused before at this tip: not judged again (its checks may
        // cost hundreds of UTXO reads and signature checks).
        self.refresh_for_tip();
        if self.recent_rejects.contains(&txid) {
            tracing::debug!(peer = id, %txid, "transaction refused before: ignored");
            return;
        }
        // Waiting for its parents already: sent again, it costs a lookup.
        if self.orphans.contains(&txid) {
            tracing::debug!(peer = id, %txid, "orphan transaction sent again: ignored");
            return;
        }
        self.judge_tx(id, txid, tx, now, actions);
        self.request_txs(now, actions);
    }

    /// Judges a transaction `id` relayed (or an orphan of `id`'s whose
    /// parent came): against a view of the chain, or, when no view can
    /// judge it, by the chain task (`AcceptTx`). A copy is kept until the
    /// judgement, for the orphanage should a parent be missing.
    fn judge_tx(
        &mut self,
        id: PeerId,
        txid: Txid,
        tx: crate::consensus::transaction::Transaction,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        // Only a standard-size transaction can be kept as an orphan.
        let copy = (tx.encoded_len() <= MAX_STANDARD_TX_SIZE).then(|| tx.clone());
        // The pool is locked for the checks and the insertion, not for the
        // signature checks between them.
        let judged = match self.reader.view() {
            Ok(view) => crate::mempool::try_accept_unlocked(&self.mempool, &view, tx),
            Err(_) => Err(tx),
        };
        match judged {
            Ok(result) => self.after_tx(id, txid, result, copy, now, actions),
            Err(tx) => {
                // Its sender's address is kept until the judgement: one
                // that leaves before a refusal that blames it still pays.
                self.await_judgement(id, Work::Tx);
                actions.push(Action::AcceptTx {
                    peer: id,
                    tx: Box::new(tx),
                });
            }
        }
    }

    /// Judges again the next orphan whose parent entered the pool, if any:
    /// one per call, so a parent of a hundred orphans does not hold the
    /// protocol thread for a hundred judgements at once.
    /// The orphan stays kept while judged (as in Bitcoin Core): still
    /// missing an input, it keeps its expiry and asks for nothing again.
    pub fn process_orphan_work(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        // Views trail the tip in a catch-up; the work waits for its end.
        if self.orphan_work.is_empty() || self.catching_up() {
            return actions;
        }
        self.refresh_for_tip();
        while let Some(txid) = self.orphan_work.pop_front() {
            self.orphan_queued.remove(&txid);
            // Gone meanwhile: expired, evicted, confirmed, or its sender left.
            let Some((tx, from)) = self.orphans.get(&txid).map(|o| (o.tx.clone(), o.from)) else {
                continue;
            };
            self.judge_tx(from, txid, tx, now, &mut actions);
            self.announce_txs(&mut actions);
            self.request_txs(now, &mut actions);
            break;
        }
        actions
    }

    /// Queues an orphan to be judged again, once however often asked.
    fn queue_orphan(&mut self, txid: Txid) {
        if self.orphan_queued.insert(txid) {
            self.orphan_work.push_back(txid);
        }
    }

    /// Whether orphans wait to be judged again (`process_orphan_work`).
    pub fn has_orphan_work(&self) -> bool {
        !self.orphan_work.is_empty() && !self.catching_up()
    }

    /// Keeps a transaction whose inputs are missing, from `id`, and asks
    /// `id` for the parents the pool lacks, as if `id` had announced them.
    /// An orphan with a parent refused at this tip is refused too (Bitcoin
    /// Core's `fRejectedParents`): the parent would not be asked again.
    /// `missing` is the input found missing: if its transaction entered the
    /// pool meanwhile (the chain task judged this one), nothing woke the
    /// orphan, so it is judged again at once.
    fn add_orphan(
        &mut self,
        id: PeerId,
        txid: Txid,
        tx: crate::consensus::transaction::Transaction,
        missing: crate::consensus::transaction::OutPoint,
        now: Instant,
    ) {
        if !self.peers.contains_key(&id) {
            return;
        }
        if tx
            .inputs
            .iter()
            .any(|input| self.recent_rejects.contains(&input.prevout().txid))
        {
            tracing::debug!(peer = id, %txid, "orphan of a refused parent refused");
            self.recent_rejects.insert_bounded(txid, MAX_RECENT_REJECTS);
            self.orphans.take(&txid);
            return;
        }
        let added = self.orphans.add(txid, tx, id, now);
        // Kept now or before (judged again, still missing an input).
        self.orphans.set_missing(&txid, missing.txid);
        match added {
            orphans::Added::Kept(parents) => {
                // Parents are asked for without reading the store (a
                // made-up orphan can name 750): a confirmed one is answered
                // `notfound`, within the sender's announcement cap.
                let (wanted, parent_in_pool) = {
                    let pool = self.mempool.lock().expect("mempool lock");
                    let parent_in_pool = pool.contains(&missing.txid);
                    let wanted: Vec<Txid> = parents
                        .into_iter()
                        .filter(|p| !pool.contains(p) && !self.orphans.contains(p))
                        .collect();
                    (wanted, parent_in_pool)
                };
                // The missing parent entered the pool while this was judged
                // (on the chain task) and woke no one: judged again at once.
                if parent_in_pool {
                    self.queue_orphan(txid);
                }
                let peer = self.peers.get_mut(&id).expect("checked");
                let mut asked = 0;
                for parent in wanted {
                    asked += usize::from(want_tx(peer, id, &mut self.tx_requests, parent, now));
                }
                tracing::debug!(
                    peer = id,
                    %txid,
                    parents_asked = asked,
                    orphans = self.orphans.len(),
                    orphan_bytes = self.orphans.bytes(),
                    "orphan transaction kept"
                );
            }
            orphans::Added::Known | orphans::Added::Evicted => {}
            orphans::Added::TooLarge => {
                self.recent_rejects.insert_bounded(txid, MAX_RECENT_REJECTS);
            }
        }
    }

    /// What the chain task made of a relayed transaction (`AcceptTx`).
    /// `orphan` is the transaction back when its inputs were missing.
    pub fn on_tx_processed(
        &mut self,
        id: PeerId,
        txid: Txid,
        result: Result<Txid, MempoolError>,
        orphan: Option<crate::consensus::transaction::Transaction>,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let sender = self.judged(id, Work::Tx);
        if !self.peers.contains_key(&id) {
            if let (Err(error), Some(ip)) = (&result, sender) {
                if error.breaks_consensus() {
                    tracing::info!(peer = id, %ip, "peer gone before its transaction was judged");
                    self.recent_rejects.insert_bounded(txid, MAX_RECENT_REJECTS);
                    self.record_misbehaviour(Some(ip), "invalid_transaction");
                }
            }
            self.request_txs(now, &mut actions);
            return actions;
        }
        self.after_tx(id, txid, result, orphan, now, &mut actions);
        self.announce_txs(&mut actions);
        self.request_txs(now, &mut actions);
        actions
    }

    /// What follows a judgement of `txid` from `id`; `tx` is the
    /// transaction itself, kept as an orphan if its inputs were missing.
    fn after_tx(
        &mut self,
        id: PeerId,
        txid: Txid,
        result: Result<Txid, MempoolError>,
        tx: Option<crate::consensus::transaction::Transaction>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        // An orphan judged again leaves the orphanage unless an input is
        // still missing, or the judge could not say (a store error, the
        // tip moved).
        if !matches!(
            result,
            Err(MempoolError::MissingInput(_) | MempoolError::Store(_) | MempoolError::TipMoved)
        ) {
            self.orphans.take(&txid);
        }
        if let Err(error) = &result {
            if error.breaks_consensus() {
                // A transaction no node could accept at any tip (a bad
                // signature, a key that is not the owner's, broken amounts):
                // its sender relays without checking or attacks, as Bitcoin
                // Core's `TX_CONSENSUS`. Flipping a signature makes a new
                // txid, so remembering it alone would not stop a sender that
                // costs a check of every input per message.
                self.recent_rejects.insert_bounded(txid, MAX_RECENT_REJECTS);
                self.misbehaving(id, "invalid_transaction", actions);
                return;
            }
        }
        match result {
            Ok(_) => {
                tracing::debug!(peer = id, %txid, "transaction accepted");
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.last_tx_at = Some(now);
                }
            }
            // A parent may still be on its way: kept, and asked for.
            Err(MempoolError::MissingInput(missing)) => {
                if let Some(tx) = tx {
                    self.add_orphan(id, txid, tx, missing, now);
                }
            }
            Err(MempoolError::AlreadyInPool(_))
            | Err(MempoolError::AlreadyConfirmed(_))
            | Err(MempoolError::Store(_))
            | Err(MempoolError::TipMoved) => {}
            Err(error) => {
                tracing::debug!(peer = id, %txid, %error, "transaction rejected");
                self.recent_rejects.insert_bounded(txid, MAX_RECENT_REJECTS);
            }
        }
    }

    /// Asks announcers for the transactions we want, within per-peer caps:
    /// each ready peer with room takes from the front of its queue of
    /// announcements (`tx_to_request`), dropping those delivered or asked
    /// of another peer meanwhile. The cost is the peers plus the entries
    /// taken, each taken once: thousands of announcements waiting on peers
    /// that never answer are not walked again by every message.
    pub(super) fn request_txs(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.catching_up() {
            return;
        }
        for (peer_id, peer) in self.peers.iter_mut() {
            if !peer.ready() {
                continue;
            }
            sweep_tx_queue(peer, *peer_id, &self.tx_requests);
            let mut items = Vec::new();
            while peer.tx_in_flight.len() < MAX_TX_IN_FLIGHT_PER_PEER {
                // In the order announced, so the times to ask come in order
                // too (a requeued txid at the front may be asked at once).
                match peer.tx_to_request.front() {
                    Some((_, ready_at)) if *ready_at <= now => {}
                    _ => break,
                }
                let Some((txid, _)) = peer.tx_to_request.pop_front() else {
                    break;
                };
                let Some(request) = self.tx_requests.get_mut(&txid) else {
                    continue;
                };
                if request.asked.is_some() || !request.announcers.contains(peer_id) {
                    continue;
                }
                peer.tx_in_flight.insert(txid);
                request.asked = Some((*peer_id, now));
                items.push(InvItem {
                    kind: InvKind::Tx,
                    hash: txid,
                });
            }
            if !items.is_empty() {
                actions.push(Action::Send(*peer_id, Message::GetData(items)));
            }
        }
    }

    /// Announces transactions that entered the pool to peers that lack them.
    pub(super) fn announce_txs(&mut self, actions: &mut Vec<Action>) {
        let fresh = self
            .mempool
            .lock()
            .expect("mempool lock")
            .take_announcements();
        if fresh.is_empty() {
            return;
        }
        // Whatever brought them in (a peer, an orphan, the REST API), their
        // orphans are judged again.
        for txid in &fresh {
            for child in self.orphans.children_of(txid) {
                self.queue_orphan(child);
            }
        }
        for (id, peer) in self.peers.iter_mut().filter(|(_, p)| p.ready()) {
            let items: Vec<InvItem> = fresh
                .iter()
                .filter(|t| !peer.known.contains(t))
                .map(|hash| InvItem {
                    kind: InvKind::Tx,
                    hash: *hash,
                })
                .collect();
            for item in &items {
                peer.known.insert(item.hash);
            }
            for chunk in items.chunks(MAX_INV_ENTRIES) {
                actions.push(Action::Send(*id, Message::Inv(chunk.to_vec())));
            }
        }
    }

    /// Whether the node is catching up, as the chain publishes it
    /// (`Chain::catching_up`): a tip over an hour old and the best header
    /// more than `CATCH_UP_DISTANCE` blocks above it. Headers alone cannot
    /// make it so: a node whose tip is recent is never catching up.
    /// Transactions are neither asked for nor judged meanwhile.
    pub(super) fn catching_up(&self) -> bool {
        self.reader.published().catching_up
    }

    pub(super) fn on_inv(
        &mut self,
        id: PeerId,
        items: Vec<InvItem>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let catching_up = self.catching_up();
        self.refresh_for_tip();
        // One lock at a time: the header tree's, then the pool's.
        let ask_headers = {
            let tree = self.reader.headers().read();
            items
                .iter()
                .any(|item| item.kind == InvKind::Block && tree.index_entry(&item.hash).is_none())
        };
        {
            let pool = self.mempool.lock().expect("mempool lock");
            let peer = self.peers.get_mut(&id).expect("checked");
            for item in &items {
                peer.known.insert(item.hash);
                match item.kind {
                    // Kinds of later protocol versions: ignored.
                    InvKind::Block | InvKind::Other(_) => {}
                    InvKind::Tx => {
                        if catching_up
                            || pool.contains(&item.hash)
                            || self.orphans.contains(&item.hash)
                            || self.recent_rejects.contains(&item.hash)
                        {
                            continue;
                        }
                        want_tx(peer, id, &mut self.tx_requests, item.hash, now);
                    }
                }
            }
            // Entries delivered or asked elsewhere wait in the queue until
            // reached; a queue twice the announcement cap is swept of them.
            sweep_tx_queue(peer, id, &self.tx_requests);
        }
        if ask_headers {
            self.maybe_send_getheaders(id, now, actions);
        }
        self.request_txs(now, actions);
    }

    /// A peer lacks what we asked for. A block goes to another peer at once
    /// and is never asked of this one again; a peer that keeps failing to
    /// serve the chain it announced is dropped. A transaction is asked of
    /// its next announcer.
    pub(super) fn on_notfound(
        &mut self,
        id: PeerId,
        items: Vec<InvItem>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let peer = self.peers.get_mut(&id).expect("checked");
        // Transactions answered `notfound` go back to their other
        // announcers' queues once this peer is let go.
        let mut requeued: Vec<(Hash256, Vec<PeerId>)> = Vec::new();
        for item in items {
            match item.kind {
                InvKind::Block => {
                    if peer.in_flight.remove(&item.hash).is_some() {
                        self.in_flight.remove(&item.hash);
                        peer.arrived.remove(&item.hash);
                        peer.not_found.insert(item.hash);
                        peer.block_notfound += 1;
                    }
                }
                InvKind::Tx => {
                    // Only a request asked of this peer: an entry left in
                    // flight after another peer delivered the transaction
                    // (or was asked it since) is just dropped.
                    if peer.tx_in_flight.remove(&item.hash) {
                        if let Some(request) = self
                            .tx_requests
                            .get_mut(&item.hash)
                            .filter(|r| r.asked.is_some_and(|(p, _)| p == id))
                        {
                            request.announcers.retain(|p| *p != id);
                            request.asked = None;
                            peer.tx_announced.remove(&item.hash);
                            if request.announcers.is_empty() {
                                self.tx_requests.remove(&item.hash);
                            } else {
                                requeued.push((item.hash, request.announcers.clone()));
                            }
                        }
                    }
                }
                InvKind::Other(_) => {}
            }
        }
        let failures = peer.block_notfound;
        for (txid, announcers) in requeued {
            requeue(&mut self.peers, &txid, &announcers, now);
        }
        if failures >= MAX_BLOCK_NOTFOUND {
            *self
                .counters
                .misbehaviour
                .entry("block_notfound".to_string())
                .or_default() += 1;
            tracing::info!(
                peer = id,
                failures,
                "peer cannot serve the blocks it announced"
            );
            actions.push(Action::Disconnect(id, "block_notfound"));
            return;
        }
        self.request_blocks(now, actions);
        self.request_txs(now, actions);
    }

    /// Queues a peer's `getdata`: each item once (duplicates within the
    /// request or already queued are ignored), at most `MAX_PENDING_GETDATA`
    /// waiting. Nothing is read yet: `serve_getdata` answers a little at a
    /// time, as the peer's socket drains.
    pub(super) fn on_getdata(&mut self, id: PeerId, items: Vec<InvItem>) {
        let peer = self.peers.get_mut(&id).expect("checked");
        let mut ignored = 0usize;
        for item in items {
            if matches!(item.kind, InvKind::Other(_)) || peer.getdata_queued.contains(&item) {
                continue;
            }
            if peer.getdata.len() >= MAX_PENDING_GETDATA {
                ignored += 1;
                continue;
            }
            peer.getdata_queued.insert(item);
            peer.getdata.push_back(item);
        }
        if ignored > 0 {
            tracing::debug!(
                peer = id,
                ignored,
                "getdata beyond the pending limit ignored"
            );
        }
    }

    /// Whether any peer has `getdata` waiting to be served.
    pub fn has_pending_getdata(&self) -> bool {
        self.peers.values().any(|p| !p.getdata.is_empty())
    }

    /// Peers with `getdata` waiting, in a fixed order.
    pub fn peers_with_pending_getdata(&self) -> Vec<PeerId> {
        let mut ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.getdata.is_empty())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Answers a peer's queued `getdata` with at most about `room` bytes of
    /// blocks and transactions and at most `MAX_GETDATA_PER_TURN` items
    /// (always at least one item), then `notfound` for what we lack.
    pub fn serve_getdata(&mut self, id: PeerId, room: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut missing = Vec::new();
        let mut used = 0usize;
        let mut served = 0usize;
        while used < room && served < MAX_GETDATA_PER_TURN {
            let Some(peer) = self.peers.get_mut(&id) else {
                break;
            };
            let Some(item) = peer.getdata.pop_front() else {
                break;
            };
            peer.getdata_queued.remove(&item);
            served += 1;
            let message = match item.kind {
                InvKind::Block => {
                    // A block's body never changes: read it without the chain.
                    let block = self.reader.store().block(&item.hash);
                    match block {
                        Ok(Some(block)) => Some(Message::Block(Box::new(block))),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::error!(error = %e, "reading a block to serve");
                            None
                        }
                    }
                }
                InvKind::Tx => self
                    .mempool
                    .lock()
                    .expect("mempool lock")
                    .get(&item.hash)
                    .map(|e| Message::Tx(Box::new((*e.tx).clone()))),
                InvKind::Other(_) => None,
            };
            match message {
                Some(message) => {
                    used += match &message {
                        Message::Block(b) => b.encoded_len(),
                        Message::Tx(t) => t.encoded_len(),
                        _ => 0,
                    };
                    let peer = self.peers.get_mut(&id).expect("checked above");
                    peer.known.insert(item.hash);
                    actions.push(Action::Send(id, message));
                }
                None => missing.push(item),
            }
        }
        if !missing.is_empty() {
            actions.push(Action::Send(id, Message::NotFound(missing)));
        }
        actions
    }
}

/// Notes that peer `id` has `txid` for us to ask for, within its cap of
/// announcements waiting (`MAX_PEER_TX_ANNOUNCEMENTS`): from `now` if we
/// dialed the peer, `INBOUND_TX_REQUEST_DELAY` later if it dialed us.
/// Whether it was noted now.
fn want_tx(
    peer: &mut Peer,
    id: PeerId,
    requests: &mut HashMap<Hash256, TxRequest>,
    txid: Txid,
    now: Instant,
) -> bool {
    if peer.tx_announced.len() >= MAX_PEER_TX_ANNOUNCEMENTS {
        return false;
    }
    let request = requests.entry(txid).or_default();
    if request.announcers.contains(&id) {
        return false;
    }
    request.announcers.push(id);
    let ready_at = if peer.inbound {
        now + INBOUND_TX_REQUEST_DELAY
    } else {
        now
    };
    peer.tx_announced.insert(txid, ready_at);
    peer.tx_to_request.push_back((txid, ready_at));
    true
}
