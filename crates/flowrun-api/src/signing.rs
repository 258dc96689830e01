//! Signed artifact URLs (§3.13): `token = base64url(JSON {ownerId, artifactId, exp})` `.`
//! `base64url(HMAC-SHA256(key, first part))`, valid until `exp` (Unix seconds).
//!
//! The key is generated once per database and kept in the store's settings, so every node on
//! one database signs and verifies alike; it never leaves the server.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a signed URL stays valid.
pub const TOKEN_TTL_SECONDS: i64 = 300;

/// The setting that holds the key (base64url of 32 random bytes).
const SETTING: &str = "artifact_signing_key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] flowrun_store::StoreError),
    #[error("the stored {SETTING} setting is not base64url of at least 32 bytes")]
    Unreadable,
}

/// The server's artifact signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A fresh random key (for a server without a store-backed one, e.g. unit tests).
    pub fn random() -> Self {
        let mut key = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        SigningKey(key)
    }

    /// A configured key (`--artifact-signing-key`): at least 32 bytes of secret text.
    pub fn from_secret(secret: &str) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err("the artifact signing key must be at least 32 bytes long".to_string());
        }
        Ok(SigningKey(secret.as_bytes().to_vec()))
    }

    /// The database's key, created on first use; concurrent first starts agree on one.
    pub async fn load(store: &dyn flowrun_store::Store) -> Result<Self, KeyError> {
        let stored = store
            .init_setting(SETTING, &B64.encode(Self::random().0))
            .await?;
        match B64.decode(stored.as_bytes()) {
            Ok(key) if key.len() >= 32 => Ok(SigningKey(key)),
            _ => Err(KeyError::Unreadable),
        }
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(data);
        mac
    }

    /// A token for `artifact_id` of `owner_id`, valid until `exp`.
    pub fn sign(&self, owner_id: &str, artifact_id: &str, exp: i64) -> String {
        let claims = Claims {
            owner_id: owner_id.to_string(),
            artifact_id: artifact_id.to_string(),
            exp,
        };
        let body = B64.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let sig = B64.encode(self.mac(body.as_bytes()).finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// The claims of a token signed with this key and not expired at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Option<Claims> {
        let (body, sig) = token.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        // Constant-time comparison.
        self.mac(body.as_bytes()).verify_slice(&sig).ok()?;
        let claims: Claims = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        (claims.exp > now).then_some(claims)
    }
}

/// Checks a public base URL (`--public-url`): http(s), a host, no query; trailing `/` dropped.
pub fn parse_public_url(s: &str) -> Result<String, String> {
    let trimmed = s.trim_end_matches('/');
    match trimmed.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && u.query().is_none() =>
        {
            Ok(trimmed.to_string())
        }
        _ => Err(format!("'{s}' is not an http(s) base URL")),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub owner_id: String,
    pub artifact_id: String,
    pub exp: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_until_it_expires() {
        let key = SigningKey::random();
        let token = key.sign("o", "a1", 1_000);
        let claims = key.verify(&token, 999).unwrap();
        assert_eq!(
            (claims.owner_id.as_str(), claims.artifact_id.as_str()),
            ("o", "a1")
        );
        assert!(key.verify(&token, 1_000).is_none());
        // The first part is plain base64url JSON.
        let body = B64.decode(token.split('.').next().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ownerId": "o", "artifactId": "a1", "exp": 1_000})
        );
    }

    #[test]
    fn public_urls_are_http_origins() {
        assert_eq!(
            parse_public_url("https://flowrun.example.com/").unwrap(),
            "https://flowrun.example.com"
        );
        assert_eq!(
            parse_public_url("http://10.0.0.5:8080/base").unwrap(),
            "http://10.0.0.5:8080/base"
        );
        assert!(parse_public_url("flowrun.example.com").is_err());
        assert!(parse_public_url("ftp://x").is_err());
        assert!(parse_public_url("https://x/?a=1").is_err());
    }

    #[test]
    fn tampered_or_foreign_tokens_fail() {
        let key = SigningKey::random();
        let token = key.sign("o", "a1", 1_000);
        assert!(SigningKey::random().verify(&token, 0).is_none());
        let (_, sig) = token.split_once('.').unwrap();
        let forged = B64.encode(br#"{"ownerId":"x","artifactId":"a1","exp":1000}"#);
        assert!(key.verify(&format!("{forged}.{sig}"), 0).is_none());
        assert!(key.verify("garbage", 0).is_none());
        assert!(key.verify("a.b", 0).is_none());
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            key.verify(std::str::from_utf8(&flipped).unwrap(), 0)
                .is_none()
        );
    }
}
