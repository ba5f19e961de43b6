//! Image files moved without a copy through dom0's page cache. A save's
//! stream is read from libxl's pipe into an aligned buffer and written from
//! there with O_DIRECT: the disk takes the pages from that buffer. A
//! restore's stream is read with O_DIRECT straight into the blocks that are
//! then spliced into libxl's pipe. (Under emulation a page-cache copy costs as
//! much as the pipe's own.) A filesystem that refuses O_DIRECT gets the same
//! buffers through the page cache, writes with writeback kicked behind them.
//! Either way only the final fsync makes a written image durable.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// What O_DIRECT needs aligned (buffer address, file offset, length): the
/// logical block size of any disk we meet is at most this.
const ALIGN: usize = 4096;
/// Bytes gathered before a write goes out.
const BLOCK: usize = 1 << 20;
/// A block, and room for one more read (a pipe's worth) beyond it.
const CAPACITY: usize = 2 * BLOCK;
/// The buffer starts this small and doubles as the stream comes: a small
/// image (the simulator's) never pays for zeroing the whole capacity.
const FIRST: usize = 16 * ALIGN;
/// Buffered mode: bytes between two writeback kicks, so the final fsync
/// finds at most about two windows of dirty pages.
const WRITEBACK_WINDOW: u64 = 8 << 20;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; ALIGN]);

/// Bytes at an address O_DIRECT takes, in whole pages.
#[derive(Default)]
pub struct AlignedBuf {
    pages: Vec<Page>,
}

impl AlignedBuf {
    /// `len` bytes (rounded up to whole pages), zeroed.
    pub fn new(len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::default();
        b.resize(len);
        b
    }

    /// Grows or shrinks to `len` bytes rounded up to whole pages; new bytes
    /// are zero.
    fn resize(&mut self, len: usize) {
        self.pages.resize(len.div_ceil(ALIGN), Page([0; ALIGN]));
    }

    pub fn len(&self) -> usize {
        self.pages.len() * ALIGN
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: Page is repr(C) around [u8; ALIGN] with no padding (its
        // size equals its alignment), so the pages are one contiguous run of
        // initialised bytes, borrowed for as long as `self` is.
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast::<u8>(), self.len()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the borrow of `self` is exclusive, and
        // any bytes make a valid Page.
        unsafe { std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast::<u8>(), self.len()) }
    }
}

thread_local! {
    /// The buffer of this thread's last writer, for its next one: a lane
    /// saves guest after guest, and a fresh buffer each time is an
    /// allocation, zeroing and a free (which makes malloc consolidate its
    /// free lists) per image.
    static SPARE: std::cell::Cell<AlignedBuf> = std::cell::Cell::new(AlignedBuf::default());
}

/// A writer's buffer, taken from this thread's spare and given back to it
/// when the writer is done (whatever the outcome). Its old bytes are never
/// written: only bytes put or read in since count as filled.
#[derive(Default)]
struct Reused(AlignedBuf);

impl Reused {
    fn take() -> Reused {
        Reused(SPARE.try_with(|s| s.take()).unwrap_or_default())
    }
}

impl Drop for Reused {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // At thread exit the spare may be gone already: then the buffer is freed.
        let _ = SPARE.try_with(|s| s.set(buf));
    }
}

impl std::ops::Deref for Reused {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        &self.0
    }
}

impl std::ops::DerefMut for Reused {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        &mut self.0
    }
}

pub struct DirectWriter {
    file: File,
    pages: Reused,
    /// Bytes in the buffer not yet written.
    filled: usize,
    /// Whole blocks go out with O_DIRECT (unless the filesystem refuses it).
    direct: bool,
    /// O_DIRECT is set on the file: from the first block written on. An
    /// image smaller than a block never has it set: it goes out in one
    /// write through the page cache (two `fcntl` and a write less each).
    flag_on: bool,
    /// Bytes written to the file so far.
    written: u64,
    /// Buffered mode: where the last writeback kick ended.
    written_back: u64,
}

impl DirectWriter {
    /// Writes whole blocks with O_DIRECT if the file's filesystem takes it
    /// (asked at the first block).
    pub fn new(file: File) -> DirectWriter {
        DirectWriter::with_mode(file, true)
    }

    /// Writes through the page cache.
    pub fn buffered(file: File) -> DirectWriter {
        DirectWriter::with_mode(file, false)
    }

    fn with_mode(file: File, direct: bool) -> DirectWriter {
        DirectWriter {
            file,
            pages: Reused::take(),
            filled: 0,
            direct,
            flag_on: false,
            written: 0,
            written_back: 0,
        }
    }

    /// Whether whole blocks go out with O_DIRECT: wanted, and not refused
    /// by the filesystem (so far: it is asked at the first block).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Whether blocks went out with O_DIRECT so far.
    pub fn wrote_direct(&self) -> bool {
        self.flag_on
    }

    fn buf(&self) -> &[u8] {
        self.pages.as_slice()
    }

    fn buf_mut(&mut self) -> &mut [u8] {
        self.pages.as_mut_slice()
    }

    /// One read from `from` into the buffer; the bytes read (0 at EOF) are
    /// then `last(n)` until the next call.
    pub fn read_from(&mut self, from: &mut dyn Read) -> io::Result<usize> {
        self.make_room()?;
        let filled = self.filled;
        let n = from.read(&mut self.buf_mut()[filled..])?;
        self.filled += n;
        Ok(n)
    }

    /// Copies as much of `data` as fits into the buffer; the bytes taken are
    /// then `last(n)` until the next call.
    pub fn put(&mut self, data: &[u8]) -> io::Result<usize> {
        self.make_room()?;
        let filled = self.filled;
        let n = data.len().min(self.buf().len() - filled);
        self.buf_mut()[filled..filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        Ok(n)
    }

    /// The `n` bytes the last `read_from` or `put` added.
    pub fn last(&self, n: usize) -> &[u8] {
        &self.buf()[self.filled - n..self.filled]
    }

    /// Writes the remaining bytes (an unaligned tail the ordinary way) and
    /// hands the file back for its fsync.
    pub fn finish(mut self) -> io::Result<File> {
        if !self.flag_on && self.filled < BLOCK {
            // A file smaller than a block: in one ordinary write.
            self.direct = false;
        }
        let aligned = self.filled & !(ALIGN - 1);
        if self.direct {
            self.write_out(aligned)?;
        }
        if self.filled > 0 {
            if self.flag_on {
                set_direct(&self.file, false)?;
                self.flag_on = false;
                self.direct = false;
            }
            self.write_out(self.filled)?;
        }
        Ok(self.file)
    }

    /// Once a block has gathered, writes its aligned part and keeps the
    /// tail; grows a full buffer that is still below its capacity.
    fn make_room(&mut self) -> io::Result<()> {
        if self.filled >= BLOCK {
            self.write_out(self.filled & !(ALIGN - 1))?;
        }
        let len = self.buf().len();
        if self.filled == len {
            self.pages.resize((2 * len).clamp(FIRST, CAPACITY));
        }
        Ok(())
    }

    /// Writes the first `len` buffered bytes and moves the rest to the front.
    fn write_out(&mut self, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.direct && !self.flag_on {
            // The first block: does the filesystem take O_DIRECT?
            self.flag_on = set_direct(&self.file, true).is_ok();
            self.direct = self.flag_on;
        }
        let mut done = 0;
        while done < len {
            match (&self.file).write(&self.buf()[done..len]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A filesystem that took the flag but not the write (some
                // FUSE and network ones), or a short direct write that left
                // the offset unaligned: on through the page cache.
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    set_direct(&self.file, false)?;
                    self.direct = false;
                    self.flag_on = false;
                }
                Err(e) => return Err(e),
            }
        }
        let filled = self.filled;
        self.buf_mut().copy_within(len..filled, 0);
        self.filled -= len;
        self.written += len as u64;
        if !self.direct {
            self.write_behind()?;
        }
        Ok(())
    }

    /// Buffered mode: starts writing the newest full window to the device
    /// and waits for the one before it, so the device works while the
    /// stream goes on. An I/O error the wait reports is returned: the kernel
    /// reports a writeback error once per open file, so the final fsync
    /// would not see it again.
    fn write_behind(&mut self) -> io::Result<()> {
        if self.written < self.written_back + WRITEBACK_WINDOW {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let start = self.written_back as libc::off64_t;
        let len = (self.written - self.written_back) as libc::off64_t;
        // SAFETY: sync_file_range only reads its integer arguments; the fd
        // is ours and open, the ranges already written.
        let kicked = unsafe { libc::sync_file_range(fd, start, len, libc::SYNC_FILE_RANGE_WRITE) };
        let waited = if kicked == 0 && start > 0 {
            // SAFETY: as above.
            unsafe {
                libc::sync_file_range(
                    fd,
                    0,
                    start,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            }
        } else {
            kicked
        };
        self.written_back = self.written;
        if waited == 0 {
            return Ok(());
        }
        match io::Error::last_os_error() {
            // A filesystem or file without it: the final fsync does the work.
            e if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EINVAL | libc::ESPIPE | libc::EOPNOTSUPP)
            ) =>
            {
                Ok(())
            }
            e => Err(e),
        }
    }
}

/// Reads a file from an offset on, in whole blocks with O_DIRECT where the
/// filesystem takes it: the disk writes straight into the caller's aligned
/// block, with no copy out of the page cache. Else through the page cache.
pub struct DirectReader {
    file: File,
    /// Whether O_DIRECT is on; None until the first block is asked for.
    direct: Option<bool>,
    /// File offset of the next byte to hand out.
    offset: u64,
    /// Bytes handed out from blocks read with O_DIRECT.
    direct_bytes: u64,
}

impl DirectReader {
    /// Reads `file` from `offset` on.
    pub fn new(file: File, offset: u64) -> DirectReader {
        DirectReader {
            file,
            direct: None,
            offset,
            direct_bytes: 0,
        }
    }

    fn is_direct(&self) -> bool {
        self.direct == Some(true)
    }

    /// Bytes handed out from blocks read with O_DIRECT (the last, short
    /// block at the end of the file is read through the page cache).
    pub fn direct_bytes(&self) -> u64 {
        self.direct_bytes
    }

    /// Fills `buf` (less only at the end of the file) and returns where in
    /// it the bytes from the offset on are: with O_DIRECT the read starts at
    /// the block boundary before the offset, and the bytes before it (read
    /// already) are left out of the range.
    pub fn read_block(&mut self, buf: &mut AlignedBuf) -> io::Result<Range<usize>> {
        let direct = *self
            .direct
            .get_or_insert_with(|| set_direct(&self.file, true).is_ok());
        let start = if direct {
            self.offset & !(ALIGN as u64 - 1)
        } else {
            self.offset
        };
        let skip = (self.offset - start) as usize;
        let len = buf.len();
        let mut got = 0;
        while got < len {
            let at = (start + got as u64) as libc::off_t;
            match nix::sys::uio::pread(&self.file, &mut buf.as_mut_slice()[got..len], at) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => {}
                // A filesystem that took the flag but not the read: again,
                // from the offset, through the page cache.
                Err(nix::errno::Errno::EINVAL) if self.is_direct() => {
                    self.buffered()?;
                    return self.read_block(buf);
                }
                Err(e) => return Err(e.into()),
            }
            // O_DIRECT reads short only at the end of the file; a short
            // read elsewhere leaves the next one unaligned.
            if self.is_direct() && got % ALIGN != 0 {
                self.buffered()?;
            }
        }
        let end = got.max(skip);
        if direct {
            self.direct_bytes += (end - skip) as u64;
        }
        self.offset += (end - skip) as u64;
        Ok(skip..end)
    }

    /// An ordinary read from the offset on, through the page cache.
    pub fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.is_direct() {
            self.buffered()?;
        }
        self.direct = Some(false);
        let n = nix::sys::uio::pread(&self.file, buf, self.offset as libc::off_t)?;
        self.offset += n as u64;
        Ok(n)
    }

    fn buffered(&mut self) -> io::Result<()> {
        set_direct(&self.file, false)?;
        self.direct = Some(false);
        Ok(())
    }
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let mut flags = OFlag::from_bits_retain(fcntl(file, FcntlArg::F_GETFL)?);
    flags.set(OFlag::O_DIRECT, on);
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    /// Writes `data` through a writer, alternately put in odd pieces and
    /// read from a reader that hands out odd amounts; returns the file.
    fn write_through(w: &mut DirectWriter, data: &[u8]) {
        struct Dribble<'d>(&'d [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(self.1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut rest = data;
        let mut turn = 0usize;
        while !rest.is_empty() {
            turn += 1;
            let want = rest.len().min(1 + turn * 77_777 % (3 * BLOCK / 2));
            let n = if turn % 2 == 0 {
                w.put(&rest[..want]).unwrap()
            } else {
                w.read_from(&mut Dribble(&rest[..want], want)).unwrap()
            };
            assert!(n > 0);
            assert!(
                w.last(n) == &rest[..n],
                "the bytes just taken, at turn {turn}"
            );
            rest = &rest[n..];
        }
    }

    #[test]
    fn every_byte_lands_in_order_direct_or_buffered() {
        let t = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            BLOCK + 1,
            3 * BLOCK + ALIGN + 3,
            20 << 20,
        ] {
            let data = sample(len);
            for buffered in [false, true] {
                let path = t.path().join(format!("{len}-{buffered}"));
                let file = File::create(&path).unwrap();
                let mut w = if buffered {
                    DirectWriter::buffered(file)
                } else {
                    DirectWriter::new(file)
                };
                write_through(&mut w, &data);
                if !buffered && set_direct(&File::open(&path).unwrap(), true).is_ok() {
                    assert!(w.is_direct(), "{len} bytes: O_DIRECT taken, yet not used");
                    if len >= 3 * BLOCK {
                        assert!(w.wrote_direct(), "{len} bytes: blocks went out cached");
                    }
                }
                // Less than a block: no fcntl, one write at `finish`.
                assert!(len >= BLOCK || !w.wrote_direct(), "{len} bytes");
                if buffered && len == 20 << 20 {
                    // Kicked at the first write past 8 MiB, then past 16.
                    let at = w.written_back;
                    assert!((16 << 20..20 << 20).contains(&at), "writeback at {at}");
                }
                drop(w.finish().unwrap());
                assert!(
                    std::fs::read(&path).unwrap() == data,
                    "{len} bytes, buffered: {buffered}"
                );
            }
        }
    }

    /// Whether `dir`'s filesystem takes an O_DIRECT write at an unaligned
    /// offset (ext4 refuses it with EINVAL, tmpfs takes it).
    fn takes_unaligned_direct_writes(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("probe"))
            .unwrap();
        file.write_at(&[0u8; 512], 1).is_ok()
    }

    #[test]
    fn a_direct_write_the_file_refuses_goes_on_through_the_page_cache() {
        // An unaligned file offset makes every O_DIRECT write fail with
        // EINVAL, as a filesystem that takes the flag but not the I/O does.
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("image");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"x").unwrap();
        let mut w = DirectWriter::new(file);
        if !w.is_direct() {
            eprintln!("this filesystem takes no O_DIRECT; nothing to fall back from");
            return;
        }
        if takes_unaligned_direct_writes(t.path()) {
            // tmpfs (Debian 13's /tmp) does: nothing is refused there.
            eprintln!("this filesystem takes unaligned O_DIRECT writes; nothing to fall back from");
            return;
        }
        let data = sample(3 * BLOCK + 5);
        write_through(&mut w, &data);
        assert!(!w.is_direct(), "fell back after the refused write");
        drop(w.finish().unwrap());
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back[0], b'x');
        assert!(back[1..] == data[..]);
    }

    #[test]
    fn a_write_that_fails_stops_the_stream_at_once() {
        // Writes to a file opened read-only fail (EBADF): the stream must
        // hear of it at the first block, not run on to its end.
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("image");
        std::fs::write(&path, b"").unwrap();
        for buffered in [false, true] {
            let file = File::open(&path).unwrap();
            let mut w = if buffered {
                DirectWriter::buffered(file)
            } else {
                DirectWriter::new(file)
            };
            let data = sample(10 * BLOCK);
            let mut taken = 0;
            let failed = loop {
                match w.put(&data[taken..(taken + (64 << 10)).min(data.len())]) {
                    Ok(n) => taken += n,
                    Err(e) => break e,
                }
                assert!(taken < data.len(), "the whole stream taken, no error");
            };
            assert_eq!(failed.raw_os_error(), Some(libc::EBADF), "{failed}");
            assert!(taken <= CAPACITY, "stopped after {taken} bytes");
        }
    }

    #[test]
    fn a_reader_hands_out_the_file_from_its_offset_on_in_blocks_or_plainly() {
        let t = tempfile::tempdir().unwrap();
        let block = BLOCK + ALIGN;
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            block - 1,
            block,
            3 * block + 777,
        ] {
            let data = sample(len);
            let path = t.path().join(format!("{len}"));
            std::fs::write(&path, &data).unwrap();
            for offset in [0, 1, ALIGN - 1, ALIGN, ALIGN + 904]
                .into_iter()
                .filter(|&o| o <= len)
            {
                // In blocks, as the restore feed asks.
                let mut r = DirectReader::new(File::open(&path).unwrap(), offset as u64);
                let mut buf = AlignedBuf::new(block);
                let mut got = Vec::new();
                loop {
                    let range = r.read_block(&mut buf).unwrap();
                    got.extend_from_slice(&buf.as_slice()[range.clone()]);
                    if range.end < buf.len() {
                        break;
                    }
                    assert!(range.len() >= BLOCK, "a whole block holds at least BLOCK");
                }
                assert!(
                    got == data[offset..],
                    "{len} bytes from {offset}, in blocks"
                );
                // Plainly, as the simulator reads.
                let mut r = DirectReader::new(File::open(&path).unwrap(), offset as u64);
                let mut got = Vec::new();
                let mut chunk = vec![0; 70_001];
                loop {
                    let n = r.read_plain(&mut chunk).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&chunk[..n]);
                }
                assert!(got == data[offset..], "{len} bytes from {offset}, plainly");
            }
        }
    }
}
