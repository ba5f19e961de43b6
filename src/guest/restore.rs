//! `restore` and `verify`: an image back into a running guest, which is
//! unpaused only after every byte matched.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{millis, OpError, Progress, ProgressFn, Steps};
use crate::domain::{DomId, DomainRef, Uuid};
use crate::image::{
    self, AlignedBuf, Checksum, DirectReader, Hashing, ImageError, Manifest, StreamScanner,
    StreamSummary, XlHeader,
};
use crate::toolstack::{RestoreSource, Toolstack, ToolstackError};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Leave the restored guest paused (xl restore -p).
    pub paused: bool,
    /// Run the programs the image's configuration names even if they are
    /// not the system's own (see `image::programs`).
    pub allow_programs: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub name: String,
    pub uuid: Uuid,
    pub domid: DomId,
    pub image: PathBuf,
    pub size: u64,
    /// Whether a manifest's checksum was checked (images from `xl save` have none).
    pub checksum_verified: bool,
    pub paused: bool,
    pub restore_ms: u64,
}

type Scanned = Result<(StreamSummary, String), ImageError>;

/// Feeds libxl the stream while checksumming it and checking its structure;
/// a broken stream stops the feed, so libxl fails rather than building a
/// guest from it.
struct Source<'a> {
    /// The image from where its header ends.
    inner: DirectReader,
    /// The checksum of the image so far (header included), and its bytes.
    sum: Checksum,
    count: u64,
    scanner: Option<StreamScanner>,
    /// Set once the stream ended or broke: its summary and checksum, or why not.
    outcome: Option<Scanned>,
    total: u64,
    progress: ProgressFn<'a>,
    last_report: Instant,
}

impl<'a> Source<'a> {
    /// The stream from where `reader` stopped: right after the header.
    fn after_header(reader: Hashing<File>, total: u64, progress: ProgressFn<'a>) -> Self {
        let (file, sum, count) = reader.into_parts();
        Source {
            inner: DirectReader::new(file, count),
            sum,
            count,
            scanner: Some(StreamScanner::new()),
            outcome: None,
            total,
            progress,
            last_report: Instant::now(),
        }
    }

    /// Checks and sums bytes just read; `end`: the image has no more.
    fn took(&mut self, data: &[u8], end: bool) -> std::io::Result<()> {
        let Some(scanner) = self.scanner.as_mut() else {
            return Ok(());
        };
        self.sum.update(data);
        self.count += data.len() as u64;
        scanner.feed(data).map_err(|e| {
            let text = e.to_string();
            self.outcome = Some(Err(e));
            std::io::Error::other(text)
        })?;
        if end {
            let done = self.scanner.take().expect("checked above").finish();
            let outcome = done.map(|s| (s, self.sum.finish()));
            let failed = outcome.as_ref().err().map(|e| e.to_string());
            self.outcome = Some(outcome);
            if let Some(e) = failed {
                return Err(std::io::Error::other(e));
            }
        }
        if self.last_report.elapsed().as_millis() >= 200 || end {
            self.last_report = Instant::now();
            (self.progress)(Progress {
                bytes: self.count,
                total: self.total,
            });
        }
        Ok(())
    }
}

/// For a toolstack that wants the bytes (the simulator).
impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read_plain(buf)?;
        self.took(&buf[..n], n == 0)?;
        Ok(n)
    }
}

/// For libxl's pipe: whole blocks, read with O_DIRECT where the disk allows.
impl RestoreSource for Source<'_> {
    fn read_block(&mut self, buf: &mut AlignedBuf) -> std::io::Result<Range<usize>> {
        let range = self.inner.read_block(buf)?;
        self.took(&buf.as_slice()[range.clone()], range.end < buf.len())?;
        Ok(range)
    }
}

pub fn restore(
    ts: &dyn Toolstack,
    image: &Path,
    opts: &RestoreOptions,
    progress: ProgressFn<'_>,
) -> Result<RestoreReport, OpError> {
    match restore_once(ts, image, opts, progress) {
        // The bytes read did not match, yet the file reads intact: the read
        // failed, not the image. Once more, checked the same way (nothing
        // runs before its checksum matched); a second failure stands.
        Err(OpError::Image(ImageError::ChecksumMismatch { .. })) if verify(image).is_ok() => {
            log::error!(
                "{}: the stream read during the restore did not match its manifest, yet \
                 the file reads intact now: reads from this storage are unreliable; \
                 restoring once more",
                image.display()
            );
            restore_once(ts, image, opts, progress)
        }
        other => other,
    }
}

fn restore_once(
    ts: &dyn Toolstack,
    image: &Path,
    opts: &RestoreOptions,
    progress: ProgressFn<'_>,
) -> Result<RestoreReport, OpError> {
    let steps = Steps::new(format!("restore {}", image.display()));
    let manifest = Manifest::load_for(image)?;
    let file = File::open(image).map_err(ImageError::Io)?;
    // For progress only: the manifest's size, else the file's.
    let total = match &manifest {
        Some(m) => m.size,
        None => file.metadata().map(|m| m.len()).unwrap_or(0),
    };
    let sum = Checksum::for_manifest(manifest.as_ref())?;
    // Unbuffered: libxl must get the stream from exactly where the header ends.
    let mut reader = Hashing::new(file, sum);
    let header = XlHeader::read_from(&mut reader)?;
    let config = header.config_json()?;
    let name = config["c_info"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let uuid: Uuid = config["c_info"]["uuid"]
        .as_str()
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| ImageError::Corrupt("config has no valid c_info.uuid".into()))?;
    preflight(ts, &config, &name, uuid)?;
    if !opts.allow_programs {
        if let Some(p) = crate::image::programs(&config)
            .into_iter()
            .find(|p| p.refused.is_some())
        {
            return Err(OpError::UntrustedProgram {
                image: image.to_owned(),
                role: p.role,
                path: p.path,
                why: p.refused.unwrap_or_default(),
            });
        }
    }
    steps.done("read the header and checked the host");

    let mut source = Source::after_header(reader, total, progress);
    let started = Instant::now();
    let restored = ts.restore(config, &mut source);
    steps.done("restored the stream");
    log::debug!(
        "restore {}: {} of {} bytes read with O_DIRECT",
        image.display(),
        source.inner.direct_bytes(),
        source.count
    );
    let size = source.count;
    let scanned = source.outcome.take();
    let domid = match restored {
        Ok(domid) => domid,
        Err(e) => {
            remove_leftover(ts, uuid);
            // The image's own fault explains libxl's failure best. libxl
            // may stop reading before the end (a corrupt page table, say),
            // so read the rest to know whether the image is to blame.
            return Err(match scanned {
                Some(Err(image_error)) => image_error.into(),
                _ => match verify(image) {
                    Err(OpError::Image(image_error)) => image_error.into(),
                    _ => e.into(),
                },
            });
        }
    };
    let check = match scanned {
        Some(Ok((_, checksum))) => match &manifest {
            Some(m) if m.checksum != checksum => Err(ImageError::ChecksumMismatch {
                expected: m.checksum.clone(),
                actual: checksum,
            }),
            _ => Ok(()),
        },
        Some(Err(e)) => Err(e),
        None => Err(ImageError::Truncated("libxl stream, before its END record")),
    };
    if let Err(e) = check {
        // Nothing may run from an image that failed its checks.
        let _ = ts.destroy(domid);
        return Err(e.into());
    }
    if !opts.paused {
        if let Err(e) = ts.unpause(domid) {
            let _ = ts.destroy(domid);
            return Err(e.into());
        }
        steps.done("unpaused the guest");
    }
    Ok(RestoreReport {
        name,
        uuid,
        domid,
        image: image.to_owned(),
        size,
        checksum_verified: manifest.is_some(),
        paused: opts.paused,
        restore_ms: millis(started.elapsed()),
    })
}

/// Refuses before anything is created: a second copy of a running guest, or
/// a guest whose disks are gone.
fn preflight(
    ts: &dyn Toolstack,
    config: &serde_json::Value,
    name: &str,
    uuid: Uuid,
) -> Result<(), OpError> {
    let named = match ts.resolve(&DomainRef::Name(name.to_owned())) {
        Ok(_) => true,
        Err(ToolstackError::NoSuchDomain(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if named || ts.find_uuid(uuid)?.is_some() {
        return Err(OpError::AlreadyRunning {
            name: name.to_owned(),
            uuid,
        });
    }
    for disk in config["disks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(path) = disk["pdev_path"].as_str() else {
            continue;
        };
        // Only local paths can be checked; other targets are libxl's to resolve.
        if path.starts_with('/') && !Path::new(path).exists() {
            return Err(OpError::MissingDisk {
                name: name.to_owned(),
                vdev: disk["vdev"].as_str().unwrap_or("?").to_owned(),
                path: path.to_owned(),
            });
        }
    }
    Ok(())
}

/// libxl destroys a domain whose restore failed; make sure of it.
fn remove_leftover(ts: &dyn Toolstack, uuid: Uuid) {
    if let Ok(list) = ts.list_domains() {
        for d in list.iter().filter(|d| d.uuid == uuid) {
            log::warn!("destroying domain {} left by a failed restore", d.domid);
            let _ = ts.destroy(d.domid);
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub image: PathBuf,
    pub name: String,
    pub uuid: Option<String>,
    pub size: u64,
    pub checksum: String,
    /// Whether a manifest was there to compare the checksum with.
    pub manifest: bool,
    pub stream: StreamSummary,
    /// What its configuration makes dom0 run at a restore.
    pub programs: Vec<crate::image::Program>,
}

/// Reads an image end to end and checks it against its manifest, if any.
pub fn verify(image: &Path) -> Result<VerifyReport, OpError> {
    let manifest = Manifest::load_for(image)?;
    let v = image::verify_file(image, Checksum::for_manifest(manifest.as_ref())?)?;
    if let Some(m) = &manifest {
        if m.checksum != v.checksum {
            return Err(ImageError::ChecksumMismatch {
                expected: m.checksum.clone(),
                actual: v.checksum,
            }
            .into());
        }
    }
    Ok(VerifyReport {
        image: image.to_owned(),
        name: v.config["c_info"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        uuid: v.config["c_info"]["uuid"].as_str().map(str::to_owned),
        size: v.size,
        checksum: v.checksum,
        manifest: manifest.is_some(),
        stream: v.stream,
        programs: crate::image::programs(&v.config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An xl image of `pages` pages; its stream starts at an unaligned offset.
    fn image(dir: &Path, pages: usize) -> PathBuf {
        let path = dir.join(format!("{pages}.xl"));
        let mut bytes = XlHeader::new("{\"c_info\": {\"name\": \"g\"}}").to_bytes();
        bytes.extend_from_slice(&image::synth::stream_with(pages, b"blocks"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Reads the stream as the libxl feed does: block by block.
    /// Also returns the bytes read with O_DIRECT.
    fn read_in_blocks(path: &Path) -> (std::io::Result<u64>, Option<Scanned>, u64) {
        let no_progress = |_: Progress| {};
        let mut reader = Hashing::new(File::open(path).unwrap(), Checksum::new());
        XlHeader::read_from(&mut reader).unwrap();
        let mut source = Source::after_header(reader, 0, &no_progress);
        let mut buf = AlignedBuf::new((1 << 20) + 4096);
        let fed = (|| loop {
            let range = source.read_block(&mut buf)?;
            if range.end < buf.len() {
                return Ok(source.count);
            }
        })();
        (fed, source.outcome, source.inner.direct_bytes())
    }

    /// Whether the file's filesystem takes O_DIRECT.
    fn direct_taken(path: &Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .is_ok()
    }

    #[test]
    fn a_stream_read_in_blocks_sums_the_whole_image_once() {
        let t = tempfile::tempdir().unwrap();
        for pages in [0, 1, 300, 1000] {
            let path = image(t.path(), pages);
            let whole = image::verify_reader(File::open(&path).unwrap(), Checksum::new()).unwrap();
            let (fed, outcome, direct) = read_in_blocks(&path);
            assert_eq!(fed.unwrap(), whole.size, "{pages} pages");
            if pages == 1000 && direct_taken(&path) {
                assert!(direct > 0, "O_DIRECT taken, yet not used");
            }
            let (summary, checksum) = outcome.unwrap().unwrap();
            assert_eq!(checksum, whole.checksum, "{pages} pages");
            assert_eq!(summary, whole.stream);
        }
    }

    #[test]
    fn a_broken_stream_read_in_blocks_stops_the_feed() {
        let t = tempfile::tempdir().unwrap();
        let path = image(t.path(), 1000);
        // Cut off its end: the END record is missing.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        let (fed, outcome, _) = read_in_blocks(&path);
        assert!(fed.is_err());
        assert!(matches!(outcome, Some(Err(_))), "{outcome:?}");
    }
}
