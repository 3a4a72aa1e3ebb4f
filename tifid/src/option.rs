//! The 20-byte flow option on the wire.
//!
//! ```text
//!  kind(1) | len(1)=20 | TIFID(6) | TISeq(6) | TIAck(6)      all big-endian
//! ```
//!
//! Owns the zero-copy view [`FlowOption`], the owned [`FlowOptionRepr`], the
//! flow identifier [`Tifid`], and the walkers over a TCP option list that find,
//! insert and strip our option. Every accessor is bounds-checked once by
//! [`FlowOption::new_checked`]; nothing here panics on any input.

use core::fmt;

use crate::seq::Seq48;

/// Default option kind: 253, experimental (RFC 4727).
pub const DEFAULT_KIND: u8 = 253;
/// The flow option's length, kind and length bytes included.
pub const OPTION_LEN: usize = 20;
/// Most option bytes a TCP header can hold (data offset 15 words).
pub const MAX_OPTIONS_LEN: usize = 40;

const KIND_EOL: u8 = 0;
const KIND_NOP: u8 = 1;

mod field {
    use core::ops::Range;
    pub const KIND: usize = 0;
    pub const LENGTH: usize = 1;
    pub const TIFID: Range<usize> = 2..8;
    pub const TISEQ: Range<usize> = 8..14;
    pub const TIACK: Range<usize> = 14..20;
}

/// Why an option list or a flow option could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The buffer is shorter than the 20-byte flow option.
    #[error("flow option truncated: {0} bytes, need 20")]
    Truncated(usize),
    /// An option of our kind whose length byte is not 20.
    #[error("flow option has length {0}, must be 20")]
    BadLength(u8),
    /// An option in the list has a length byte below 2.
    #[error("option kind {kind} at offset {offset} has invalid length {len}")]
    InvalidOptionLength {
        /// The option's kind.
        kind: u8,
        /// Its offset in the option list.
        offset: usize,
        /// The bad length byte.
        len: u8,
    },
    /// The list ends inside an option (missing length byte, or the option
    /// runs past the header).
    #[error("option kind {kind} at offset {offset} runs past the end of the header")]
    RunsPastEnd {
        /// The option's kind.
        kind: u8,
        /// Its offset in the option list.
        offset: usize,
    },
    /// The list holds our option more than once.
    #[error("flow option appears more than once")]
    Duplicate,
    /// The option list is longer than a TCP header allows.
    #[error("option list of {0} bytes exceeds 40")]
    ListTooLong(usize),
}

/// The option does not fit in the segment's option space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flow option does not fit: {existing} option bytes in use, 40 available")]
pub struct DoesNotFit {
    /// Option bytes the segment already needs (padding removed).
    pub existing: usize,
}

/// A 48-bit transport-independent flow identifier: initiator half (high 24
/// bits) followed by responder half (low 24 bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Tifid(u64);

/// One 24-bit half of a [`Tifid`]. Zero means "not chosen yet".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Half(u32);

impl Half {
    /// The zero half: a SYN asking for a new flow carries it as responder half.
    pub const ZERO: Half = Half(0);
    /// Largest half value.
    pub const MAX: u32 = 0x00ff_ffff;

    /// A half from the low 24 bits of `value`.
    pub const fn new(value: u32) -> Half {
        Half(value & Half::MAX)
    }

    /// The 24-bit value.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// True for the zero half.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl Tifid {
    /// Builds a TIFID from its halves.
    pub const fn from_halves(initiator: Half, responder: Half) -> Tifid {
        Tifid(((initiator.0 as u64) << 24) | responder.0 as u64)
    }

    /// Builds a TIFID from the low 48 bits of `value`.
    pub const fn new(value: u64) -> Tifid {
        Tifid(value & ((1 << 48) - 1))
    }

    /// The 48-bit value.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// The half chosen by the connection's initiator.
    pub const fn initiator_half(self) -> Half {
        Half((self.0 >> 24) as u32)
    }

    /// The half chosen by the responder (zero in a new-flow SYN).
    pub const fn responder_half(self) -> Half {
        Half((self.0 & 0x00ff_ffff) as u32)
    }

    /// Both halves are nonzero: this identifies an existing flow.
    pub const fn is_complete(self) -> bool {
        !self.initiator_half().is_zero() && !self.responder_half().is_zero()
    }

    /// The big-endian 6-byte wire form.
    pub fn to_be_bytes(self) -> [u8; 6] {
        Seq48::new(self.0).to_be_bytes()
    }

    /// Reads the big-endian 6-byte wire form.
    pub fn from_be_bytes(bytes: [u8; 6]) -> Tifid {
        Tifid(Seq48::from_be_bytes(bytes).value())
    }
}

impl fmt::Display for Tifid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

impl fmt::Debug for Tifid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tifid({:012x})", self.0)
    }
}

/// A zero-copy view of a flow option: `kind, len, TIFID, TISeq, TIAck`.
#[derive(Debug, Clone, Copy)]
pub struct FlowOption<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FlowOption<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is
    /// shorter than 20 bytes. Prefer [`FlowOption::new_checked`].
    pub const fn new_unchecked(buffer: T) -> FlowOption<T> {
        FlowOption { buffer }
    }

    /// Wraps a buffer after checking its length and the option's length byte.
    pub fn new_checked(buffer: T) -> Result<FlowOption<T>, OptionError> {
        let option = FlowOption::new_unchecked(buffer);
        option.check_len()?;
        Ok(option)
    }

    /// Checks that the buffer holds a whole option whose length byte is 20.
    pub fn check_len(&self) -> Result<(), OptionError> {
        let data = self.buffer.as_ref();
        if data.len() < OPTION_LEN {
            return Err(OptionError::Truncated(data.len()));
        }
        if usize::from(data[field::LENGTH]) != OPTION_LEN {
            return Err(OptionError::BadLength(data[field::LENGTH]));
        }
        Ok(())
    }

    /// The option kind byte.
    pub fn kind(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    /// The length byte (20 in a valid option).
    pub fn length(&self) -> u8 {
        self.buffer.as_ref()[field::LENGTH]
    }

    /// The flow identifier.
    pub fn tifid(&self) -> Tifid {
        Tifid::from_be_bytes(six(&self.buffer.as_ref()[field::TIFID]))
    }

    /// The sender's TI sequence number.
    pub fn tiseq(&self) -> Seq48 {
        Seq48::from_be_bytes(six(&self.buffer.as_ref()[field::TISEQ]))
    }

    /// The sender's TI acknowledgement number.
    pub fn tiack(&self) -> Seq48 {
        Seq48::from_be_bytes(six(&self.buffer.as_ref()[field::TIACK]))
    }

    /// Gives back the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FlowOption<T> {
    /// Sets the kind byte.
    pub fn set_kind(&mut self, kind: u8) {
        self.buffer.as_mut()[field::KIND] = kind;
    }

    /// Sets the length byte.
    pub fn set_length(&mut self, len: u8) {
        self.buffer.as_mut()[field::LENGTH] = len;
    }

    /// Sets the flow identifier.
    pub fn set_tifid(&mut self, tifid: Tifid) {
        self.buffer.as_mut()[field::TIFID].copy_from_slice(&tifid.to_be_bytes());
    }

    /// Sets the TI sequence number.
    pub fn set_tiseq(&mut self, seq: Seq48) {
        self.buffer.as_mut()[field::TISEQ].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets the TI acknowledgement number.
    pub fn set_tiack(&mut self, ack: Seq48) {
        self.buffer.as_mut()[field::TIACK].copy_from_slice(&ack.to_be_bytes());
    }
}

fn six(bytes: &[u8]) -> [u8; 6] {
    let mut out = [0u8; 6];
    out.copy_from_slice(&bytes[..6]);
    out
}

/// The owned contents of a flow option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowOptionRepr {
    /// Flow identifier (responder half zero in a new-flow SYN).
    pub tifid: Tifid,
    /// Sender's TI sequence number (next byte it will send, or `snd_una` on
    /// a resume).
    pub tiseq: Seq48,
    /// Sender's TI acknowledgement number (next byte it expects; zero in a
    /// new-flow SYN).
    pub tiack: Seq48,
}

impl FlowOptionRepr {
    /// Reads a checked view.
    pub fn parse<T: AsRef<[u8]>>(option: &FlowOption<T>) -> Result<FlowOptionRepr, OptionError> {
        option.check_len()?;
        Ok(FlowOptionRepr {
            tifid: option.tifid(),
            tiseq: option.tiseq(),
            tiack: option.tiack(),
        })
    }

    /// Bytes that [`FlowOptionRepr::emit`] writes: always 20.
    pub const fn buffer_len(&self) -> usize {
        OPTION_LEN
    }

    /// Writes the option with the given kind into the first 20 bytes of the view.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, option: &mut FlowOption<T>, kind: u8) {
        option.set_kind(kind);
        option.set_length(OPTION_LEN as u8);
        option.set_tifid(self.tifid);
        option.set_tiseq(self.tiseq);
        option.set_tiack(self.tiack);
    }

    /// The option's 20 wire bytes.
    pub fn to_bytes(&self, kind: u8) -> [u8; OPTION_LEN] {
        let mut bytes = [0u8; OPTION_LEN];
        self.emit(&mut FlowOption::new_unchecked(&mut bytes[..]), kind);
        bytes
    }
}

/// Formats as the paper's modified tcpdump:
/// `flow-d tifid 0a4530be79bf tiseq 00000000001f tiack 00000000001d`.
impl fmt::Display for FlowOptionRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flow-d tifid {} tiseq {} tiack {}",
            self.tifid, self.tiseq, self.tiack
        )
    }
}

/// One entry of a TCP option list, as walked by [`OptionWalker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOption<'a> {
    /// Offset of the kind byte in the list.
    pub offset: usize,
    /// The option kind.
    pub kind: u8,
    /// All bytes of the option, kind and length included (one byte for NOP).
    pub bytes: &'a [u8],
}

/// Walks a TCP option list (the bytes after the fixed 20-byte header).
///
/// Yields every option up to EOL or the end of the list, and stops with an
/// error at the first malformed entry. Unknown kinds are yielded, not skipped
/// silently, unlike iterators that stop at the first kind they do not know.
#[derive(Debug, Clone)]
pub struct OptionWalker<'a> {
    list: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> OptionWalker<'a> {
    /// A walker over `list`.
    pub fn new(list: &'a [u8]) -> OptionWalker<'a> {
        OptionWalker {
            list,
            offset: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for OptionWalker<'a> {
    type Item = Result<RawOption<'a>, OptionError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.offset >= self.list.len() {
            return None;
        }
        let offset = self.offset;
        let kind = self.list[offset];
        match kind {
            KIND_EOL => {
                self.done = true;
                None
            }
            KIND_NOP => {
                self.offset += 1;
                Some(Ok(RawOption {
                    offset,
                    kind,
                    bytes: &self.list[offset..offset + 1],
                }))
            }
            _ => {
                self.done = true;
                let Some(&len) = self.list.get(offset + 1) else {
                    return Some(Err(OptionError::RunsPastEnd { kind, offset }));
                };
                if len < 2 {
                    return Some(Err(OptionError::InvalidOptionLength { kind, offset, len }));
                }
                let end = offset + usize::from(len);
                let Some(bytes) = self.list.get(offset..end) else {
                    return Some(Err(OptionError::RunsPastEnd { kind, offset }));
                };
                self.done = false;
                self.offset = end;
                Some(Ok(RawOption {
                    offset,
                    kind,
                    bytes,
                }))
            }
        }
    }
}

/// Finds the flow option of `kind` in a TCP option list.
///
/// `Ok(None)`: the list is well formed and has no option of that kind.
/// `Err(_)`: the list is malformed, our option has a length other than 20, or
/// it appears twice. Callers treat an error like "no option" (legacy), and may
/// log it.
pub fn find_flow_option(list: &[u8], kind: u8) -> Result<Option<FlowOptionRepr>, OptionError> {
    if list.len() > MAX_OPTIONS_LEN {
        return Err(OptionError::ListTooLong(list.len()));
    }
    let mut found = None;
    for option in OptionWalker::new(list) {
        let option = option?;
        if option.kind != kind {
            continue;
        }
        let repr = FlowOptionRepr::parse(&FlowOption::new_unchecked(option.bytes))?;
        if found.replace(repr).is_some() {
            return Err(OptionError::Duplicate);
        }
    }
    Ok(found)
}

/// Length of `list` without its trailing EOL padding: the bytes up to (not
/// including) the EOL, or the whole list. Malformed lists give an error.
fn meaningful_len(list: &[u8]) -> Result<usize, OptionError> {
    let mut end = 0;
    for option in OptionWalker::new(list) {
        let option = option?;
        end = option.offset + option.bytes.len();
    }
    Ok(end)
}

/// Builds a new option list: `list` without its EOL padding and without any
/// earlier option of `kind`, then our option, then EOL padding to a multiple
/// of four bytes. Returns the new list's length, written to the front of
/// `out`.
///
/// NOPs that align other options are kept as they are. When the result would
/// exceed 40 bytes the answer is [`InsertError::DoesNotFit`] and `out` must be
/// ignored: the caller sends the segment without our option and falls back.
pub fn insert_flow_option(
    list: &[u8],
    repr: &FlowOptionRepr,
    kind: u8,
    out: &mut [u8; MAX_OPTIONS_LEN],
) -> Result<usize, InsertError> {
    if list.len() > MAX_OPTIONS_LEN {
        return Err(InsertError::Malformed(OptionError::ListTooLong(list.len())));
    }
    let meaningful = meaningful_len(list).map_err(InsertError::Malformed)?;
    let mut len = 0;
    for option in OptionWalker::new(&list[..meaningful]) {
        let option = option.map_err(InsertError::Malformed)?;
        if option.kind == kind {
            continue;
        }
        out[len..len + option.bytes.len()].copy_from_slice(option.bytes);
        len += option.bytes.len();
    }
    if len + OPTION_LEN > MAX_OPTIONS_LEN {
        return Err(InsertError::DoesNotFit(DoesNotFit { existing: len }));
    }
    out[len..len + OPTION_LEN].copy_from_slice(&repr.to_bytes(kind));
    len += OPTION_LEN;
    let padded = len.next_multiple_of(4);
    out[len..padded].fill(KIND_EOL);
    Ok(padded)
}

/// Why [`insert_flow_option`] produced no list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The existing list is malformed; it is not ours to repair.
    #[error("existing option list is malformed: {0}")]
    Malformed(OptionError),
    /// The existing options leave less than 20 bytes.
    #[error(transparent)]
    DoesNotFit(DoesNotFit),
}

/// Overwrites every option of `kind` in `list` with NOP bytes, as Linux's
/// `TCPOPTSTRIP` target does. Returns how many options were stripped; a
/// malformed list is left untouched from the malformed entry on.
pub fn strip_options(list: &mut [u8], kind: u8) -> usize {
    let mut spans = [(0usize, 0usize); MAX_OPTIONS_LEN / 2];
    let mut count = 0;
    for option in OptionWalker::new(list).map_while(Result::ok) {
        if option.kind == kind && count < spans.len() {
            spans[count] = (option.offset, option.bytes.len());
            count += 1;
        }
    }
    for &(offset, len) in &spans[..count] {
        list[offset..offset + len].fill(KIND_NOP);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's Trace 2, packet 2 (SYN-ACK).
    fn trace2_syn_ack() -> FlowOptionRepr {
        FlowOptionRepr {
            tifid: Tifid::new(0x0a45_30be_79bf),
            tiseq: Seq48::new(0x1f),
            tiack: Seq48::new(0x1d),
        }
    }

    #[test]
    fn trace2_golden_strings() {
        let syn = FlowOptionRepr {
            tifid: Tifid::new(0x0a45_3000_0000),
            tiseq: Seq48::new(0x1d),
            tiack: Seq48::ZERO,
        };
        assert_eq!(
            syn.to_string(),
            "flow-d tifid 0a4530000000 tiseq 00000000001d tiack 000000000000"
        );
        assert_eq!(
            trace2_syn_ack().to_string(),
            "flow-d tifid 0a4530be79bf tiseq 00000000001f tiack 00000000001d"
        );
        let ack = FlowOptionRepr {
            tifid: Tifid::new(0x0a45_30be_79bf),
            tiseq: Seq48::new(0x1d),
            tiack: Seq48::new(0x1f),
        };
        assert_eq!(
            ack.to_string(),
            "flow-d tifid 0a4530be79bf tiseq 00000000001d tiack 00000000001f"
        );
    }

    #[test]
    fn trace1_golden_string() {
        let syn = FlowOptionRepr {
            tifid: Tifid::new(0x4b22_0900_0000),
            tiseq: Seq48::new(0x1f),
            tiack: Seq48::ZERO,
        };
        assert_eq!(
            syn.to_string(),
            "flow-d tifid 4b2209000000 tiseq 00000000001f tiack 000000000000"
        );
        assert!(!syn.tifid.is_complete());
    }

    #[test]
    fn emit_then_parse_round_trips_with_custom_kind() {
        let bytes = trace2_syn_ack().to_bytes(30);
        assert_eq!(bytes[0], 30);
        assert_eq!(bytes[1], 20);
        assert_eq!(&bytes[2..8], &[0x0a, 0x45, 0x30, 0xbe, 0x79, 0xbf]);
        let view = FlowOption::new_checked(&bytes[..]).expect("valid");
        assert_eq!(FlowOptionRepr::parse(&view), Ok(trace2_syn_ack()));
    }

    #[test]
    fn tifid_halves() {
        let t = Tifid::from_halves(Half::new(0x0a4530), Half::new(0xbe79bf));
        assert_eq!(t.value(), 0x0a45_30be_79bf);
        assert_eq!(t.initiator_half(), Half::new(0x0a4530));
        assert_eq!(t.responder_half(), Half::new(0xbe79bf));
        assert!(t.is_complete());
        assert!(!Tifid::from_halves(Half::new(1), Half::ZERO).is_complete());
    }

    #[test]
    fn every_wrong_length_under_our_kind_is_malformed() {
        for len in (0u8..=255).filter(|&l| l != 20) {
            let mut list = [1u8; 40];
            list[0] = DEFAULT_KIND;
            list[1] = len;
            let result = find_flow_option(&list, DEFAULT_KIND);
            assert!(result.is_err(), "length {len} must be rejected: {result:?}");
        }
    }

    #[test]
    fn view_rejects_short_buffers_and_bad_length_byte() {
        for n in 0..20 {
            let buf = vec![DEFAULT_KIND; n];
            assert_eq!(
                FlowOption::new_checked(&buf[..]).err(),
                Some(OptionError::Truncated(n))
            );
        }
        let mut bytes = trace2_syn_ack().to_bytes(DEFAULT_KIND);
        bytes[1] = 21;
        assert_eq!(
            FlowOption::new_checked(&bytes[..]).err(),
            Some(OptionError::BadLength(21))
        );
    }

    #[test]
    fn list_cut_short_is_an_error() {
        let full = trace2_syn_ack().to_bytes(DEFAULT_KIND);
        for cut in 1..20 {
            let result = find_flow_option(&full[..cut], DEFAULT_KIND);
            assert!(
                matches!(result, Err(OptionError::RunsPastEnd { .. })),
                "cut at {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn option_running_past_header_is_an_error() {
        // MSS option claiming 30 bytes in an 8-byte list.
        let list = [2u8, 30, 5, 0xb4, 1, 1, 1, 1];
        assert_eq!(
            find_flow_option(&list, DEFAULT_KIND),
            Err(OptionError::RunsPastEnd { kind: 2, offset: 0 })
        );
    }

    #[test]
    fn other_option_with_length_below_two_is_an_error() {
        let list = [8u8, 1, 0, 0];
        assert_eq!(
            find_flow_option(&list, DEFAULT_KIND),
            Err(OptionError::InvalidOptionLength {
                kind: 8,
                offset: 0,
                len: 1
            })
        );
    }

    #[test]
    fn duplicate_flow_option_is_an_error() {
        let one = trace2_syn_ack().to_bytes(DEFAULT_KIND);
        let mut list = Vec::from(one);
        list.extend_from_slice(&one);
        assert_eq!(
            find_flow_option(&list, DEFAULT_KIND),
            Err(OptionError::Duplicate)
        );
    }

    #[test]
    fn find_skips_unknown_kinds_and_stops_at_eol() {
        let mut list = vec![1, 1, 99, 4, 0xaa, 0xbb];
        list.extend_from_slice(&trace2_syn_ack().to_bytes(DEFAULT_KIND));
        assert_eq!(
            find_flow_option(&list, DEFAULT_KIND),
            Ok(Some(trace2_syn_ack()))
        );
        let mut after_eol = vec![1, 0];
        after_eol.extend_from_slice(&trace2_syn_ack().to_bytes(DEFAULT_KIND));
        assert_eq!(find_flow_option(&after_eol, DEFAULT_KIND), Ok(None));
        assert_eq!(find_flow_option(&[], DEFAULT_KIND), Ok(None));
    }

    #[test]
    fn insert_into_smoltcp_syn_drops_eol_padding() {
        // smoltcp SYN: MSS, WS, SACK-permitted, timestamps, EOL padding (20 bytes).
        let syn = [
            2, 4, 0x05, 0xb4, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0,
        ];
        let mut out = [0u8; 40];
        let len =
            insert_flow_option(&syn, &trace2_syn_ack(), DEFAULT_KIND, &mut out).expect("fits");
        assert_eq!(len, 40);
        assert_eq!(&out[..19], &syn[..19]);
        assert_eq!(&out[19..39], &trace2_syn_ack().to_bytes(DEFAULT_KIND));
        assert_eq!(out[39], 0, "padding is EOL after our option");
        assert_eq!(
            find_flow_option(&out[..len], DEFAULT_KIND),
            Ok(Some(trace2_syn_ack()))
        );
    }

    #[test]
    fn insert_into_linux_syn_keeps_nops() {
        // Linux SYN: MSS, SACK-permitted, TS, NOP, WS (20 bytes).
        let syn = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let mut out = [0u8; 40];
        let len = insert_flow_option(&syn, &trace2_syn_ack(), DEFAULT_KIND, &mut out)
            .expect("fits exactly");
        assert_eq!(len, 40);
        assert_eq!(&out[..20], &syn);
    }

    #[test]
    fn insert_replaces_an_existing_flow_option() {
        let old = FlowOptionRepr::default().to_bytes(DEFAULT_KIND);
        let mut out = [0u8; 40];
        let len =
            insert_flow_option(&old, &trace2_syn_ack(), DEFAULT_KIND, &mut out).expect("fits");
        assert_eq!(len, 20);
        assert_eq!(
            find_flow_option(&out[..len], DEFAULT_KIND),
            Ok(Some(trace2_syn_ack()))
        );
    }

    #[test]
    fn insert_says_does_not_fit_beyond_40_bytes() {
        // Timestamps plus three SACK blocks: 2 NOP + 10 TS + 2 NOP + 26 SACK = 40.
        let mut list = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 26];
        list.extend_from_slice(&[0u8; 24]);
        let mut out = [0u8; 40];
        assert_eq!(
            insert_flow_option(&list, &trace2_syn_ack(), DEFAULT_KIND, &mut out),
            Err(InsertError::DoesNotFit(DoesNotFit { existing: 40 }))
        );
        let twenty_one = [1u8; 21];
        assert!(matches!(
            insert_flow_option(&twenty_one, &trace2_syn_ack(), DEFAULT_KIND, &mut out),
            Err(InsertError::DoesNotFit(_))
        ));
    }

    #[test]
    fn insert_refuses_malformed_lists() {
        let mut out = [0u8; 40];
        assert!(matches!(
            insert_flow_option(&[2, 9, 0], &trace2_syn_ack(), DEFAULT_KIND, &mut out),
            Err(InsertError::Malformed(_))
        ));
        assert!(matches!(
            insert_flow_option(&[1u8; 41], &trace2_syn_ack(), DEFAULT_KIND, &mut out),
            Err(InsertError::Malformed(OptionError::ListTooLong(41)))
        ));
    }

    #[test]
    fn strip_replaces_our_option_with_nops_like_tcpoptstrip() {
        let mut list = vec![2, 4, 0x05, 0xb4];
        list.extend_from_slice(&trace2_syn_ack().to_bytes(DEFAULT_KIND));
        assert_eq!(strip_options(&mut list, DEFAULT_KIND), 1);
        assert_eq!(&list[..4], &[2, 4, 0x05, 0xb4]);
        assert!(list[4..].iter().all(|&b| b == 1));
        assert_eq!(find_flow_option(&list, DEFAULT_KIND), Ok(None));
    }
}
