//! A one-pass structural check of libxl's migration v2 stream: libxl's
//! header and records, the libxc stream nested in its LIBXC_CONTEXT record,
//! through libxl's END record. Fed as bytes pass (while saving, restoring or
//! verifying), it never buffers page data.
//!
//! Layout (xen docs/specs/libxl-migration-stream and libxc-migration-stream):
//! headers are big-endian, record headers `{u32 type, u32 length}` are in
//! the saving host's order, bodies are padded to 8 bytes with zeros.

use serde::{Deserialize, Serialize};

use super::ImageError;

const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74; // "LibxlFmt"
const LIBXL_VERSION: u32 = 2;
const LIBXL_OPT_BIG_ENDIAN: u32 = 1 << 0;
const LIBXL_OPT_LEGACY: u32 = 1 << 1;
const LIBXL_REC_END: u32 = 0;
const LIBXL_REC_LIBXC_CONTEXT: u32 = 1;
/// END .. CHECKPOINT_STATE.
const LIBXL_REC_MAX: u32 = 5;

const LIBXC_MARKER: u64 = u64::MAX;
const LIBXC_ID: u32 = 0x5845_4e46; // "XENF"
const LIBXC_REC_END: u32 = 0;
const LIBXC_REC_PAGE_DATA: u32 = 1;
/// PAGE_DATA's fixed head: count, reserved, then the first pfn (its type in
/// the top bits).
const PAGE_DATA_HEAD: usize = 16;
const PAGE_DATA_PFN_MASK: u64 = (1 << 52) - 1;
/// Highest mandatory record type in stream v3 (Xen 4.14+: X86_MSR_POLICY).
const LIBXC_REC_MAX_V3: u32 = 0x12;
const LIBXC_REC_MAX_V2: u32 = 0x0f;
/// Records a receiver may skip when it does not know them.
const LIBXC_REC_OPTIONAL: u32 = 1 << 31;

/// The kind of guest, from the libxc domain header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestKind {
    X86Pv,
    X86Hvm,
    X86Pvh,
    Arm,
}

/// What a complete stream said about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub guest: GuestKind,
    /// The Xen version the image was saved on (libxc domain header).
    pub saved_on_xen: String,
    pub libxc_version: u32,
    /// libxl records, END included.
    pub libxl_records: u64,
    pub libxc_records: u64,
    pub page_data_records: u64,
    /// Stream length in bytes (xl header not included).
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Libxl,
    Libxc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LibxlHeader,
    LibxcImageHeader,
    LibxcDomainHeader,
    RecordHeader(Layer),
    /// The head of a PAGE_DATA record, for its first pfn.
    PageDataHead {
        data: u64,
        pad: u64,
    },
    Body {
        layer: Layer,
        data: u64,
        pad: u64,
    },
    Done,
}

/// Push-style scanner: `feed` bytes as they arrive, then `finish`.
#[derive(Debug)]
pub struct StreamScanner {
    state: State,
    /// Bytes of the fixed-size header being collected.
    pending: Vec<u8>,
    offset: u64,
    guest: Option<GuestKind>,
    saved_on: (u32, u32),
    libxc_version: u32,
    libxl_records: u64,
    libxc_records: u64,
    page_data_records: u64,
    /// First pfn of the last PAGE_DATA record, and how many passes over
    /// memory the stream has begun (see `memory_passes`).
    last_pfn: Option<u64>,
    passes: u32,
    /// Pfns the first pass has sent so far.
    first_pass_pfns: u64,
}

impl Default for StreamScanner {
    fn default() -> Self {
        StreamScanner {
            state: State::LibxlHeader,
            pending: Vec::with_capacity(24),
            offset: 0,
            guest: None,
            saved_on: (0, 0),
            libxc_version: 0,
            libxl_records: 0,
            libxc_records: 0,
            page_data_records: 0,
            last_pfn: None,
            passes: 0,
            first_pass_pfns: 0,
        }
    }
}

/// A record's body, or straight the next record's header if it has none.
fn body(layer: Layer, data: u64, pad: u64) -> State {
    if data == 0 && pad == 0 {
        State::RecordHeader(layer)
    } else {
        State::Body { layer, data, pad }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}
fn ne32(b: &[u8]) -> u32 {
    u32::from_ne_bytes(b.try_into().expect("4 bytes"))
}
fn ne16(b: &[u8]) -> u16 {
    u16::from_ne_bytes(b.try_into().expect("2 bytes"))
}

impl StreamScanner {
    pub fn new() -> StreamScanner {
        StreamScanner::default()
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Passes over guest memory begun so far. libxc sends each pass in
    /// ascending pfn order, so a record that starts at or below where the
    /// one before started begins the next pass: after the first, a live
    /// save is sending what the guest dirtied meanwhile.
    pub fn memory_passes(&self) -> u32 {
        self.passes
    }

    /// Pfns (pages, and holes without data) the first pass has sent so far.
    pub fn first_pass_pfns(&self) -> u64 {
        self.first_pass_pfns
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ImageError> {
        while !data.is_empty() {
            match self.state {
                State::Done => {
                    return Err(self.bad("data after the libxl END record".into()));
                }
                State::Body {
                    layer,
                    data: left,
                    pad,
                } => {
                    if left > 0 {
                        let n = left.min(data.len() as u64) as usize;
                        self.advance(n);
                        data = &data[n..];
                        self.state = State::Body {
                            layer,
                            data: left - n as u64,
                            pad,
                        };
                    } else if pad > 0 {
                        let n = pad.min(data.len() as u64) as usize;
                        if data[..n].iter().any(|&b| b != 0) {
                            return Err(self.bad("non-zero record padding".into()));
                        }
                        self.advance(n);
                        data = &data[n..];
                        self.state = State::Body {
                            layer,
                            data: 0,
                            pad: pad - n as u64,
                        };
                    }
                    if let State::Body {
                        layer,
                        data: 0,
                        pad: 0,
                    } = self.state
                    {
                        self.state = State::RecordHeader(layer);
                    }
                }
                _ => {
                    let want = self.fixed_len() - self.pending.len();
                    let n = want.min(data.len());
                    self.pending.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.pending.len() == self.fixed_len() {
                        // Taken out to parse, then put back emptied: one
                        // buffer for every header of the stream.
                        let mut fixed = std::mem::take(&mut self.pending);
                        // Offsets in errors point at the start of the item.
                        self.parse_fixed(&fixed)?;
                        self.advance(fixed.len());
                        fixed.clear();
                        self.pending = fixed;
                    }
                }
            }
        }
        Ok(())
    }

    /// The stream must have ended exactly after libxl's END record.
    pub fn finish(self) -> Result<StreamSummary, ImageError> {
        if self.state != State::Done {
            return Err(ImageError::Truncated(match self.state {
                State::LibxlHeader => "libxl stream header",
                State::LibxcImageHeader | State::LibxcDomainHeader => "libxc stream header",
                State::RecordHeader(Layer::Libxc)
                | State::PageDataHead { .. }
                | State::Body {
                    layer: Layer::Libxc,
                    ..
                } => "guest memory (libxc stream)",
                _ => "libxl stream, before its END record",
            }));
        }
        Ok(StreamSummary {
            guest: self.guest.expect("Done implies a libxc domain header"),
            saved_on_xen: format!("{}.{}", self.saved_on.0, self.saved_on.1),
            libxc_version: self.libxc_version,
            libxl_records: self.libxl_records,
            libxc_records: self.libxc_records,
            page_data_records: self.page_data_records,
            bytes: self.offset,
        })
    }

    fn advance(&mut self, n: usize) {
        self.offset += n as u64;
    }

    fn bad(&self, detail: String) -> ImageError {
        ImageError::Stream {
            offset: self.offset + self.pending.len() as u64,
            detail,
        }
    }

    fn unsupported(&self, detail: String) -> ImageError {
        ImageError::UnsupportedStream(detail)
    }

    fn fixed_len(&self) -> usize {
        match self.state {
            State::LibxlHeader => 16,
            State::LibxcImageHeader => 24,
            State::LibxcDomainHeader => 16,
            State::RecordHeader(_) => 8,
            State::PageDataHead { .. } => PAGE_DATA_HEAD,
            State::Body { .. } | State::Done => 0,
        }
    }

    fn parse_fixed(&mut self, b: &[u8]) -> Result<(), ImageError> {
        let at = |s: &Self, detail: String| ImageError::Stream {
            offset: s.offset,
            detail,
        };
        match self.state {
            State::LibxlHeader => {
                if be64(&b[0..8]) != LIBXL_IDENT {
                    return Err(at(self, "no libxl stream header (LibxlFmt)".into()));
                }
                let version = be32(&b[8..12]);
                if version != LIBXL_VERSION {
                    return Err(self.unsupported(format!(
                        "libxl stream version {version} (this xenmaint reads version {LIBXL_VERSION})"
                    )));
                }
                let opts = be32(&b[12..16]);
                // An option bit this xenmaint does not know is a newer libxl's, not damage.
                if opts & !(LIBXL_OPT_BIG_ENDIAN | LIBXL_OPT_LEGACY) != 0 {
                    return Err(self.unsupported(format!("libxl header options {opts:#x}")));
                }
                if (opts & LIBXL_OPT_BIG_ENDIAN != 0) != cfg!(target_endian = "big") {
                    return Err(ImageError::ForeignByteOrder);
                }
                self.state = State::RecordHeader(Layer::Libxl);
            }
            State::LibxcImageHeader => {
                if be64(&b[0..8]) != LIBXC_MARKER || be32(&b[8..12]) != LIBXC_ID {
                    return Err(at(self, "no libxc image header (XENF)".into()));
                }
                let version = be32(&b[12..16]);
                if !(2..=3).contains(&version) {
                    return Err(self.unsupported(format!(
                        "libxc stream version {version} (this xenmaint reads versions 2 and 3)"
                    )));
                }
                let opts = u16::from_be_bytes([b[16], b[17]]);
                let reserved = u16::from_be_bytes([b[18], b[19]]) as u32 | be32(&b[20..24]);
                if opts & !1 != 0 || reserved != 0 {
                    return Err(self.unsupported(format!(
                        "libxc image header options {opts:#x}, reserved {reserved:#x}"
                    )));
                }
                if (opts & 1 != 0) != cfg!(target_endian = "big") {
                    return Err(ImageError::ForeignByteOrder);
                }
                self.libxc_version = version;
                self.state = State::LibxcDomainHeader;
            }
            State::LibxcDomainHeader => {
                self.guest = Some(match ne32(&b[0..4]) {
                    1 => GuestKind::X86Pv,
                    2 => GuestKind::X86Hvm,
                    3 => GuestKind::X86Pvh,
                    4 => GuestKind::Arm,
                    t => return Err(self.unsupported(format!("guest type {t}"))),
                });
                if ne16(&b[4..6]) != 12 {
                    return Err(at(self, "page shift is not 12 (4 KiB pages)".into()));
                }
                self.saved_on = (ne32(&b[8..12]), ne32(&b[12..16]));
                self.state = State::RecordHeader(Layer::Libxc);
            }
            State::RecordHeader(layer) => {
                let (rtype, len) = (ne32(&b[0..4]), ne32(&b[4..8]) as u64);
                let pad = (8 - len % 8) % 8;
                match layer {
                    Layer::Libxl => {
                        self.libxl_records += 1;
                        if rtype > LIBXL_REC_MAX {
                            return Err(self.unsupported(format!("libxl record type {rtype:#x}")));
                        }
                        if (rtype == LIBXL_REC_END || rtype == LIBXL_REC_LIBXC_CONTEXT) && len != 0
                        {
                            return Err(at(
                                self,
                                format!("libxl record {rtype} with length {len}"),
                            ));
                        }
                        self.state = match rtype {
                            LIBXL_REC_END => State::Done,
                            LIBXL_REC_LIBXC_CONTEXT => State::LibxcImageHeader,
                            _ => body(layer, len, pad),
                        };
                    }
                    Layer::Libxc => {
                        self.libxc_records += 1;
                        let max = if self.libxc_version >= 3 {
                            LIBXC_REC_MAX_V3
                        } else {
                            LIBXC_REC_MAX_V2
                        };
                        if rtype & LIBXC_REC_OPTIONAL == 0 && rtype > max {
                            return Err(self.unsupported(format!(
                                "libxc record type {rtype:#x} in a version {} stream",
                                self.libxc_version
                            )));
                        }
                        if rtype == LIBXC_REC_PAGE_DATA {
                            self.page_data_records += 1;
                        }
                        self.state = if rtype == LIBXC_REC_PAGE_DATA && len >= PAGE_DATA_HEAD as u64
                        {
                            State::PageDataHead { data: len, pad }
                        } else if rtype == LIBXC_REC_END {
                            if len != 0 {
                                return Err(at(
                                    self,
                                    format!("libxc END record with length {len}"),
                                ));
                            }
                            State::RecordHeader(Layer::Libxl)
                        } else {
                            body(layer, len, pad)
                        };
                    }
                }
            }
            State::PageDataHead { data, pad } => {
                let pfn =
                    u64::from_ne_bytes(b[8..16].try_into().expect("8 bytes")) & PAGE_DATA_PFN_MASK;
                if self.last_pfn.is_none_or(|last| pfn <= last) {
                    self.passes += 1;
                }
                self.last_pfn = Some(pfn);
                if self.passes == 1 {
                    self.first_pass_pfns += u64::from(ne32(&b[0..4]));
                }
                self.state = body(Layer::Libxc, data - PAGE_DATA_HEAD as u64, pad);
            }
            State::Body { .. } | State::Done => unreachable!("no fixed part"),
        }
        Ok(())
    }
}

/// Synthetic streams: what the simulator "saves", and test material. They
/// are structurally valid but hold no guest: nothing can boot from them.
pub mod synth {
    /// A minimal valid PV stream: libxl header, LIBXC_CONTEXT, libxc headers,
    /// `pages` PAGE_DATA records of one page each, libxc END, an emulator
    /// xenstore record, libxl END.
    pub fn stream(pages: usize) -> Vec<u8> {
        stream_with(pages, &[])
    }

    /// As `stream`, with `tag` written into the first page (the simulator
    /// keeps a guest's identity there to prove what was restored).
    pub fn stream_with(pages: usize, tag: &[u8]) -> Vec<u8> {
        build(&[pages], tag).0
    }

    /// A live save's stream: a full pass over `pages`, one page the guest
    /// dirtied meanwhile, then (from the offset returned, where libxc pauses
    /// the guest) the final pass's one page and the rest.
    pub fn live_stream_with(pages: usize, tag: &[u8]) -> (Vec<u8>, usize) {
        let (s, starts) = build(&[pages, 1, 1], tag);
        (s, starts[2])
    }

    /// The stream, and where each pass over memory starts in it.
    fn build(passes: &[usize], tag: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let pages: usize = passes.iter().sum();
        let mut s = Vec::with_capacity(256 + pages * (8 + 16 + 4096));
        s.extend_from_slice(&super::LIBXL_IDENT.to_be_bytes());
        s.extend_from_slice(&2u32.to_be_bytes());
        s.extend_from_slice(&0u32.to_be_bytes());
        rec(&mut s, 1, &[]); // LIBXC_CONTEXT
        s.extend_from_slice(&u64::MAX.to_be_bytes());
        s.extend_from_slice(&super::LIBXC_ID.to_be_bytes());
        s.extend_from_slice(&3u32.to_be_bytes());
        s.extend_from_slice(&[0u8; 8]);
        s.extend_from_slice(&1u32.to_ne_bytes()); // x86 PV
        s.extend_from_slice(&12u16.to_ne_bytes());
        s.extend_from_slice(&0u16.to_ne_bytes());
        s.extend_from_slice(&4u32.to_ne_bytes());
        s.extend_from_slice(&17u32.to_ne_bytes());
        rec(&mut s, 2, &[8, 4, 0, 0, 0, 0, 0, 0]); // X86_PV_INFO
        let mut starts = Vec::new();
        for &pages in passes {
            starts.push(s.len());
            for p in 0..pages {
                // A PAGE_DATA record of one page, written in place (the
                // simulator builds one per save: no page-sized temporaries).
                s.extend_from_slice(&1u32.to_ne_bytes());
                s.extend_from_slice(&((8 + 8 + 4096) as u32).to_ne_bytes());
                s.extend_from_slice(&1u32.to_ne_bytes());
                s.extend_from_slice(&0u32.to_ne_bytes());
                s.extend_from_slice(&(p as u64).to_ne_bytes());
                let page = s.len();
                s.resize(page + 4096, (p % 251) as u8);
                if p == 0 {
                    let n = tag.len().min(4096);
                    s[page..page + n].copy_from_slice(&tag[..n]);
                }
            }
        }
        rec(&mut s, 0x8000_0042, &[1, 2, 3]); // optional, unknown: skipped
        rec(&mut s, 0, &[]); // libxc END
        rec(&mut s, 2, b"\0\0\0\0\0\0\0\0a\0b\0"); // EMULATOR_XENSTORE_DATA, 12 bytes
        rec(&mut s, 0, &[]); // libxl END
        (s, starts)
    }

    pub fn rec(s: &mut Vec<u8>, rtype: u32, body: &[u8]) {
        s.extend_from_slice(&rtype.to_ne_bytes());
        s.extend_from_slice(&(body.len() as u32).to_ne_bytes());
        s.extend_from_slice(body);
        s.extend(std::iter::repeat_n(0u8, (8 - body.len() % 8) % 8));
    }

    /// Offsets at which records (and headers) start, for truncation tests.
    #[cfg(test)]
    pub fn boundaries(pages: usize) -> Vec<usize> {
        let mut v = vec![0, 16, 24, 48, 64, 80];
        let mut at = 80;
        for _ in 0..pages {
            at += 8 + 16 + 4096;
            v.push(at);
        }
        at += 16; // optional record (3 bytes + 5 pad)
        v.push(at);
        at += 8; // libxc END
        v.push(at);
        at += 8 + 16; // xenstore data
        v.push(at);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::synth::*;
    use super::*;

    fn scan(bytes: &[u8], chunk: usize) -> Result<StreamSummary, ImageError> {
        let mut s = StreamScanner::new();
        for c in bytes.chunks(chunk.max(1)) {
            s.feed(c)?;
        }
        s.finish()
    }

    #[test]
    fn a_valid_stream_scans_in_any_chunking() {
        let bytes = stream(3);
        for chunk in [1, 7, 8, 4096, 1 << 20] {
            let sum = scan(&bytes, chunk).unwrap();
            assert_eq!(sum.guest, GuestKind::X86Pv);
            assert_eq!(sum.saved_on_xen, "4.17");
            assert_eq!(sum.page_data_records, 3);
            assert_eq!(sum.libxl_records, 3);
            assert_eq!(sum.bytes, bytes.len() as u64);
        }
    }

    #[test]
    fn passes_over_memory_are_counted_where_pfns_start_over() {
        for chunk in [1, 8, 4096, 1 << 20] {
            let mut plain = StreamScanner::new();
            for c in stream(3).chunks(chunk) {
                plain.feed(c).unwrap();
            }
            assert_eq!(plain.memory_passes(), 1);
            let (live, paused_at) = live_stream_with(3, b"t");
            let mut s = StreamScanner::new();
            for c in live[..paused_at].chunks(chunk) {
                s.feed(c).unwrap();
            }
            assert_eq!(
                s.memory_passes(),
                2,
                "the first pass is over before the pause"
            );
            assert_eq!(s.first_pass_pfns(), 3);
            for c in live[paused_at..].chunks(chunk) {
                s.feed(c).unwrap();
            }
            assert_eq!(s.memory_passes(), 3);
            assert_eq!(s.finish().unwrap().page_data_records, 5);
        }
    }

    #[test]
    fn truncation_at_every_record_boundary_is_refused() {
        let bytes = stream(2);
        let mut cuts = boundaries(2);
        cuts.push(bytes.len() - 1);
        cuts.push(bytes.len() - 8);
        cuts.push(100); // inside a page
        for cut in cuts {
            assert!(cut < bytes.len());
            match scan(&bytes[..cut], 4096) {
                Err(ImageError::Truncated(_)) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_data_and_garbage_are_refused() {
        let mut bytes = stream(1);
        bytes.push(0);
        assert!(matches!(scan(&bytes, 64), Err(ImageError::Stream { .. })));

        let mut bytes = stream(1);
        bytes[0] ^= 0xff;
        assert!(matches!(
            scan(&bytes, 64),
            Err(ImageError::Stream { offset: 0, .. })
        ));
    }

    #[test]
    fn nonzero_padding_is_refused() {
        let mut bytes = stream(0);
        // The optional record's body is 3 bytes at 88..91; 91..96 is padding.
        bytes[92] = 1;
        let e = scan(&bytes, 64).unwrap_err();
        assert!(e.to_string().contains("padding"), "{e}");
    }

    #[test]
    fn newer_stream_versions_and_records_are_unsupported_not_corrupt() {
        let mut bytes = stream(0);
        bytes[8..12].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(
            scan(&bytes, 64),
            Err(ImageError::UnsupportedStream(_))
        ));

        let mut bytes = stream(0);
        bytes[36..40].copy_from_slice(&4u32.to_be_bytes()); // libxc v4
        let e = scan(&bytes, 64).unwrap_err();
        assert!(e.to_string().contains("libxc stream version 4"), "{e}");

        let mut bytes = Vec::new();
        let full = stream(0);
        bytes.extend_from_slice(&full[..64]);
        rec(&mut bytes, 0x13, &[0; 8]); // DOMAIN_CONTEXT: mandatory, newer than v3
        bytes.extend_from_slice(&full[64..]);
        assert!(matches!(
            scan(&bytes, 64),
            Err(ImageError::UnsupportedStream(_))
        ));
    }

    #[test]
    fn unknown_options_and_guest_types_are_unsupported_not_corrupt() {
        let cases: [(usize, &[u8], &str); 3] = [
            (12, &4u32.to_be_bytes(), "libxl header options 0x4"),
            (40, &[0, 2], "libxc image header options 0x2"),
            (48, &9u32.to_ne_bytes(), "guest type 9"),
        ];
        for (at, patch, what) in cases {
            let mut bytes = stream(0);
            bytes[at..at + patch.len()].copy_from_slice(patch);
            match scan(&bytes, 64) {
                Err(e @ ImageError::UnsupportedStream(_)) => {
                    assert!(e.to_string().contains(what), "{e}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}
