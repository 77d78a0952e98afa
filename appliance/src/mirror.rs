//! The static mirror: every document of the public listener (the key
//! view's [`documents`](crate::api::documents), each status list in both
//! forms, the audit log's latest checkpoint and its hash tiles) written to a directory under
//! the same paths, so any web server or CDN, at either site, serves
//! verifiers while no node runs. A file is replaced atomically (written
//! beside, synced, renamed) only when its bytes change; `mirror.json`
//! lists every file with its SHA-256, media type and cache time, so an
//! operator's sync can check a copy and configure the web server. A
//! document that cannot be produced now (a status list the device cannot
//! sign) keeps its last copy: it stays valid until its own `exp`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::api::documents::{Document, Site, key_document, key_document_paths};
use crate::audit::merkle::TILE_HEIGHT;
use crate::audit::tile_path::{TILE_WIDTH, TileId, TilePath};
use crate::audit::tiles::{LogHashes, TreeReader};
use crate::service::Service;
use crate::status::TokenForm;

/// The manifest's name in the mirror directory.
pub const MANIFEST: &str = "mirror.json";
/// The latest signed checkpoint (a C2SP signed note), as tlog-tiles names it.
pub const CHECKPOINT: &str = "checkpoint";

/// One file of the mirror as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// What a web server should send as `Content-Type`.
    pub media_type: String,
    /// What it should send as `Cache-Control: max-age`.
    pub max_age: u32,
}

/// `mirror.json`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// When the mirror was last brought up to date (RFC 3339).
    pub updated: String,
    /// The node that wrote it.
    pub node: String,
    /// Every file, by path relative to the directory.
    pub files: BTreeMap<String, Entry>,
}

/// A mirror directory and what this node last wrote there.
pub struct Mirror {
    dir: PathBuf,
    written: BTreeMap<String, Entry>,
    /// Per tile level, the full tiles known to be in the directory.
    full_tiles: [u64; 8],
}

/// Tiles written in one round at most, so a round stays short while a
/// large log's tiles first reach a new directory.
const TILES_PER_ROUND: usize = 10_000;

impl Mirror {
    /// Opens (creating) `dir`, taking over the files its manifest lists.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Only paths this module could have written: the manifest is a
        // file anyone who can write the directory can edit, and its paths
        // are deleted once no longer served.
        let written = std::fs::read(dir.join(MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            .map(|m| m.files)
            .unwrap_or_default()
            .into_iter()
            .filter(|(path, _)| safe_relative(path).as_deref() == Some(path.as_str()))
            .collect();
        Ok(Mirror {
            dir: dir.to_owned(),
            written,
            full_tiles: [0; 8],
        })
    }

    /// Brings the directory up to date with what `service` serves now;
    /// how many files were written. Files no longer served are removed,
    /// unless some document could not be produced (then nothing is).
    pub fn update(&mut self, service: &Service, site: &Site<'_>) -> Result<usize, String> {
        let (mut documents, mut complete) = documents(service, site);
        let mut written = 0;
        // The tiles first: a reader of the new checkpoint finds its tiles.
        match service.node.registry.latest_checkpoint() {
            Ok(Some((size, note))) => match self.write_tiles(service, size) {
                Ok((tiles, all)) => {
                    written += tiles;
                    if all {
                        documents.push((format!("/{CHECKPOINT}"), checkpoint_document(note)));
                    } else {
                        complete = false; // the last checkpoint file stays
                    }
                }
                // The rest of the mirror (status lists above all) goes on.
                Err(e) => {
                    tracing::warn!(error = %e, "mirror: the log's tiles");
                    complete = false;
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "mirror: reading the latest checkpoint");
                complete = false;
            }
        }
        let mut files = BTreeMap::new();
        for (path, doc) in documents {
            let Some(relative) = safe_relative(&path) else {
                tracing::warn!(path, "mirror: refusing a path that could leave the mirror");
                complete = false;
                continue;
            };
            let entry = Entry {
                sha256: crate::keys::view::hex(&pkcs11_shim::digest::sha256(&doc.body)),
                media_type: doc.media_type.to_owned(),
                max_age: doc.max_age,
            };
            if self.written.get(&relative) != Some(&entry) {
                write_atomically(&self.dir, &relative, &doc.body)?;
                written += 1;
            }
            let _ = files.insert(relative, entry);
        }
        for (relative, entry) in &self.written {
            if files.contains_key(relative) {
                continue;
            }
            if complete {
                if no_symlink_below(&self.dir, relative).is_ok() {
                    let _ = std::fs::remove_file(self.dir.join(relative));
                }
            } else {
                let _ = files.insert(relative.clone(), entry.clone());
            }
        }
        let manifest = Manifest {
            updated: crate::node::rfc3339(time::OffsetDateTime::now_utc()),
            node: service.node.id.clone(),
            files,
        };
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        write_atomically(&self.dir, MANIFEST, &body)?;
        self.written = manifest.files;
        if complete {
            Ok(written)
        } else {
            Err("some documents could not be produced; their last copies stay".into())
        }
    }
}

/// Every document served now, by path, and whether none failed.
fn documents(service: &Service, site: &Site<'_>) -> (Vec<(String, Document)>, bool) {
    let keys = service.keys.view();
    let mut out: Vec<(String, Document)> = key_document_paths(&keys)
        .into_iter()
        .filter_map(|path| Some((path.clone(), key_document(&keys, &path, site)?)))
        .collect();
    let mut complete = true;
    // Lists are numbered from 1 and opened in turn: the first one missing
    // ends them.
    'lists: for list in 1u32.. {
        for form in TokenForm::ALL {
            match service.status.status_token(list, form) {
                Ok(Some(token)) => out.push((
                    crate::status::StatusPublisher::path_of(list, form),
                    Document {
                        route: "/status/{list}",
                        media_type: form.media_type(),
                        body: token.to_vec(),
                        max_age: 60,
                    },
                )),
                Ok(None) => break 'lists,
                Err(e) => {
                    tracing::warn!(list, error = %e, "mirror: a status list cannot be signed now");
                    complete = false;
                    break 'lists;
                }
            }
        }
    }
    (out, complete)
}

fn checkpoint_document(note: String) -> Document {
    Document {
        route: "/checkpoint",
        media_type: "text/plain; charset=utf-8",
        body: note.into_bytes(),
        max_age: crate::audit::auditor::CHECKPOINT_MAX_AGE,
    }
}

impl Mirror {
    /// Writes the hash tiles of the log's first `size` entries that are not
    /// in the directory yet (full ones once, the partial ones of `size`);
    /// how many, and whether all are there. Tiles are not in the manifest:
    /// the signed checkpoint authenticates them, and a national log has
    /// millions. Entry bundles hold pseudonyms: not in a public mirror.
    fn write_tiles(&mut self, service: &Service, size: u64) -> Result<(usize, bool), String> {
        let hashes = LogHashes(service.node.registry.as_ref());
        let mut written = 0;
        for (level, known) in (0u8..).zip(self.full_tiles.iter_mut()) {
            let count = size >> (TILE_HEIGHT * u32::from(level));
            if count == 0 {
                break;
            }
            let full = count / TILE_WIDTH;
            let partial = count % TILE_WIDTH;
            let wanted = (*known..full)
                .map(|index| (index, TILE_WIDTH))
                .chain((partial > 0).then_some((full, partial)));
            for (index, width) in wanted {
                if written >= TILES_PER_ROUND {
                    return Ok((written, false));
                }
                let id = TileId {
                    level,
                    index,
                    width,
                };
                let relative = TilePath::Hashes(id).path();
                if !self.dir.join(&relative).exists() {
                    // A reader per tile: nothing cached across a round.
                    let body = TreeReader::new(&hashes)
                        .tile(id)
                        .map_err(|e| format!("mirror: tile {relative}: {e}"))?;
                    write_atomically(&self.dir, &relative, &body)?;
                    written += 1;
                }
                if width == TILE_WIDTH {
                    *known = index + 1;
                }
            }
        }
        Ok((written, true))
    }
}

/// `path` (`/ds/x.pem`) as a path under the mirror, refused if any part
/// could leave it or hide (a label comes from the registry, which may lie).
fn safe_relative(path: &str) -> Option<String> {
    let relative = path.strip_prefix('/').unwrap_or(path);
    let ok = !relative.is_empty()
        && relative.split('/').all(|part| {
            (part == ".well-known" || !part.starts_with('.'))
                && !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    ok.then(|| relative.to_owned())
}

/// Refuses `relative` if a directory on its way below `dir` is a symbolic
/// link: the mirror writes and deletes only inside its own directory,
/// whoever else can write there.
fn no_symlink_below(dir: &Path, relative: &str) -> Result<(), String> {
    let mut path = dir.to_owned();
    let parts: Vec<&str> = relative.split('/').collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        path.push(part);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "mirror: {} is a symbolic link; refusing",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Writes `body` to `dir/relative` so a reader sees the old file or the
/// new one, never a part: a temporary file beside it, synced, renamed,
/// and the directory synced.
fn write_atomically(dir: &Path, relative: &str, body: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let target = dir.join(relative);
    let parent = target.parent().unwrap_or(dir);
    let fail = |e: std::io::Error| format!("mirror: writing {}: {e}", target.display());
    no_symlink_below(dir, relative)?;
    std::fs::create_dir_all(parent).map_err(fail)?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let mut random = [0u8; 8];
    openssl::rand::rand_bytes(&mut random).map_err(|e| e.to_string())?;
    let temporary = parent.join(format!(".{name}.{}.tmp", crate::keys::view::hex(&random)));
    // A new file: never one (or a symlink) someone left under that name.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temporary)
        .map_err(fail)?;
    file.write_all(body).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, &target).map_err(fail)?;
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::safe_relative;

    #[test]
    fn a_manifest_naming_paths_outside_the_mirror_is_not_believed() {
        let dir = tempfile_dir();
        let outside = dir.join("outside.txt");
        std::fs::write(&outside, "keep").unwrap();
        let mirror = dir.join("mirror");
        std::fs::create_dir_all(&mirror).unwrap();
        let entry = serde_json::json!({"sha256": "00", "media_type": "text/plain", "max_age": 1});
        let manifest = serde_json::json!({
            "updated": "", "node": "n",
            "files": {"../outside.txt": entry, "ds/x.pem": entry, "/etc/passwd": entry}
        });
        std::fs::write(mirror.join(super::MANIFEST), manifest.to_string()).unwrap();
        let opened = super::Mirror::open(&mirror).unwrap();
        assert_eq!(opened.written.keys().collect::<Vec<_>>(), ["ds/x.pem"]);
        assert!(outside.exists());
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dojang-mirror-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_symlinked_directory_in_the_mirror_is_neither_written_through_nor_deleted_through() {
        let dir = tempfile_dir();
        let elsewhere = dir.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("x.pem"), "precious").unwrap();
        let mirror = dir.join("mirror");
        std::fs::create_dir_all(&mirror).unwrap();
        std::os::unix::fs::symlink(&elsewhere, mirror.join("ds")).unwrap();
        assert!(super::write_atomically(&mirror, "ds/x.pem", b"new").is_err());
        assert!(super::no_symlink_below(&mirror, "ds/x.pem").is_err());
        assert!(super::no_symlink_below(&mirror, "iaca.pem").is_ok());
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("x.pem")).unwrap(),
            "precious"
        );
    }

    #[test]
    fn paths_that_could_leave_the_mirror_are_refused() {
        assert_eq!(
            safe_relative("/ds/ds-1.pem").as_deref(),
            Some("ds/ds-1.pem")
        );
        assert_eq!(
            safe_relative("/.well-known/jwks.json").as_deref(),
            Some(".well-known/jwks.json")
        );
        for bad in [
            "/ds/../../etc/passwd.pem",
            "/ds/.hidden.pem",
            "/ds//x.pem",
            "/",
            "/ds/a b.pem",
            "/ds/x\0.pem",
        ] {
            assert!(safe_relative(bad).is_none(), "{bad:?}");
        }
    }
}
