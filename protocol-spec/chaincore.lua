-- Wireshark dissector for the ChainCore peer-to-peer protocol.
--
-- Usage: tshark -X lua_script:protocol-spec/chaincore.lua -r capture.pcap
--        (or copy into Wireshark's personal plugins folder).
-- Registers on the default P2P ports of every network (7333, 17333, 27333)
-- and heuristically on TCP streams that start with a ChainCore magic.
-- Frames: magic[4] command[12] length u32le checksum[4] payload; see
-- protocol-spec/README.md sections 9 and 10. Every loop is bounded by the
-- bytes present; TCP reassembly is done by dissect_tcp_pdus.
--
-- A frame the node refuses (section 12: limits, encoding, handshake order)
-- carries expert info under chaincore.expert.* (filter:
-- chaincore.expert.oversize, or `_ws.expert.severity == error && chaincore`
-- for all of them).

local bit = bit32

local NETWORKS = {
    ["c4c012e1"] = "main",
    ["c4c07e57"] = "test",
    ["c4c0de7e"] = "regtest",
}
local PORTS = { 7333, 17333, 27333 }
local HEADER_LEN = 24

-- The limits the node enforces, by the names and values of
-- src/wire/constants.rs and src/consensus/limits.rs (a test compares them):
-- a frame over one of them is a violation, and the node disconnects its
-- sender.
local MAX_HANDSHAKE_PAYLOAD = 1024
local MAX_PAYLOAD = 4194304
local MAX_ADDR_ENTRIES = 1000
local MAX_INV_ENTRIES = 50000
local MAX_LOCATOR_HASHES = 101
local MAX_HEADERS = 2000
local MAX_USER_AGENT_LEN = 256
local MAX_BLOCK_TXS = 100000
local MAX_TX_INPUTS = 20831
local MAX_TX_OUTPUTS = 35711
local MAX_BLOCK_PAYLOAD = 1000000
local MAX_TX_PAYLOAD = 999920
local MAX_HEADERS_PAYLOAD = 160003

-- Commands held to a payload limit of their own, below MAX_PAYLOAD
-- (`max_payload_of` in src/wire/constants.rs).
local COMMAND_MAX_PAYLOAD = {
    block = MAX_BLOCK_PAYLOAD,
    tx = MAX_TX_PAYLOAD,
    headers = MAX_HEADERS_PAYLOAD,
}

local proto = Proto("chaincore", "ChainCore P2P")

local prefs = proto.prefs
prefs.verify_checksum = Pref.bool("Verify checksums", true, "Compute sha256d of each payload")
prefs.max_verify = Pref.uint("Largest payload to verify", 1048576,
    "Payloads above this many bytes are not hashed (pure-Lua SHA-256 is slow)")

-- Other types (a later version's) are ignored by the node, not refused.
local INV_TYPES = { [1] = "tx", [2] = "block" }

local f = {
    magic = ProtoField.bytes("chaincore.magic", "Magic"),
    network = ProtoField.string("chaincore.network", "Network"),
    command = ProtoField.string("chaincore.command", "Command"),
    length = ProtoField.uint32("chaincore.length", "Payload length"),
    checksum = ProtoField.bytes("chaincore.checksum", "Checksum"),
    checksum_status = ProtoField.string("chaincore.checksum.status", "Checksum status"),
    payload = ProtoField.bytes("chaincore.payload", "Payload"),

    version_protocol = ProtoField.uint32("chaincore.version.protocol", "Protocol version"),
    version_services = ProtoField.uint64("chaincore.version.services", "Services", base.HEX),
    version_timestamp = ProtoField.uint64("chaincore.version.timestamp", "Timestamp"),
    version_height = ProtoField.uint32("chaincore.version.start_height", "Start height"),
    version_nonce = ProtoField.uint64("chaincore.version.nonce", "Nonce", base.HEX),
    version_port = ProtoField.uint16("chaincore.version.listen_port", "Listen port"),
    version_agent_len = ProtoField.uint32("chaincore.version.user_agent_length", "User agent length"),
    version_agent = ProtoField.string("chaincore.version.user_agent", "User agent"),

    nonce = ProtoField.uint64("chaincore.ping.nonce", "Nonce", base.HEX),

    addr_count = ProtoField.uint32("chaincore.addr.count", "Address count"),
    addr_time = ProtoField.uint32("chaincore.addr.time", "Last seen"),
    addr_services = ProtoField.uint64("chaincore.addr.services", "Services", base.HEX),
    addr_ip = ProtoField.ipv6("chaincore.addr.ip", "Address"),
    addr_port = ProtoField.uint16("chaincore.addr.port", "Port"),

    inv_count = ProtoField.uint32("chaincore.inv.count", "Inventory count"),
    inv_type = ProtoField.uint32("chaincore.inv.type", "Type", base.DEC, INV_TYPES),
    inv_hash = ProtoField.string("chaincore.inv.hash", "Hash"),

    locator_count = ProtoField.uint32("chaincore.getheaders.locator_count", "Locator hashes"),
    locator_hash = ProtoField.string("chaincore.getheaders.locator", "Locator hash"),
    stop_hash = ProtoField.string("chaincore.getheaders.stop", "Stop hash"),

    headers_count = ProtoField.uint32("chaincore.headers.count", "Header count"),
    header_hash = ProtoField.string("chaincore.header.hash", "Block hash"),
    header_version = ProtoField.uint32("chaincore.header.version", "Version"),
    header_prev = ProtoField.string("chaincore.header.prev_hash", "Previous block"),
    header_merkle = ProtoField.string("chaincore.header.merkle_root", "Merkle root"),
    header_time = ProtoField.uint32("chaincore.header.time", "Time"),
    header_bits = ProtoField.uint32("chaincore.header.bits", "Bits", base.HEX),
    header_nonce = ProtoField.uint32("chaincore.header.nonce", "Nonce"),

    block_tx_count = ProtoField.uint32("chaincore.block.tx_count", "Transaction count"),

    tx_txid = ProtoField.string("chaincore.tx.txid", "Txid"),
    tx_version = ProtoField.uint32("chaincore.tx.version", "Version"),
    tx_in_count = ProtoField.uint32("chaincore.tx.input_count", "Input count"),
    tx_prev_txid = ProtoField.string("chaincore.tx.prevout.txid", "Previous txid"),
    tx_prev_vout = ProtoField.uint32("chaincore.tx.prevout.vout", "Previous vout"),
    tx_coinbase_height = ProtoField.uint32("chaincore.tx.coinbase.height", "Coinbase height"),
    tx_coinbase_nonce = ProtoField.uint64("chaincore.tx.coinbase.extra_nonce", "Extra nonce"),
    tx_pubkey = ProtoField.bytes("chaincore.tx.pubkey", "Public key"),
    tx_signature = ProtoField.bytes("chaincore.tx.signature", "Signature (r, s over the v2 sighash, spec section 4)"),
    tx_out_count = ProtoField.uint32("chaincore.tx.output_count", "Output count"),
    tx_amount = ProtoField.uint64("chaincore.tx.output.amount", "Amount (units)"),
    tx_owner = ProtoField.bytes("chaincore.tx.output.owner", "Owner (hash160)"),
    tx_lock_time = ProtoField.uint32("chaincore.tx.lock_time", "Lock time"),
}

local fields = {}
for _, field in pairs(f) do
    table.insert(fields, field)
end
proto.fields = fields

-- Expert info: everything the node treats as a violation is an error (the
-- node disconnects the sender); an unknown command is only a note (the node
-- ignores it).
local ef = {
    wrong_magic = ProtoExpert.new("chaincore.expert.wrong_magic",
        "Magic is not this connection's network",
        expert.group.PROTOCOL, expert.severity.ERROR),
    bad_command = ProtoExpert.new("chaincore.expert.bad_command",
        "Command is not printable ASCII padded with NUL bytes",
        expert.group.PROTOCOL, expert.severity.ERROR),
    oversize = ProtoExpert.new("chaincore.expert.oversize",
        "Payload length exceeds MAX_PAYLOAD",
        expert.group.PROTOCOL, expert.severity.ERROR),
    handshake_payload_too_large = ProtoExpert.new("chaincore.expert.handshake_payload_too_large",
        "Payload length exceeds MAX_HANDSHAKE_PAYLOAD before the handshake",
        expert.group.PROTOCOL, expert.severity.ERROR),
    message_before_handshake = ProtoExpert.new("chaincore.expert.message_before_handshake",
        "Message before the sender's version and verack",
        expert.group.SEQUENCE, expert.severity.ERROR),
    duplicate_version = ProtoExpert.new("chaincore.expert.duplicate_version",
        "Second version from this sender",
        expert.group.SEQUENCE, expert.severity.ERROR),
    unexpected_verack = ProtoExpert.new("chaincore.expert.unexpected_verack",
        "verack repeated, or before the receiver's version",
        expert.group.SEQUENCE, expert.severity.ERROR),
    bad_checksum = ProtoExpert.new("chaincore.expert.bad_checksum", "Checksum mismatch",
        expert.group.CHECKSUM, expert.severity.ERROR),
    count_over_limit = ProtoExpert.new("chaincore.expert.count_over_limit",
        "Count over its limit",
        expert.group.PROTOCOL, expert.severity.ERROR),
    noncanonical_compact_size = ProtoExpert.new("chaincore.expert.noncanonical_compact_size",
        "Non-canonical compact size",
        expert.group.MALFORMED, expert.severity.ERROR),
    malformed = ProtoExpert.new("chaincore.expert.malformed", "Malformed payload",
        expert.group.MALFORMED, expert.severity.ERROR),
    unknown_command = ProtoExpert.new("chaincore.expert.unknown_command",
        "Unknown command (ignored by the node)",
        expert.group.UNDECODED, expert.severity.NOTE),
}
local experts = {}
for _, e in pairs(ef) do
    table.insert(experts, e)
end
proto.experts = experts

---------------------------------------------------------------------------
-- SHA-256 (FIPS 180-4) in Lua 5.2 with bit32, for checksum verification.
---------------------------------------------------------------------------
local K = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rrotate, rshift = bit.rrotate, bit.rshift

local function sha256(msg)
    local h = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
    local len = #msg
    local extra = 64 - ((len + 9) % 64)
    if extra == 64 then extra = 0 end
    local bits = len * 8
    local tail = { "\128", string.rep("\0", extra) }
    local lenbytes = {}
    for i = 7, 0, -1 do
        lenbytes[#lenbytes + 1] = string.char(math.floor(bits / 2 ^ (8 * i)) % 256)
    end
    msg = msg .. table.concat(tail) .. table.concat(lenbytes)
    local w = {}
    for chunk = 1, #msg, 64 do
        for i = 0, 15 do
            local a, b, c, d = msg:byte(chunk + 4 * i, chunk + 4 * i + 3)
            w[i] = bor(a * 0x1000000, b * 0x10000, c * 0x100, d)
        end
        for i = 16, 63 do
            local s0 = bxor(rrotate(w[i - 15], 7), rrotate(w[i - 15], 18), rshift(w[i - 15], 3))
            local s1 = bxor(rrotate(w[i - 2], 17), rrotate(w[i - 2], 19), rshift(w[i - 2], 10))
            w[i] = band(w[i - 16] + s0 + w[i - 7] + s1, 0xffffffff)
        end
        local a, b, c, d, e, f2, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
        for i = 0, 63 do
            local s1 = bxor(rrotate(e, 6), rrotate(e, 11), rrotate(e, 25))
            local ch = bxor(band(e, f2), band(bnot(e), g))
            local t1 = hh + s1 + ch + K[i + 1] + w[i]
            local s0 = bxor(rrotate(a, 2), rrotate(a, 13), rrotate(a, 22))
            local maj = bxor(band(a, b), band(a, c), band(b, c))
            local t2 = s0 + maj
            hh, g, f2, e, d, c, b, a = g, f2, e, band(d + t1, 0xffffffff), c, b, a, band(t1 + t2, 0xffffffff)
        end
        h[1] = band(h[1] + a, 0xffffffff); h[2] = band(h[2] + b, 0xffffffff)
        h[3] = band(h[3] + c, 0xffffffff); h[4] = band(h[4] + d, 0xffffffff)
        h[5] = band(h[5] + e, 0xffffffff); h[6] = band(h[6] + f2, 0xffffffff)
        h[7] = band(h[7] + g, 0xffffffff); h[8] = band(h[8] + hh, 0xffffffff)
    end
    local out = {}
    for i = 1, 8 do
        for s = 24, 0, -8 do
            out[#out + 1] = string.char(band(rshift(h[i], s), 0xff))
        end
    end
    return table.concat(out)
end

---------------------------------------------------------------------------
-- Readers. Each takes (tvb range buffer, offset) and returns value, new
-- offset, or nil when the bytes run out.
---------------------------------------------------------------------------

-- Hash in display order: the raw bytes reversed, as hex.
local function hash_hex(buf, offset)
    local raw = buf(offset, 32):bytes()
    local parts = {}
    for i = raw:len() - 1, 0, -1 do
        parts[#parts + 1] = string.format("%02x", raw:get_index(i))
    end
    return table.concat(parts)
end

-- Returns value, new offset and whether the encoding is the shortest one
-- (a value that fits a shorter form is non-canonical: the node refuses it).
local function compact_size(buf, offset)
    local left = buf:len() - offset
    if left < 1 then return nil end
    local tag = buf(offset, 1):uint()
    if tag < 0xfd then return tag, offset + 1, true end
    if tag == 0xfd then
        if left < 3 then return nil end
        local value = buf(offset + 1, 2):le_uint()
        return value, offset + 3, value >= 0xfd
    end
    if tag == 0xfe then
        if left < 5 then return nil end
        local value = buf(offset + 1, 4):le_uint()
        return value, offset + 5, value > 0xffff
    end
    if left < 9 then return nil end
    local high = buf(offset + 5, 4):le_uint()
    return buf(offset + 1, 8):le_uint64():tonumber(), offset + 9, high > 0
end

-- Set when the payload being dissected breaks a rule of its encoding that
-- the structure alone does not show (the node refuses to decode it).
local payload_refused = false

-- Reads a compact-size count (or length) into `field` and flags what the
-- node refuses: a non-canonical encoding, and a value over `limit`, the
-- node's constant named `limit_name`. Returns count, new offset.
local function add_count(buf, offset, tree, field, what, limit, limit_name)
    local count, next_off, canonical = compact_size(buf, offset)
    if not count then return nil end
    local len = next_off - offset
    local item = tree:add(field, buf(offset, len), math.min(count, 0xffffffff))
    if not canonical then
        payload_refused = true
        item:add_proto_expert_info(ef.noncanonical_compact_size, string.format(
            "Non-canonical compact size: %.0f encoded in %d bytes", count, len))
    end
    if count > limit then
        payload_refused = true
        item:add_proto_expert_info(ef.count_over_limit, string.format(
            "%s %.0f exceeds %s (%d)", what, count, limit_name, limit))
    end
    return count, next_off
end

local function need(buf, offset, n)
    return buf:len() - offset >= n
end

local function add_header(buf, offset, tree)
    if not need(buf, offset, 80) then return nil end
    local raw = buf(offset, 80):bytes():raw()
    local digest = sha256(sha256(raw))
    local hex = {}
    for i = 32, 1, -1 do hex[#hex + 1] = string.format("%02x", digest:byte(i)) end
    local sub = tree:add(proto, buf(offset, 80), "Block header " .. table.concat(hex))
    sub:add(f.header_hash, buf(offset, 80), table.concat(hex))
    sub:add_le(f.header_version, buf(offset, 4))
    sub:add(f.header_prev, buf(offset + 4, 32), hash_hex(buf, offset + 4))
    sub:add(f.header_merkle, buf(offset + 36, 32), hash_hex(buf, offset + 36))
    sub:add_le(f.header_time, buf(offset + 68, 4))
    sub:add_le(f.header_bits, buf(offset + 72, 4))
    sub:add_le(f.header_nonce, buf(offset + 76, 4))
    return offset + 80
end

local function add_tx(buf, offset, tree)
    local start = offset
    if not need(buf, offset, 4) then return nil end
    local sub = tree:add(proto, buf(offset), "Transaction")
    sub:add_le(f.tx_version, buf(offset, 4))
    offset = offset + 4
    local n_in, next_off = add_count(buf, offset, sub, f.tx_in_count,
        "Input count", MAX_TX_INPUTS, "MAX_TX_INPUTS")
    if not n_in then return nil end
    offset = next_off
    for _ = 1, n_in do
        if not need(buf, offset, 36) then return nil end
        local prev = hash_hex(buf, offset)
        local vout = buf(offset + 32, 4):le_uint()
        local input = sub:add(proto, buf(offset, 36), "Input")
        if prev == string.rep("0", 64) and vout == 0xffffffff then
            if not need(buf, offset, 48) then return nil end
            input:set_text("Coinbase input")
            input:add_le(f.tx_coinbase_height, buf(offset + 36, 4))
            input:add_le(f.tx_coinbase_nonce, buf(offset + 40, 8))
            offset = offset + 48
        else
            if not need(buf, offset, 133) then return nil end
            input:add(f.tx_prev_txid, buf(offset, 32), prev)
            input:add_le(f.tx_prev_vout, buf(offset + 32, 4))
            input:add(f.tx_pubkey, buf(offset + 36, 33))
            input:add(f.tx_signature, buf(offset + 69, 64))
            offset = offset + 133
        end
    end
    local n_out
    n_out, next_off = add_count(buf, offset, sub, f.tx_out_count,
        "Output count", MAX_TX_OUTPUTS, "MAX_TX_OUTPUTS")
    if not n_out then return nil end
    offset = next_off
    for _ = 1, n_out do
        if not need(buf, offset, 28) then return nil end
        local output = sub:add(proto, buf(offset, 28), "Output")
        output:add_le(f.tx_amount, buf(offset, 8))
        output:add(f.tx_owner, buf(offset + 8, 20))
        offset = offset + 28
    end
    if not need(buf, offset, 4) then return nil end
    sub:add_le(f.tx_lock_time, buf(offset, 4))
    offset = offset + 4
    local raw = buf(start, offset - start):bytes():raw()
    local digest = sha256(sha256(raw))
    local hex = {}
    for i = 32, 1, -1 do hex[#hex + 1] = string.format("%02x", digest:byte(i)) end
    sub:add(f.tx_txid, buf(start, offset - start), table.concat(hex))
    sub:set_len(offset - start)
    return offset
end

local function add_inv(buf, tree)
    local count, offset = add_count(buf, 0, tree, f.inv_count,
        "Inventory count", MAX_INV_ENTRIES, "MAX_INV_ENTRIES")
    if not count then return nil end
    for _ = 1, count do
        if not need(buf, offset, 36) then return nil end
        local code = buf(offset, 4):le_uint()
        local label = "Inventory item"
        if not INV_TYPES[code] then
            label = "Inventory item of unknown type " .. code .. " (ignored by the node)"
        end
        local item = tree:add(proto, buf(offset, 36), label)
        item:add_le(f.inv_type, buf(offset, 4))
        item:add(f.inv_hash, buf(offset + 4, 32), hash_hex(buf, offset + 4))
        offset = offset + 36
    end
    return offset
end

-- Whether `s` is UTF-8 as Rust's String::from_utf8 accepts it: shortest
-- forms only, no surrogates, nothing above U+10FFFF. One pass over `s`.
local function valid_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local len
        if c < 0x80 then len = 1
        elseif c >= 0xc2 and c <= 0xdf then len = 2
        elseif c >= 0xe0 and c <= 0xef then len = 3
        elseif c >= 0xf0 and c <= 0xf4 then len = 4
        else return false end
        if i + len - 1 > n then return false end
        for k = 1, len - 1 do
            local b = s:byte(i + k)
            if b < 0x80 or b > 0xbf then return false end
        end
        local c2 = s:byte(i + 1)
        if (c == 0xe0 and c2 < 0xa0) or (c == 0xed and c2 > 0x9f)
            or (c == 0xf0 and c2 < 0x90) or (c == 0xf4 and c2 > 0x8f) then
            return false
        end
        i = i + len
    end
    return true
end

local PAYLOADS = {}

PAYLOADS["version"] = function(buf, tree)
    if not need(buf, 0, 34) then return nil end
    tree:add_le(f.version_protocol, buf(0, 4))
    tree:add_le(f.version_services, buf(4, 8))
    tree:add_le(f.version_timestamp, buf(12, 8))
    tree:add_le(f.version_height, buf(20, 4))
    tree:add_le(f.version_nonce, buf(24, 8))
    tree:add_le(f.version_port, buf(32, 2))
    local len, offset = add_count(buf, 34, tree, f.version_agent_len,
        "User agent length", MAX_USER_AGENT_LEN, "MAX_USER_AGENT_LEN")
    if not len or not need(buf, offset, len) then return nil end
    local agent = tree:add(f.version_agent, buf(offset, len))
    if len > 0 and not valid_utf8(buf(offset, len):bytes():raw()) then
        payload_refused = true
        agent:add_proto_expert_info(ef.malformed, "User agent is not UTF-8")
    end
    return offset + len
end
local function empty() return 0 end
PAYLOADS["verack"] = empty
PAYLOADS["getaddr"] = empty
PAYLOADS["mempool"] = empty
PAYLOADS["sendheaders"] = empty
local function nonce(buf, tree)
    if not need(buf, 0, 8) then return nil end
    tree:add_le(f.nonce, buf(0, 8))
    return 8
end
PAYLOADS["ping"] = nonce
PAYLOADS["pong"] = nonce
PAYLOADS["addr"] = function(buf, tree)
    local count, offset = add_count(buf, 0, tree, f.addr_count,
        "Address count", MAX_ADDR_ENTRIES, "MAX_ADDR_ENTRIES")
    if not count then return nil end
    for _ = 1, count do
        if not need(buf, offset, 30) then return nil end
        local entry = tree:add(proto, buf(offset, 30), "Address")
        entry:add_le(f.addr_time, buf(offset, 4))
        entry:add_le(f.addr_services, buf(offset + 4, 8))
        entry:add(f.addr_ip, buf(offset + 12, 16))
        entry:add_le(f.addr_port, buf(offset + 28, 2))
        offset = offset + 30
    end
    return offset
end
PAYLOADS["inv"] = add_inv
PAYLOADS["getdata"] = add_inv
PAYLOADS["notfound"] = add_inv
PAYLOADS["getheaders"] = function(buf, tree)
    local count, offset = add_count(buf, 0, tree, f.locator_count,
        "Locator count", MAX_LOCATOR_HASHES, "MAX_LOCATOR_HASHES")
    if not count then return nil end
    for _ = 1, count do
        if not need(buf, offset, 32) then return nil end
        tree:add(f.locator_hash, buf(offset, 32), hash_hex(buf, offset))
        offset = offset + 32
    end
    if not need(buf, offset, 32) then return nil end
    tree:add(f.stop_hash, buf(offset, 32), hash_hex(buf, offset))
    return offset + 32
end
PAYLOADS["headers"] = function(buf, tree)
    local count, offset = add_count(buf, 0, tree, f.headers_count,
        "Header count", MAX_HEADERS, "MAX_HEADERS")
    if not count then return nil end
    for _ = 1, count do
        offset = add_header(buf, offset, tree)
        if not offset then return nil end
    end
    return offset
end
PAYLOADS["block"] = function(buf, tree)
    local offset = add_header(buf, 0, tree)
    if not offset then return nil end
    local count, next_off = add_count(buf, offset, tree, f.block_tx_count,
        "Transaction count", MAX_BLOCK_TXS, "MAX_BLOCK_TXS")
    if not count then return nil end
    offset = next_off
    for _ = 1, count do
        offset = add_tx(buf, offset, tree)
        if not offset then return nil end
    end
    return offset
end
PAYLOADS["tx"] = function(buf, tree)
    return add_tx(buf, 0, tree)
end

---------------------------------------------------------------------------
-- Frames
---------------------------------------------------------------------------

-- A header whose length is over MAX_PAYLOAD, or over its command's own
-- limit, ends the connection at the node: its frame is shown with the
-- bytes present instead of waiting (possibly for gigabytes) to reassemble
-- a payload the node never reads.
local function frame_len(tvb, pinfo, offset)
    local length = tvb(offset + 16, 4):le_uint()
    local limit = COMMAND_MAX_PAYLOAD[tvb(offset + 4, 12):stringz()] or MAX_PAYLOAD
    if length > limit then
        return tvb:len() - offset
    end
    return HEADER_LEN + length
end

-- What a receiver makes of a frame depends on what came before it on the
-- same TCP connection: the payload limit is MAX_HANDSHAKE_PAYLOAD, and only
-- `version` and `verack` may come, until the sender's `version` and
-- `verack` have both arrived; a `verack` needs the receiver's `version`
-- first; the magic must stay the connection's. `directions` holds that
-- progress per TCP stream and sender, built as frames are first dissected;
-- `snapshots` keeps what each frame saw then, keyed by frame number and the
-- frame's place in the packet, so re-dissecting a packet in any order (the
-- GUI, tshark -2) shows the same flags. A capture that did not see the
-- connection open (no SYN) missed its handshake: its frames are taken as
-- after it.
local tcp_stream = Field.new("tcp.stream")
-- tcp.completeness appeared in Wireshark 3.6; without it every connection
-- counts as seen from its start.
local has_completeness, tcp_completeness = pcall(Field.new, "tcp.completeness")
local COMPLETENESS_SYN = 1
local directions = {}
local snapshots = {}

function proto.init()
    directions = {}
    snapshots = {}
end

-- The tvb the current dissector call got (frame data or a reassembled
-- buffer): with the frame's own offset it tells apart the frames of one packet.
local outer_len = 0

-- The state of what `src` sends on the current TCP stream.
local function direction_state(src, src_port)
    local stream = tcp_stream()
    local key = string.format("%s|%s|%d", stream and tostring(stream.value) or "-",
        tostring(src), src_port)
    local state = directions[key]
    if not state then
        local completeness = has_completeness and tcp_completeness()
        local opened = not completeness or bit.band(completeness.value, COMPLETENESS_SYN) ~= 0
        state = { version = not opened, verack = not opened, magic = nil }
        directions[key] = state
    end
    return state
end

-- Returns the snapshot for this frame (what its sender had sent before it,
-- and whether the receiver had sent its version) and, on the frame's first
-- dissection only, the sender's state to advance.
local function snapshot(tvb, pinfo)
    local per_packet = snapshots[pinfo.number]
    if not per_packet then
        per_packet = {}
        snapshots[pinfo.number] = per_packet
    end
    local key = string.format("%d:%d:%d", outer_len, tvb:offset(), tvb:len())
    local snap = per_packet[key]
    if snap then return snap, nil end
    local state = direction_state(pinfo.src, pinfo.src_port)
    local receiver = direction_state(pinfo.dst, pinfo.dst_port)
    snap = {
        version = state.version,
        verack = state.verack,
        magic = state.magic,
        receiver_version = receiver.version,
    }
    per_packet[key] = snap
    return snap, state
end

-- The node's command rule: printable ASCII without spaces, at least one
-- character, then only NUL bytes.
local function command_ok(field)
    local raw = field:bytes()
    local i = 0
    while i < 12 and raw:get_index(i) ~= 0 do
        local b = raw:get_index(i)
        if b < 0x21 or b > 0x7e then return false end
        i = i + 1
    end
    if i == 0 then return false end
    while i < 12 do
        if raw:get_index(i) ~= 0 then return false end
        i = i + 1
    end
    return true
end

local function dissect_frame(tvb, pinfo, tree)
    local magic_hex = tostring(tvb(0, 4):bytes()):lower()
    local network = NETWORKS[magic_hex] or "unknown"
    local command = tvb(4, 12):stringz()
    local length = tvb(16, 4):le_uint()
    local present = math.min(length, tvb:len() - HEADER_LEN)
    local snap, state = snapshot(tvb, pinfo)
    pinfo.cols.protocol = "ChainCore"
    local info = tostring(pinfo.cols.info)
    if info == "" or pinfo.cols.protocol ~= "ChainCore" then
        pinfo.cols.info:set(command)
    else
        pinfo.cols.info:append(", " .. command)
    end
    local sub = tree:add(proto, tvb(0, HEADER_LEN + present), "ChainCore " .. command)
    local magic_item = sub:add(f.magic, tvb(0, 4))
    sub:add(f.network, tvb(0, 4), network)
    if not NETWORKS[magic_hex] or (snap.magic and snap.magic ~= magic_hex) then
        magic_item:add_proto_expert_info(ef.wrong_magic, string.format(
            "Magic %s is not this connection's network (%s)", magic_hex, snap.magic or "none"))
    end
    local command_item = sub:add(f.command, tvb(4, 12), command)
    if not command_ok(tvb(4, 12)) then
        command_item:add_proto_expert_info(ef.bad_command)
    end
    local length_item = sub:add_le(f.length, tvb(16, 4))
    if length > MAX_PAYLOAD then
        length_item:add_proto_expert_info(ef.oversize, string.format(
            "Payload length %d exceeds MAX_PAYLOAD (%d)", length, MAX_PAYLOAD))
    elseif COMMAND_MAX_PAYLOAD[command] and length > COMMAND_MAX_PAYLOAD[command] then
        length_item:add_proto_expert_info(ef.oversize, string.format(
            "Payload length %d exceeds the %s limit (%d)", length, command,
            COMMAND_MAX_PAYLOAD[command]))
    elseif length > MAX_HANDSHAKE_PAYLOAD and not (snap.version and snap.verack) then
        length_item:add_proto_expert_info(ef.handshake_payload_too_large, string.format(
            "Payload length %d exceeds MAX_HANDSHAKE_PAYLOAD (%d): the sender's version and verack have not both arrived",
            length, MAX_HANDSHAKE_PAYLOAD))
    end
    local checksum_item = sub:add(f.checksum, tvb(20, 4))
    if present < length then
        sub:add(f.checksum_status, tvb(20, 4), "unverified")
        if present > 0 then sub:add(f.payload, tvb(HEADER_LEN, present)) end
        return tvb:len()
    end
    local payload = length > 0 and tvb(HEADER_LEN, length) or nil
    if prefs.verify_checksum and length <= prefs.max_verify then
        local raw = payload and payload:bytes():raw() or ""
        local digest = sha256(sha256(raw)):sub(1, 4)
        if digest == tvb(20, 4):bytes():raw() then
            sub:add(f.checksum_status, tvb(20, 4), "good")
        else
            sub:add(f.checksum_status, tvb(20, 4), "bad")
            checksum_item:add_proto_expert_info(ef.bad_checksum)
        end
    else
        sub:add(f.checksum_status, tvb(20, 4), "unverified")
    end
    local parse = PAYLOADS[command]
    if not parse then
        sub:add_proto_expert_info(ef.unknown_command)
        if payload then sub:add(f.payload, payload) end
        return HEADER_LEN + length
    end
    local body = payload and payload:tvb() or ByteArray.new():tvb("empty")
    payload_refused = false
    local used = parse(body:range(0, body:len()), sub)
    local whole = used ~= nil and used == length
    if not whole then
        sub:add_proto_expert_info(ef.malformed)
    end
    -- A message the node decodes then meets the handshake rules of
    -- protocol-spec/README.md section 11.
    local decoded = whole and not payload_refused
    if decoded then
        if command == "version" then
            if snap.version then sub:add_proto_expert_info(ef.duplicate_version) end
        elseif command == "verack" then
            if snap.verack or not snap.receiver_version then
                sub:add_proto_expert_info(ef.unexpected_verack)
            end
        elseif not (snap.version and snap.verack) then
            sub:add_proto_expert_info(ef.message_before_handshake, string.format(
                "%s before the sender's version and verack", command))
        end
    end
    if state then
        state.magic = state.magic or (NETWORKS[magic_hex] and magic_hex)
        if decoded and command == "version" then state.version = true end
        if decoded and command == "verack" and snap.receiver_version then
            state.verack = true
        end
    end
    return HEADER_LEN + length
end

function proto.dissector(tvb, pinfo, tree)
    if tvb:len() < 4 or not NETWORKS[tostring(tvb(0, 4):bytes()):lower()] then
        return 0
    end
    outer_len = tvb:len()
    dissect_tcp_pdus(tvb, tree, HEADER_LEN, frame_len, dissect_frame)
    return tvb:len()
end

local function heuristic(tvb, pinfo, tree)
    if tvb:len() < HEADER_LEN then return false end
    if not NETWORKS[tostring(tvb(0, 4):bytes()):lower()] then return false end
    local command = tvb(4, 12):stringz()
    if not command:match("^[%w]+$") then return false end
    pinfo.conversation = proto
    proto.dissector(tvb, pinfo, tree)
    return true
end

local tcp_port = DissectorTable.get("tcp.port")
for _, port in ipairs(PORTS) do
    tcp_port:add(port, proto)
end
proto:register_heuristic("tcp", heuristic)
