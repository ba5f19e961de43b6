//! Domain lifecycle through libxl: save into a pipe, restore from a pipe,
//! create, destroy, pause, shutdown and reboot requests.
//!
//! libxl never sees our files: it writes the save stream into a pipe that a
//! thread of ours drains (writing straight into some filesystems fails with
//! EFAULT, and this is where checksums and progress are taken), and reads a
//! restore stream from a pipe a thread of ours fills with the very pages it
//! read and checksummed (vmsplice), not with copies of them.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use xenlight_sys as sys;

use super::Libxl;
use crate::domain::DomId;
use crate::image::AlignedBuf;
use crate::toolstack::{Request, RestoreSource, Result, SaveSink, ToolstackError};

/// 1 MiB pipes: fewer wake-ups per GiB of guest memory.
const PIPE_SIZE: libc::c_int = 1 << 20;
/// Copy buffer of the stream threads.
const CHUNK: usize = 1 << 20;

fn pipe() -> Result<(File, File)> {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ToolstackError::Stream(format!("cannot create a pipe: {e}")))?;
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; failure (e.g. over
    // /proc/sys/fs/pipe-max-size) only leaves the default size.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    Ok((File::from(r), File::from(w)))
}

/// Hands the pipe to the sink until EOF. `from` is dropped when this
/// returns, on an error too, so the writer then sees EPIPE instead of
/// blocking forever on a full pipe.
fn pump(mut from: impl Read, to: &mut dyn SaveSink) -> std::io::Result<u64> {
    let n = to.read_all(&mut from)?;
    to.flush()?;
    Ok(n)
}

/// Buffers of the restore feed; see `Feed`.
const FEED_BUFFERS: usize = 3;

/// Feeds a restore stream into libxl's pipe without copying it: each block
/// read from the image (with O_DIRECT, the disk writes it into the block) is
/// spliced into the pipe (vmsplice: the pipe refers to our pages, and
/// libxl's read copies from them). A buffer is read into again only after
/// two whole buffers, each holding at least the pipe's size of stream, went
/// into the pipe after it: by then the pipe holds none of its pages, and
/// libxl has read exactly the bytes we checksummed. The buffers must outlive
/// the pipe (a freed buffer's pages could be reused while the pipe still
/// refers to them): the caller keeps the `Feed` until libxl has returned and
/// the pipe is closed.
struct Feed {
    buffers: Vec<AlignedBuf>,
}

impl Feed {
    fn new(pipe: &File, buffers: usize) -> Feed {
        let size = nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap_or(0);
        // A page more: a block may start up to a page before the stream.
        let len = usize::try_from(size).unwrap_or(0).max(CHUNK) + 4096;
        Feed {
            buffers: (0..buffers).map(|_| AlignedBuf::new(len)).collect(),
        }
    }

    /// Feeds `from` into the pipe `to` until its end; returns the bytes fed.
    fn run(&mut self, from: &mut dyn RestoreSource, to: &File) -> std::io::Result<u64> {
        let mut total = 0u64;
        for i in 0.. {
            let k = i % self.buffers.len();
            let buf = &mut self.buffers[k];
            // Whole blocks (but the last): the reuse rule counts them.
            let range = from.read_block(buf)?;
            let full = range.end == buf.len();
            let mut sent = range.start;
            while sent < range.end {
                let iov = [std::io::IoSlice::new(&buf.as_slice()[sent..range.end])];
                match nix::fcntl::vmsplice(to, &iov, nix::fcntl::SpliceFFlags::empty()) {
                    Ok(n) => sent += n,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            total += range.len() as u64;
            if !full {
                break;
            }
        }
        Ok(total)
    }
}

fn check(call: &'static str, domid: DomId, rc: libc::c_int) -> Result<()> {
    match rc {
        0 => Ok(()),
        sys::ERROR_DOMAIN_NOTFOUND => Err(ToolstackError::NoSuchDomain(
            crate::domain::DomainRef::Id(domid),
        )),
        code => Err(ToolstackError::Libxl { call, code }),
    }
}

/// A libxl_domain_config filled from JSON, disposed on drop.
struct DomainConfig(sys::libxl_domain_config);

impl DomainConfig {
    fn from_json(lx: &Libxl, config: &serde_json::Value) -> Result<DomainConfig> {
        let text = CString::new(config.to_string()).map_err(|_| ToolstackError::BadJson {
            call: "libxl_domain_config_from_json",
            detail: "config contains a NUL byte".into(),
        })?;
        let mut cfg = DomainConfig(sys::libxl_domain_config::default());
        // SAFETY: cfg.0 is a valid struct to initialise; Drop disposes it.
        unsafe { sys::libxl_domain_config_init(&mut cfg.0) };
        // SAFETY: ctx is live, cfg initialised, text NUL-terminated.
        let rc = unsafe { sys::libxl_domain_config_from_json(lx.ctx(), &mut cfg.0, text.as_ptr()) };
        if rc != 0 {
            return Err(ToolstackError::BadJson {
                call: "libxl_domain_config_from_json",
                detail: super::error_name(rc),
            });
        }
        Ok(cfg)
    }
}

impl Drop for DomainConfig {
    fn drop(&mut self) {
        // SAFETY: initialised in from_json, disposed exactly once here.
        unsafe { sys::libxl_domain_config_dispose(&mut self.0) };
    }
}

pub(super) fn save(lx: &Libxl, domid: DomId, live: bool, out: &mut dyn SaveSink) -> Result<()> {
    let (rd, wr) = pipe()?;
    let flags = if live {
        sys::LIBXL_SUSPEND_LIVE as libc::c_int
    } else {
        0
    };
    let (rc, copied) = std::thread::scope(|s| {
        let copier = s.spawn(move || pump(rd, out));
        // SAFETY: ctx is live; wr is an open pipe fd that stays open for the
        // whole (synchronous, NULL ao_how) call.
        let rc = unsafe {
            sys::libxl_domain_suspend(lx.ctx(), domid, wr.as_raw_fd(), flags, std::ptr::null())
        };
        drop(wr); // EOF for the copier
        (rc, copier.join())
    });
    let copied =
        copied.map_err(|_| ToolstackError::Stream("save stream thread panicked".into()))?;
    match (rc, copied) {
        (_, Err(e)) => Err(ToolstackError::Stream(format!(
            "writing the save stream failed: {e}"
        ))),
        (rc, Ok(_)) => check("libxl_domain_suspend", domid, rc),
    }
}

pub(super) fn restore(
    lx: &Libxl,
    config: &serde_json::Value,
    input: &mut dyn RestoreSource,
) -> Result<DomId> {
    let mut cfg = DomainConfig::from_json(lx, config)?;
    let mut params = sys::libxl_domain_restore_params::default();
    // SAFETY: params is a valid struct to initialise.
    unsafe { sys::libxl_domain_restore_params_init(&mut params) };
    // init sets version 1, which would send the stream through
    // convert-legacy-stream; xl images carry v2.
    params.stream_version = 2;
    let (rd, wr) = pipe()?;
    // Outlives the pipe: see Feed.
    let mut feed = Feed::new(&wr, FEED_BUFFERS);
    let mut domid: u32 = u32::MAX;
    let (rc, fed) = std::thread::scope(|s| {
        let feed = &mut feed;
        let feeder = s.spawn(move || {
            let r = feed.run(input, &wr);
            drop(wr); // EOF for libxl
            r
        });
        // SAFETY: ctx live; cfg and params initialised; rd stays open for the
        // synchronous call; send_back_fd -1 as for any non-COLO restore.
        let rc = unsafe {
            sys::libxl_domain_create_restore(
                lx.ctx(),
                &mut cfg.0,
                &mut domid,
                rd.as_raw_fd(),
                -1,
                &params,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        // A feeder still writing (libxl stopped early) now gets EPIPE.
        drop(rd);
        (rc, feeder.join())
    });
    // SAFETY: params was initialised above and is disposed exactly once.
    unsafe { sys::libxl_domain_restore_params_dispose(&mut params) };
    let fed = fed.map_err(|_| ToolstackError::Stream("restore stream thread panicked".into()))?;
    if rc != 0 {
        // Our side's error explains a libxl failure better (corrupt image).
        if let Err(e) = fed {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(ToolstackError::Stream(format!(
                    "reading the image failed: {e}"
                )));
            }
        }
        return Err(ToolstackError::Libxl {
            call: "libxl_domain_create_restore",
            code: rc,
        });
    }
    if let Err(e) = fed {
        // libxl took a whole stream yet our reader failed (e.g. bytes after
        // END): the new domain must not run.
        destroy(lx, domid)?;
        return Err(ToolstackError::Stream(format!(
            "reading the image failed: {e}"
        )));
    }
    Ok(domid)
}

pub(super) fn create(lx: &Libxl, config: &serde_json::Value) -> Result<DomId> {
    let mut cfg = DomainConfig::from_json(lx, config)?;
    let mut domid: u32 = u32::MAX;
    // SAFETY: ctx live, cfg initialised; synchronous call.
    let rc = unsafe {
        sys::libxl_domain_create_new(
            lx.ctx(),
            &mut cfg.0,
            &mut domid,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ToolstackError::Libxl {
            call: "libxl_domain_create_new",
            code: rc,
        });
    }
    Ok(domid)
}

pub(super) fn resume(lx: &Libxl, domid: DomId) -> Result<()> {
    // SAFETY: ctx live; suspend_cancel=1 resumes in place; synchronous.
    check("libxl_domain_resume", domid, unsafe {
        sys::libxl_domain_resume(lx.ctx(), domid, 1, std::ptr::null())
    })
}

pub(super) fn destroy(lx: &Libxl, domid: DomId) -> Result<()> {
    // SAFETY: ctx live; synchronous.
    check("libxl_domain_destroy", domid, unsafe {
        sys::libxl_domain_destroy(lx.ctx(), domid, std::ptr::null())
    })
}

pub(super) fn core_dump(lx: &Libxl, domid: DomId, path: &std::path::Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let file = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ToolstackError::Stream(format!("{}: a NUL in the path", path.display())))?;
    // SAFETY: ctx live; `file` is a NUL-terminated string that outlives
    // the call; synchronous (no ao_how).
    check("libxl_domain_core_dump", domid, unsafe {
        sys::libxl_domain_core_dump(lx.ctx(), domid, file.as_ptr(), std::ptr::null())
    })
}

pub(super) fn pause(lx: &Libxl, domid: DomId) -> Result<()> {
    // SAFETY: ctx live; synchronous.
    check("libxl_domain_pause", domid, unsafe {
        sys::libxl_domain_pause(lx.ctx(), domid, std::ptr::null())
    })
}

pub(super) fn unpause(lx: &Libxl, domid: DomId) -> Result<()> {
    // SAFETY: ctx live; synchronous.
    check("libxl_domain_unpause", domid, unsafe {
        sys::libxl_domain_unpause(lx.ctx(), domid, std::ptr::null())
    })
}

pub(super) fn request(lx: &Libxl, domid: DomId, what: Request) -> Result<()> {
    match what {
        // SAFETY: ctx live; synchronous: writes control/shutdown and waits
        // for the guest to acknowledge it.
        Request::Shutdown => check("libxl_domain_shutdown", domid, unsafe {
            sys::libxl_domain_shutdown(lx.ctx(), domid, std::ptr::null())
        }),
        // SAFETY: as above.
        Request::Reboot => check("libxl_domain_reboot", domid, unsafe {
            sys::libxl_domain_reboot(lx.ctx(), domid, std::ptr::null())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pump_copies_everything_through_a_real_pipe() {
        let (rd, mut wr) = pipe().unwrap();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            wr.write_all(&sent).unwrap();
        });
        let mut out = Vec::new();
        assert_eq!(pump(rd, &mut out).unwrap(), data.len() as u64);
        writer.join().unwrap();
        assert_eq!(out, data);
    }

    /// Feeds `source` to a reader that waits before it reads: the pipe is
    /// full while the feeder goes on, the case where a reused buffer would
    /// show. Returns what the reader got and what the feed counted.
    fn feed_slowly(buffers: usize, source: &mut dyn RestoreSource) -> (Vec<u8>, u64) {
        let (mut rd, wr) = pipe().unwrap();
        let mut feed = Feed::new(&wr, buffers);
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                let mut out = Vec::new();
                rd.read_to_end(&mut out).unwrap();
                out
            });
            let fed = feed.run(source, &wr).unwrap();
            drop(wr);
            (reader.join().unwrap(), fed)
        })
    }

    fn feed_to_slow_reader(buffers: usize, data: &[u8]) -> Vec<u8> {
        let (got, fed) = feed_slowly(buffers, &mut std::io::Cursor::new(data));
        assert_eq!(fed, data.len() as u64);
        got
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn the_feed_delivers_every_byte_in_order_while_buffers_are_reused() {
        for len in [0, 1, CHUNK - 1, CHUNK, 7 * CHUNK + 4099] {
            let data = sample(len);
            assert!(
                feed_to_slow_reader(FEED_BUFFERS, &data) == data,
                "{len} bytes"
            );
        }
    }

    #[test]
    fn the_feed_sends_an_image_read_in_blocks_from_where_its_header_ends() {
        // The restore's own source: blocks start at a page boundary before
        // the stream (O_DIRECT), and the feed sends only the stream.
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("image");
        let data = sample(5 * CHUNK + 12_345);
        std::fs::write(&path, &data).unwrap();
        for offset in [0, 333, 4096, 8191] {
            let file = File::open(&path).unwrap();
            let mut source = ImageSource(crate::image::DirectReader::new(file, offset as u64));
            let (got, fed) = feed_slowly(FEED_BUFFERS, &mut source);
            assert_eq!(fed, (data.len() - offset) as u64);
            assert!(got == data[offset..], "from {offset}");
        }
    }

    struct ImageSource(crate::image::DirectReader);
    impl Read for ImageSource {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read_plain(buf)
        }
    }
    impl RestoreSource for ImageSource {
        fn read_block(&mut self, buf: &mut AlignedBuf) -> std::io::Result<std::ops::Range<usize>> {
            self.0.read_block(buf)
        }
    }

    /// A source whose blocks start a page into the buffer (as the first
    /// O_DIRECT block does): each holds exactly a pipe's worth, so a splice
    /// never waits for the reader and a reused buffer shows every time.
    struct FromSecondPage<'d>(std::io::Cursor<&'d [u8]>);
    impl Read for FromSecondPage<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl RestoreSource for FromSecondPage<'_> {
        fn read_block(&mut self, buf: &mut AlignedBuf) -> std::io::Result<std::ops::Range<usize>> {
            let block = &mut buf.as_mut_slice()[4096..];
            let mut got = 0;
            while got < block.len() {
                match self.0.read(&mut block[got..])? {
                    0 => break,
                    n => got += n,
                }
            }
            Ok(4096..4096 + got)
        }
    }

    #[test]
    fn one_buffer_would_be_overwritten_in_the_pipe() {
        // Why the feed keeps three: with one, the pipe still refers to the
        // buffer when the next read overwrites it.
        let data = sample(4 * CHUNK);
        let (got, _) = feed_slowly(1, &mut FromSecondPage(std::io::Cursor::new(&data)));
        assert!(got != data);
        let (got, _) = feed_slowly(
            FEED_BUFFERS,
            &mut FromSecondPage(std::io::Cursor::new(&data)),
        );
        assert!(got == data, "three buffers keep every byte");
    }

    #[test]
    fn a_reader_that_stops_early_ends_the_feed_with_epipe() {
        // libxl giving up on a corrupt stream closes its end of the pipe.
        let (rd, wr) = pipe().unwrap();
        let mut feed = Feed::new(&wr, FEED_BUFFERS);
        drop(rd);
        let data = sample(3 * CHUNK);
        let err = feed.run(&mut std::io::Cursor::new(&data), &wr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_failing_sink_unblocks_the_writer_with_epipe() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl SaveSink for Full {}
        let (rd, mut wr) = pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![0u8; CHUNK];
            loop {
                if let Err(e) = wr.write_all(&chunk) {
                    return e;
                }
            }
        });
        let err = pump(rd, &mut Full).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(
            writer.join().unwrap().kind(),
            std::io::ErrorKind::BrokenPipe
        );
    }
}
