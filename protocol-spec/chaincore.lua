-- Wireshark dissector for the ChainCore peer-to-peer protocol.
--
-- Usage: tshark -X lua_script:protocol-spec/chaincore.lua -r capture.pcap
--        (or copy into Wireshark's personal plugins folder).
-- Registers on the default P2P ports of every network (7333, 17333, 27333)
-- and heuristically on TCP streams that start with a ChainCore magic.
-- Frames: magic[4] command[12] length u32le checksum[4] payload; see
-- protocol-spec/README.md sections 9 and 10. Every loop is bounded by the
-- bytes present; TCP reassembly is done by dissect_tcp_pdus.

local bit = bit32

local NETWORKS = {
    ["c4c012e1"] = "main",
    ["c4c07e57"] = "test",
    ["c4c0de7e"] = "regtest",
}
local PORTS = { 7333, 17333, 27333 }
local HEADER_LEN = 24

local proto = Proto("chaincore", "ChainCore P2P")

local prefs = proto.prefs
prefs.verify_checksum = Pref.bool("Verify checksums", true, "Compute sha256d of each payload")
prefs.max_verify = Pref.uint("Largest payload to verify", 1048576,
    "Payloads above this many bytes are not hashed (pure-Lua SHA-256 is slow)")

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

local ef_bad_checksum = ProtoExpert.new("chaincore.checksum.bad", "Checksum mismatch",
    expert.group.CHECKSUM, expert.severity.ERROR)
local ef_malformed = ProtoExpert.new("chaincore.malformed", "Malformed payload",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_unknown = ProtoExpert.new("chaincore.command.unknown", "Unknown command",
    expert.group.UNDECODED, expert.severity.NOTE)
proto.experts = { ef_bad_checksum, ef_malformed, ef_unknown }

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

local function compact_size(buf, offset)
    local left = buf:len() - offset
    if left < 1 then return nil end
    local tag = buf(offset, 1):uint()
    if tag < 0xfd then return tag, offset + 1 end
    if tag == 0xfd then
        if left < 3 then return nil end
        return buf(offset + 1, 2):le_uint(), offset + 3
    end
    if tag == 0xfe then
        if left < 5 then return nil end
        return buf(offset + 1, 4):le_uint(), offset + 5
    end
    if left < 9 then return nil end
    return buf(offset + 1, 8):le_uint64():tonumber(), offset + 9
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
    local n_in, next_off = compact_size(buf, offset)
    if not n_in then return nil end
    sub:add(f.tx_in_count, buf(offset, next_off - offset), n_in)
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
    n_out, next_off = compact_size(buf, offset)
    if not n_out then return nil end
    sub:add(f.tx_out_count, buf(offset, next_off - offset), n_out)
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
    local count, offset = compact_size(buf, 0)
    if not count then return nil end
    tree:add(f.inv_count, buf(0, offset), count)
    for _ = 1, count do
        if not need(buf, offset, 36) then return nil end
        local item = tree:add(proto, buf(offset, 36), "Inventory item")
        item:add_le(f.inv_type, buf(offset, 4))
        item:add(f.inv_hash, buf(offset + 4, 32), hash_hex(buf, offset + 4))
        offset = offset + 36
    end
    return offset
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
    local len, offset = compact_size(buf, 34)
    if not len or not need(buf, offset, len) then return nil end
    tree:add(f.version_agent, buf(offset, len))
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
    local count, offset = compact_size(buf, 0)
    if not count then return nil end
    tree:add(f.addr_count, buf(0, offset), count)
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
    local count, offset = compact_size(buf, 0)
    if not count then return nil end
    tree:add(f.locator_count, buf(0, offset), count)
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
    local count, offset = compact_size(buf, 0)
    if not count then return nil end
    tree:add(f.headers_count, buf(0, offset), count)
    for _ = 1, count do
        offset = add_header(buf, offset, tree)
        if not offset then return nil end
    end
    return offset
end
PAYLOADS["block"] = function(buf, tree)
    local offset = add_header(buf, 0, tree)
    if not offset then return nil end
    local count, next_off = compact_size(buf, offset)
    if not count then return nil end
    tree:add(f.block_tx_count, buf(offset, next_off - offset), count)
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

local function frame_len(tvb, pinfo, offset)
    return HEADER_LEN + tvb(offset + 16, 4):le_uint()
end

local function dissect_frame(tvb, pinfo, tree)
    local magic_hex = tostring(tvb(0, 4):bytes()):lower()
    local network = NETWORKS[magic_hex] or "unknown"
    local command = tvb(4, 12):stringz()
    local length = tvb(16, 4):le_uint()
    pinfo.cols.protocol = "ChainCore"
    local info = tostring(pinfo.cols.info)
    if info == "" or pinfo.cols.protocol ~= "ChainCore" then
        pinfo.cols.info:set(command)
    else
        pinfo.cols.info:append(", " .. command)
    end
    local sub = tree:add(proto, tvb(0, HEADER_LEN + length), "ChainCore " .. command)
    sub:add(f.magic, tvb(0, 4))
    sub:add(f.network, tvb(0, 4), network)
    sub:add(f.command, tvb(4, 12), command)
    sub:add_le(f.length, tvb(16, 4))
    local checksum_item = sub:add(f.checksum, tvb(20, 4))
    local payload = length > 0 and tvb(HEADER_LEN, length) or nil
    if prefs.verify_checksum and length <= prefs.max_verify then
        local raw = payload and payload:bytes():raw() or ""
        local digest = sha256(sha256(raw)):sub(1, 4)
        if digest == tvb(20, 4):bytes():raw() then
            sub:add(f.checksum_status, tvb(20, 4), "good")
        else
            sub:add(f.checksum_status, tvb(20, 4), "bad")
            checksum_item:add_proto_expert_info(ef_bad_checksum)
        end
    else
        sub:add(f.checksum_status, tvb(20, 4), "unverified")
    end
    local parse = PAYLOADS[command]
    if not parse then
        sub:add_proto_expert_info(ef_unknown)
        if payload then sub:add(f.payload, payload) end
        return HEADER_LEN + length
    end
    local body = payload and payload:tvb() or ByteArray.new():tvb("empty")
    local used = parse(body:range(0, body:len()), sub)
    if used == nil or (length > 0 and used ~= length) or (length == 0 and used ~= 0) then
        sub:add_proto_expert_info(ef_malformed)
    end
    return HEADER_LEN + length
end

function proto.dissector(tvb, pinfo, tree)
    if tvb:len() < 4 or not NETWORKS[tostring(tvb(0, 4):bytes()):lower()] then
        return 0
    end
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
