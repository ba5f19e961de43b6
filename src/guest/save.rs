//! `save`: guest memory into an xl-format image, verified before the guest
//! is destroyed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{millis, OpError, Progress, ProgressFn, Recovery, Steps};
use crate::domain::{DomId, DomainInfo, DomainRef, DomainState, DomainType, ShutdownReason};
use crate::durable;
use crate::image::{
    self, manifest_path, Checksum, DirectWriter, DiskIdentity, ImageError, Manifest, SavedOn,
    StreamScanner, Timings, XlHeader, MANIFEST_FORMAT,
};
use crate::toolstack::{SaveSink, Toolstack};

pub struct SaveOptions<'a> {
    /// Image path; default `<image_dir>/<uuid>.xl`.
    pub out: Option<PathBuf>,
    pub image_dir: PathBuf,
    /// Copy memory while the guest runs (LIBXL_SUSPEND_LIVE).
    pub live: bool,
    /// What becomes of the guest once its image is safe.
    pub then: AfterSave,
    /// Also read the image back from the device (page cache dropped) before
    /// the guest goes: for storage one distrusts. It doubles the disk
    /// traffic while the guest is down; the checks on the stream as written
    /// and the fsync are made either way.
    pub read_back: bool,
    /// Where a live save waits near the end of its first pass over memory
    /// (see `PauseGate`); none: it goes straight on.
    pub gate: Option<&'a dyn PauseGate>,
    /// `out` is in a directory made empty for a series of saves, each under
    /// its own name (a run's images, by UUID): nothing can be there, so the
    /// look before the guest is touched is left out (two lookups per save).
    /// Publishing refuses to replace an image or a manifest either way.
    pub fresh_dir: bool,
    /// A guest paused by hand is saved, not refused: unpaused only for the
    /// suspend handshake (a paused guest cannot answer it), and paused
    /// again if it runs on afterwards (kept running, or resumed after a
    /// failure). Off: refused at once (`OpError::Paused`).
    pub paused_ok: bool,
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

/// What a save does with the guest once the image is durable and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterSave {
    /// As `xl save`: the domain and its devices are torn down.
    Destroy,
    /// As `xl save -c`: the guest runs on where it stopped.
    Resume,
    /// Left suspended, as it stopped: for a host that reboots next (the
    /// reboot ends it; a rollback resumes it where it stopped, without a
    /// restore). Tearing the devices down runs hotplug scripts, time the
    /// reboot would otherwise wait for.
    LeaveSuspended,
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
    /// What became of the guest.
    pub then: AfterSave,
    /// Whether the image was also read back from the device.
    pub read_back: bool,
    pub timings: Timings,
}

/// Takes the stream into the image file, checksumming and checking its
/// structure as it passes (on libxl's copy thread).
struct Sink<'a> {
    out: DirectWriter,
    sum: Checksum,
    scanner: StreamScanner,
    bytes: u64,
    total: u64,
    progress: ProgressFn<'a>,
    last_report: Instant,
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

impl<'a> Sink<'a> {
    /// Starts the image with `header` (the xl header: summed, not part of
    /// the stream); no gate.
    fn new(
        mut out: DirectWriter,
        header: &[u8],
        total: u64,
        progress: ProgressFn<'a>,
    ) -> std::io::Result<Self> {
        let mut sum = Checksum::new();
        let mut rest = header;
        while !rest.is_empty() {
            let n = out.put(rest)?;
            sum.update(out.last(n));
            rest = &rest[n..];
        }
        Ok(Sink {
            out,
            sum,
            scanner: StreamScanner::new(),
            bytes: header.len() as u64,
            total,
            progress,
            last_report: Instant::now(),
            gate: None,
            hold_at: u64::MAX,
        })
    }

    /// The writer, the checksum, the scanner and the bytes taken.
    fn into_parts(self) -> (DirectWriter, Checksum, StreamScanner, u64) {
        (self.out, self.sum, self.scanner, self.bytes)
    }

    /// Checks, sums and reports the `n` bytes the writer just took.
    fn take(&mut self, n: usize) -> std::io::Result<()> {
        let data = self.out.last(n);
        self.scanner.feed(data).map_err(std::io::Error::other)?;
        self.sum.update(data);
        self.bytes += n as u64;
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
        Ok(())
    }
}

/// For a toolstack with the bytes in hand (the simulator).
impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.put(buf)?;
        self.take(n)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// For libxl's pipe: read straight into the writer's buffer.
impl SaveSink for Sink<'_> {
    fn read_all(&mut self, from: &mut dyn Read) -> std::io::Result<u64> {
        let mut total = 0;
        loop {
            match self.out.read_from(from) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.take(n)?;
                    total += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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
    let was_paused = info.state == DomainState::Paused;
    if was_paused && !opts.paused_ok {
        return Err(OpError::Paused(info.name));
    }
    if opts.live && info.dtype == DomainType::Pv && !ts.physinfo()?.shadow_paging {
        return Err(OpError::LiveNeedsShadow(info.name));
    }
    let (detail, config) = ts.domain_detail_text(info.domid)?;
    let config = config.ok_or_else(|| OpError::NoConfig(info.name.clone()))?;
    let hv = ts.version()?;
    let image = match &opts.out {
        Some(p) => p.clone(),
        None => {
            durable::private_dir(&opts.image_dir)?;
            opts.image_dir.join(format!("{}.xl", info.uuid))
        }
    };
    if !opts.fresh_dir && (image.exists() || manifest_path(&image).exists()) {
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
    let out = DirectWriter::new(durable::create_fresh(&tmp)?);
    let header = XlHeader::new(&config).to_bytes();
    let mut sink = match Sink::new(out, &header, info.memory_kib * 1024, progress) {
        Ok(sink) => sink,
        Err(source) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(durable::DurableError::Io { path: tmp, source }.into());
        }
    };
    if let Some(gate) = opts.gate.filter(|_| opts.live) {
        sink.gate = Some((gate, &running));
        sink.hold_at = hold_at(info.memory_kib);
    }

    steps.done("created the image file");
    if was_paused {
        if let Err(e) = ts.unpause(info.domid) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        steps.done("unpaused the guest for the suspend handshake");
    }
    // From here on the guest is (being) suspended: every failure resumes it.
    let started = Instant::now();
    let saved = ts
        .save(info.domid, opts.live, &mut sink)
        .map_err(OpError::from)
        .and_then(|()| {
            let save_time = started.elapsed();
            steps.done(if sink.out.wrote_direct() {
                "wrote the stream (O_DIRECT)"
            } else {
                "wrote the stream (page cache)"
            });
            let (out, sum, scanner, bytes) = sink.into_parts();
            let stream = scanner.finish()?;
            let synced = Instant::now();
            let file = out.finish().map_err(|source| durable::DurableError::Io {
                path: tmp.clone(),
                source,
            })?;
            durable::sync(&file, &tmp)?;
            drop(file);
            // The rename becomes durable with the manifest's, below: one
            // fsync of the directory they share. The guest is destroyed only
            // after that, and an image whose rename a crash lost was never
            // one a run recorded as saved.
            durable::rename_new(&tmp, &image)?;
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
            // Also makes the image's rename durable (same directory). Never
            // over another image's manifest: then the image just published
            // goes too (it has no manifest of its own).
            durable::create(&manifest_path(&image), &text).inspect_err(|_| {
                let _ = std::fs::remove_file(&image);
            })?;
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
            let outcome =
                not_to_resume(ts, &info).unwrap_or_else(|| recover(ts, &info, was_paused));
            return Err(OpError::SaveFailed {
                name: info.name,
                cause: Box::new(cause),
                outcome,
            });
        }
    };

    // The image is durable and verified: only now may the guest go.
    let then = match opts.then {
        // A disk served by qemu in dom0 has a cache only qemu's orderly
        // close writes out: such a guest is torn down now, as xl does, not
        // left to dom0's shutdown.
        AfterSave::LeaveSuspended if detail.disks.iter().any(|d| d.backend == "qdisk") => {
            log::info!(
                "{}: a disk is served by qemu in dom0: destroyed, not left suspended",
                info.name
            );
            AfterSave::Destroy
        }
        then => then,
    };
    match then {
        AfterSave::Resume => {
            ts.resume(info.domid)?;
            if was_paused {
                ts.pause(info.domid)?;
            }
            steps.done("resumed the guest");
        }
        AfterSave::Destroy => {
            ts.destroy(info.domid)?;
            steps.done("destroyed the guest");
        }
        AfterSave::LeaveSuspended => steps.done("left the guest suspended"),
    }
    Ok(SaveReport {
        name: info.name,
        uuid: info.uuid,
        domid: info.domid,
        manifest: manifest_path(&image),
        image,
        size: manifest.size,
        checksum: manifest.checksum,
        kept_running: then == AfterSave::Resume,
        then,
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
    // Written just now: the kind new images get.
    Ok(image::verify_reader(file, image::Checksum::new())?)
}

/// After a failed save of a guest that neither stopped nor is paused: a
/// suspended one is resumed; one the save never suspended (it failed
/// before, e.g. the handshake timed out) runs on, and libxl's refusal to
/// resume it is no failure. One paused when its save began is paused again
/// either way, read back from the hypervisor.
fn recover(ts: &dyn Toolstack, info: &DomainInfo, was_paused: bool) -> Recovery {
    let resumed = ts.resume(info.domid);
    let running = ts.list_domains().is_ok_and(|ds| {
        ds.iter().any(|d| {
            d.domid == info.domid
                && d.shutdown_reason.is_none()
                && matches!(d.state, DomainState::Running | DomainState::Blocked)
        })
    });
    match resumed {
        Err(e) if !running => Recovery::ResumeFailed(e),
        _ if was_paused => match ts.pause(info.domid) {
            Ok(()) => Recovery::PausedAgain,
            Err(_) => Recovery::Resumed,
        },
        Ok(()) => Recovery::Resumed,
        Err(_) => Recovery::NotSuspended,
    }
}

/// After a failed save, what the hypervisor says of the guest, when that
/// rules a resume out: it shut down by itself (poweroff, reboot, crash) or
/// went away (Xen's resume clears any shutdown: resuming would run it on
/// past its own), or it is paused, not suspended (a paused PV guest cannot
/// answer the suspend request; there is nothing to resume). None: resume
/// it, as when the toolstack cannot say.
fn not_to_resume(ts: &dyn Toolstack, info: &DomainInfo) -> Option<Recovery> {
    let domains = ts.list_domains().ok()?;
    let Some(d) = domains
        .iter()
        .find(|d| d.domid == info.domid && d.uuid == info.uuid)
    else {
        return Some(Recovery::Stopped);
    };
    match d.state {
        DomainState::Dying | DomainState::Crashed => Some(Recovery::Stopped),
        DomainState::Shutdown if d.shutdown_reason != Some(ShutdownReason::Suspend) => {
            Some(Recovery::Stopped)
        }
        DomainState::Paused => Some(Recovery::Paused),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// After a failed save, the guest's state read back decides: paused or
    /// stopped on its own, it is not resumed; running or suspended, it is.
    /// After a failed save, the guest's state read back decides what is
    /// said: suspended and resumed; suspended and the resume failed (left
    /// suspended, not destroyed); never suspended (it runs on); paused when
    /// the save began (paused again).
    #[test]
    fn recovery_reads_the_guest_back() {
        use crate::sim::{Fault, Sim};
        use crate::toolstack::Call;
        let base = Sim::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sim-host.json"))
            .unwrap();
        let web = base.resolve(&"web-1".parse().unwrap()).unwrap();
        let suspended = || {
            let mut h = base.snapshot();
            let d = h
                .domains
                .iter_mut()
                .find(|d| d.detail.info.domid == web.domid)
                .unwrap();
            d.detail.info.state = DomainState::Shutdown;
            d.detail.info.shutdown_reason = Some(ShutdownReason::Suspend);
            Sim::new(h).unwrap()
        };
        let state = |ts: &Sim| ts.find_uuid(web.uuid).unwrap().unwrap().state;
        let ts = suspended();
        assert!(matches!(recover(&ts, &web, false), Recovery::Resumed));
        assert_eq!(state(&ts), DomainState::Running);
        let ts = suspended();
        assert!(matches!(recover(&ts, &web, true), Recovery::PausedAgain));
        assert_eq!(state(&ts), DomainState::Paused);
        let ts = suspended();
        ts.inject(Fault {
            call: Call::Resume,
            domid: None,
            message: "boom".into(),
            times: None,
        });
        let r = recover(&ts, &web, false);
        assert!(matches!(r, Recovery::ResumeFailed(_)), "{r}");
        assert!(r.to_string().contains("suspended, not destroyed"), "{r}");
        assert_eq!(state(&ts), DomainState::Shutdown);
        let running = Sim::new(base.snapshot()).unwrap();
        assert!(matches!(
            recover(&running, &web, false),
            Recovery::NotSuspended
        ));
        assert!(matches!(
            recover(&running, &web, true),
            Recovery::PausedAgain
        ));
        assert_eq!(state(&running), DomainState::Paused);
    }

    #[test]
    fn a_failed_save_resumes_only_a_guest_that_is_running_or_suspended() {
        use crate::sim::Sim;
        use crate::toolstack::Request;
        let ts = Sim::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sim-host.json"))
            .unwrap();
        let info = |name: &str| ts.resolve(&name.parse().unwrap()).unwrap();
        let (web, db, cache) = (info("web-1"), info("db-1"), info("cache-1"));
        assert!(not_to_resume(&ts, &web).is_none(), "running: resumed");
        ts.pause(web.domid).unwrap();
        assert!(matches!(not_to_resume(&ts, &web), Some(Recovery::Paused)));
        ts.request(db.domid, Request::Shutdown).unwrap();
        assert!(matches!(not_to_resume(&ts, &db), Some(Recovery::Stopped)));
        ts.destroy(cache.domid).unwrap();
        assert!(matches!(
            not_to_resume(&ts, &cache),
            Some(Recovery::Stopped)
        ));
    }

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
        let out = DirectWriter::new(File::create(t.path().join("image")).unwrap());
        let mut sink = Sink::new(out, &[], 0, &no_progress).unwrap();
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
    fn the_sink_reads_a_pipe_into_the_image_and_sums_every_byte() {
        let t = tempfile::tempdir().unwrap();
        let no_progress = |_: Progress| {};
        let header = XlHeader::new("{\"c_info\": {}}").to_bytes();
        // A valid stream of 12 MiB of pages, arriving as a pipe hands it out.
        let data = crate::image::synth::stream_with(3 << 10, b"through a pipe");
        for buffered in [false, true] {
            let path = t.path().join(format!("image-{buffered}"));
            let file = File::create(&path).unwrap();
            let out = if buffered {
                DirectWriter::buffered(file)
            } else {
                DirectWriter::new(file)
            };
            let mut sink = Sink::new(out, &header, 0, &no_progress).unwrap();
            // Not std::io::pipe: it is Rust 1.87's, and Debian 13 builds with 1.85.
            let (rd, wr) = nix::unistd::pipe().unwrap();
            let (mut rd, mut wr) = (File::from(rd), File::from(wr));
            let taken = std::thread::scope(|s| {
                let sent = &data;
                s.spawn(move || wr.write_all(sent).unwrap());
                sink.read_all(&mut rd).unwrap()
            });
            assert_eq!(taken, data.len() as u64);
            let takes_direct = || {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .is_ok()
            };
            if !buffered && takes_direct() {
                assert!(sink.out.wrote_direct(), "O_DIRECT taken, yet not used");
            }
            let (out, sum, scanner, bytes) = sink.into_parts();
            scanner.finish().unwrap();
            drop(out.finish().unwrap());
            let mut whole = header.clone();
            whole.extend_from_slice(&data);
            assert_eq!(bytes, whole.len() as u64);
            assert!(
                std::fs::read(&path).unwrap() == whole,
                "buffered: {buffered}"
            );
            let mut expected = Checksum::new();
            expected.update(&whole);
            assert_eq!(sum.finish(), expected.finish());
        }
    }
}
