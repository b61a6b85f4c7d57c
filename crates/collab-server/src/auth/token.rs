//! Signed tokens (JWT, RFC 7519): checking them and, with the shared
//! secret, minting them (share links, `collab token`).
//!
//! Only the algorithms of the configured keys are accepted: HS256 with
//! `COLLAB_AUTH_SECRET`, and the one algorithm the public key's type
//! implies (EdDSA, ES256 or RS256). A header naming anything else —
//! `none`, or HS256 when only a public key is set — is refused before any
//! signature is checked.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::grants::Grants;

/// Shortest `COLLAB_AUTH_SECRET`, in bytes: HS256 with a short key can be
/// brute-forced offline from any token.
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest token accepted, in bytes (a header or query string this long
/// is already unusual).
pub const MAX_TOKEN_BYTES: usize = collab_ot::protocol::MAX_TOKEN_BYTES;

/// The shared secret, kept out of `Debug` output and logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// The claims of a token, as signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<BTreeMap<String, String>>,
}

/// A verified token: who, until when, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub sub: String,
    pub exp: u64,
    pub iat: Option<u64>,
    pub jti: Option<String>,
    pub name: Option<String>,
    pub grants: Grants,
}

/// Why a token is refused; every variant is a 401 `unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token is required: send Authorization: Bearer <token>")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("token algorithm not accepted by this server")]
    Algorithm,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token revoked")]
    Revoked,
    #[error("the new token is for another user")]
    OtherUser,
}

/// A key a token may be signed with, and its one algorithm.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Checks tokens against the configured keys; mints with the secret.
pub struct Verifier {
    hmac: Option<(Key, EncodingKey)>,
    public: Option<Key>,
    leeway: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hmac.is_some())
            .field("public", &self.public.as_ref().map(|k| k.algorithm))
            .field("leeway", &self.leeway)
            .finish()
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    /// `None` when neither key is given (open mode).
    pub fn new(
        secret: Option<&Secret>,
        public_key_pem: Option<&[u8]>,
        leeway: u64,
    ) -> Result<Option<Verifier>, String> {
        let hmac = match secret {
            None => None,
            Some(s) if s.expose().len() < MIN_SECRET_BYTES => {
                return Err(format!(
                    "COLLAB_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes"
                ))
            }
            Some(s) => Some((
                Key {
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(s.expose().as_bytes()),
                },
                EncodingKey::from_secret(s.expose().as_bytes()),
            )),
        };
        let public = public_key_pem.map(public_key).transpose()?;
        if hmac.is_none() && public.is_none() {
            return Ok(None);
        }
        Ok(Some(Verifier {
            hmac,
            public,
            leeway,
        }))
    }

    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    pub fn can_mint(&self) -> bool {
        self.hmac.is_some()
    }

    /// Checks the signature, `exp` and `nbf` (with the leeway) and the
    /// claims' shape. Revocation is checked by the caller.
    pub fn verify(&self, token: &str) -> Result<Token, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // An `alg` this library does not know (`none`, `HS1024`…).
            jsonwebtoken::errors::ErrorKind::Json(_) => TokenError::Algorithm,
            _ => TokenError::Malformed("not a JWT".into()),
        })?;
        let key = [self.hmac.as_ref().map(|(k, _)| k), self.public.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.algorithm == header.alg)
            .ok_or(TokenError::Algorithm)?;
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => TokenError::BadSignature,
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::Algorithm,
                K::MissingRequiredClaim(c) => TokenError::Malformed(format!("no {c} claim")),
                K::Json(e) => TokenError::Malformed(format!("bad claims: {e}")),
                _ => TokenError::Malformed("not a valid JWT".into()),
            }
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(TokenError::Malformed("sub must be 1 to 256 bytes".into()));
        }
        let grants = Grants::parse(
            claims
                .docs
                .iter()
                .flatten()
                .map(|(p, r)| (p.as_str(), r.as_str())),
        )
        .map_err(TokenError::Malformed)?;
        Ok(Token {
            sub: claims.sub,
            exp: claims.exp,
            iat: claims.iat,
            jti: claims.jti,
            name: claims.name.map(|n| {
                n.chars()
                    .take(collab_ot::protocol::MAX_USER_NAME_CHARS)
                    .collect()
            }),
            grants,
        })
    }

    /// Signs `claims` with the secret (HS256); `None` without a secret.
    pub fn mint(&self, claims: &Claims) -> Option<String> {
        let (_, key) = self.hmac.as_ref()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).ok()
    }
}

/// Signs `claims` with `secret` (HS256), for the CLI.
pub fn mint_with(secret: &Secret, claims: &Claims) -> Result<String, String> {
    if secret.expose().len() < MIN_SECRET_BYTES {
        return Err(format!(
            "COLLAB_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes"
        ));
    }
    let key = EncodingKey::from_secret(secret.expose().as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).map_err(|e| e.to_string())
}

/// The public key of a PEM file and the algorithm its type implies.
fn public_key(pem: &[u8]) -> Result<Key, String> {
    // The library reads a private RSA key as happily as a public one; a
    // server given its signer's private key should say so, not 401 everyone.
    if !String::from_utf8_lossy(pem).contains("PUBLIC KEY-----") {
        return Err("COLLAB_AUTH_PUBLIC_KEY must hold a PEM public key (BEGIN PUBLIC KEY)".into());
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(Key {
            algorithm: Algorithm::EdDSA,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Key {
            algorithm: Algorithm::ES256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key {
            algorithm: Algorithm::RS256,
            key,
        });
    }
    Err("COLLAB_AUTH_PUBLIC_KEY is not an Ed25519, P-256 or RSA public key in PEM form".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new(Some(&Secret::new(SECRET)), None, 30)
            .unwrap()
            .unwrap()
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            iat: Some(now_secs()),
            nbf: None,
            jti: Some("j1".into()),
            name: Some("Alice".into()),
            docs: Some([("notes".to_owned(), "write".to_owned())].into()),
        }
    }

    #[test]
    fn round_trip() {
        let v = verifier();
        let t = v.mint(&claims(now_secs() + 60)).unwrap();
        let token = v.verify(&t).unwrap();
        assert_eq!(token.sub, "alice");
        assert_eq!(
            token.grants.role_on("notes"),
            Some(collab_ot::protocol::Role::Write)
        );
    }

    #[test]
    fn refusals() {
        let v = verifier();
        let now = now_secs();
        // Within the leeway is still fine; beyond it is expired.
        assert!(v.verify(&v.mint(&claims(now - 10)).unwrap()).is_ok());
        assert_eq!(
            v.verify(&v.mint(&claims(now - 100)).unwrap()),
            Err(TokenError::Expired)
        );
        let mut early = claims(now + 600);
        early.nbf = Some(now + 300);
        assert_eq!(
            v.verify(&v.mint(&early).unwrap()),
            Err(TokenError::NotYetValid)
        );
        let other = mint_with(&Secret::new("x".repeat(32)), &claims(now + 60)).unwrap();
        assert_eq!(v.verify(&other), Err(TokenError::BadSignature));
        assert!(matches!(v.verify("nope"), Err(TokenError::Malformed(_))));
        // alg: none, unsigned; and HS256 signed with nothing.
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = b64(&format!(
            r#"{{"sub":"x","exp":{},"docs":{{"*":"admin"}}}}"#,
            now + 60
        ));
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
        ] {
            let forged = format!("{}.{payload}.", b64(header));
            assert_eq!(v.verify(&forged), Err(TokenError::Algorithm), "{header}");
        }
    }

    /// Key pairs made for these tests alone (`openssl genpkey`), one per
    /// accepted public-key algorithm.
    const KEYS: [(Algorithm, &str, &str); 3] = [
        (
            Algorithm::EdDSA,
            include_str!("testdata/ed25519.key"),
            include_str!("testdata/ed25519.pub"),
        ),
        (
            Algorithm::ES256,
            include_str!("testdata/p256.key"),
            include_str!("testdata/p256.pub"),
        ),
        (
            Algorithm::RS256,
            include_str!("testdata/rsa.key"),
            include_str!("testdata/rsa.pub"),
        ),
    ];

    fn sign_with(algorithm: Algorithm, private_pem: &str, claims: &Claims) -> String {
        let key = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        }
        .unwrap();
        jsonwebtoken::encode(&Header::new(algorithm), claims, &key).unwrap()
    }

    #[test]
    fn public_keys_accept_their_algorithm_only() {
        let c = claims(now_secs() + 60);
        for (algorithm, private, public) in KEYS {
            let v = Verifier::new(None, Some(public.as_bytes()), 30)
                .unwrap()
                .unwrap();
            assert!(!v.can_mint(), "no secret, no share links");
            let token = sign_with(algorithm, private, &c);
            assert_eq!(v.verify(&token).unwrap().sub, "alice", "{algorithm:?}");
            // The other key types' tokens are refused by algorithm.
            for (other, other_private, _) in KEYS {
                if other != algorithm {
                    let t = sign_with(other, other_private, &c);
                    assert_eq!(
                        v.verify(&t),
                        Err(TokenError::Algorithm),
                        "{other:?} on {algorithm:?}"
                    );
                }
            }
            // Key confusion: an HS256 token "signed" with the public key.
            let forged = mint_with(&Secret::new(public), &c).unwrap();
            assert_eq!(
                v.verify(&forged),
                Err(TokenError::Algorithm),
                "HS256 on {algorithm:?}"
            );
            // Both keys at once: each checks its own tokens.
            let both = Verifier::new(Some(&Secret::new(SECRET)), Some(public.as_bytes()), 30)
                .unwrap()
                .unwrap();
            assert!(both.verify(&token).is_ok());
            assert!(both.verify(&both.mint(&c).unwrap()).is_ok());
            assert_eq!(both.verify(&forged), Err(TokenError::BadSignature));
        }
        assert!(Verifier::new(None, Some(b"not a key"), 30).is_err());
        let private_as_public = Verifier::new(None, Some(KEYS[2].1.as_bytes()), 30);
        assert!(
            private_as_public.is_err(),
            "a private key is not a public key"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Verifier::new(Some(&Secret::new("short")), None, 30).is_err());
        assert!(Verifier::new(None, None, 30).unwrap().is_none());
        assert_eq!(format!("{:?}", Secret::new(SECRET)), "Secret(…)");
    }
}
