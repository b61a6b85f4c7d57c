//! Tokens for tests of token mode: one secret, claims for a user and a few
//! document patterns, and a server configured to check them.

use collab_server::auth::{mint_with, now_secs, Claims, Secret};
use collab_server::Config;

use super::{test_config, TestDb};

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

/// The test configuration in token mode, polling revocations often.
pub fn token_config(db: &TestDb) -> Config {
    let mut config = test_config(db);
    config.auth_secret = Some(Secret::new(SECRET));
    config.revocation_poll_ms = 200;
    config
}

/// Claims for `sub` with `docs` (`(pattern, role)` pairs), issued now,
/// valid for ten minutes, with a random `jti`.
pub fn claims(sub: &str, docs: &[(&str, &str)]) -> Claims {
    let now = now_secs();
    Claims {
        sub: sub.to_owned(),
        exp: now + 600,
        iat: Some(now),
        nbf: None,
        jti: Some(uuid::Uuid::new_v4().simple().to_string()),
        name: None,
        docs: Some(
            docs.iter()
                .map(|(p, r)| ((*p).to_owned(), (*r).to_owned()))
                .collect(),
        ),
    }
}

/// `claims` signed with [`SECRET`].
pub fn sign(claims: &Claims) -> String {
    mint_with(&Secret::new(SECRET), claims).expect("mint")
}

pub fn token(sub: &str, docs: &[(&str, &str)]) -> String {
    sign(&claims(sub, docs))
}

/// `admin` on every document.
pub fn admin() -> String {
    token("root", &[("*", "admin")])
}
