//! Identities by content: the canonical JSON of a value (object keys sorted recursively)
//! and its sha256. Run hashes, cache keys and the stages' keys all come from here, so two
//! recipes for one identity cannot drift apart.

use sha2::{Digest, Sha256};

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
