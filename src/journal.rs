//! The durable record of a maintenance run: an append-only file of
//! checksummed JSON lines, fsync'd after every record, so that after a crash
//! or power cut at any point the run can be replayed up to its last
//! acknowledged step.
//!
//! Line 1 is a header (magic, version, run id). Each further line is
//! `{"seq":N,"crc":"<xxh3-64>","rec":{...}}`. A torn last line (the crash
//! came mid-append) is dropped and truncated away; a bad line followed by
//! good ones is corruption, and refused with the file and line named.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;

use serde_json::value::RawValue;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::durable;

pub const MAGIC: &str = "xenmaint-journal";
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Durable(#[from] durable::DurableError),
    #[error("journal {path} is not a xenmaint journal (line 1: {detail})")]
    NotAJournal { path: PathBuf, detail: String },
    #[error("journal {path} has version {found}; this xenmaint reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("journal {path} is corrupt at line {line}: {detail}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub magic: String,
    pub version: u32,
    pub run: String,
    pub created_at: u64,
}

/// One record's line. The checksum covers the record's JSON exactly as it
/// stands in the file: a checksum of a re-serialised parse would depend on
/// the parse (a float that does not read back bit for bit made a healthy
/// journal of 3,000 guests look corrupt).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    seq: u64,
    crc: String,
    #[serde(borrow)]
    rec: &'a RawValue,
}

#[cfg(test)]
fn crc_of(rec: &RawValue) -> String {
    crc_of_bytes(rec.get().as_bytes())
}

fn crc_of_bytes(rec: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(rec))
}

/// The text of `Line { seq, crc, rec }` with its line end, exactly as serde
/// writes it, but with the record serialised once, in place: its checksum
/// goes in after, where a placeholder of the same length stood.
fn line_of<R: Serialize>(seq: u64, rec: &R) -> Vec<u8> {
    const PLACEHOLDER: &str = "0000000000000000";
    let mut text = format!("{{\"seq\":{seq},\"crc\":\"{PLACEHOLDER}\",\"rec\":").into_bytes();
    let rec_at = text.len();
    let crc_at = rec_at - PLACEHOLDER.len() - "\",\"rec\":".len();
    serde_json::to_writer(&mut text, rec).expect("records serialise");
    let crc = crc_of_bytes(&text[rec_at..]);
    text[crc_at..crc_at + PLACEHOLDER.len()].copy_from_slice(crc.as_bytes());
    text.extend_from_slice(b"}\n");
    text
}

/// The parts of a line exactly as `line_of` writes it (as serde did before
/// it): `{"seq":N,"crc":"<16 hex>","rec":` record `}` and the line end.
/// None for any other shape: serde then parses the line, and refuses what is
/// not one. The record is parsed after its checksum matched, which refuses
/// what is not JSON; a replay so reads each record once, not twice.
fn split_line(line: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // serde writes no leading zeros; u64 has at most 20 digits.
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"crc\":\"")?;
    let (crc, rest) = (rest.get(..16)?, rest.get(16..)?);
    let rec = rest.strip_prefix(b"\",\"rec\":")?.strip_suffix(b"}\n")?;
    Some((seq, crc, rec))
}

/// An open journal, positioned to append.
pub struct Journal<R> {
    file: File,
    path: PathBuf,
    next_seq: u64,
    _rec: PhantomData<R>,
}

impl<R: Serialize + DeserializeOwned> Journal<R> {
    /// Creates a new journal (never over an existing file) and makes its
    /// header durable, directory entry included.
    pub fn create(path: &Path, run: &str, created_at: u64) -> Result<Journal<R>, JournalError> {
        let mut file = durable::create_new(path)?;
        let header = Header {
            magic: MAGIC.into(),
            version: VERSION,
            run: run.into(),
            created_at,
        };
        let mut text = serde_json::to_vec(&header).expect("header serialises");
        text.push(b'\n');
        file.write_all(&text).map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })?;
        durable::sync(&file, path)?;
        durable::fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Journal {
            file,
            path: path.to_owned(),
            next_seq: 1,
            _rec: PhantomData,
        })
    }

    /// Opens a journal for appending, returning its header and records. A
    /// torn last record is dropped and cut off the file.
    pub fn open(path: &Path) -> Result<(Journal<R>, Header, Vec<R>), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        let (header, records, good_len, total_len) = Self::replay(path, &file)?;
        if good_len < total_len {
            log::warn!(
                "journal {}: dropping a torn last record ({} bytes) left by a crash",
                path.display(),
                total_len - good_len
            );
            file.set_len(good_len).map_err(io)?;
            durable::sync(&file, path)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let next_seq = records.len() as u64 + 1;
        Ok((
            Journal {
                file,
                path: path.to_owned(),
                next_seq,
                _rec: PhantomData,
            },
            header,
            records,
        ))
    }

    /// Reads a journal without changing it (for `status`).
    pub fn read(path: &Path) -> Result<(Header, Vec<R>), JournalError> {
        let file = File::open(path).map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })?;
        let (header, records, _, _) = Self::replay(path, &file)?;
        Ok((header, records))
    }

    fn replay(path: &Path, file: &File) -> Result<(Header, Vec<R>, u64, u64), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        // The whole file at once, its lines slices of it: one copy of it in
        // memory, not one allocation per record.
        let mut reader = file;
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut data = Vec::new();
        reader.read_to_end(&mut data).map_err(io)?;
        let lines: Vec<(&[u8], bool)> = data
            .split_inclusive(|&b| b == b'\n')
            .map(|l| (l, l.last() == Some(&b'\n')))
            .collect();
        let total_len: u64 = lines.iter().map(|(l, _)| l.len() as u64).sum();
        let not_journal = |detail: String| JournalError::NotAJournal {
            path: path.to_owned(),
            detail,
        };
        let (first, first_complete) = lines
            .first()
            .ok_or_else(|| not_journal("the file is empty".into()))?;
        let header: Header = serde_json::from_slice(first)
            .map_err(|e| not_journal(e.to_string()))
            .and_then(|h: Header| {
                if *first_complete && h.magic == MAGIC {
                    Ok(h)
                } else {
                    Err(not_journal("no xenmaint-journal header".into()))
                }
            })?;
        if header.version != VERSION {
            return Err(JournalError::Version {
                path: path.to_owned(),
                found: header.version,
            });
        }
        let mut records = Vec::with_capacity(lines.len() - 1);
        let mut good_len = first.len() as u64;
        let last = lines.len() - 1;
        for (i, (line, complete)) in lines.iter().enumerate().skip(1) {
            match Self::parse_line(line, *complete, records.len() as u64 + 1) {
                Ok(rec) => {
                    records.push(rec);
                    good_len += line.len() as u64;
                }
                // Only the record being appended when the crash came may be torn.
                Err(_) if i == last => break,
                Err(detail) => {
                    return Err(JournalError::Corrupt {
                        path: path.to_owned(),
                        line: i + 1,
                        detail,
                    })
                }
            }
        }
        Ok((header, records, good_len, total_len))
    }

    fn parse_line(line: &[u8], complete: bool, want_seq: u64) -> Result<R, String> {
        if !complete {
            return Err("record without its line end".into());
        }
        let parsed;
        let (seq, crc, rec) = match split_line(line) {
            Some(parts) => parts,
            None => {
                parsed = serde_json::from_slice::<Line>(line).map_err(|e| e.to_string())?;
                (
                    parsed.seq,
                    parsed.crc.as_bytes(),
                    parsed.rec.get().as_bytes(),
                )
            }
        };
        if seq != want_seq {
            return Err(format!("sequence {seq} where {want_seq} was due"));
        }
        if crc_of_bytes(rec).as_bytes() != crc {
            return Err("checksum mismatch".into());
        }
        serde_json::from_slice(rec).map_err(|e| e.to_string())
    }

    /// Appends one record and returns once it is on disk.
    pub fn append(&mut self, rec: &R) -> Result<(), JournalError> {
        let text = line_of(self.next_seq, rec);
        self.file
            .write_all(&text)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.next_seq += 1;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Rec {
        Began { guest: String },
        Done { guest: String, bytes: u64 },
    }

    fn recs() -> Vec<Rec> {
        (0..4)
            .flat_map(|i| {
                [
                    Rec::Began {
                        guest: format!("g{i}"),
                    },
                    Rec::Done {
                        guest: format!("g{i}"),
                        bytes: 1 << i,
                    },
                ]
            })
            .collect()
    }

    /// Estimates in a run's plan are floats; serde_json's default parser
    /// reads some of them back a bit off, which once made a healthy journal
    /// fail its checksums.
    #[test]
    fn records_with_any_float_read_back_intact() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("run.journal");
        let mut j = Journal::<Vec<f64>>::create(&p, "run-1", 7).unwrap();
        let floats: Vec<f64> = (1..20_000u32)
            .map(|i| f64::from(i) * 0.1 / 7.0 + 1e-9 * f64::from(i))
            .collect();
        j.append(&floats).unwrap();
        drop(j);
        let (_, got) = Journal::<Vec<f64>>::read(&p).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), floats.len());
    }

    /// Journals written before `line_of` must read the same: its lines are
    /// byte for byte what serialising a `Line` gives.
    #[test]
    fn a_line_is_what_serde_writes_for_it() {
        let floats = vec![0.1 / 7.0, 1e300, -0.0];
        for (seq, rec) in [
            (1, "\"x\\\"y\"".to_owned()),
            (77, serde_json::to_string(&floats).unwrap()),
        ]
        .into_iter()
        .chain(
            recs()
                .iter()
                .enumerate()
                .map(|(i, r)| (i as u64 + 2, serde_json::to_string(r).unwrap())),
        ) {
            let value: serde_json::Value = serde_json::from_str(&rec).unwrap();
            let raw = serde_json::value::to_raw_value(&value).unwrap();
            let mut want = serde_json::to_vec(&Line {
                seq,
                crc: crc_of(&raw),
                rec: &raw,
            })
            .unwrap();
            want.push(b'\n');
            assert_eq!(
                String::from_utf8(line_of(seq, &value)).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    /// Lines of another shape than `line_of` writes (spaces, fields in
    /// another order) are read by serde, checked the same way.
    #[test]
    fn a_line_of_another_shape_is_still_read_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("j");
        drop(Journal::<Rec>::create(&p, "r", 0).unwrap());
        let rec = serde_json::to_string(&recs()[1]).unwrap();
        let crc = crc_of_bytes(rec.as_bytes());
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str(&format!(
            "{{\"crc\": \"{crc}\", \"seq\": 1, \"rec\": {rec}}}\n"
        ));
        std::fs::write(&p, &text).unwrap();
        let (_, got) = Journal::<Rec>::read(&p).unwrap();
        assert_eq!(got, recs()[1..2]);
        text.push_str(&format!(
            "{{\"seq\": 2, \"crc\": \"{crc}\", \"rec\": {rec}}}\n"
        ));
        text.push_str(&String::from_utf8(line_of(3, &recs()[0])).unwrap());
        std::fs::write(&p, text.replacen("\"seq\": 2", "\"seq\": 7", 1)).unwrap();
        let e = Journal::<Rec>::read(&p).err().unwrap();
        assert!(matches!(e, JournalError::Corrupt { line: 3, .. }), "{e}");
    }

    #[test]
    fn records_survive_reopening_and_appends_continue() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("run.journal");
        let mut j = Journal::<Rec>::create(&p, "run-1", 7).unwrap();
        for r in &recs()[..3] {
            j.append(r).unwrap();
        }
        drop(j);
        let (mut j, header, got) = Journal::<Rec>::open(&p).unwrap();
        assert_eq!(header.run, "run-1");
        assert_eq!(got, recs()[..3]);
        for r in &recs()[3..] {
            j.append(r).unwrap();
        }
        let (_, got) = Journal::<Rec>::read(&p).unwrap();
        assert_eq!(got, recs());
        assert!(
            Journal::<Rec>::create(&p, "again", 0).is_err(),
            "never over a journal"
        );
    }

    #[test]
    fn a_crash_at_any_byte_loses_at_most_the_record_being_written() {
        let t = tempfile::tempdir().unwrap();
        let full = t.path().join("full");
        let mut j = Journal::<Rec>::create(&full, "r", 0).unwrap();
        let mut ends = vec![std::fs::metadata(&full).unwrap().len()];
        for r in &recs() {
            j.append(r).unwrap();
            ends.push(std::fs::metadata(&full).unwrap().len());
        }
        let bytes = std::fs::read(&full).unwrap();
        let p = t.path().join("cut");
        for cut in ends[0] as usize..=bytes.len() {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let (mut j, _, got) = Journal::<Rec>::open(&p).unwrap();
            let whole = ends.iter().filter(|&&e| e as usize <= cut).count() - 1;
            assert_eq!(got, recs()[..whole], "cut at {cut}");
            // The torn tail is gone: the next append makes a valid journal.
            j.append(&Rec::Began {
                guest: "next".into(),
            })
            .unwrap();
            let (_, again) = Journal::<Rec>::read(&p).unwrap();
            assert_eq!(again.len(), whole + 1, "cut at {cut}");
        }
    }

    #[test]
    fn corruption_before_the_end_is_refused_naming_the_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("j");
        let mut j = Journal::<Rec>::create(&p, "r", 0).unwrap();
        for r in &recs() {
            j.append(r).unwrap();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let bad = text.replacen("\"bytes\":2", "\"bytes\":3", 1);
        assert_ne!(bad, text);
        std::fs::write(&p, bad).unwrap();
        let e = Journal::<Rec>::open(&p).err().unwrap();
        assert!(matches!(e, JournalError::Corrupt { line: 5, .. }), "{e}");
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn foreign_and_future_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("j");
        for (content, want) in [
            ("", "empty"),
            ("hello\n", "not a xenmaint journal"),
            (
                "{\"magic\":\"other\",\"version\":1,\"run\":\"r\",\"created_at\":0}\n",
                "header",
            ),
        ] {
            std::fs::write(&p, content).unwrap();
            let e = Journal::<Rec>::open(&p).err().unwrap();
            assert!(e.to_string().contains(want), "{content:?}: {e}");
        }
        std::fs::write(
            &p,
            "{\"magic\":\"xenmaint-journal\",\"version\":9,\"run\":\"r\",\"created_at\":0}\n",
        )
        .unwrap();
        assert!(matches!(
            Journal::<Rec>::open(&p),
            Err(JournalError::Version { found: 9, .. })
        ));
    }
}
