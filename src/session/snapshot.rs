//! Memory store snapshots: the sessions written to one file on shutdown and every
//! `store.snapshot_interval`, and read back at start, so a restart logs nobody out.
//!
//! The file (all integers little-endian):
//!
//! ```text
//! header   "SGSNAP\r\n"  version: u32 = 1  written at: u64 (Unix s)
//! session  0x01  id: [u8; 32]  created: u32 (Unix s)  last seen: u32 (Unix s)
//!          flags: u8 (bit 0: returned)  data length: u32  data (the encoded form)
//! ...
//! end      0x00  sessions: u64  CRC-32 of every byte before it: u32
//! ```
//!
//! A snapshot is written to a temporary file in the same directory (mode 0600),
//! fsynced, renamed over the old one, and the directory fsynced: a crash leaves
//! either the old file or the new one, never half of one. A file that cannot be
//! read is renamed `<file>.corrupt-<unix time>` and the store starts empty: it is
//! never overwritten. Loading streams the file (a million sessions in about a
//! second) and drops sessions that expired while the proxy was down.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::memory::{MemoryStore, RestoredSession};
use super::{now_ms, Policy, SessionId, StoreError};

const MAGIC: &[u8; 8] = b"SGSNAP\r\n";
const VERSION: u32 = 1;
const SESSION: u8 = 1;
const END: u8 = 0;
const RETURNED: u8 = 1;
/// Far above any sane `session.max_data_bytes`: a larger length is corruption.
const MAX_DATA_LEN: u32 = 16 << 20;
/// Sessions encoded per batch between writes when saving.
const BATCH: usize = 4096;

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the file")]
    Io(#[source] io::Error),
    #[error("not a sessiongate snapshot (wrong magic bytes)")]
    NotASnapshot,
    #[error("snapshot format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("the file ends early (truncated)")]
    Truncated,
    #[error("unknown record tag {0:#04x}")]
    BadTag(u8),
    #[error("a session claims {0} bytes of data")]
    BadLength(u32),
    #[error("the checksum does not match (the file is damaged)")]
    Checksum,
    #[error("the file says {expected} sessions but holds {found}")]
    Count { expected: u64, found: u64 },
    #[error("bytes after the end of the snapshot")]
    TrailingBytes,
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SnapshotError::Truncated
        } else {
            SnapshotError::Io(e)
        }
    }
}

/// What a load did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Sessions put back in the store.
    pub restored: u64,
    /// Sessions in the file that had expired meanwhile.
    pub(crate) expired: u64,
    /// Sessions evicted because `max_sessions` is now lower.
    pub(crate) evicted: u64,
}

/// A reader that checksums every byte it hands out.
struct Checked<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn u32_le(r: &mut impl Read) -> io::Result<u32> {
    array(r).map(u32::from_le_bytes)
}

fn u64_le(r: &mut impl Read) -> io::Result<u64> {
    array(r).map(u64::from_le_bytes)
}

/// Reads the snapshot at `path` into `store` (expected empty), dropping what has
/// expired under `policy` and evicting down to its cap. `Ok(None)` when there is
/// no file. On error the store is left empty.
pub fn load(
    store: &MemoryStore,
    path: &Path,
    now_ms: u64,
    policy: &Policy,
) -> Result<Option<Loaded>, SnapshotError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SnapshotError::Io(e)),
    };
    let result = read_into(store, file, now_ms, policy);
    if result.is_err() {
        store.clear();
    }
    result.map(Some)
}

/// Checks that the file at `path`, if there is one, begins as a snapshot this build
/// reads (for `check`, which must not load a whole store).
pub fn check_header(path: &Path) -> Result<(), SnapshotError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SnapshotError::Io(e)),
    };
    read_header(&mut BufReader::new(file))
}

/// The magic bytes and the format version this build reads.
fn read_header(r: &mut impl Read) -> Result<(), SnapshotError> {
    let magic: [u8; 8] = array(r).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::NotASnapshot,
        _ => SnapshotError::Io(e),
    })?;
    if &magic != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    match u32_le(r)? {
        VERSION => Ok(()),
        other => Err(SnapshotError::Version(other)),
    }
}

fn read_into(
    store: &MemoryStore,
    file: File,
    now_ms: u64,
    policy: &Policy,
) -> Result<Loaded, SnapshotError> {
    let mut r = Checked {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    read_header(&mut r)?;
    let _written_at = u64_le(&mut r)?;
    let mut loaded = Loaded::default();
    let mut found = 0u64;
    loop {
        let [tag] = array::<1>(&mut r)?;
        match tag {
            SESSION => {}
            END => break,
            other => return Err(SnapshotError::BadTag(other)),
        }
        let id = SessionId::from_bytes(array(&mut r)?);
        let created_s = u32_le(&mut r)?;
        let last_seen_s = u32_le(&mut r)?;
        let [flags] = array::<1>(&mut r)?;
        let len = u32_le(&mut r)?;
        if len > MAX_DATA_LEN {
            return Err(SnapshotError::BadLength(len));
        }
        let data = if len == 0 {
            None
        } else {
            let mut d = vec![0u8; len as usize];
            r.read_exact(&mut d)?;
            Some(d.into_boxed_slice())
        };
        found += 1;
        let session = RestoredSession {
            id,
            data,
            created_s,
            last_seen_s,
            returned: flags & RETURNED != 0,
        };
        if store.restore(session, now_ms, policy) {
            loaded.restored += 1;
        } else {
            loaded.expired += 1;
        }
    }
    let expected = u64_le(&mut r)?;
    let crc = r.crc.clone().finalize();
    let stored_crc = u32_le(&mut r.inner)?;
    if crc != stored_crc {
        return Err(SnapshotError::Checksum);
    }
    if expected != found {
        return Err(SnapshotError::Count { expected, found });
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest)? != 0 {
        return Err(SnapshotError::TrailingBytes);
    }
    loaded.evicted = store.finish_restore(policy.max_sessions) as u64;
    Ok(loaded)
}

/// A writer that checksums every byte it takes.
struct Summed<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// Writes every live session of `store` to `path`, atomically. Returns how many.
pub fn save(store: &MemoryStore, path: &Path, now_ms: u64) -> io::Result<u64> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the snapshot path names no file",
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A leftover from a crash of this very process ID.
    let _ = fs::remove_file(&tmp);
    let result = write_file(store, &tmp, now_ms).and_then(|n| {
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()?;
        Ok(n)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_file(store: &MemoryStore, tmp: &Path, now_ms: u64) -> io::Result<u64> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    let mut w = Summed {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let mut header = Vec::with_capacity(20);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(now_ms / 1000).to_le_bytes());
    w.put(&header)?;

    let mut count = 0u64;
    let mut buf = Vec::with_capacity(BATCH * 64);
    for batch in store.live_ids(now_ms).chunks(BATCH) {
        buf.clear();
        for id in batch {
            // Only copying happens under the map's lock; the disk sees `buf` after.
            let copied = store.read_record(id, now_ms, |s| {
                let data = s.data.unwrap_or_default();
                buf.push(SESSION);
                buf.extend_from_slice(s.id.as_bytes());
                buf.extend_from_slice(&s.created_s.to_le_bytes());
                buf.extend_from_slice(&s.last_seen_s.to_le_bytes());
                buf.push(if s.returned { RETURNED } else { 0 });
                buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
                buf.extend_from_slice(data);
            });
            count += copied.is_some() as u64;
        }
        w.put(&buf)?;
    }
    let mut end = Vec::with_capacity(9);
    end.push(END);
    end.extend_from_slice(&count.to_le_bytes());
    w.put(&end)?;
    let crc = w.crc.finalize();
    let mut file = w.inner;
    file.write_all(&crc.to_le_bytes())?;
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(count)
}

/// Loads the snapshot into `store` at start. An unreadable file is moved aside
/// and logged, and the store starts empty; only when it cannot be moved aside is
/// that an error (carrying on would overwrite it at the next save).
pub fn restore(store: &MemoryStore, path: &Path, policy: &Policy) -> Result<(), StoreError> {
    let started = Instant::now();
    let file = path.display();
    match load(store, path, now_ms(), policy) {
        Ok(None) => {
            tracing::info!(%file, "no session snapshot yet: starting with no sessions");
            Ok(())
        }
        Ok(Some(l)) => {
            tracing::info!(
                %file,
                sessions = l.restored,
                expired = l.expired,
                evicted = l.evicted,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sessions restored from the snapshot"
            );
            Ok(())
        }
        Err(reason) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".corrupt-{}", now_ms() / 1000));
            let aside = PathBuf::from(aside);
            match fs::rename(path, &aside) {
                Ok(()) => {
                    tracing::error!(
                        %file,
                        moved_to = %aside.display(),
                        reason = %crate::chain::Chain(&reason),
                        "cannot read the session snapshot: moved it aside, starting with no sessions"
                    );
                    Ok(())
                }
                Err(source) => {
                    tracing::error!(
                        %file,
                        reason = %crate::chain::Chain(&reason),
                        "cannot read the session snapshot, nor move it aside"
                    );
                    Err(StoreError::Snapshot {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
    }
}

/// Writes the snapshot every interval while the proxy runs, and once more at
/// shutdown.
pub(crate) struct Snapshots {
    store: MemoryStore,
    path: PathBuf,
    /// One save at a time: the periodic one and the final one share the temp file.
    lock: Arc<Mutex<()>>,
    periodic: tokio::task::JoinHandle<()>,
}

impl Snapshots {
    pub(crate) fn spawn(store: MemoryStore, path: PathBuf, interval: Duration) -> Snapshots {
        let lock = Arc::new(Mutex::new(()));
        let periodic = {
            let (store, path, lock) = (store.clone(), path.clone(), lock.clone());
            tokio::spawn(async move {
                let start = tokio::time::Instant::now() + interval;
                let mut tick = tokio::time::interval_at(start, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    save_logged(&store, &path, &lock, false).await;
                }
            })
        };
        Snapshots {
            store,
            path,
            lock,
            periodic,
        }
    }

    /// Stops the periodic saves and writes the final snapshot.
    pub(crate) async fn shutdown(self) {
        self.periodic.abort();
        save_logged(&self.store, &self.path, &self.lock, true).await;
    }
}

async fn save_logged(store: &MemoryStore, path: &Path, lock: &Arc<Mutex<()>>, last: bool) {
    let (store, owned, lock) = (store.clone(), path.to_owned(), lock.clone());
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        save(&store, &owned, now_ms())
    })
    .await;
    let file = path.display();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(Ok(sessions)) if last => {
            tracing::info!(%file, sessions, elapsed_ms, "sessions saved to the snapshot")
        }
        Ok(Ok(sessions)) => {
            tracing::debug!(%file, sessions, elapsed_ms, "sessions saved to the snapshot")
        }
        Ok(Err(e)) => tracing::error!(%file, error = %e, "cannot write the session snapshot"),
        Err(e) => tracing::error!(%file, error = %e, "the snapshot writer failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Changes, Created, Lookup, SessionData, SessionStore};

    const POLICY: Policy = Policy {
        idle_timeout: Duration::from_secs(60),
        absolute_timeout: Duration::from_secs(3600),
        max_sessions: 100,
        max_data_bytes: 4096,
        regenerate_grace: Duration::from_secs(10),
        max_per_user: None,
    };

    fn store() -> MemoryStore {
        MemoryStore::new()
    }

    async fn create(s: &MemoryStore) -> SessionId {
        match s.create(SessionData::default(), &POLICY).await.unwrap() {
            Created::Stored(id) => id,
            refused => panic!("{refused:?}"),
        }
    }

    fn load(s: &MemoryStore, path: &Path, now_ms: u64) -> Result<Option<Loaded>, SnapshotError> {
        super::load(s, path, now_ms, &POLICY)
    }

    #[tokio::test]
    async fn round_trip_keeps_data_times_and_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.snap");
        let a = store();
        let id = create(&a).await;
        let mut c = Changes::default();
        c.add_set(b"user=alice&role=a+b").unwrap();
        a.apply(&id, &c, &POLICY).await.unwrap();
        a.load(&id, &POLICY).await.unwrap();
        let quiet = create(&a).await;
        let now = now_ms();
        assert_eq!(save(&a, &path, now).unwrap(), 2);

        let b = store();
        let loaded = load(&b, &path, now).unwrap().unwrap();
        assert_eq!(loaded.restored, 2);
        let mut seen = Vec::new();
        for id in [id, quiet] {
            b.read_record(&id, now, |r| {
                seen.push((r.data.map(<[u8]>::to_vec), r.returned))
            });
        }
        assert_eq!(
            seen,
            vec![(Some(b"role=a+b&user=alice".to_vec()), true), (None, false)]
        );
        let Lookup::Found(view) = b.load(&id, &POLICY).await.unwrap() else {
            panic!("restored session missing")
        };
        assert_eq!(view.data.unwrap(), "role=a+b&user=alice");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn expired_sessions_are_dropped_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let a = store();
        create(&a).await;
        let now = now_ms();
        save(&a, &path, now).unwrap();
        let b = store();
        let loaded = load(&b, &path, now + 120_000).unwrap().unwrap();
        assert_eq!((loaded.restored, loaded.expired), (0, 1));
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn every_damaged_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let a = store();
        let mut c = Changes::default();
        c.add_set(b"k=v").unwrap();
        let id = create(&a).await;
        a.apply(&id, &c, &POLICY).await.unwrap();
        let now = now_ms();
        save(&a, &path, now).unwrap();
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            let b = store();
            assert!(
                load(&b, &path, now).is_err(),
                "flipped byte {i} went unnoticed"
            );
            assert!(b.is_empty());
        }
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            assert!(load(&store(), &path, now).is_err(), "truncated to {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert!(matches!(
            load(&store(), &path, now),
            Err(SnapshotError::TrailingBytes)
        ));
    }

    #[test]
    fn a_missing_file_is_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&store(), &dir.path().join("none"), 0)
            .unwrap()
            .is_none());
    }
}
