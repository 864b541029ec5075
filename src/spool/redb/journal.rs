//! The append journal (`spool.journal` beside `spool.redb`): what makes an acknowledged
//! after-event durable with one contiguous write and one disk sync.
//!
//! A durable redb commit writes every page the transaction touched (leaf, branches, table tree,
//! allocator state, header): about six separate writes of 4 KiB for one 200-byte event, each a
//! separate disk request, then the sync. The writer thread (`writer.rs`) instead appends a batch's
//! new records to this file as one frame, syncs it, and commits the redb transaction without a
//! sync. Every [`super::FLUSH_EVERY`], before the journal fills, and for every change that is not
//! an append (an operator's purge or replay, a full spool dropping its oldest, a stop) it commits
//! durably instead: a *checkpoint*, which also moves the store to the next journal *epoch*.
//!
//! Opening the spool replays the frames of the store's epoch ([`recover`]): the records of
//! acknowledged appends whose redb commit was lost with the process. An event delivered before
//! the crash may come back (its delete was not durable either), which the spool's contract
//! already allows: receivers deduplicate on the stable delivery id.
//!
//! The file only grows, in zero-filled steps synced with their size, so a frame's write never
//! changes the file's metadata: its sync is one data write and one cache flush. Frames carry the
//! epoch and a CRC-32 of their contents; reading stops at the first frame that is torn, of another
//! epoch, or the zeros after the last one.
//!
//! Frame: `b"OCGJ"`, epoch (u64), payload length (u32), CRC-32 of epoch + length + payload (u32),
//! payload: records as (id u64, length u32, the record's bytes). Integers little-endian.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"OCGJ";
const HEADER: usize = 4 + 8 + 4 + 4;
/// The file grows in zero-filled steps of this size.
const GROW: u64 = 1 << 20;
/// Beyond this size a batch is checkpointed instead of journaled.
pub(crate) const MAX_BYTES: u64 = 16 << 20;

/// The open journal: its file, the epoch it writes and where the next frame goes.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    epoch: u64,
    offset: u64,
    /// The file's zero-filled, synced length.
    len: u64,
}

/// The journal's path for a spool file: `spool.redb` → `spool.journal`.
pub(crate) fn path_for(store: &Path) -> PathBuf {
    store.with_extension("journal")
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns it with the records of `epoch`'s
    /// frames, the last one of an id winning. The journal then writes `epoch + 1`'s frames from the
    /// start: the caller commits that epoch to the store before its first append.
    pub(crate) fn open(path: &Path, epoch: u64) -> io::Result<(Journal, BTreeMap<u64, Vec<u8>>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes)?;
        let records = read_frames(&bytes, epoch);
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            epoch: epoch.wrapping_add(1),
            offset: 0,
            len,
        };
        Ok((journal, records))
    }

    /// The epoch this journal writes.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `records` (id, bytes) as one frame and syncs it. `Ok(false)`: the frame does not fit
    /// in [`MAX_BYTES`], nothing was written, and the batch needs a checkpoint instead.
    pub(crate) fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<bool> {
        let frame = encode(self.epoch, records);
        let end = self.offset + u64::try_from(frame.len()).unwrap_or(u64::MAX);
        if end > MAX_BYTES {
            return Ok(false);
        }
        if end > self.len {
            self.grow(end)?;
        }
        self.file.write_all_at(&frame, self.offset)?;
        self.file.sync_data()?;
        self.offset = end;
        Ok(true)
    }

    /// After a checkpoint committed `epoch` to the store: frames start over.
    pub(crate) fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.offset = 0;
    }

    /// Zero-fills the file up to `end` rounded up to [`GROW`], and syncs it with its new size.
    fn grow(&mut self, end: u64) -> io::Result<()> {
        let target = end.div_ceil(GROW).saturating_mul(GROW).min(MAX_BYTES);
        let zeros = vec![0u8; 64 << 10];
        let mut at = self.len;
        while at < target {
            let n = usize::try_from((target - at).min(zeros.len() as u64)).unwrap_or(zeros.len());
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.len = target;
        Ok(())
    }
}

fn encode(epoch: u64, records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let payload_len: usize = records.iter().map(|(_, b)| 12 + b.len()).sum();
    let mut frame = Vec::with_capacity(HEADER + payload_len);
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&epoch.to_le_bytes());
    frame.extend_from_slice(&u32::try_from(payload_len).unwrap_or(u32::MAX).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    for (id, bytes) in records {
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        frame.extend_from_slice(bytes);
    }
    let crc = checksum(&frame[4..16], &frame[HEADER..]);
    frame[16..20].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// The records of `epoch`'s frames, in order, up to the first frame that is not one of them.
fn read_frames(bytes: &[u8], epoch: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut records = BTreeMap::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + HEADER) {
        if &head[..4] != MAGIC || u64_at(head, 4) != Some(epoch) {
            break;
        }
        let Some(len) = u32_at(head, 12).and_then(|l| usize::try_from(l).ok()) else {
            break;
        };
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if u32_at(head, 16) != Some(checksum(&head[4..16], payload)) {
            break;
        }
        let Some(parsed) = parse_payload(payload) else {
            break;
        };
        records.extend(parsed);
        at += HEADER + len;
    }
    records
}

fn parse_payload(mut payload: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        let id = u64_at(payload, 0)?;
        let len = usize::try_from(u32_at(payload, 8)?).ok()?;
        let bytes = payload.get(12..12 + len)?;
        out.push((id, bytes.to_vec()));
        payload = &payload[12 + len..];
    }
    Some(out)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(ids: &[u64]) -> Vec<(u64, Vec<u8>)> {
        ids.iter()
            .map(|&id| (id, format!("record {id}").into_bytes()))
            .collect()
    }

    #[test]
    fn frames_of_the_epoch_come_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.journal");
        let (mut j, found) = Journal::open(&path, 0).unwrap();
        assert!(found.is_empty());
        assert_eq!(j.epoch(), 1);
        assert!(j.append(&recs(&[1, 2])).unwrap());
        assert!(j.append(&recs(&[3])).unwrap());
        // The file grew in one zero-filled step.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), GROW);
        drop(j);
        let (j, found) = Journal::open(&path, 1).unwrap();
        assert_eq!(
            found,
            recs(&[1, 2, 3]).into_iter().collect::<BTreeMap<_, _>>()
        );
        assert_eq!(j.epoch(), 2);
        // Another epoch's frames are not replayed: a checkpoint made them durable in the store.
        let (_, found) = Journal::open(&path, 2).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn a_restart_overwrites_and_reading_stops_at_the_older_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.journal");
        let (mut j, _) = Journal::open(&path, 0).unwrap();
        assert!(j.append(&recs(&[1, 2, 3, 4, 5])).unwrap());
        j.restart(7);
        assert!(j.append(&recs(&[6])).unwrap());
        drop(j);
        // Epoch 7's frame, then epoch 1's longer frame behind it: only 6.
        let (_, found) = Journal::open(&path, 7).unwrap();
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![6]);
    }

    #[test]
    fn a_torn_or_damaged_frame_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.journal");
        let (mut j, _) = Journal::open(&path, 0).unwrap();
        assert!(j.append(&recs(&[1])).unwrap());
        let second = j.offset;
        assert!(j.append(&recs(&[2])).unwrap());
        assert!(j.append(&recs(&[3])).unwrap());
        drop(j);
        // One flipped byte in the second frame's payload: only the first is replayed.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", second + HEADER as u64 + 13).unwrap();
        let (_, found) = Journal::open(&path, 1).unwrap();
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![1]);
        // A frame cut short (the file ends inside it) is not replayed either.
        let bytes = encode(1, &recs(&[9]));
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let (_, found) = Journal::open(&path, 1).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn the_last_frame_of_an_id_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.journal");
        let (mut j, _) = Journal::open(&path, 0).unwrap();
        assert!(j.append(&[(4, b"old".to_vec())]).unwrap());
        assert!(j.append(&[(4, b"new".to_vec())]).unwrap());
        drop(j);
        let (_, found) = Journal::open(&path, 1).unwrap();
        assert_eq!(found[&4], b"new");
    }

    #[test]
    fn a_batch_beyond_the_limit_is_refused_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.journal");
        let (mut j, _) = Journal::open(&path, 0).unwrap();
        let huge = vec![(1, vec![7u8; usize::try_from(MAX_BYTES).unwrap()])];
        assert!(!j.append(&huge).unwrap());
        assert_eq!(j.offset, 0);
        assert!(j.append(&recs(&[2])).unwrap());
    }
}
