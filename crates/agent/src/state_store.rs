//! Per-service plugin state on disk: what a run hands to the next one
//! (counters for rates, a log offset) survives agent restarts.
//!
//! Two slot files per service, written alternately in place: each write is
//! one `pwrite` of a checksummed, numbered record over the older slot, and a
//! load takes the newest slot whose checksum holds. A crash mid-write leaves
//! the other slot — the previous state — intact: old or new, never a mix.
//! Replacing a file by rename (the obvious way) makes ext4 create an inode,
//! write back the new file and free the old one on every run; profiling the
//! agent showed that as its largest single cost. There is no fsync: losing
//! the newest state to a power cut costs one run without rates.
//!
//! The newest state of each service is also kept in memory, so a run reads
//! no file; the files are read once, at the first load after a start.

use anyhow::Context;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `magic | seq u64 | present u8 | len u32 | crc32 u32`, then `len` bytes.
const MAGIC: &[u8; 4] = b"SGS1";
const HEADER: usize = 4 + 8 + 1 + 4 + 4;

/// A directory of state blobs, one pair of slot files per service.
pub struct StateStore {
    dir: PathBuf,
    services: Mutex<HashMap<String, Slots>>,
}

/// One service's slots: the newest record and where it is.
struct Slots {
    files: [File; 2],
    newest: usize,
    seq: u64,
    state: Option<Vec<u8>>,
}

impl StateStore {
    /// Open (and create) the state directory.
    pub fn open(dir: PathBuf) -> anyhow::Result<StateStore> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        Ok(StateStore {
            dir,
            services: Mutex::new(HashMap::new()),
        })
    }

    fn slot_path(&self, service: &str, slot: usize) -> PathBuf {
        slot_path(&self.dir, service, slot)
    }

    /// The service's slots, opened and read on first use.
    fn with_slots<T>(&self, service: &str, f: impl FnOnce(&mut Slots) -> T) -> std::io::Result<T> {
        let mut services = self.services.lock().expect("state store lock");
        if !services.contains_key(service) {
            let open = |slot| {
                File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.slot_path(service, slot))
            };
            let files = [open(0)?, open(1)?];
            let records = [read_record(&files[0]), read_record(&files[1])];
            let (newest, (seq, state)) = newest(records).unwrap_or((0, (0, None)));
            services.insert(
                service.to_owned(),
                Slots {
                    files,
                    newest,
                    seq,
                    state,
                },
            );
        }
        Ok(f(services.get_mut(service).expect("inserted above")))
    }

    /// The state kept for `service`. An unreadable slot is logged and
    /// treated as no state: the plugin then behaves as on a first run.
    pub fn load(&self, service: &str) -> Option<Vec<u8>> {
        match self.with_slots(service, |slots| slots.state.clone()) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(service, dir = %self.dir.display(), "cannot read plugin state, starting without: {e}");
                None
            }
        }
    }

    /// Keep `state` for `service`'s next run (none: forget it).
    pub fn save(&self, service: &str, state: Option<&[u8]>) -> anyhow::Result<()> {
        let path = self.slot_path(service, 0);
        self.with_slots(service, |slots| {
            // Most stateless or idle plugins hand back what they got: no write.
            if slots.state.as_deref() == state {
                return Ok(());
            }
            let target = 1 - slots.newest;
            let seq = slots.seq + 1;
            slots.files[target].write_all_at(&record(seq, state), 0)?;
            slots.newest = target;
            slots.seq = seq;
            slots.state = state.map(<[u8]>::to_vec);
            Ok::<_, std::io::Error>(())
        })
        .and_then(|written| written)
        .with_context(|| format!("cannot write plugin state {}", path.display()))
    }
}

fn slot_path(dir: &Path, service: &str, slot: usize) -> PathBuf {
    dir.join(format!("{service}.state{slot}"))
}

/// The newest state kept for `service` in the state directory `dir`, read
/// without opening the store (for tools and tests watching an agent).
pub fn peek(dir: &Path, service: &str) -> Option<Vec<u8>> {
    let records = [0, 1].map(|slot| {
        File::open(slot_path(dir, service, slot))
            .ok()
            .and_then(|f| read_record(&f))
    });
    newest(records)?.1.1
}

/// A record's number and state.
type Slot = (u64, Option<Vec<u8>>);

/// The slot holding the newer whole record, and that record.
fn newest(records: [Option<Slot>; 2]) -> Option<(usize, Slot)> {
    let [a, b] = records;
    match (a, b) {
        (Some(a), Some(b)) if b.0 > a.0 => Some((1, b)),
        (Some(a), _) => Some((0, a)),
        (None, Some(b)) => Some((1, b)),
        (None, None) => None,
    }
}

fn record(seq: u64, state: Option<&[u8]>) -> Vec<u8> {
    let payload = state.unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(u8::from(state.is_some()));
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[4..]);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The slot's record if it is whole: its number and state.
fn read_record(file: &File) -> Option<Slot> {
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, 0).ok()?;
    if &header[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(header[4..12].try_into().ok()?);
    let present = header[12] == 1;
    let len = u32::from_le_bytes(header[13..17].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[17..21].try_into().ok()?);
    let mut payload = vec![0; len];
    file.read_exact_at(&mut payload, HEADER as u64).ok()?;
    let mut check = crc32fast::Hasher::new();
    check.update(&header[4..17]);
    check.update(&payload);
    (check.finalize() == crc).then(|| (seq, present.then_some(payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_forget() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state")).unwrap();
        assert_eq!(store.load("cpu"), None);
        store.save("cpu", Some(b"abc")).unwrap();
        let reopened = StateStore::open(dir.path().join("state")).unwrap();
        assert_eq!(reopened.load("cpu").as_deref(), Some(&b"abc"[..]));
        reopened.save("cpu", None).unwrap();
        assert_eq!(reopened.load("cpu"), None);
        reopened.save("cpu", None).unwrap();
        let again = StateStore::open(dir.path().join("state")).unwrap();
        assert_eq!(again.load("cpu"), None);
    }

    #[test]
    fn an_unchanged_state_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().to_owned()).unwrap();
        let slots = || {
            (0..2)
                .map(|n| std::fs::read(dir.path().join(format!("s.state{n}"))).unwrap())
                .collect::<Vec<_>>()
        };
        store.save("s", Some(b"same")).unwrap();
        let before = slots();
        store.save("s", Some(b"same")).unwrap();
        assert_eq!(slots(), before, "the same state rewrote a slot");
        store.save("s", Some(b"other")).unwrap();
        assert_ne!(slots(), before);
        assert_eq!(
            StateStore::open(dir.path().to_owned())
                .unwrap()
                .load("s")
                .as_deref(),
            Some(&b"other"[..])
        );
    }

    #[test]
    fn a_shorter_state_over_a_longer_one_and_many_saves() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().to_owned()).unwrap();
        store.save("s", Some(&[7; 1000])).unwrap();
        store.save("s", Some(&[8; 1000])).unwrap();
        for i in 0..10u8 {
            store.save("s", Some(&[i])).unwrap();
        }
        let reopened = StateStore::open(dir.path().to_owned()).unwrap();
        assert_eq!(reopened.load("s"), Some(vec![9]));
    }

    #[test]
    fn a_torn_write_leaves_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().to_owned()).unwrap();
        store.save("s", Some(b"old state")).unwrap();
        store.save("s", Some(b"new state")).unwrap();
        drop(store);
        // Damage the newest record's last byte, as a crash in the middle of
        // the write would.
        let path = (0..2)
            .map(|slot| dir.path().join(format!("s.state{slot}")))
            .find(|p| std::fs::read(p).unwrap().ends_with(b"new state"))
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let reopened = StateStore::open(dir.path().to_owned()).unwrap();
        assert_eq!(reopened.load("s").as_deref(), Some(&b"old state"[..]));
        // And the next save goes over the damaged slot, not the good one.
        reopened.save("s", Some(b"newer")).unwrap();
        let again = StateStore::open(dir.path().to_owned()).unwrap();
        assert_eq!(again.load("s").as_deref(), Some(&b"newer"[..]));
    }
}
