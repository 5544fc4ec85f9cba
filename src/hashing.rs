//! Identities by content: the canonical JSON of a value (object keys sorted recursively)
//! and its sha256. Run hashes, cache keys and the stages' keys all come from here, so two
//! recipes for one identity cannot drift apart.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// JSON with object keys sorted recursively: the canonical form that is hashed.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

pub fn hash_value(v: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(canonical_json(v).as_bytes()))
}

/// A value's identity form, written out field by field by the type itself (not its serde
/// form): which settings enter an identity, under which keys, and which are left out at
/// their default is decided here, so a config's serialised layout (what grids and stores
/// read) can change without moving any hash. Implementations destructure their struct
/// without `..`, so a new field does not compile until it is placed in the identity or
/// named as outside it.
pub trait Identity {
    fn identity(&self) -> serde_json::Value;

    fn identity_hash(&self) -> String {
        hash_value(&self.identity())
    }
}

/// The builder of an identity object.
#[derive(Default)]
pub struct Fields(serde_json::Map<String, serde_json::Value>);

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    /// A leaf in its serialised spelling (a number, a string, an enum's name, null).
    pub fn leaf<T: serde::Serialize + ?Sized>(mut self, key: &str, v: &T) -> Self {
        let v = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
        self.0.insert(key.to_string(), v);
        self
    }

    /// A leaf that is part of the identity only when `on`: a setting added after runs
    /// were stored, left out at its default so that those runs keep their hashes.
    pub fn opt_in<T: serde::Serialize + ?Sized>(self, on: bool, key: &str, v: &T) -> Self {
        if on {
            self.leaf(key, v)
        } else {
            self
        }
    }

    /// A nested identity.
    pub fn part(mut self, key: &str, v: &impl Identity) -> Self {
        self.0.insert(key.to_string(), v.identity());
        self
    }

    pub fn done(self) -> serde_json::Value {
        serde_json::Value::Object(self.0)
    }
}

/// sha256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 (hex) and length of a file, streamed (a multi-GB checkpoint is not read into
/// memory). The caller names the file in its error.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n: u64 = 0;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// sha256 (hex) of a file, an error naming the file when it cannot be read: the
/// fingerprint of a data file, a calibration id file or a model source.
pub fn file_sha256(path: &Path) -> crate::error::Result<String> {
    sha256_file(path)
        .map(|(sha, _)| sha)
        .map_err(|e| crate::error::Error::io(path, e))
}

/// Content identity of a directory: sha256 (hex) of its manifest, one line
/// `<relative path> <sha256 of the file>` per file kept by `keep` (any depth, paths sorted),
/// and the kept files' total length. Renaming, adding or changing a kept file changes it;
/// file times do not.
pub fn sha256_dir(dir: &Path, keep: impl Fn(&Path) -> bool) -> std::io::Result<(String, u64)> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.retain(|f| keep(f));
    files.sort();
    let mut h = Sha256::new();
    let mut total = 0;
    for f in files {
        let (sha, n) = sha256_file(&f)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
        let rel = f.strip_prefix(dir).unwrap_or(&f).to_string_lossy();
        h.update(format!("{rel} {sha}\n").as_bytes());
        total += n;
    }
    Ok((hex::encode(h.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_bytes_and_streamed_files_agree_with_the_standard() {
        // FIPS 180-2's example for "abc".
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), (abc.to_string(), 3));
        // Across the 1 MiB read buffer: the stream equals the whole.
        let big: Vec<u8> = (0..(5 << 19)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &big).unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            (sha256_hex(&big), big.len() as u64)
        );
        assert!(sha256_file(&d.path().join("missing")).is_err());
    }

    #[test]
    fn a_directory_digest_is_its_manifest_of_kept_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("b.txt"), b"abc").unwrap();
        std::fs::write(d.path().join("sub/a.bin"), b"").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let manifest = format!("b.txt {abc}\nsub/a.bin {empty}\n");
        assert_eq!(
            sha256_dir(d.path(), |_| true).unwrap(),
            (sha256_hex(manifest.as_bytes()), 3)
        );
        let only_txt = |p: &Path| p.extension().is_some_and(|e| e == "txt");
        assert_eq!(
            sha256_dir(d.path(), only_txt).unwrap(),
            (sha256_hex(format!("b.txt {abc}\n").as_bytes()), 3)
        );
        assert!(sha256_dir(&d.path().join("missing"), |_| true).is_err());
    }
}
