//! Appending to a trail: `DIR/audit-NNNNNN.jsonl` files and the seal file `DIR/audit.seal`.
//!
//! Each record is one `write` of one line. A checkpoint is written every `checkpoint_every`
//! records or `checkpoint_interval` (whichever comes first; [`Writer::tick`] checks the time),
//! and before each rotation; it is appended to the seal file too, and both files are synced to
//! disk then. A new file opens with a `file` record whose `prev` continues the chain.
//!
//! On open the writer resumes the newest file: a last line cut off by a crash (never complete,
//! so never part of the chain) is dropped, and the next record follows the last complete one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::record::{self, hash, hash_into, Fields, Record, CHECKPOINT, FILE, GENESIS};
use crate::signer::{self, CheckpointSigner};

/// The seal file's name.
pub const SEAL_FILE: &str = "audit.seal";
/// The lock file's name: one writer per trail. Two writers appending to one trail would each
/// chain from their own last record, and the trail would no longer verify.
pub const LOCK_FILE: &str = "audit.lock";

/// Why the trail could not be written. The caller decides whether traffic goes on
/// (fail-open) or stops (fail-closed); it must never pass silently.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file could not be opened, written or synced (a full disk, permissions).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The newest file does not end in a record this writer can continue.
    #[error("{}: cannot continue the trail: {reason}", path.display())]
    Resume {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The checkpoint could not be signed.
    #[error("checkpoint not signed: {0}")]
    Sign(String),
    /// Another writer holds the trail's lock file.
    #[error("{}: another writer holds this trail", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

/// When a file is closed and the next one opened.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// Rotate once the file is this large.
    pub max_bytes: u64,
    /// Rotate once the file is this old.
    pub max_age: Duration,
    /// Checkpoint after this many records.
    pub checkpoint_every: u64,
    /// Checkpoint when the last one is this old and records came since.
    pub checkpoint_interval: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
        }
    }
}

/// An open trail.
pub struct Writer {
    dir: PathBuf,
    signer: Arc<dyn CheckpointSigner>,
    rotation: Rotation,
    file: File,
    path: PathBuf,
    index: u64,
    seq: u64,
    prev: String,
    bytes: u64,
    opened: SystemTime,
    since_checkpoint: u64,
    last_checkpoint: SystemTime,
    /// Holds the trail's exclusive lock ([`LOCK_FILE`]) while the writer is open.
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The path of file `index` in `dir`.
pub fn file_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("audit-{index:06}.jsonl"))
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    rfc3339_into(t, &mut out);
    out
}

/// [`rfc3339`], written over `out`, digit by digit (once per record, so without the
/// formatting machinery).
fn rfc3339_into(t: SystemTime, out: &mut String) {
    let t = time::OffsetDateTime::from(t);
    out.clear();
    let year = u64::try_from(t.year()).unwrap_or(0);
    let parts = [
        (year, 4, '-'),
        (u64::from(u8::from(t.month())), 2, '-'),
        (u64::from(t.day()), 2, 'T'),
        (u64::from(t.hour()), 2, ':'),
        (u64::from(t.minute()), 2, ':'),
        (u64::from(t.second()), 2, '.'),
        (u64::from(t.millisecond()), 3, 'Z'),
    ];
    for (value, width, after) in parts {
        record::push_padded(out, value, width);
        out.push(after);
    }
}

impl Writer {
    /// Opens (or creates) the trail in `dir`, continuing the newest file.
    pub fn open(
        dir: &Path,
        signer: Arc<dyn CheckpointSigner>,
        rotation: Rotation,
        now: SystemTime,
    ) -> Result<Writer, AuditError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Locked { path: lock_path })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let newest = newest_index(dir)?;
        let (index, seq, prev, resumed) = match newest {
            None => (0, 0, GENESIS.to_owned(), None),
            Some(index) => match resume(&file_path(dir, index))? {
                Some((seq, prev, len)) => (index, seq, prev, Some(len)),
                // A file created but never written to (a crash right after a rotation): it
                // opens again, continuing the previous file.
                None if index == 0 => (0, 0, GENESIS.to_owned(), None),
                None => {
                    let before = file_path(dir, index - 1);
                    let (seq, prev, _) = resume(&before)?.ok_or_else(|| AuditError::Resume {
                        path: before.clone(),
                        reason: "no complete record".into(),
                    })?;
                    (index, seq, prev, None)
                }
            },
        };
        let path = file_path(dir, index);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let len = resumed.unwrap_or(0);
        file.set_len(len).map_err(io(&path))?;
        file.seek(SeekFrom::End(0)).map_err(io(&path))?;
        let bytes = len;
        let mut writer = Writer {
            dir: dir.to_owned(),
            signer,
            rotation,
            file,
            path,
            index,
            seq,
            prev,
            bytes,
            opened: now,
            since_checkpoint: 0,
            last_checkpoint: now,
            _lock: lock,
        };
        if resumed.is_none() {
            writer.start_file(now)?;
        }
        Ok(writer)
    }

    /// Appends one event of type `kind` with `fields`; checkpoints and rotates when due.
    pub fn append(
        &mut self,
        kind: &str,
        fields: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<u64, AuditError> {
        self.write(kind, &Fields::from_map(fields), now)?;
        let seq = self.seq;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.rotation.checkpoint_every {
            self.checkpoint(now)?;
        }
        if self.bytes >= self.rotation.max_bytes
            || now.duration_since(self.opened).unwrap_or_default() >= self.rotation.max_age
        {
            self.rotate(now)?;
        }
        Ok(seq)
    }

    /// Appends events (type, fields, time) with one `write` for all of them; checkpoints and
    /// rotates when due, after the last. All or nothing: when the write fails, none of them is
    /// in the trail and the chain is where it was.
    pub fn append_all(
        &mut self,
        events: &[(&str, Fields, SystemTime)],
        now: SystemTime,
    ) -> Result<u64, AuditError> {
        let (seq, prev) = (self.seq, self.prev.clone());
        // The batch's lines go into one buffer, each hashed where it lies: no string per
        // record on this path (docs/audit.md, "Cost").
        let mut buf = String::with_capacity(events.iter().map(|e| e.1.as_str().len() + 160).sum());
        let mut stamp = String::with_capacity(24);
        for (kind, fields, time) in events {
            let next = self.seq + 1;
            rfc3339_into(*time, &mut stamp);
            let start = buf.len();
            record::line_into(&mut buf, next, &stamp, &self.prev, kind, fields);
            hash_into(
                buf.get(start..).unwrap_or_default().as_bytes(),
                &mut self.prev,
            );
            self.seq = next;
            buf.push('\n');
        }
        if let Err(e) = self.file.write_all(buf.as_bytes()) {
            let _ = self.file.set_len(self.bytes);
            let _ = self.file.seek(SeekFrom::End(0));
            (self.seq, self.prev) = (seq, prev);
            return Err(io(&self.path)(e));
        }
        self.bytes += buf.len() as u64;
        self.since_checkpoint += events.len() as u64;
        if self.since_checkpoint >= self.rotation.checkpoint_every {
            self.checkpoint(now)?;
        }
        if self.bytes >= self.rotation.max_bytes
            || now.duration_since(self.opened).unwrap_or_default() >= self.rotation.max_age
        {
            self.rotate(now)?;
        }
        Ok(self.seq)
    }

    /// Checkpoints if records came since the last one and it is older than the interval.
    pub fn tick(&mut self, now: SystemTime) -> Result<(), AuditError> {
        if self.checkpoint_due(now) {
            self.checkpoint(now)?;
        }
        Ok(())
    }

    /// Whether [`Writer::tick`] at `now` would write a checkpoint.
    pub fn checkpoint_due(&self, now: SystemTime) -> bool {
        let age = now.duration_since(self.last_checkpoint).unwrap_or_default();
        self.since_checkpoint > 0 && age >= self.rotation.checkpoint_interval
    }

    /// Writes a checkpoint now, into the trail and the seal file, and syncs both.
    pub fn checkpoint(&mut self, now: SystemTime) -> Result<(), AuditError> {
        let seq = self.seq + 1;
        let time = rfc3339(now);
        let fields = signer::fields(self.signer.as_ref(), seq, &time, &self.prev)
            .map_err(AuditError::Sign)?;
        let line = self.write_line(CHECKPOINT, &Fields::from_map(&fields), &time)?;
        self.file.sync_data().map_err(io(&self.path))?;
        let seal = self.dir.join(SEAL_FILE);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&seal)
            .map_err(io(&seal))?;
        let before = f.metadata().map_err(io(&seal))?.len();
        if let Err(e) = f
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| f.sync_data())
        {
            // A full disk may take part of the line: drop it, so the seal stays whole lines.
            let _ = f.set_len(before);
            return Err(io(&seal)(e));
        }
        self.since_checkpoint = 0;
        self.last_checkpoint = now;
        Ok(())
    }

    /// Closes the current file with a checkpoint and opens the next one.
    pub fn rotate(&mut self, now: SystemTime) -> Result<(), AuditError> {
        self.checkpoint(now)?;
        self.index += 1;
        self.path = file_path(&self.dir, self.index);
        self.file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.bytes = 0;
        self.opened = now;
        self.start_file(now)
    }

    /// Signs the next checkpoints with `signer` (the workload certificate rotated).
    pub fn set_signer(&mut self, signer: Arc<dyn CheckpointSigner>) {
        self.signer = signer;
    }

    /// The path of the file being written.
    pub fn current_path(&self) -> &Path {
        &self.path
    }

    /// The sequence number of the last record written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn start_file(&mut self, now: SystemTime) -> Result<(), AuditError> {
        let mut fields = Fields::default();
        fields.u64("file", self.index);
        self.write(FILE, &fields, now)
    }

    fn write(&mut self, kind: &str, fields: &Fields, now: SystemTime) -> Result<(), AuditError> {
        self.write_line(kind, fields, &rfc3339(now)).map(|_| ())
    }

    /// Writes one record; the chain advances only once the whole line is written.
    fn write_line(
        &mut self,
        kind: &str,
        fields: &Fields,
        time: &str,
    ) -> Result<String, AuditError> {
        let seq = self.seq + 1;
        let line = record::line(seq, time, &self.prev, kind, fields);
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        if let Err(e) = self.file.write_all(&bytes) {
            // Drop whatever part of the line reached the file, so the trail stays a chain.
            let _ = self.file.set_len(self.bytes);
            let _ = self.file.seek(SeekFrom::End(0));
            return Err(io(&self.path)(e));
        }
        self.bytes += bytes.len() as u64;
        self.seq = seq;
        self.prev = hash(line.as_bytes());
        Ok(line)
    }
}

/// The number of the newest `audit-NNNNNN.jsonl` in `dir`.
fn newest_index(dir: &Path) -> Result<Option<u64>, AuditError> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("audit-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        newest = newest.max(Some(n));
    }
    Ok(newest)
}

/// The last complete record of `path`: its sequence number, its hash and the file length up
/// to the end of its line; `None` when the file holds no complete record.
fn resume(path: &Path) -> Result<Option<(u64, String, u64)>, AuditError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let body = bytes.get(..complete).unwrap_or_default();
    let Some(last) = body.split(|b| *b == b'\n').rfind(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let record = Record::parse(last).ok_or_else(|| AuditError::Resume {
        path: path.to_owned(),
        reason: "the last line is not a record".into(),
    })?;
    Ok(Some((record.seq, hash(last), complete as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_formatted_rfc3339_form() {
        let samples = [
            0u64,
            999,
            1_000,
            86_399_999,
            951_782_400_123, // 2000-02-29
            1_796_428_799_999,
            4_102_444_800_000,   // 2100-01-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999
        ];
        for ms in samples {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            let d = time::OffsetDateTime::from(t);
            let want = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second(),
                d.millisecond()
            );
            assert_eq!(rfc3339(t), want, "{ms} ms");
        }
    }
}
