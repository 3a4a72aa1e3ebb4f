-- tiflow.lua: Wireshark dissector for the TI-flow TCP option.
--
-- The option, as tifid/src/option.rs writes it (README "Wire format"):
--
--   kind(1)=253 | len(1)=20 | TIFID(6) | TISeq(6) | TIAck(6)     big-endian
--
-- TIFID is the 48-bit flow identifier: the initiator's 24-bit half, then the
-- responder's (zero in a SYN asking for a new flow). TISeq and TIAck are
-- 48-bit positions in the flow's byte stream. There is no RFC 6994
-- experiment identifier: the TIFID follows the length byte directly.
--
-- Load it for one run:
--   tshark -X lua_script:tools/wireshark/tiflow.lua -r capture.pcap -Y tiflow
-- or for good: copy it into ~/.local/lib/wireshark/plugins/.
--
-- Fields: tiflow.kind, tiflow.length, tiflow.tifid, tiflow.tifid.initiator,
-- tiflow.tifid.responder, tiflow.complete, tiflow.tiseq, tiflow.tiack.
-- Example filter: tiflow.tifid == 0xedad40171395
--
-- The option kind is a preference (tiflow.kind, default 253, as
-- `tiflow up --option-kind`): tshark -o tiflow.kind:254 ...
-- An option of that kind whose length is not 20 is not ours (another
-- experiment sharing the kind): it goes to the dissector Wireshark had
-- registered for the kind (the RFC 6994 "Experimental" one for 253/254).
--
-- Needs Wireshark 3.0 or later (the "tcp.option" dissector table); tested
-- with tshark 4.0 by pcap-tests/tests/wireshark.rs.

local DEFAULT_KIND = 253
local OPTION_LEN = 20

local tiflow = Proto("tiflow", "TI-flow option")

local f = {
    kind = ProtoField.uint8("tiflow.kind", "Kind", base.DEC),
    length = ProtoField.uint8("tiflow.length", "Length", base.DEC),
    tifid = ProtoField.uint64("tiflow.tifid", "TIFID", base.HEX),
    initiator = ProtoField.uint24("tiflow.tifid.initiator", "Initiator half", base.HEX),
    responder = ProtoField.uint24("tiflow.tifid.responder", "Responder half", base.HEX),
    complete = ProtoField.bool("tiflow.complete", "Complete TIFID"),
    tiseq = ProtoField.uint64("tiflow.tiseq", "TISeq", base.HEX),
    tiack = ProtoField.uint64("tiflow.tiack", "TIAck", base.HEX),
}
tiflow.fields = { f.kind, f.length, f.tifid, f.initiator, f.responder, f.complete, f.tiseq, f.tiack }

tiflow.prefs.kind = Pref.uint("Option kind", DEFAULT_KIND,
    "TCP option kind of the TI-flow option (tiflow up --option-kind; default 253)")

-- 12 hex digits, as `tiflow dump` prints the option's fields.
local function hex48(range)
    return string.lower(range:bytes():tohex())
end

local option_table = DissectorTable.get("tcp.option")
local registered_kind = nil
local previous = nil -- the dissector Wireshark had for registered_kind

-- Calls the dissector that had the kind before us, if any.
local function not_ours(tvb, pinfo, tree)
    if previous ~= nil then
        return previous:call(tvb, pinfo, tree)
    end
    return 0
end

function tiflow.dissector(tvb, pinfo, tree)
    -- The TCP dissector hands over the whole option, kind and length bytes
    -- included, cut to the length byte.
    if tvb:len() ~= OPTION_LEN or tvb(1, 1):uint() ~= OPTION_LEN then
        return not_ours(tvb, pinfo, tree)
    end
    local tifid = tvb(2, 6)
    local tiseq = tvb(8, 6)
    local tiack = tvb(14, 6)
    local summary = string.format("TIFID %s, TISeq %s, TIAck %s",
        hex48(tifid), hex48(tiseq), hex48(tiack))

    local t = tree:add(tiflow, tvb(0, OPTION_LEN))
    t:set_text("TCP Option - TI-flow: " .. summary)
    t:add(f.kind, tvb(0, 1))
    t:add(f.length, tvb(1, 1))
    local id = t:add(f.tifid, tifid)
    id:set_text("TIFID: " .. hex48(tifid))
    local initiator = tvb(2, 3):uint()
    local responder = tvb(5, 3):uint()
    id:add(f.initiator, tvb(2, 3))
    id:add(f.responder, tvb(5, 3))
    local complete = id:add(f.complete, initiator ~= 0 and responder ~= 0)
    complete:set_generated()
    t:add(f.tiseq, tiseq):set_text("TISeq: " .. hex48(tiseq))
    t:add(f.tiack, tiack):set_text("TIAck: " .. hex48(tiack))

    pinfo.cols.info:append(" TIFID=" .. hex48(tifid))
    return OPTION_LEN
end

-- (Re)registers for the kind in the preference, giving the previous kind
-- back to the dissector that had it.
local function register(kind)
    if kind == registered_kind then
        return
    end
    if registered_kind ~= nil then
        option_table:remove(registered_kind, tiflow)
        if previous ~= nil then
            option_table:add(registered_kind, previous)
        end
    end
    previous = option_table:get_dissector(kind)
    option_table:add(kind, tiflow)
    registered_kind = kind
end

function tiflow.prefs_changed()
    register(tiflow.prefs.kind)
end

register(DEFAULT_KIND)
