// ChainCore explorer: a one-page client of the node's REST API (esplora's
// shapes) and its event stream (GET /events). Plain ES2020 module, no
// framework, no build step, nothing loaded from elsewhere.
//
// Rule for everything below: data from the API reaches the page only as
// text (DOM nodes built here, strings through textContent), never as
// markup. Blocks, transactions and peers' user agents come from strangers.
//
// Amounts are integers in base units (1 CC = 100 000 000 units): they are
// shown with BigInt arithmetic, never through floating point.

const COIN = 100000000n;
/** Transactions per page of /block/:hash/txs (esplora's page). */
const BLOCK_TXS_PAGE = 25;
/** Confirmed transactions per page of an address's history (esplora's). */
const ADDRESS_TXS_PAGE = 25;
/** Inputs or outputs listed per transaction in a list before "more". */
const LIST_IO = 8;
/** Unspent outputs per page of the address page (the node's own paging,
 *  `?limit=`; without it an address with over 1 000 gets a 400). */
const UTXOS_PAGE = 100;
/** How often the mempool and peers pages read their figures again. */
const POLL_MS = 10000;

// ---------------------------------------------------------------- data

/** JSON.parse that keeps integers beyond 2^53 exact (as BigInt) where the
 *  browser passes the source text to the reviver; elsewhere as numbers. */
function parseJson(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === 'number' && !Number.isSafeInteger(value) &&
    context && typeof context.source === 'string' && /^-?\d+$/.test(context.source)
      ? BigInt(context.source)
      : value);
}

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET `path` from the node; a non-2xx answer throws an ApiError with the
 *  node's own message. */
async function get(path, accept) {
  const response = await fetch(path, { headers: { Accept: accept } });
  const body = await response.text();
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let code;
    try {
      const error = JSON.parse(body);
      if (typeof error.error === 'string') {
        message = error.error;
        code = error.code;
      }
    } catch (_) {
      // Not the API's JSON error: keep the status line.
    }
    throw new ApiError(response.status, message, code);
  }
  return { response, body };
}

/** GET `path`: JSON, or text with `{text: true}`. */
async function api(path, { text = false } = {}) {
  const { body } = await get(path, text ? 'text/plain' : 'application/json');
  return text ? body.trim() : parseJson(body);
}

/** GET a page of a list: its items, and the next page's path from the
 *  `Link: <...>; rel="next"` header (RFC 8288), if the node names one on
 *  this origin. */
async function apiPage(path) {
  const { response, body } = await get(path, 'application/json');
  const link = /<(\/[^>]*)>\s*;\s*rel="?next"?/.exec(response.headers.get('Link') || '');
  return { items: parseJson(body), next: link && !link[1].startsWith('//') ? link[1] : null };
}

/** Whether `path` exists (404: no; any other failure throws). */
async function exists(path) {
  try {
    await api(path);
    return true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return false;
    throw e;
  }
}

// ---------------------------------------------------------------- DOM

/** Builds an element. `props`: `class`, `testid` (data-testid), `data`
 *  (dataset), `on<event>` listeners, any other attribute by name; children
 *  are nodes or strings (strings become text nodes). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'testid') el.dataset.testid = value;
    else if (key === 'data') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);

function link(href, ...children) {
  return h('a', { href }, ...children);
}

/** A hash shortened for lists (the whole one in the title and the link). */
function short(hash) {
  const s = String(hash);
  return s.length > 20 ? `${s.slice(0, 10)}…${s.slice(-8)}` : s;
}

const blockHref = (hash) => `#/block/${hash}`;
const txHref = (txid) => `#/tx/${txid}`;
const addressHref = (address) => `#/address/${encodeURIComponent(address)}`;

function hashLink(href, hash, { full = false, testid } = {}) {
  return h('a', { href, class: 'hash', title: String(hash), testid }, full ? String(hash) : short(hash));
}

function addressLink(address, testid) {
  if (!address) return h('span', { class: 'muted' }, 'no address');
  return h('a', { href: addressHref(address), class: 'hash', testid }, String(address));
}

// ---------------------------------------------------------------- formats

function toBigInt(value) {
  return typeof value === 'bigint' ? value : BigInt(value);
}

/** Base units as CC with all 8 decimals, e.g. 1234567890 → "12.34567890". */
function formatUnits(units) {
  const value = toBigInt(units);
  const negative = value < 0n;
  const abs = negative ? -value : value;
  const whole = (abs / COIN).toString();
  const fraction = (abs % COIN).toString().padStart(8, '0');
  return `${negative ? '-' : ''}${whole}.${fraction}`;
}

/** An amount: its exact units in data-units (for tests and copying). */
function amount(units, { signed = false, testid } = {}) {
  const value = toBigInt(units);
  const sign = signed && value > 0n ? '+' : '';
  const cls = signed ? (value > 0n ? 'amount pos' : value < 0n ? 'amount neg' : 'amount') : 'amount';
  return h('span', { class: cls, testid, data: { units: value.toString() } },
    `${sign}${formatUnits(value)} CC`);
}

function formatCount(n) {
  return Number(n).toLocaleString('en-US');
}

function formatBytes(n) {
  return `${formatCount(n)} B`;
}

function formatTime(seconds) {
  return new Date(Number(seconds) * 1000).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
}

function formatAgo(seconds) {
  const diff = Math.round(Date.now() / 1000 - Number(seconds));
  if (diff < 0) return 'in the future';
  if (diff < 90) return `${diff} s ago`;
  if (diff < 5400) return `${Math.round(diff / 60)} min ago`;
  if (diff < 172800) return `${Math.round(diff / 3600)} h ago`;
  return `${Math.round(diff / 86400)} days ago`;
}

function time(seconds) {
  return h('time', { datetime: new Date(Number(seconds) * 1000).toISOString(), title: formatAgo(seconds) },
    formatTime(seconds));
}

function formatDifficulty(d) {
  const n = Number(d);
  return n >= 1 ? n.toLocaleString('en-US', { maximumFractionDigits: 2 }) : n.toPrecision(4);
}

function formatBits(bits) {
  return `0x${Number(bits).toString(16).padStart(8, '0')}`;
}

/** Fee rate in base units per virtual byte. */
function feeRate(fee, weight) {
  const vsize = Math.ceil(Number(weight) / 4);
  return vsize > 0 ? `${(Number(fee) / vsize).toFixed(2)} units/vB` : '–';
}

function vsizeOf(tx) {
  return Math.ceil(Number(tx.weight) / 4);
}

// ---------------------------------------------------------------- state

const state = {
  /** Height of the node's tip as last read or announced. */
  tipHeight: null,
  /** Events that moved the tip so far. */
  tipEvents: 0,
  /** The page on screen: `{name, onBlock, onAddress, leave, watch}`. */
  page: {},
  /** Bumped by every render: an older render's answers are dropped. */
  generation: 0,
  /** Highest block the home page has shown (new ones above it flash). */
  homeTop: null,
  refreshTimer: null,
};

/** A confirmation count that follows the tip (see updateConfirmations). */
function confirmations(height, testid) {
  const el = h('span', { class: 'confirmations', testid, data: { confHeight: String(height) } });
  setConfirmations(el);
  return el;
}

function setConfirmations(el) {
  const height = Number(el.dataset.confHeight);
  const count = state.tipHeight === null ? 1 : Math.max(1, state.tipHeight - height + 1);
  el.textContent = formatCount(count);
}

function updateConfirmations() {
  for (const el of document.querySelectorAll('[data-conf-height]')) setConfirmations(el);
}

// ---------------------------------------------------------------- layout helpers

function section(title, ...children) {
  return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, ...children);
}

/** A definition list of [label, value, testid?] rows. */
function facts(rows) {
  return h('dl', { class: 'facts' },
    rows.filter(Boolean).map(([label, value, testid]) => [
      h('dt', {}, label),
      h('dd', { testid }, value),
    ]));
}

function stat(label, value, testid) {
  return h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, label),
    h('div', { class: 'stat-value', testid }, value));
}

function table(headings, rows, { testid, empty = 'Nothing here.' } = {}) {
  if (rows.length === 0) return h('p', { class: 'muted', testid: testid && `${testid}-empty` }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', { testid },
      h('thead', {}, h('tr', {}, headings.map(([text, cls]) => h('th', { class: cls }, text)))),
      h('tbody', {}, rows)));
}

function errorBox(error) {
  const notFound = error instanceof ApiError && error.status === 404;
  return h('div', { class: 'card error-card', testid: 'error', data: { status: String(error.status || '') } },
    h('h1', {}, notFound ? 'Not found' : 'Something went wrong'),
    h('p', {}, error.message || String(error)),
    h('p', {}, link('#/', 'Back to the latest blocks')));
}

// ---------------------------------------------------------------- transactions

/** What `tx` did to `address`: received minus spent, in base units. */
function netChange(tx, address) {
  let net = 0n;
  for (const out of tx.vout) {
    if (out.scriptpubkey_address === address) net += toBigInt(out.value);
  }
  for (const input of tx.vin) {
    if (input.prevout && input.prevout.scriptpubkey_address === address) net -= toBigInt(input.prevout.value);
  }
  return net;
}

function txStatus(tx) {
  if (!tx.status || !tx.status.confirmed) {
    return h('span', { class: 'badge pending', testid: 'tx-pending' }, 'unconfirmed');
  }
  return h('span', {}, 'block ', link(blockHref(tx.status.block_hash), formatCount(tx.status.block_height)),
    ' · ', confirmations(tx.status.block_height), ' conf.');
}

/** A transaction in a list: inputs → outputs, fee and status. */
function txCard(tx, { address } = {}) {
  const inputs = tx.vin.slice(0, LIST_IO).map((input) =>
    input.is_coinbase
      ? h('li', {}, h('span', { class: 'badge coinbase' }, 'coinbase'), ' new coins')
      : h('li', {}, addressLink(input.prevout && input.prevout.scriptpubkey_address),
        ' ', input.prevout ? amount(input.prevout.value) : null));
  const outputs = tx.vout.slice(0, LIST_IO).map((out) =>
    h('li', {}, addressLink(out.scriptpubkey_address), ' ', amount(out.value)));
  const more = (n) => (n > LIST_IO ? h('li', {}, link(txHref(tx.txid), `${n - LIST_IO} more…`)) : null);
  return h('article', { class: 'tx', testid: 'tx-card', data: { txid: tx.txid } },
    h('div', { class: 'tx-head' },
      hashLink(txHref(tx.txid), tx.txid, { full: true }),
      address !== undefined ? amount(netChange(tx, address), { signed: true, testid: 'net-change' }) : null),
    h('div', { class: 'tx-io' },
      h('ul', { class: 'io' }, inputs, more(tx.vin.length)),
      h('div', { class: 'arrow', 'aria-hidden': 'true' }, '→'),
      h('ul', { class: 'io' }, outputs, more(tx.vout.length))),
    h('div', { class: 'tx-foot muted' },
      tx.vin.some((i) => i.is_coinbase) ? 'coinbase' : ['fee ', amount(tx.fee)],
      ` · ${formatBytes(tx.size)} · `, txStatus(tx)));
}

// ---------------------------------------------------------------- pages

async function homePage() {
  const [blocks, status, mempool] = await Promise.all([api('/blocks'), api('/status'), api('/mempool')]);
  const tip = blocks[0];
  const previousTop = state.homeTop;
  state.homeTop = tip ? tip.height : null;
  const rows = blocks.map((block) => blockRow(block, previousTop !== null && block.height > previousTop));
  const tbody = h('tbody', {}, rows);
  const older = h('button', { type: 'button', class: 'more', testid: 'older-blocks' }, 'Older blocks');
  older.hidden = !blocks.length || blocks[blocks.length - 1].height === 0;
  older.addEventListener('click', async () => {
    const last = tbody.lastElementChild;
    const below = Number(last.dataset.height) - 1;
    older.disabled = true;
    try {
      const more = await api(`/blocks/${below}`);
      for (const block of more) tbody.append(blockRow(block, false));
      older.hidden = !more.length || more[more.length - 1].height === 0;
    } catch (e) {
      older.replaceWith(errorBox(e));
    } finally {
      older.disabled = false;
    }
  });
  const sync = status.sync || {};
  const view = [
    h('div', { class: 'stats' },
      stat('Tip height', tip ? formatCount(tip.height) : '–', 'tip-height'),
      stat('Tip', tip ? hashLink(blockHref(tip.id), tip.id, { testid: 'tip-hash' }) : '–'),
      stat('Sync', `${Number(sync.percent || 0).toFixed(1)} %`, 'home-sync'),
      stat('Peers', formatCount(status.peers || 0), 'home-peers'),
      stat('Mempool', link('#/mempool', `${formatCount(mempool.count)} tx`), 'home-mempool-count'),
      stat('Mempool size', formatBytes(mempool.vsize), 'home-mempool-vsize')),
    section('Latest blocks',
      h('div', { class: 'table-wrap' },
        h('table', { class: 'blocks', testid: 'blocks' },
          h('thead', {}, h('tr', {},
            h('th', {}, 'Height'), h('th', {}, 'Hash'), h('th', { class: 'wide' }, 'Time'),
            h('th', { class: 'num' }, 'Txs'), h('th', { class: 'num wide' }, 'Size'))),
          tbody)),
      older),
  ];
  return { name: 'home', title: 'Latest blocks', view, onBlock: scheduleRefresh };
}

function blockRow(block, fresh) {
  return h('tr', { class: fresh ? 'fresh' : null, testid: 'block-row', data: { height: String(block.height), hash: block.id } },
    h('td', {}, link(blockHref(block.id), formatCount(block.height))),
    h('td', {}, hashLink(blockHref(block.id), block.id)),
    h('td', { class: 'wide' }, time(block.timestamp)),
    h('td', { class: 'num' }, formatCount(block.tx_count)),
    h('td', { class: 'num wide' }, formatBytes(block.size)));
}

async function blockPage(hash, startText) {
  const start = Number(startText || 0);
  if (start % BLOCK_TXS_PAGE !== 0) throw new ApiError(404, `no page of transactions starts at ${start}`);
  const [block, status, txs] = await Promise.all([
    api(`/block/${hash}`),
    api(`/block/${hash}/status`),
    api(start ? `/block/${hash}/txs/${start}` : `/block/${hash}/txs`),
  ]);
  const pager = h('nav', { class: 'pager', 'aria-label': 'Transaction pages' },
    start > 0 ? link(`#/block/${hash}/${start - BLOCK_TXS_PAGE}`, '← Previous') : h('span'),
    h('span', { class: 'muted', testid: 'block-txs-range' },
      `${formatCount(Math.min(start + 1, block.tx_count))}–${formatCount(start + txs.length)} of ${formatCount(block.tx_count)}`),
    start + BLOCK_TXS_PAGE < block.tx_count
      ? h('a', { href: `#/block/${hash}/${start + BLOCK_TXS_PAGE}`, testid: 'block-txs-next' }, 'Next →')
      : h('span'));
  const view = [
    h('h1', {}, 'Block ', h('span', { testid: 'block-height' }, formatCount(block.height))),
    section(null, facts([
      ['Hash', h('span', { class: 'hash', testid: 'block-hash' }, block.id)],
      ['Confirmations', status.in_best_chain
        ? confirmations(block.height, 'block-confirmations')
        : h('span', { class: 'badge pending', testid: 'block-confirmations' }, 'not in the best chain')],
      ['Time', time(block.timestamp)],
      ['Median time', time(block.mediantime)],
      ['Transactions', formatCount(block.tx_count), 'block-tx-count'],
      ['Size', formatBytes(block.size)],
      ['Weight', `${formatCount(block.weight)} WU`],
      ['Version', String(block.version)],
      ['Bits', formatBits(block.bits)],
      ['Nonce', String(block.nonce)],
      ['Difficulty', formatDifficulty(block.difficulty)],
      ['Chain work', h('span', { class: 'hash' }, `0x${String(block.chain_work).replace(/^0+(?=.)/, '')}`)],
      ['Merkle root', h('span', { class: 'hash' }, block.merkle_root)],
      ['Previous block', block.previousblockhash
        ? hashLink(blockHref(block.previousblockhash), block.previousblockhash, { full: true, testid: 'block-prev' })
        : h('span', { class: 'muted' }, 'none (genesis)')],
      ['Next block', status.next_best
        ? hashLink(blockHref(status.next_best), status.next_best, { full: true, testid: 'block-next' })
        : h('span', { class: 'muted' }, 'none yet')],
    ])),
    section('Transactions', pager, h('div', { class: 'txs', testid: 'block-txs' }, txs.map((tx) => txCard(tx))), pager.cloneNode(true)),
  ];
  // The tip's next block and any reorganisation need a fresh read; deeper
  // blocks only gain confirmations (updated in place).
  const onBlock = status.next_best ? null : scheduleRefresh;
  return { name: 'block', title: `Block ${block.height}`, view, onBlock };
}

async function txPage(txid) {
  const tx = await api(`/tx/${txid}`);
  const [outspends, proof] = await Promise.all([
    api(`/tx/${txid}/outspends`),
    tx.status.confirmed ? api(`/tx/${txid}/merkle-proof`) : null,
  ]);
  const coinbase = tx.vin.some((input) => input.is_coinbase);
  const inputs = tx.vin.map((input, index) => h('tr', { testid: 'vin', data: { index: String(index) } },
    h('td', { class: 'num' }, String(index)),
    input.is_coinbase
      ? h('td', { colspan: '3' }, h('span', { class: 'badge coinbase', testid: 'coinbase' }, 'coinbase'),
        ' new coins: the block reward and the fees of the block')
      : [
        h('td', {}, link(txHref(input.txid), h('span', { class: 'hash', title: input.txid }, `${short(input.txid)}:${input.vout}`))),
        h('td', {}, addressLink(input.prevout && input.prevout.scriptpubkey_address, 'vin-address')),
        h('td', { class: 'num' }, input.prevout ? amount(input.prevout.value, { testid: 'vin-value' }) : '–'),
      ]));
  const outputs = tx.vout.map((out, index) => {
    const spend = outspends[index] || { spent: false };
    return h('tr', { testid: 'vout', data: { index: String(index), spent: String(Boolean(spend.spent)) } },
      h('td', { class: 'num' }, String(index)),
      h('td', {}, addressLink(out.scriptpubkey_address, 'vout-address')),
      h('td', { class: 'num' }, amount(out.value, { testid: 'vout-value' })),
      h('td', { testid: 'vout-spent' }, spend.spent
        ? ['spent by ', link(txHref(spend.txid), h('span', { class: 'hash', title: spend.txid }, `${short(spend.txid)}:${spend.vin}`)),
          spend.status && !spend.status.confirmed ? h('span', { class: 'muted' }, ' (unconfirmed)') : null]
        : h('span', { class: 'muted' }, 'unspent')));
  });
  const status = tx.status.confirmed
    ? [
      ['Status', h('span', { testid: 'tx-status', data: { confirmed: 'true' } }, 'confirmed in block ',
        link(blockHref(tx.status.block_hash), formatCount(tx.status.block_height)))],
      ['Confirmations', confirmations(tx.status.block_height, 'tx-confirmations')],
      ['Block time', time(tx.status.block_time)],
    ]
    : [
      ['Status', h('span', { class: 'badge pending', testid: 'tx-status', data: { confirmed: 'false' } }, 'unconfirmed: in the mempool')],
      ['Confirmations', h('span', { testid: 'tx-confirmations' }, '0')],
    ];
  const view = [
    h('h1', {}, coinbase ? 'Coinbase transaction' : 'Transaction'),
    section(null, facts([
      ['Txid', h('span', { class: 'hash', testid: 'txid' }, tx.txid)],
      ...status,
      ['Fee', coinbase ? h('span', { testid: 'tx-fee', data: { units: '0' } }, 'none (coinbase)') : amount(tx.fee, { testid: 'tx-fee' })],
      coinbase ? null : ['Fee rate', feeRate(tx.fee, tx.weight), 'tx-fee-rate'],
      ['Size', formatBytes(tx.size), 'tx-size'],
      ['Virtual size', `${formatCount(vsizeOf(tx))} vB (${formatCount(tx.weight)} WU)`],
      ['Version', String(tx.version)],
      ['Lock time', String(tx.locktime)],
    ])),
    section(`Inputs (${tx.vin.length})`, table(
      [['#', 'num'], ['Previous output'], ['Address'], ['Value', 'num']], inputs, { testid: 'inputs' })),
    section(`Outputs (${tx.vout.length})`, table(
      [['#', 'num'], ['Address'], ['Value', 'num'], ['Spent']], outputs, { testid: 'outputs' })),
    proof ? section('Merkle proof', facts([
      ['Block height', formatCount(proof.block_height), 'merkle-height'],
      ['Position', String(proof.pos), 'merkle-pos'],
      ['Branch', proof.merkle.length
        ? h('ol', { class: 'branch', testid: 'merkle-branch', start: '0' }, proof.merkle.map((hash) => h('li', { class: 'hash' }, hash)))
        : h('span', { class: 'muted', testid: 'merkle-branch' }, 'empty: the only transaction of its block')],
    ]), h('p', { class: 'muted small' },
      'Hash the txid with each branch hash in turn (on the left when the position\'s bit is 1) to get the block\'s merkle root.'))
      : null,
  ];
  // A block may confirm it, or spend its outputs: read it again.
  return { name: 'tx', title: `Transaction ${short(txid)}`, view, onBlock: scheduleRefresh };
}

async function addressPage(address) {
  const [info, utxoPage, txs] = await Promise.all([
    api(`/address/${encodeURIComponent(address)}`),
    apiPage(`/address/${encodeURIComponent(address)}/utxo?limit=${UTXOS_PAGE}`),
    api(`/address/${encodeURIComponent(address)}/txs`),
  ]);
  const chain = info.chain_stats;
  const pool = info.mempool_stats;
  const confirmed = toBigInt(chain.funded_txo_sum) - toBigInt(chain.spent_txo_sum);
  const pending = toBigInt(pool.funded_txo_sum) - toBigInt(pool.spent_txo_sum);
  const history = h('div', { class: 'txs', testid: 'addr-txs' });
  const addTxs = (list) => {
    for (const tx of list) {
      const card = txCard(tx, { address });
      card.dataset.testid = 'addr-tx';
      history.append(card);
    }
  };
  addTxs(txs);
  const more = h('button', { type: 'button', class: 'more', testid: 'addr-more' }, 'Older transactions');
  let lastConfirmed = txs.filter((tx) => tx.status.confirmed);
  more.hidden = lastConfirmed.length < ADDRESS_TXS_PAGE;
  more.addEventListener('click', async () => {
    const last = lastConfirmed[lastConfirmed.length - 1];
    more.disabled = true;
    try {
      const page = await api(`/address/${encodeURIComponent(address)}/txs/chain/${last.txid}`);
      addTxs(page);
      lastConfirmed = page;
      more.hidden = page.length < ADDRESS_TXS_PAGE;
    } catch (e) {
      more.replaceWith(errorBox(e));
    } finally {
      more.disabled = false;
    }
  });
  const utxoRow = (utxo) => h('tr', { testid: 'utxo-row', data: { txid: utxo.txid, vout: String(utxo.vout) } },
    h('td', {}, link(txHref(utxo.txid), h('span', { class: 'hash', title: utxo.txid }, `${short(utxo.txid)}:${utxo.vout}`))),
    h('td', { class: 'num' }, amount(utxo.value)),
    h('td', {}, utxo.status && utxo.status.confirmed
      ? ['block ', formatCount(utxo.status.block_height), ' · ', confirmations(utxo.status.block_height), ' conf.']
      : h('span', { class: 'badge pending' }, 'unconfirmed')));
  const utxoTable = table([['Output'], ['Value', 'num'], ['Status']], utxoPage.items.map(utxoRow),
    { testid: 'utxos', empty: 'No unspent outputs.' });
  let nextUtxos = utxoPage.next;
  const moreUtxos = h('button', { type: 'button', class: 'more', testid: 'utxo-more' }, 'More unspent outputs');
  moreUtxos.hidden = !nextUtxos;
  moreUtxos.addEventListener('click', async () => {
    moreUtxos.disabled = true;
    try {
      const page = await apiPage(nextUtxos);
      $('tbody', utxoTable).append(...page.items.map(utxoRow));
      nextUtxos = page.next;
      moreUtxos.hidden = !nextUtxos;
    } catch (e) {
      moreUtxos.replaceWith(errorBox(e));
    } finally {
      moreUtxos.disabled = false;
    }
  });
  const view = [
    h('h1', {}, 'Address'),
    h('p', { class: 'hash big', testid: 'address' }, info.address),
    h('div', { class: 'stats' },
      stat('Confirmed balance', amount(confirmed, { testid: 'addr-confirmed' })),
      stat('Pending', amount(pending, { signed: true, testid: 'addr-pending' })),
      stat('Received in all', amount(chain.funded_txo_sum, { testid: 'addr-received' })),
      stat('Transactions', formatCount(Number(chain.tx_count) + Number(pool.tx_count)), 'addr-tx-count')),
    section(nextUtxos ? 'Unspent outputs' : `Unspent outputs (${formatCount(utxoPage.items.length)})`, utxoTable, moreUtxos),
    section('History', history.childElementCount ? history : h('p', { class: 'muted' }, 'No transactions.'), more),
  ];
  return {
    name: 'address',
    title: `Address ${address}`,
    view,
    watch: [address],
    // Its own activity (pending, confirmed, dropped) comes as address
    // events; other blocks only add confirmations (updated in place).
    onAddress: (event) => { if (event.address === address) scheduleRefresh(); },
  };
}

/** Fee-rate bands of the histogram, units per byte (lower bounds). */
const FEE_BANDS = [0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987];

function feeHistogram(histogram) {
  const bands = FEE_BANDS.map((low, i) => ({ low, high: FEE_BANDS[i + 1], vsize: 0 }));
  for (const [rate, vsize] of histogram) {
    let band = bands.length - 1;
    while (band > 0 && Number(rate) < bands[band].low) band -= 1;
    bands[band].vsize += Number(vsize);
  }
  const used = bands.filter((b) => b.vsize > 0);
  if (!used.length) return h('p', { class: 'muted', testid: 'fee-histogram-empty' }, 'The mempool is empty.');
  const top = bands.indexOf(used[used.length - 1]);
  const bottom = bands.indexOf(used[0]);
  const largest = Math.max(...used.map((b) => b.vsize));
  const rows = [];
  for (let i = top; i >= bottom; i -= 1) {
    const band = bands[i];
    const bar = h('div', { class: 'hist-bar' });
    // CSSOM, which the page's CSP allows (a style attribute it would not).
    bar.style.width = `${Math.max(band.vsize ? 1 : 0, (100 * band.vsize) / largest)}%`;
    rows.push(h('div', { class: 'hist-row', testid: 'fee-bar', data: { low: String(band.low), vsize: String(band.vsize) } },
      h('span', { class: 'hist-label' }, band.high === undefined ? `≥ ${band.low}` : `${band.low}–${band.high}`),
      h('span', { class: 'hist-track' }, bar),
      h('span', { class: 'hist-value' }, formatBytes(band.vsize))));
  }
  return h('div', { class: 'histogram', testid: 'fee-histogram', role: 'img',
    'aria-label': 'Mempool size by fee rate' },
  h('div', { class: 'hist-row hist-head muted' }, h('span', { class: 'hist-label' }, 'units/vB'), h('span'), h('span', { class: 'hist-value' }, 'vsize')),
  rows);
}

async function mempoolPage() {
  const [summary, recent] = await Promise.all([api('/mempool'), api('/mempool/recent')]);
  const rows = recent.map((tx) => h('tr', { testid: 'recent-row', data: { txid: tx.txid } },
    h('td', {}, hashLink(txHref(tx.txid), tx.txid)),
    h('td', { class: 'num' }, amount(tx.value)),
    h('td', { class: 'num' }, amount(tx.fee)),
    h('td', { class: 'num wide' }, formatBytes(tx.vsize)),
    h('td', { class: 'num' }, feeRate(tx.fee, Number(tx.vsize) * 4))));
  const view = [
    h('h1', {}, 'Mempool'),
    h('div', { class: 'stats' },
      stat('Transactions', formatCount(summary.count), 'mempool-count'),
      stat('Size', formatBytes(summary.vsize), 'mempool-vsize'),
      stat('Fees', amount(summary.total_fee, { testid: 'mempool-fee' }))),
    section('Fee rates', feeHistogram(summary.fee_histogram)),
    section('Recent transactions', table(
      [['Txid'], ['Value', 'num'], ['Fee', 'num'], ['Size', 'num wide'], ['Fee rate', 'num']], rows,
      { testid: 'recent', empty: 'None.' })),
  ];
  return { name: 'mempool', title: 'Mempool', view, onBlock: scheduleRefresh, poll: POLL_MS };
}

function formatUptime(seconds) {
  const s = Number(seconds);
  const d = Math.floor(s / 86400);
  const hrs = Math.floor((s % 86400) / 3600);
  const min = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${hrs} h` : hrs ? `${hrs} h ${min} min` : `${min} min ${s % 60} s`;
}

async function peersPage() {
  const [status, peers] = await Promise.all([api('/status'), api('/peers')]);
  const sync = status.sync || {};
  const percent = Number(sync.percent || 0);
  const progress = h('progress', { max: '100', value: String(percent), testid: 'sync-progress' });
  const rows = peers.map((peer) => h('tr', { testid: 'peer-row', data: { addr: String(peer.addr) } },
    h('td', { class: 'hash' }, String(peer.addr)),
    h('td', {}, peer.inbound ? 'inbound' : 'outbound'),
    h('td', {}, peer.ready ? 'ready' : h('span', { class: 'muted' }, 'handshake')),
    h('td', { class: 'agent', testid: 'peer-agent' }, peer.user_agent === null || peer.user_agent === undefined ? '–' : String(peer.user_agent)),
    h('td', { class: 'num' }, peer.start_height === null || peer.start_height === undefined ? '–' : formatCount(peer.start_height)),
    h('td', { class: 'num wide' }, formatCount(peer.blocks_in_flight || 0))));
  const view = [
    h('h1', {}, 'Peers and sync'),
    section('Sync',
      h('div', { class: 'sync' }, progress, h('span', { testid: 'sync-percent' }, `${percent.toFixed(1)} %`)),
      facts([
        ['Network', String(status.network), 'status-network'],
        ['Blocks', formatCount(status.tip.height), 'status-height'],
        ['Best header', formatCount(status.best_header.height), 'status-header-height'],
        ['Tip', hashLink(blockHref(status.tip.hash), status.tip.hash, { full: true })],
        ['Tip time', time(status.tip.time)],
        ['Download', `${Number(sync.blocks_per_sec || 0).toFixed(1)} blocks/s, ${formatCount(sync.blocks_in_flight || 0)} in flight`],
        ['Mempool', `${formatCount(status.mempool.count)} tx, ${formatBytes(status.mempool.bytes)}`],
        ['UTXO set', [`${formatCount(status.chainstate.utxo_count)} outputs, `, amount(status.chainstate.total_amount)]],
        ['UTXO digest', h('span', { class: 'hash' }, String(status.chainstate.utxo_digest))],
        ['Node', `ChainCore ${status.version}, up ${formatUptime(status.uptime_secs)}`],
      ])),
    section(`Peers (${formatCount(peers.length)})`, table(
      [['Address'], ['Direction'], ['State'], ['User agent'], ['Height', 'num'], ['In flight', 'num wide']], rows,
      { testid: 'peers', empty: 'No peers connected.' })),
  ];
  return { name: 'peers', title: 'Peers and sync', view, onBlock: scheduleRefresh, poll: POLL_MS };
}

function notFoundPage() {
  throw new ApiError(404, `There is no page ${location.hash}.`);
}

// ---------------------------------------------------------------- router

const ROUTES = [
  [/^\/?$/, homePage],
  [/^\/block\/([0-9a-fA-F]{64})(?:\/(\d+))?$/, blockPage],
  [/^\/tx\/([0-9a-fA-F]{64})$/, txPage],
  [/^\/address\/([1-9A-HJ-NP-Za-km-z]{20,60})$/, addressPage],
  [/^\/mempool$/, mempoolPage],
  [/^\/peers$/, peersPage],
];

function currentRoute() {
  let path;
  try {
    path = decodeURIComponent(location.hash.replace(/^#/, ''));
  } catch (_) {
    path = location.hash;
  }
  for (const [pattern, page] of ROUTES) {
    const match = pattern.exec(path);
    if (match) return [page, match.slice(1).map((p) => (p && /^[0-9a-fA-F]{64}$/.test(p) ? p.toLowerCase() : p))];
  }
  return [notFoundPage, []];
}

/** Renders the page the location names. A `quiet` render (a live update)
 *  keeps what is on screen until the new content is ready, and the
 *  scroll position. */
async function render({ quiet = false } = {}) {
  const generation = ++state.generation;
  clearTimeout(state.refreshTimer);
  const view = $('#view');
  const route = location.hash;
  const [page, params] = currentRoute();
  const tipEvents = state.tipEvents;
  if (!quiet) {
    view.dataset.state = 'loading';
    view.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  }
  let next;
  try {
    const [tip, built] = await Promise.all([
      api('/blocks/tip/height', { text: true }),
      page(...params),
    ]);
    if (generation !== state.generation) return;
    // An event that came meanwhile knows better than the read.
    if (state.tipEvents === tipEvents) state.tipHeight = Number(tip);
    next = built;
  } catch (error) {
    if (generation !== state.generation) return;
    next = { name: 'error', title: 'Error', view: [errorBox(error)] };
  }
  if (state.page.leave) state.page.leave();
  state.page = next;
  view.replaceChildren(...[next.view].flat(Infinity).filter((n) => n !== null && n !== undefined));
  view.dataset.page = next.name;
  view.dataset.route = route;
  view.dataset.state = 'ready';
  document.title = `${next.title} · ChainCore explorer`;
  updateConfirmations();
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === next.name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (next.poll) {
    const timer = setTimeout(() => render({ quiet: true }), next.poll);
    next.leave = () => clearTimeout(timer);
  }
  live.watch(next.watch || []);
  if (!quiet) window.scrollTo(0, 0);
}

/** A live update of the page on screen; a burst of events (a replay after
 *  a reconnect) makes one read, not one per event. */
function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => render({ quiet: true }), 150);
}

// ---------------------------------------------------------------- live

/** The event stream: one EventSource, watching the address on screen. The
 *  browser reconnects by itself and resumes with Last-Event-ID; when the
 *  node refuses the resume (too far behind, restarted on another chain)
 *  the stream is opened afresh and the page read again. */
const live = {
  source: null,
  key: null,
  retry: 1000,
  timer: null,

  watch(addresses) {
    const key = addresses.join(',');
    if (this.source && this.key === key && this.source.readyState !== EventSource.CLOSED) return;
    this.open(key);
  },

  open(key) {
    if (this.source) this.source.close();
    clearTimeout(this.timer);
    this.key = key;
    const query = new URLSearchParams({ mempool: 'false' });
    if (key) query.set('addresses', key);
    const source = new EventSource(`/events?${query}`);
    this.source = source;
    setLive('connecting');
    const data = (event) => parseJson(event.data);
    source.addEventListener('ready', (event) => {
      this.retry = 1000;
      setLive('live');
      // Whatever happened between the page's reads and this stream.
      const height = Number(String(data(event).position).split(':')[0]);
      if (height !== state.tipHeight) {
        setTip(height);
        scheduleRefresh();
      }
    });
    source.addEventListener('block', (event) => onBlock(data(event)));
    source.addEventListener('reorg', (event) => {
      setTip(Number(data(event).new_tip_height));
      scheduleRefresh();
    });
    source.addEventListener('address', (event) => {
      if (state.page.onAddress) state.page.onAddress(data(event));
    });
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        setLive('offline');
        this.timer = setTimeout(() => { this.open(this.key); scheduleRefresh(); }, this.retry);
        this.retry = Math.min(this.retry * 2, 60000);
      } else {
        setLive('reconnecting');
      }
    };
  },
};

function setTip(height) {
  state.tipHeight = height;
  state.tipEvents += 1;
}

function onBlock(block) {
  setTip(Number(block.height));
  updateConfirmations();
  if (state.page.onBlock) state.page.onBlock(block);
}

function setLive(mode) {
  const el = $('#live');
  el.dataset.state = mode;
  el.textContent = mode;
}

// ---------------------------------------------------------------- search

function searchError(message) {
  const el = $('#search-error');
  el.textContent = message || '';
  el.hidden = !message;
}

/** A height, a block hash, a txid (a transaction first, then a block) or
 *  an address; goes to its page or says why not. */
async function search(query) {
  const q = query.trim();
  searchError(null);
  if (!q) return;
  try {
    let target;
    if (/^\d{1,10}$/.test(q)) {
      target = blockHref(await api(`/block-height/${q}`, { text: true }));
    } else if (/^[0-9a-fA-F]{64}$/.test(q)) {
      const id = q.toLowerCase();
      if (await exists(`/tx/${id}`)) target = txHref(id);
      else if (await exists(`/block/${id}`)) target = blockHref(id);
      else throw new Error(`No transaction or block ${id} on this node.`);
    } else if (/^[1-9A-HJ-NP-Za-km-z]{20,60}$/.test(q)) {
      await api(`/address/${encodeURIComponent(q)}`);
      target = addressHref(q);
    } else {
      throw new Error('Search for a block height, a block hash, a txid or an address.');
    }
    $('#search').value = '';
    $('#search').blur();
    if (location.hash === target) render();
    else location.hash = target;
  } catch (e) {
    searchError(e.message);
  }
}

// ---------------------------------------------------------------- start

async function start() {
  $('#search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    search($('#search').value);
  });
  window.addEventListener('hashchange', () => {
    searchError(null);
    render();
  });
  api('/status').then((status) => {
    $('#network').textContent = String(status.network);
  }).catch(() => {});
  await render();
}

start();
