//! TPM key blobs on disk: the public area and the TPM-wrapped private area
//! of each key. The private area is encrypted by the TPM under its primary
//! key and is useless outside that TPM; these files are not secrets, but
//! they are kept 0600 in a 0700 directory all the same.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::algorithm::{Algorithm, KeyPurpose};
use crate::error::{Error, Result};

const MAGIC: &str = "dojang-tpm-key 1";
const EXTENSION: &str = "tpmkey";

/// One key's blob file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyBlob {
    pub(crate) purpose: KeyPurpose,
    pub(crate) algorithm: Algorithm,
    /// Marshalled TPM2B_PUBLIC area.
    pub(crate) public: Vec<u8>,
    /// TPM2B_PRIVATE buffer, wrapped by the TPM.
    pub(crate) private: Vec<u8>,
}

pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating key directory {}", dir.display()), e))
}

pub(crate) fn path_of(dir: &Path, label: &str) -> PathBuf {
    dir.join(format!("{label}.{EXTENSION}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl KeyBlob {
    fn encode(&self) -> String {
        format!(
            "{MAGIC}\npurpose {}\nalgorithm {}\npublic {}\nprivate {}\n",
            self.purpose.name(),
            self.algorithm.jose_name(),
            hex(&self.public),
            hex(&self.private)
        )
    }

    fn decode(text: &str, path: &Path) -> Result<Self> {
        let bad = |what: &str| Error::Config(format!("key blob {}: {what}", path.display()));
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad("not a Dojang TPM key blob"));
        }
        let mut field = |name: &str| -> Result<String> {
            let line = lines
                .next()
                .ok_or_else(|| bad(&format!("missing {name}")))?;
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("expected {name}")))
        };
        let purpose = KeyPurpose::from_name(&field("purpose")?).map_err(|_| bad("bad purpose"))?;
        let algorithm =
            Algorithm::from_jose_name(&field("algorithm")?).map_err(|_| bad("bad algorithm"))?;
        let public = unhex(&field("public")?).ok_or_else(|| bad("public is not hex"))?;
        let private = unhex(&field("private")?).ok_or_else(|| bad("private is not hex"))?;
        Ok(KeyBlob {
            purpose,
            algorithm,
            public,
            private,
        })
    }

    /// Writes the blob; refuses to overwrite an existing key.
    pub(crate) fn create(&self, dir: &Path, label: &str) -> Result<()> {
        let path = path_of(dir, label);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::KeyExists {
                    label: label.to_owned(),
                },
                _ => Error::io(format!("creating {}", path.display()), e),
            })?;
        file.write_all(self.encode().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    pub(crate) fn read(dir: &Path, label: &str) -> Result<Self> {
        let path = path_of(dir, label);
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::KeyNotFound {
                label: label.to_owned(),
            },
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        Self::decode(&text, &path)
    }
}

/// Labels of every blob in the directory, sorted.
pub(crate) fn labels(dir: &Path) -> Result<Vec<String>> {
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut labels = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .path();
        if path.extension().and_then(|e| e.to_str()) == Some(EXTENSION)
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            labels.push(stem.to_owned());
        }
    }
    labels.sort();
    Ok(labels)
}

pub(crate) fn remove(dir: &Path, label: &str) -> Result<()> {
    let path = path_of(dir, label);
    fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))
}

/// Warns-by-error if the directory is readable by others.
pub(crate) fn check_dir_mode(dir: &Path) -> Result<()> {
    let mode = fs::metadata(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "key directory {} is accessible to other users (mode {:o}); chmod 700 it",
            dir.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_refuse_overwrite() {
        let dir = std::env::temp_dir().join(format!("dojang-blob-test-{}", std::process::id()));
        ensure_dir(&dir).unwrap();
        let blob = KeyBlob {
            purpose: KeyPurpose::Audit,
            algorithm: Algorithm::Es256,
            public: vec![0, 1, 0xfe],
            private: vec![0xff; 3],
        };
        blob.create(&dir, "k1").unwrap();
        assert_eq!(KeyBlob::read(&dir, "k1").unwrap(), blob);
        assert!(matches!(
            blob.create(&dir, "k1"),
            Err(Error::KeyExists { .. })
        ));
        assert_eq!(labels(&dir).unwrap(), vec!["k1".to_string()]);
        assert!(matches!(
            KeyBlob::read(&dir, "k2"),
            Err(Error::KeyNotFound { .. })
        ));
        check_dir_mode(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_blobs_are_refused_clearly() {
        let err =
            KeyBlob::decode("dojang-tpm-key 1\npurpose audit\n", Path::new("/x")).unwrap_err();
        assert!(err.to_string().contains("missing algorithm"), "{err}");
        assert!(KeyBlob::decode("something else", Path::new("/x")).is_err());
    }
}
