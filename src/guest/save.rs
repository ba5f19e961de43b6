//! `save`: guest memory into an xl-format image, verified before the guest
//! is destroyed.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{millis, OpError, Progress, ProgressFn, Recovery};
use crate::domain::{DomId, DomainRef};
use crate::durable;
use crate::image::{
    self, manifest_path, Checksum, DiskIdentity, ImageError, Manifest, SavedOn, StreamScanner,
    Timings, XlHeader, MANIFEST_FORMAT,
};
use crate::toolstack::Toolstack;

pub struct SaveOptions {
    /// Image path; default `<image_dir>/<uuid>.xl`.
    pub out: Option<PathBuf>,
    pub image_dir: PathBuf,
    /// Copy memory while the guest runs (LIBXL_SUSPEND_LIVE).
    pub live: bool,
    /// Resume the guest after saving instead of destroying it.
    pub keep_running: bool,
    /// Also read the image back from the device (page cache dropped) before
    /// the guest goes: for storage one distrusts. It doubles the disk
    /// traffic while the guest is down; the checks on the stream as written
    /// and the fsync are made either way.
    pub read_back: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SaveReport {
    pub name: String,
    pub uuid: crate::domain::Uuid,
    pub domid: DomId,
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub size: u64,
    pub checksum: String,
    pub kept_running: bool,
    /// Whether the image was also read back from the device.
    pub read_back: bool,
    pub timings: Timings,
}

/// Writes the stream into the image file, checksumming and checking its
/// structure as it passes (on libxl's copy thread).
struct Sink<'a> {
    file: File,
    sum: Checksum,
    scanner: StreamScanner,
    bytes: u64,
    total: u64,
    progress: ProgressFn<'a>,
    last_report: Instant,
    /// Where the writeback started by the last `write_behind` ends.
    written_back: u64,
}

/// Bytes between two writeback kicks: the final fsync then finds at most
/// about two windows of dirty pages, and dom0's page cache never holds a
/// whole guest's memory waiting to be written.
const WRITEBACK_WINDOW: u64 = 8 << 20;

impl Sink<'_> {
    /// Starts writing the newest full window to the device, and waits for
    /// the one before it: the device works while the stream goes on.
    fn write_behind(&mut self) {
        if self.bytes < self.written_back + WRITEBACK_WINDOW {
            return;
        }
        let fd = self.file.as_raw_fd();
        let start = self.written_back as libc::off64_t;
        let len = (self.bytes - self.written_back) as libc::off64_t;
        // SAFETY: advisory calls on an fd we own, over ranges already
        // written; failure (e.g. a filesystem without it) only leaves the
        // work to the final fsync, whose result is what counts.
        unsafe {
            libc::sync_file_range(fd, start, len, libc::SYNC_FILE_RANGE_WRITE);
            if start > 0 {
                libc::sync_file_range(
                    fd,
                    0,
                    start,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
        }
        self.written_back = self.bytes;
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.scanner.feed(buf).map_err(std::io::Error::other)?;
        self.file.write_all(buf)?;
        self.sum.update(buf);
        self.bytes += buf.len() as u64;
        self.write_behind();
        if self.last_report.elapsed() >= Duration::from_millis(200) {
            self.last_report = Instant::now();
            (self.progress)(Progress {
                bytes: self.bytes,
                total: self.total,
            });
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

pub fn save(
    ts: &dyn Toolstack,
    domain: &DomainRef,
    opts: &SaveOptions,
    progress: ProgressFn<'_>,
) -> Result<SaveReport, OpError> {
    let info = ts.resolve(domain)?;
    if info.domid == 0 {
        return Err(OpError::Dom0("save"));
    }
    let mut detail = ts.domain_detail(info.domid)?;
    let config = detail
        .config
        .take()
        .ok_or_else(|| OpError::NoConfig(info.name.clone()))?;
    let hv = ts.version()?;
    let image = match &opts.out {
        Some(p) => p.clone(),
        None => {
            durable::private_dir(&opts.image_dir)?;
            opts.image_dir.join(format!("{}.xl", info.uuid))
        }
    };
    if image.exists() || manifest_path(&image).exists() {
        return Err(durable::DurableError::Exists { path: image }.into());
    }
    let tmp = durable::tmp_path(&image);
    let mut file = durable::create_fresh(&tmp)?;
    let header = XlHeader::new(&config.to_string()).to_bytes();
    let mut sum = Checksum::new();
    sum.update(&header);
    if let Err(e) = file.write_all(&header) {
        let _ = std::fs::remove_file(&tmp);
        return Err(durable::DurableError::Io {
            path: tmp,
            source: e,
        }
        .into());
    }
    let mut sink = Sink {
        file,
        sum,
        scanner: StreamScanner::new(),
        bytes: header.len() as u64,
        total: info.memory_kib * 1024,
        progress,
        last_report: Instant::now(),
        written_back: 0,
    };

    // From here on the guest is (being) suspended: every failure resumes it.
    let started = Instant::now();
    let saved = ts
        .save(info.domid, opts.live, &mut sink)
        .map_err(OpError::from)
        .and_then(|()| {
            let save_time = started.elapsed();
            let Sink {
                file,
                sum,
                scanner,
                bytes,
                ..
            } = sink;
            let stream = scanner.finish()?;
            let synced = Instant::now();
            durable::sync(&file, &tmp)?;
            drop(file);
            durable::publish_new(&tmp, &image)?;
            let sync_time = synced.elapsed();
            Ok((save_time, sync_time, stream, bytes, sum.finish()))
        })
        .and_then(|(save_time, sync_time, stream, bytes, checksum)| {
            let verified = Instant::now();
            if opts.read_back {
                let back = read_back(&image)?;
                if back.checksum != checksum || back.size != bytes {
                    return Err(OpError::ReadBack {
                        path: image.clone(),
                        written: checksum,
                        read: back.checksum,
                    });
                }
            }
            let timings = Timings {
                save_ms: millis(save_time),
                sync_ms: millis(sync_time),
                verify_ms: millis(verified.elapsed()),
                throughput_mib_s: bytes as f64
                    / (1 << 20) as f64
                    / save_time.as_secs_f64().max(1e-6),
            };
            let manifest = Manifest {
                format: MANIFEST_FORMAT,
                uuid: info.uuid,
                name: info.name.clone(),
                image: image
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size: bytes,
                checksum,
                saved_on: SavedOn {
                    xen: hv.release(),
                    build_id: hv.build_id.clone(),
                },
                xenmaint: env!("CARGO_PKG_VERSION").into(),
                saved_at: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                live: opts.live,
                memory_kib: info.memory_kib,
                nics: detail.nics.clone(),
                disks: DiskIdentity::of_all(&detail.disks),
                stream,
                timings,
            };
            let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
            durable::replace(&manifest_path(&image), &text)?;
            Ok(manifest)
        });

    let manifest = match saved {
        Ok(m) => m,
        Err(cause) => {
            let _ = std::fs::remove_file(&tmp);
            // An image that failed its checks is not one to restore from.
            if !matches!(
                &cause,
                OpError::Durable(durable::DurableError::Exists { .. })
            ) {
                let _ = std::fs::remove_file(&image);
                let _ = std::fs::remove_file(manifest_path(&image));
            }
            let outcome = match ts.resume(info.domid) {
                Ok(()) => Recovery::Resumed,
                Err(e) => Recovery::ResumeFailed(e),
            };
            return Err(OpError::SaveFailed {
                name: info.name,
                cause: Box::new(cause),
                outcome,
            });
        }
    };

    // The image is durable and verified: only now may the guest go.
    if opts.keep_running {
        ts.resume(info.domid)?;
    } else {
        ts.destroy(info.domid)?;
    }
    Ok(SaveReport {
        name: info.name,
        uuid: info.uuid,
        domid: info.domid,
        manifest: manifest_path(&image),
        image,
        size: manifest.size,
        checksum: manifest.checksum,
        kept_running: opts.keep_running,
        read_back: opts.read_back,
        timings: manifest.timings,
    })
}

/// Reads the image back from the disk, not from the page cache.
fn read_back(image: &Path) -> Result<image::Verified, OpError> {
    let file = File::open(image).map_err(ImageError::Io)?;
    // SAFETY: advisory call on an fd we own; it only drops clean cached pages
    // (the file was fsync'd), so the read below comes from the device.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(image::verify_reader(file)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_writes_behind_the_stream_and_keeps_every_byte() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("image");
        let no_progress = |_: Progress| {};
        let mut sink = Sink {
            file: File::create(&path).unwrap(),
            sum: Checksum::new(),
            scanner: StreamScanner::new(),
            bytes: 0,
            total: 0,
            progress: &no_progress,
            last_report: Instant::now(),
            written_back: 0,
        };
        // A valid stream of 20 MiB of pages, written as libxl writes it.
        let data = crate::image::synth::stream_with(5 << 10, b"write-behind");
        assert!(data.len() > 20 << 20);
        for chunk in data.chunks(1 << 20) {
            sink.write_all(chunk).unwrap();
        }
        assert!(
            sink.written_back >= 16 << 20 && sink.written_back % (1 << 20) == 0,
            "writeback kicked every 8 MiB, at {}",
            sink.written_back
        );
        let Sink { file, scanner, .. } = sink;
        scanner.finish().unwrap();
        drop(file);
        assert!(std::fs::read(&path).unwrap() == data);
    }
}
