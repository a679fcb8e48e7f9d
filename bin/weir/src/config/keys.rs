//! `[[keys]]`: the client keys, stored as SHA-256 hashes.

use super::limits::{self, RateLimit};
use super::read::{shorten, Table};
use std::collections::HashSet;

/// `[[keys]]`: one client key, stored as its SHA-256 hash.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// Its name: the only way it appears in metrics and logs.
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// The routes' models it may use (`None`: all).
    pub models: Option<Vec<String>>,
    /// Its own rate limits (`limits = {...}`).
    pub limits: Option<RateLimit>,
}

/// The keys a `[[keys]]` entry takes.
pub(super) const KEYS: &[&str] = &["name", "hash", "models", "limits"];

/// Reads the `[[keys]]` entries; `models` are the routes' model names.
pub(super) fn read(entries: &[Table<'_>], models: &HashSet<&str>) -> Vec<ClientKey> {
    let mut keys: Vec<ClientKey> = Vec::with_capacity(entries.len());
    for t in entries {
        let name = super::provider::name(t);
        if let Some(name) = &name {
            if keys.iter().any(|k| k.name == name.value) {
                let message = format!("key name `{}` is used twice", name.value);
                t.problem(name.span.clone(), "name", message);
            }
        }
        let hash = match t.required("hash") {
            None => [0; 32],
            Some(text) => match text.value.strip_prefix("sha256:").and_then(parse_hex32) {
                Some(hash) if keys.iter().any(|k| k.hash == hash) => {
                    t.problem(text.span, "hash", "the same key is listed twice");
                    hash
                }
                Some(hash) => hash,
                None => {
                    t.problem(
                        text.span,
                        "hash",
                        "must be `sha256:` and 64 hex digits (`weir hash-key` prints one)",
                    );
                    [0; 32]
                }
            },
        };
        let allowed = t.strings("models").map(|list| {
            for m in &list {
                if !models.contains(m.value) {
                    let message = format!("no route serves the model `{}`", shorten(m.value));
                    t.problem(m.span.clone(), "models", message);
                }
            }
            list.iter().map(|m| m.value.to_owned()).collect()
        });
        keys.push(ClientKey {
            name: name.map_or_else(String::new, |n| n.value.to_owned()),
            hash,
            models: allowed,
            limits: limits::rate_limit(t, "limits", false),
        });
    }
    keys
}

/// SHA-256 of a client key.
pub(crate) fn key_hash(key: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `hash` of a client key for `[[keys]]`: `sha256:` and 64 hex digits.
pub fn hash_key(key: &str) -> String {
    let hash = key_hash(key.as_bytes());
    let mut out = String::from("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
