//! The key rings the processor decrypts with, and their reload without a restart.
//!
//! One shared directory of `<version>.pem` files (every corp), and optionally a directory per
//! corp whose keys replace the shared ones for that corp. A fingerprint of the files (names,
//! sizes, modification times) is checked on a timer and on SIGHUP; when it changes every ring
//! is loaded again and swapped in whole. A reload that fails (a malformed new file) keeps the
//! rings in use and says why; versions are logged, key material never is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use wx_crypto::{KeyRing, KeyRingError};

/// Where the keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    /// Keys for every corp.
    pub shared_dir: PathBuf,
    /// Keys of one corp, used instead of the shared ones for that corp.
    pub corp_dirs: BTreeMap<String, PathBuf>,
}

/// Every ring, loaded at one moment.
#[derive(Debug, Default)]
pub struct KeyRings {
    shared: KeyRing,
    corps: BTreeMap<String, KeyRing>,
}

impl KeyRings {
    /// Loads every directory of `source`.
    pub fn load(source: &KeySource) -> Result<KeyRings, KeyRingError> {
        let shared = KeyRing::load_dir(&source.shared_dir)?;
        let mut corps = BTreeMap::new();
        for (corp, dir) in &source.corp_dirs {
            corps.insert(corp.clone(), KeyRing::load_dir(dir)?);
        }
        Ok(KeyRings { shared, corps })
    }

    /// Rings from keys in memory (tests and benchmarks).
    pub fn from_ring(shared: KeyRing) -> KeyRings {
        KeyRings {
            shared,
            corps: BTreeMap::new(),
        }
    }

    /// The ring a corp's messages decrypt with.
    pub fn for_corp(&self, corp_id: &str) -> &KeyRing {
        self.corps.get(corp_id).unwrap_or(&self.shared)
    }

    /// Versions per ring (`*` is the shared ring): safe to log.
    pub fn versions(&self) -> BTreeMap<String, Vec<u32>> {
        let mut out = BTreeMap::new();
        out.insert("*".to_string(), self.shared.versions());
        for (corp, ring) in &self.corps {
            out.insert(corp.clone(), ring.versions());
        }
        out
    }
}

type Fingerprint = BTreeSet<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(source: &KeySource) -> Fingerprint {
    let mut out = BTreeSet::new();
    let dirs = std::iter::once(&source.shared_dir).chain(source.corp_dirs.values());
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            out.insert((dir.clone(), 0, None));
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Follows symlinks, so a Kubernetes Secret volume's `..data` swap is seen.
            if let Ok(meta) = std::fs::metadata(&path) {
                out.insert((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub before: BTreeMap<String, Vec<u32>>,
    pub after: BTreeMap<String, Vec<u32>>,
}

/// Key rings that reload when their files change.
#[derive(Debug)]
pub struct ReloadingKeys {
    source: KeySource,
    current: RwLock<Arc<KeyRings>>,
    seen: Mutex<Fingerprint>,
}

impl ReloadingKeys {
    /// Loads the rings; fails when a directory or a key file is unreadable or malformed.
    pub fn load(source: KeySource) -> Result<ReloadingKeys, KeyRingError> {
        let seen = fingerprint(&source);
        let rings = KeyRings::load(&source)?;
        Ok(ReloadingKeys {
            source,
            current: RwLock::new(Arc::new(rings)),
            seen: Mutex::new(seen),
        })
    }

    /// Fixed rings that never reload (tests, benchmarks).
    pub fn fixed(rings: KeyRings) -> ReloadingKeys {
        ReloadingKeys {
            source: KeySource {
                shared_dir: PathBuf::new(),
                corp_dirs: BTreeMap::new(),
            },
            current: RwLock::new(Arc::new(rings)),
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// The rings in use now.
    pub fn current(&self) -> Arc<KeyRings> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn shared_dir(&self) -> &Path {
        &self.source.shared_dir
    }

    /// Reloads when the files changed since the last load (`force`: reload anyway, as on
    /// SIGHUP). `Ok(None)` when nothing was reloaded.
    pub fn reload(&self, force: bool) -> Result<Option<KeyChange>, KeyRingError> {
        if self.source.shared_dir.as_os_str().is_empty() {
            return Ok(None);
        }
        let now = fingerprint(&self.source);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !force && *seen == now {
            return Ok(None);
        }
        // Remember the new files even when they fail to load, so a broken file is reported
        // once, not on every tick; fixing it changes the fingerprint again.
        *seen = now;
        let rings = KeyRings::load(&self.source)?;
        let before = self.current().versions();
        let after = rings.versions();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rings);
        Ok(Some(KeyChange { before, after }))
    }
}

fn record_versions(versions: &BTreeMap<String, Vec<u32>>) {
    for (ring, list) in versions {
        metrics::gauge!(crate::metrics::KEY_VERSIONS, "ring" => ring.clone())
            .set(list.len() as f64);
    }
}

/// Reloads `keys` when their files change (checked every `interval`) and at once on SIGHUP,
/// until `shutdown`. Logs the versions before and after, never key material.
pub async fn watch(
    keys: Arc<ReloadingKeys>,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    record_versions(&keys.current().versions());
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            _ = async {
                match hangup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending().await,
                }
            } => true,
        };
        let reloading = keys.clone();
        let result = tokio::task::spawn_blocking(move || reloading.reload(force))
            .await
            .unwrap_or(Ok(None));
        match result {
            Ok(Some(change)) => {
                metrics::counter!(crate::metrics::KEY_RELOADS, "outcome" => "ok").increment(1);
                record_versions(&change.after);
                tracing::info!(before = ?change.before, after = ?change.after, sighup = force, "Key rings reloaded.");
            }
            Ok(None) => {}
            Err(e) => {
                metrics::counter!(crate::metrics::KEY_RELOADS, "outcome" => "error").increment(1);
                tracing::error!(error = %e, "Reloading the key rings failed; the rings in use stay.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::rsa::Rsa;

    fn write_key(dir: &Path, version: u32) {
        let key = Rsa::generate(2048).expect("rsa");
        std::fs::write(
            dir.join(format!("{version}.pem")),
            key.private_key_to_pem().expect("pem"),
        )
        .expect("write");
    }

    #[test]
    fn a_new_key_file_is_picked_up_and_a_broken_one_keeps_the_old_rings() {
        let dir = tempfile::tempdir().expect("tmp");
        write_key(dir.path(), 1);
        let keys = ReloadingKeys::load(KeySource {
            shared_dir: dir.path().to_path_buf(),
            corp_dirs: BTreeMap::new(),
        })
        .expect("load");
        assert_eq!(keys.current().for_corp("any").versions(), vec![1]);
        assert_eq!(keys.reload(false).expect("no change"), None);

        write_key(dir.path(), 99);
        let change = keys.reload(false).expect("reload").expect("changed");
        assert_eq!(change.before["*"], vec![1]);
        assert_eq!(change.after["*"], vec![1, 99]);
        assert_eq!(keys.current().for_corp("any").versions(), vec![1, 99]);

        std::fs::write(dir.path().join("7.pem"), "not a key").expect("write");
        assert!(
            keys.reload(false).is_err(),
            "a malformed key fails the reload"
        );
        assert_eq!(
            keys.current().for_corp("any").versions(),
            vec![1, 99],
            "the rings in use stay"
        );
        // Reported once, not on every tick.
        assert_eq!(keys.reload(false).expect("unchanged"), None);
    }

    #[test]
    fn a_corp_directory_replaces_the_shared_ring_for_that_corp() {
        let shared = tempfile::tempdir().expect("tmp");
        let corp = tempfile::tempdir().expect("tmp");
        write_key(shared.path(), 1);
        write_key(corp.path(), 5);
        let rings = KeyRings::load(&KeySource {
            shared_dir: shared.path().to_path_buf(),
            corp_dirs: BTreeMap::from([("wwA".to_string(), corp.path().to_path_buf())]),
        })
        .expect("load");
        assert_eq!(rings.for_corp("wwA").versions(), vec![5]);
        assert_eq!(rings.for_corp("wwB").versions(), vec![1]);
    }
}
