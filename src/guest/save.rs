//! `save`: guest memory into an xl-format image, verified before the guest
//! is destroyed.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{millis, OpError, Progress, ProgressFn, Recovery, Steps};
use crate::domain::{DomId, DomainRef, DomainState};
use crate::durable;
use crate::image::{
    self, manifest_path, Checksum, DiskIdentity, ImageError, Manifest, SavedOn, StreamScanner,
    Timings, XlHeader, MANIFEST_FORMAT,
};
use crate::toolstack::Toolstack;

pub struct SaveOptions<'a> {
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
    /// Where a live save waits near the end of its first pass over memory
    /// (see `PauseGate`); none: it goes straight on.
    pub gate: Option<&'a dyn PauseGate>,
}

/// Lets guests saved live together pause together. libxc pauses a guest
/// only after its last pass over memory; a live save that waits near the end
/// of its first pass (libxl's stream blocked, so libxc sends nothing and
/// pauses nothing) keeps its guest running, its pages logged dirty, until
/// the caller lets it go: then only the rest of that pass and the pages
/// dirtied meanwhile are left.
pub trait PauseGate: Send + Sync {
    /// Returns when the save may go on. Called at most once per save, on
    /// libxl's copy thread; `running()` turning false (libxc paused the
    /// guest anyway, or someone else did) must end the wait at once:
    /// waiting would then only lengthen the pause.
    fn hold(&self, running: &dyn Fn() -> bool);
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
    /// The gate, and whether the guest still runs; taken when used.
    gate: Option<(&'a dyn PauseGate, &'a (dyn Fn() -> bool + Sync))>,
    /// First-pass pfns after which the save waits at the gate.
    hold_at: u64,
}

/// A live save waits at its gate this many pages before the end of its
/// first pass (at most a sixteenth of the guest): late enough that little
/// is left after it, early enough that libxc is still sending that pass
/// when the stream stops, whatever the pipe holds (1 MiB), and cannot have
/// paused the guest meanwhile.
const HOLD_BEFORE_END_PAGES: u64 = 2048;

/// Where in the first pass a live save of a guest with this much memory
/// waits at its gate.
fn hold_at(memory_kib: u64) -> u64 {
    let pages = memory_kib / 4;
    pages - HOLD_BEFORE_END_PAGES.min(pages / 16)
}

/// Bytes between two writeback kicks: the final fsync then finds at most
/// about two windows of dirty pages, and dom0's page cache never holds a
/// whole guest's memory waiting to be written.
const WRITEBACK_WINDOW: u64 = 8 << 20;

impl<'a> Sink<'a> {
    /// `bytes` already written (the xl header), summed into `sum`; no gate.
    fn new(file: File, sum: Checksum, bytes: u64, total: u64, progress: ProgressFn<'a>) -> Self {
        Sink {
            file,
            sum,
            scanner: StreamScanner::new(),
            bytes,
            total,
            progress,
            last_report: Instant::now(),
            written_back: 0,
            gate: None,
            hold_at: u64::MAX,
        }
    }

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
        // Near the end of the first pass, or (a guest bigger than its
        // memory figure says) once a second pass has begun.
        if self.scanner.first_pass_pfns() >= self.hold_at || self.scanner.memory_passes() >= 2 {
            if let Some((gate, running)) = self.gate.take() {
                let (pfns, at) = (self.scanner.first_pass_pfns(), self.bytes);
                log::info!("first pass at {pfns} pages ({at} bytes): waiting at the pause gate");
                let waited = Instant::now();
                gate.hold(running);
                log::info!(
                    "waited {:.1} s at the pause gate",
                    waited.elapsed().as_secs_f64()
                );
            }
        }
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
    opts: &SaveOptions<'_>,
    progress: ProgressFn<'_>,
) -> Result<SaveReport, OpError> {
    let steps = Steps::new(format!("save {domain}"));
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
    steps.done("looked up the guest and the hypervisor");
    let tmp = durable::tmp_path(&image);
    let domid = info.domid;
    let running = move || {
        ts.list_domains().is_ok_and(|ds| {
            ds.iter().any(|d| {
                d.domid == domid
                    && d.shutdown_reason.is_none()
                    && matches!(d.state, DomainState::Running | DomainState::Blocked)
            })
        })
    };
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
    let mut sink = Sink::new(
        file,
        sum,
        header.len() as u64,
        info.memory_kib * 1024,
        progress,
    );
    if let Some(gate) = opts.gate.filter(|_| opts.live) {
        sink.gate = Some((gate, &running));
        sink.hold_at = hold_at(info.memory_kib);
    }

    steps.done("created the image file");
    // From here on the guest is (being) suspended: every failure resumes it.
    let started = Instant::now();
    let saved = ts
        .save(info.domid, opts.live, &mut sink)
        .map_err(OpError::from)
        .and_then(|()| {
            let save_time = started.elapsed();
            steps.done("wrote the stream");
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
            steps.done("synced and published the image");
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
            steps.done("wrote the manifest");
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
        steps.done("resumed the guest");
    } else {
        ts.destroy(info.domid)?;
        steps.done("destroyed the guest");
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct CountingGate(AtomicUsize);

    impl PauseGate for CountingGate {
        fn hold(&self, running: &dyn Fn() -> bool) {
            assert!(running());
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_live_save_waits_at_its_gate_once_near_the_end_of_its_first_pass() {
        let t = tempfile::tempdir().unwrap();
        let no_progress = |_: Progress| {};
        let gate = CountingGate(AtomicUsize::new(0));
        let running = || true;
        let file = File::create(t.path().join("image")).unwrap();
        let mut sink = Sink::new(file, Checksum::new(), 0, 0, &no_progress);
        sink.gate = Some((&gate, &running));
        sink.hold_at = 30;
        // Record by record: the 30th page is where it waits.
        let data = crate::image::synth::stream(40);
        let cuts = crate::image::synth::boundaries(40);
        let (mut at, mut held_at_cut) = (0, None);
        for (i, &cut) in cuts.iter().enumerate() {
            sink.write_all(&data[at..cut]).unwrap();
            at = cut;
            if held_at_cut.is_none() && gate.0.load(Ordering::SeqCst) > 0 {
                held_at_cut = Some(i);
            }
        }
        sink.write_all(&data[at..]).unwrap();
        assert_eq!(gate.0.load(Ordering::SeqCst), 1, "once per save");
        // cuts[5] is where the first page record starts.
        assert_eq!(held_at_cut, Some(5 + 30));
        assert_eq!(hold_at(256 << 10), 65536 - 2048);
        assert_eq!(hold_at(16 << 10), 4096 - 256, "a small guest: a sixteenth");
    }

    #[test]
    fn the_sink_writes_behind_the_stream_and_keeps_every_byte() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("image");
        let no_progress = |_: Progress| {};
        let file = File::create(&path).unwrap();
        let mut sink = Sink::new(file, Checksum::new(), 0, 0, &no_progress);
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
