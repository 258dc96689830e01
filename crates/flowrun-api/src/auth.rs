//! API keys and bearer authentication (§1.2).
//!
//! Keys are `dr_sk_` + base64url(32 random bytes); only their SHA-256 is stored. Verified keys
//! are remembered in memory so the hot path (ingest, fire) does not read the database.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flowrun_core::model::Caller;
use flowrun_store::{ApiKeyRecord, Store};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::App;
use crate::error::ApiError;

pub const KEY_PREFIX: &str = "dr_sk_";

/// A fresh API key.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Creates and stores a key for `owner` (actor defaults to the owner); returns the key.
pub async fn create_key(
    store: &dyn Store,
    owner: &str,
    actor: Option<&str>,
) -> flowrun_store::Result<String> {
    let key = generate_key();
    store
        .insert_api_key(&ApiKeyRecord {
            key_hash: hash_key(&key),
            owner_id: owner.to_string(),
            actor_id: actor.unwrap_or(owner).to_string(),
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            revoked: false,
        })
        .await?;
    Ok(key)
}

/// Verified keys by the bytes of their SHA-256 (the hex form is only for the database), plus
/// the statically configured one.
#[derive(Default)]
pub struct KeyCache {
    known: RwLock<HashMap<[u8; 32], Caller>>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyCache {
    pub fn add_static(&self, key: &str, owner: &str) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                digest(key),
                Caller {
                    owner_id: owner.to_string(),
                    actor_id: owner.to_string(),
                },
            );
    }

    async fn resolve(&self, store: &dyn Store, key: &str) -> Result<Option<Caller>, ApiError> {
        let digest = digest(key);
        if let Some(c) = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
        {
            return Ok(Some(c.clone()));
        }
        if !well_formed(key) {
            return Ok(None);
        }
        let Some(rec) = store.find_api_key(&hex::encode(digest)).await? else {
            return Ok(None);
        };
        if rec.revoked {
            return Ok(None);
        }
        let caller = Caller {
            owner_id: rec.owner_id,
            actor_id: rec.actor_id,
        };
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, caller.clone());
        Ok(Some(caller))
    }
}

/// Resolves the bearer key to a [`Caller`] extension of the request, else answers 401 (see
/// [`crate::gate`]).
pub(crate) async fn authenticate(app: &App, mut req: Request) -> Result<Request, Response> {
    // A clone of the header shares its bytes (no copy), and the future holds no borrow of the
    // request across the lookup.
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let key = authorization
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(key) = key else {
        return Err(ApiError::unauthorized().into_response());
    };
    match app.keys.resolve(&*app.store, key).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            Ok(req)
        }
        Ok(None) => Err(ApiError::unauthorized().into_response()),
        Err(e) => Err(e.into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed() {
        let k = generate_key();
        assert!(well_formed(&k), "{k}");
        assert_eq!(k.len(), 6 + 43);
        assert!(!well_formed("dr_sk_short"));
        assert_ne!(generate_key(), k);
    }
}
