//! The per-install key behind every tag: a keyed hash (HMAC-SHA-256, truncated to 64 bits)
//! of a normalised family name, address, phone, birth date or identifier. Tags from one
//! install mean nothing at another, or to anyone without the key; the clear values are never
//! kept.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::path::Path;

use super::CareError;

/// Bytes in a key file.
pub const KEY_LEN: usize = 32;

/// A keyed hash of one normalised value (see [`CareKey::tag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tag(pub u64);

/// What a tag was made of: the same text as a name and as an address gives different tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    Family,
    Given,
    Address,
    Phone,
    Birth,
    Identifier,
}

impl TagKind {
    fn byte(self) -> u8 {
        match self {
            TagKind::Family => 1,
            TagKind::Given => 2,
            TagKind::Address => 3,
            TagKind::Phone => 4,
            TagKind::Birth => 5,
            TagKind::Identifier => 6,
        }
    }
}

/// The install's secret.
#[derive(Clone)]
pub struct CareKey(Hmac<Sha256>);

impl std::fmt::Debug for CareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CareKey(..)")
    }
}

impl CareKey {
    /// A key from its bytes (at least [`KEY_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CareError> {
        if bytes.len() < KEY_LEN {
            return Err(CareError::KeyTooShort { len: bytes.len() });
        }
        Ok(CareKey(Hmac::<Sha256>::new_from_slice(bytes).map_err(
            |_| CareError::KeyTooShort { len: bytes.len() },
        )?))
    }

    /// A fresh random key, kept only in memory (the offline commands: tags live as long as
    /// the process).
    pub fn ephemeral() -> Result<Self, CareError> {
        Self::from_bytes(&random_key()?)
    }

    /// The key in `path`; `None` when there is no such file yet.
    pub fn load(path: &Path) -> Result<Option<Self>, CareError> {
        match std::fs::read(path) {
            Ok(b) => Self::from_bytes(&b).map(Some).map_err(|e| match e {
                CareError::KeyTooShort { len } => CareError::KeyFile {
                    path: path.to_path_buf(),
                    why: format!("holds {len} bytes, a key has {KEY_LEN}; remove it to make a new one (stored tags then no longer match)"),
                },
                e => e,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CareError::KeyFile {
                path: path.to_path_buf(),
                why: format!("cannot be read: {e}"),
            }),
        }
    }

    /// The key in `path`, made there first (random, mode 0600, written whole then renamed)
    /// when the file does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<Self, CareError> {
        if let Some(k) = Self::load(path)? {
            return Ok(k);
        }
        let b = random_key()?;
        write_private(path, &b).map_err(|e| CareError::KeyFile {
            path: path.to_path_buf(),
            why: format!("cannot be created: {e}"),
        })?;
        Self::from_bytes(&b)
    }

    /// A fingerprint of the key (a tag of a fixed text), to tell whether stored tags were
    /// made with it; says nothing about the key itself.
    pub fn fingerprint(&self) -> i64 {
        self.tag(TagKind::Identifier, "fhir-edge care key check").0 as i64
    }

    /// The tag of `value` of kind `kind` (already normalised).
    pub fn tag(&self, kind: TagKind, value: &str) -> Tag {
        let mut m = self.0.clone();
        m.update(&[kind.byte()]);
        m.update(value.as_bytes());
        let out = m.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        Tag(u64::from_le_bytes(first))
    }
}

fn random_key() -> Result<[u8; KEY_LEN], CareError> {
    let mut b = [0u8; KEY_LEN];
    getrandom::fill(&mut b).map_err(|e| CareError::Random(e.to_string()))?;
    Ok(b)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_depend_on_key_kind_and_value_and_the_key_file_is_made_once_private() {
        let a = CareKey::from_bytes(&[1u8; 32]).unwrap();
        let b = CareKey::from_bytes(&[2u8; 32]).unwrap();
        assert_eq!(
            a.tag(TagKind::Family, "smith"),
            a.tag(TagKind::Family, "smith")
        );
        assert_ne!(
            a.tag(TagKind::Family, "smith"),
            b.tag(TagKind::Family, "smith")
        );
        assert_ne!(
            a.tag(TagKind::Family, "smith"),
            a.tag(TagKind::Given, "smith")
        );
        assert!(CareKey::from_bytes(&[0u8; 8]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("care.key");
        assert!(CareKey::load(&p).unwrap().is_none(), "loading makes no key");
        let k1 = CareKey::load_or_create(&p).unwrap();
        let k2 = CareKey::load_or_create(&p).unwrap();
        assert_eq!(
            k1.tag(TagKind::Phone, "5551234"),
            k2.tag(TagKind::Phone, "5551234")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, b"short").unwrap();
        let e = CareKey::load_or_create(&p).unwrap_err();
        assert_eq!(e.kind(), "care_key_file");
        assert!(e.to_string().contains("care.key"), "{e}");
    }
}
