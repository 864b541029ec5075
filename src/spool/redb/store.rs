//! The redb backend's on-disk format (redb tables holding protobuf [`Record`]s), opening with
//! clear errors, reads.
//!
//! Tables: `meta` (format marker, the random instance id, the next event id, the journal epoch),
//! `pending` and `dead` (event id -> [`Record`]). Ids only grow, also across restarts (`next_id`
//! is committed a block of ids ahead of the ids given out, in the transaction of the append that
//! first needs the block, and the journal's records count too), so a delivery id is never reused.
//! Opening replays the append journal (`journal.rs`) into the tables first.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use prost::Message;
use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError,
    TableDefinition,
};

use super::super::error::SpoolError;
use super::super::event::{StoredEvent, Which};
use super::super::record::{Record, RecordHead, matches, undecodable};
use super::journal::{self, Journal};
use crate::config::SpoolConfig;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
pub(crate) const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");

pub(crate) fn table(which: Which) -> TableDefinition<'static, u64, &'static [u8]> {
    match which {
        Which::Pending => PENDING,
        Which::Dead => DEAD,
    }
}

/// Marks a file as a spool of this format; another value means "not ours" or "newer format".
const FORMAT: &[u8] = b"openim-callback-gateway spool v1";
const KEY_FORMAT: &str = "format";
const KEY_INSTANCE: &str = "instance";
pub(crate) const KEY_NEXT_ID: &str = "next_id";
/// The journal epoch whose frames are not yet in a durable commit (`journal.rs`).
pub(crate) const KEY_JOURNAL_EPOCH: &str = "journal_epoch";

/// redb page cache: the spool is mostly written and read once, so keep it modest.
const CACHE_BYTES: usize = 64 << 20;

/// Bytes an entry counts against `max_bytes`: the record plus its key.
pub(crate) fn entry_bytes(record_len: usize) -> u64 {
    u64::try_from(record_len)
        .unwrap_or(u64::MAX)
        .saturating_add(8)
}

/// What [`open`] found in the file.
pub(crate) struct Opened {
    pub(crate) db: Database,
    pub(crate) instance: String,
    pub(crate) next_id: u64,
    pub(crate) pending: u64,
    pub(crate) dead: u64,
    pub(crate) bytes: u64,
    /// Pending ids in append order with their ordering keys.
    pub(crate) entries: Vec<(u64, Option<String>)>,
    /// The append journal, its epoch committed.
    pub(crate) journal: Journal,
}

/// Opens or creates the spool file, checks it, and reads what is pending.
pub(crate) fn open(settings: &SpoolConfig) -> Result<Opened, SpoolError> {
    let dir = &settings.dir;
    std::fs::create_dir_all(dir).map_err(|source| SpoolError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let path = settings.path();
    let corrupt = |detail: String| SpoolError::Corrupt {
        path: path.clone(),
        detail,
    };
    // Checking integrity on every open makes redb verify every page checksum: a damaged file
    // then fails here with an error instead of panicking later inside a read.
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(&path)
    }));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(open_error(&path, e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".to_owned());
            return Err(corrupt(format!(
                "the storage engine failed reading it: {msg}"
            )));
        }
    };
    let instance = init(&db).map_err(|e| match e {
        InitError::NotOurs(detail) => corrupt(detail),
        InitError::Redb(e) => storage_or_corrupt(&path, e),
    })?;
    let journal = replay_journal(&db, &path)?;
    scan(db, instance, journal).map_err(|e| storage_or_corrupt(&path, e))
}

/// Puts the journal's acknowledged appends that the store lost (an unclean stop) back in
/// `pending`, and commits the journal's next epoch durably: from then on the journal starts over.
fn replay_journal(db: &Database, path: &Path) -> Result<Journal, SpoolError> {
    let journal_path = journal::path_for(path);
    let io = |source| SpoolError::Io {
        path: journal_path.clone(),
        source,
    };
    let epoch = {
        let txn = db
            .begin_read()
            .map_err(|e| storage_or_corrupt(path, e.into()))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| storage_or_corrupt(path, e.into()))?;
        meta.get(KEY_JOURNAL_EPOCH)
            .map_err(|e| storage_or_corrupt(path, e.into()))?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let (journal, records) = Journal::open(&journal_path, epoch).map_err(io)?;
    let restore = || -> Result<usize, redb::Error> {
        let txn = db.begin_write()?;
        let mut restored = 0;
        {
            let mut pending = txn.open_table(PENDING)?;
            let dead = txn.open_table(DEAD)?;
            for (id, bytes) in &records {
                if pending.get(*id)?.is_none() && dead.get(*id)?.is_none() {
                    pending.insert(*id, bytes.as_slice())?;
                    restored += 1;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_JOURNAL_EPOCH, journal.epoch().to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(restored)
    };
    let restored = restore().map_err(|e| storage_or_corrupt(path, e))?;
    if restored > 0 {
        tracing::warn!(
            path = %journal.path().display(),
            restored,
            "spool: acknowledged events restored from the journal after an unclean stop"
        );
    }
    Ok(journal)
}

fn open_error(path: &Path, e: DatabaseError) -> SpoolError {
    let path = path.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            SpoolError::AlreadyOpen { path }
        }
        DatabaseError::UpgradeRequired(v) => SpoolError::Corrupt {
            path,
            detail: format!("it has redb file format {v}, which this build cannot read"),
        },
        DatabaseError::RepairAborted => SpoolError::Corrupt {
            path,
            detail: "its repair after an unclean shutdown was aborted".to_owned(),
        },
        DatabaseError::Storage(StorageError::Corrupted(detail)) => {
            SpoolError::Corrupt { path, detail }
        }
        DatabaseError::Storage(StorageError::Io(source)) => match source.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                SpoolError::Corrupt {
                    path,
                    detail: format!("it is not a redb database or is truncated ({source})"),
                }
            }
            _ => SpoolError::Io { path, source },
        },
        other => SpoolError::Storage {
            path,
            detail: other.to_string(),
        },
    }
}

fn storage_or_corrupt(path: &Path, e: redb::Error) -> SpoolError {
    let path = path.to_path_buf();
    match e {
        redb::Error::Corrupted(detail) => SpoolError::Corrupt { path, detail },
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => SpoolError::Corrupt {
            path,
            detail: format!("it is a redb database but not a gateway spool ({e})"),
        },
        other => SpoolError::Storage {
            path,
            detail: other.to_string(),
        },
    }
}

enum InitError {
    NotOurs(String),
    Redb(redb::Error),
}

impl<E: Into<redb::Error>> From<E> for InitError {
    fn from(e: E) -> Self {
        InitError::Redb(e.into())
    }
}

/// Creates the tables of a new spool, or checks the marker of an existing one; returns the
/// instance id.
fn init(db: &Database) -> Result<String, InitError> {
    let txn = db.begin_write()?;
    let instance = {
        let existing: Vec<String> = txn
            .list_tables()?
            .map(|t| redb::TableHandle::name(&t).to_owned())
            .collect();
        let mut meta = txn.open_table(META)?;
        let format = meta.get(KEY_FORMAT)?.map(|v| v.value().to_vec());
        match format {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(InitError::NotOurs(format!(
                    "its format marker is {:?}, this build reads {:?}",
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
            None if existing.is_empty() => {
                meta.insert(KEY_FORMAT, FORMAT)?;
            }
            None => {
                return Err(InitError::NotOurs(format!(
                    "it is a redb database but not a gateway spool (tables: {})",
                    existing.join(", ")
                )));
            }
        }
        let instance = meta
            .get(KEY_INSTANCE)?
            .and_then(|v| String::from_utf8(v.value().to_vec()).ok());
        match instance {
            Some(i) => i,
            None => {
                let i = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
                meta.insert(KEY_INSTANCE, i.as_bytes())?;
                i
            }
        }
    };
    drop(txn.open_table(PENDING)?);
    drop(txn.open_table(DEAD)?);
    txn.commit()?;
    Ok(instance)
}

fn scan(db: Database, instance: String, journal: Journal) -> Result<Opened, redb::Error> {
    let (mut pending, mut dead, mut bytes, mut max_id, mut meta_next) = (0u64, 0u64, 0u64, 0u64, 1);
    let mut entries = Vec::new();
    {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        if let Some(b) = meta
            .get(KEY_NEXT_ID)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        {
            meta_next = u64::from_le_bytes(b);
        }
        for item in txn.open_table(PENDING)?.iter()? {
            let (k, v) = item?;
            let (id, raw) = (k.value(), v.value());
            pending += 1;
            bytes = bytes.saturating_add(entry_bytes(raw.len()));
            max_id = max_id.max(id);
            let key = match RecordHead::decode(raw) {
                Ok(h) => h.order_key,
                Err(e) => {
                    // Queued anyway: the worker that picks it up moves it to the dead letters.
                    tracing::error!(id, error = %e, "pending spool record does not decode");
                    None
                }
            };
            entries.push((id, key));
        }
        for item in txn.open_table(DEAD)?.iter()? {
            let (k, v) = item?;
            dead += 1;
            bytes = bytes.saturating_add(entry_bytes(v.value().len()));
            max_id = max_id.max(k.value());
        }
    }
    Ok(Opened {
        db,
        instance,
        next_id: meta_next.max(max_id.saturating_add(1)),
        pending,
        dead,
        bytes,
        entries,
        journal,
    })
}

/// A pending record as the delivery worker finds it.
pub(crate) enum Loaded {
    /// Delivered, dropped or purged meanwhile.
    Missing,
    Undecodable(String),
    Found(Box<Record>),
}

/// The pending records of `ids`, in order, read in one transaction.
pub(crate) fn load_many(db: &Database, ids: &[u64]) -> Result<Vec<Loaded>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(PENDING)?;
    ids.iter()
        .map(|&id| {
            let Some(v) = table.get(id)? else {
                return Ok(Loaded::Missing);
            };
            Ok(match Record::decode(v.value()) {
                Ok(r) => Loaded::Found(Box::new(r)),
                Err(e) => Loaded::Undecodable(format!(
                    "record of {} bytes does not decode: {e}",
                    v.value().len()
                )),
            })
        })
        .collect()
}

pub(crate) fn list(
    db: &Database,
    which: Which,
    limit: usize,
) -> Result<Vec<StoredEvent>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(table(which))?;
    let mut out = Vec::new();
    for item in table.iter()?.take(limit) {
        let (k, v) = item?;
        let (id, raw) = (k.value(), v.value());
        out.push(match Record::decode(raw) {
            Ok(r) => r.into_stored(id),
            Err(e) => undecodable(id, raw.len(), &e),
        });
    }
    Ok(out)
}

pub(crate) fn count(db: &Database, which: Which, command: &str) -> Result<u64, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(table(which))?;
    let mut n = 0;
    for item in table.iter()? {
        let (_, v) = item?;
        if matches(Some(command), v.value()) {
            n += 1;
        }
    }
    Ok(n)
}
