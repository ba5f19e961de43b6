//! Save images: exactly xl's format (header, JSON config, libxl v2 stream),
//! plus xenmaint's manifest beside each one.

mod header;
mod manifest;
mod stream;

use std::io::Read;
use std::path::Path;

pub use header::{XlHeader, FLAG_JSON, FLAG_STREAM_V2, MAGIC};
pub use manifest::{
    manifest_path, DiskIdentity, DiskKind, Manifest, ManifestError, SavedOn, Timings,
    MANIFEST_FORMAT,
};
pub use stream::{synth, GuestKind, StreamScanner, StreamSummary};

/// Why an image cannot be used. One message each.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not an xl save image (no xl header magic)")]
    NotAnImage,
    #[error("image was written on a host of the other byte order")]
    ForeignByteOrder,
    #[error("image needs xl features this xenmaint does not know (mandatory flags {0:#x})")]
    UnknownFlags(u32),
    #[error("image uses the pre-Xen-4.6 legacy stream, which xenmaint does not restore")]
    LegacyStream,
    #[error("image is truncated: it ends inside the {0}")]
    Truncated(&'static str),
    #[error("image is corrupt: {0}")]
    Corrupt(String),
    #[error("image holds no domain config")]
    NoConfig,
    #[error("image stream is invalid at byte {offset}: {detail}")]
    Stream { offset: u64, detail: String },
    #[error("image stream is not supported by this xenmaint: {0}")]
    UnsupportedStream(String),
    #[error("image checksum mismatch: manifest says {expected}, file has {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("cannot read image: {0}")]
    Io(#[from] std::io::Error),
}

/// The checksum of a whole image file (xl header included): xxh3-128, fast
/// enough to cost nothing next to the stream it rides on.
#[derive(Default, Clone)]
pub struct Checksum(xxhash_rust::xxh3::Xxh3);

impl Checksum {
    pub fn new() -> Checksum {
        Checksum::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// "xxh3-128:<32 hex digits>", as manifests store it.
    pub fn finish(&self) -> String {
        format!("xxh3-128:{:032x}", self.0.digest128())
    }
}

/// What a full read of an image found.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: XlHeader,
    pub config: serde_json::Value,
    pub stream: StreamSummary,
    pub checksum: String,
    pub size: u64,
}

/// A reader that checksums and counts every byte that passes through it,
/// and keeps a small checksum per MiB, to tell where two reads of the same
/// file differed.
pub struct Hashing<R> {
    inner: R,
    sum: Checksum,
    bytes: u64,
    chunks: Vec<u64>,
    chunk: xxhash_rust::xxh3::Xxh3,
}

/// The span each per-MiB checksum covers.
pub const CHUNK_BYTES: u64 = 1 << 20;

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            sum: Checksum::new(),
            bytes: 0,
            chunks: Vec::new(),
            chunk: xxhash_rust::xxh3::Xxh3::new(),
        }
    }

    pub fn checksum(&self) -> String {
        self.sum.finish()
    }

    pub fn count(&self) -> u64 {
        self.bytes
    }

    /// One checksum per MiB read so far (the last one partial).
    pub fn chunk_sums(&self) -> Vec<u64> {
        let mut out = self.chunks.clone();
        if self.bytes % CHUNK_BYTES != 0 {
            out.push(self.chunk.digest());
        }
        out
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sum.update(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let room = (CHUNK_BYTES - self.bytes % CHUNK_BYTES) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.chunk.update(now);
            self.bytes += now.len() as u64;
            if self.bytes % CHUNK_BYTES == 0 {
                self.chunks.push(self.chunk.digest());
                self.chunk.reset();
            }
            rest = later;
        }
        Ok(n)
    }
}

/// The MiB-sized spans (by index) in which two reads of a file differ.
pub fn differing_chunks(a: &[u64], b: &[u64]) -> Vec<usize> {
    (0..a.len().max(b.len()))
        .filter(|&i| a.get(i) != b.get(i))
        .collect()
}

/// The per-MiB checksums of a file as it reads now.
pub fn chunk_sums_of(path: &Path) -> std::io::Result<Vec<u64>> {
    let mut r = Hashing::new(std::fs::File::open(path)?);
    std::io::copy(&mut r, &mut std::io::sink())?;
    Ok(r.chunk_sums())
}

/// Reads an image end to end: header, config JSON, stream through its END
/// record and nothing after it, and the checksum of it all.
pub fn verify_reader(r: impl Read) -> Result<Verified, ImageError> {
    let mut r = Hashing::new(r);
    let header = XlHeader::read_from(&mut r)?;
    let config = header.config_json()?;
    let mut scanner = StreamScanner::new();
    // Grows to 1 MiB only while reads fill it: a small image (thousands of
    // simulated ones) never pays for zeroing a large buffer.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        scanner.feed(&buf[..n])?;
        if n == buf.len() && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
        }
    }
    let stream = scanner.finish()?;
    Ok(Verified {
        size: r.count(),
        checksum: r.checksum(),
        header,
        config,
        stream,
    })
}

/// `verify_reader` on a file.
pub fn verify_file(path: &Path) -> Result<Verified, ImageError> {
    verify_reader(std::fs::File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn image(pages: usize) -> Vec<u8> {
        let mut v = XlHeader::new(r#"{"c_info":{"name":"g1"}}"#).to_bytes();
        v.extend_from_slice(&synth::stream(pages));
        v
    }

    #[test]
    fn per_mib_checksums_locate_a_difference_whatever_the_read_sizes() {
        let data: Vec<u8> = (0..(3 * CHUNK_BYTES as usize + 777))
            .map(|i| (i % 251) as u8)
            .collect();
        let sums = |d: &[u8], step: usize| {
            let mut r = Hashing::new(d);
            let mut buf = vec![0u8; step];
            while r.read(&mut buf).unwrap() > 0 {}
            r.chunk_sums()
        };
        let a = sums(&data, 4096);
        assert_eq!(a.len(), 4);
        assert_eq!(a, sums(&data, 1_000_003), "read sizes do not matter");
        let mut other = data.clone();
        other[2 * CHUNK_BYTES as usize + 5] ^= 1;
        assert_eq!(differing_chunks(&a, &sums(&other, 65536)), [2]);
        assert_eq!(differing_chunks(&a, &a[..3]), [3]);
    }

    #[test]
    fn verifies_a_whole_image_and_checksums_every_byte() {
        // Small, and large enough for the read buffer to grow to its full size.
        for pages in [2, 700] {
            let img = image(pages);
            let v = verify_reader(std::io::Cursor::new(&img)).unwrap();
            assert_eq!(v.size, img.len() as u64);
            assert_eq!(v.config["c_info"]["name"], "g1");
            let mut direct = Checksum::new();
            direct.update(&img);
            assert_eq!(v.checksum, direct.finish(), "{pages} pages");
            assert!(v.checksum.starts_with("xxh3-128:") && v.checksum.len() == 9 + 32);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_changes_the_checksum() {
        let img = image(1);
        let base = verify_reader(std::io::Cursor::new(&img)).unwrap().checksum;
        // Inside page data the structure still holds: only the checksum tells.
        let mut bad = img.clone();
        let at = img.len() - 200;
        bad[at] ^= 0x10;
        let v = verify_reader(std::io::Cursor::new(&bad));
        match v {
            Ok(v) => assert_ne!(v.checksum, base),
            Err(e) => panic!("{e}"),
        }
    }
}
