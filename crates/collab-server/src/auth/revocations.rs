//! Revoked tokens, as every instance knows them.
//!
//! The `revocations` table is the truth. Each instance keeps the set in
//! memory (checked on every request and by every open connection), learns
//! of new rows from a Redis message within milliseconds, and reads the
//! table's new rows every poll interval, so a lost message only delays a
//! revocation by one interval. When the set grows, a watch channel wakes
//! every open connection to check its own token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::token::Token;
use crate::store::{DocumentStore, Revocation};

/// Rows read from the table per query while catching up.
const PAGE: u32 = 1000;

/// The revoked tokens and users.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RevokedSet {
    jtis: HashSet<String>,
    /// Per user, the latest `before` (Unix seconds): tokens issued at or
    /// before it are revoked.
    users: HashMap<String, i64>,
}

impl RevokedSet {
    /// Adds `r`; whether that revoked anything new.
    pub fn add(&mut self, r: &Revocation) -> bool {
        match r {
            Revocation::Token { jti } => self.jtis.insert(jti.clone()),
            Revocation::User { sub, before } => {
                let at = self.users.entry(sub.clone()).or_insert(i64::MIN);
                let newer = *before > *at;
                *at = (*at).max(*before);
                newer
            }
        }
    }

    /// A token without `iat` counts as issued before any revocation of its
    /// user.
    pub fn revokes(&self, token: &Token) -> bool {
        if token.jti.as_ref().is_some_and(|j| self.jtis.contains(j)) {
            return true;
        }
        match self.users.get(&token.sub) {
            None => false,
            Some(before) => token
                .iat
                .is_none_or(|iat| i64::try_from(iat).is_ok_and(|iat| iat <= *before)),
        }
    }
}

/// The shared, live set. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    set: RwLock<Known>,
    /// Bumped whenever the set grows; connections watch it.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Known {
    set: RevokedSet,
    /// The newest table row read.
    last_row: u64,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                set: RwLock::default(),
                changed: watch::channel(0).0,
            }),
        }
    }
}

impl Revocations {
    pub fn is_revoked(&self, token: &Token) -> bool {
        self.read().set.revokes(token)
    }

    /// Resolves each time the set grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Adds revocations learned from this instance, a message or the table.
    pub fn add(&self, revocations: impl IntoIterator<Item = Revocation>) {
        let grew = {
            let mut known = self.write();
            revocations
                .into_iter()
                .fold(false, |grew, r| known.set.add(&r) | grew)
        };
        if grew {
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }

    /// Reads the table's rows this instance has not seen yet.
    pub async fn poll(&self, store: &dyn DocumentStore) -> Result<(), crate::store::StoreError> {
        loop {
            let after = self.read().last_row;
            let rows = store.revocations_since(after, PAGE).await?;
            let Some((last, _)) = rows.last() else {
                return Ok(());
            };
            let last = *last;
            let full = rows.len() == PAGE as usize;
            self.add(rows.into_iter().map(|(_, r)| r));
            {
                let mut known = self.write();
                known.last_row = known.last_row.max(last);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Polls the table every `interval` until `stop` turns true.
    pub async fn run_poller(
        self,
        store: Arc<dyn DocumentStore>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.poll(store.as_ref()).await {
                        warn!(error = %e, "could not read revocations; will retry");
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        debug!("revocation poller stopped");
                        return;
                    }
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.inner.set.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.inner.set.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::grants::Grants;

    fn token(sub: &str, jti: Option<&str>, iat: Option<u64>) -> Token {
        Token {
            sub: sub.into(),
            exp: u64::MAX,
            iat,
            jti: jti.map(Into::into),
            name: None,
            grants: Grants::default(),
        }
    }

    #[test]
    fn by_token_and_by_user() {
        let mut set = RevokedSet::default();
        assert!(set.add(&Revocation::Token { jti: "j1".into() }));
        assert!(
            !set.add(&Revocation::Token { jti: "j1".into() }),
            "nothing new"
        );
        assert!(set.revokes(&token("a", Some("j1"), None)));
        assert!(!set.revokes(&token("a", Some("j2"), None)));

        assert!(set.add(&Revocation::User {
            sub: "bob".into(),
            before: 100
        }));
        assert!(
            set.revokes(&token("bob", None, Some(100))),
            "issued at the moment"
        );
        assert!(set.revokes(&token("bob", None, Some(99))));
        assert!(
            set.revokes(&token("bob", None, None)),
            "no iat counts as before"
        );
        assert!(!set.revokes(&token("bob", None, Some(101))), "issued after");
        assert!(!set.revokes(&token("carol", None, None)));
        // An older revocation does not move the moment back.
        assert!(!set.add(&Revocation::User {
            sub: "bob".into(),
            before: 50
        }));
        assert!(set.revokes(&token("bob", None, Some(100))));
    }

    #[tokio::test]
    async fn growth_wakes_watchers() {
        let r = Revocations::default();
        let mut rx = r.subscribe();
        r.add([Revocation::Token { jti: "x".into() }]);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        r.add([Revocation::Token { jti: "x".into() }]);
        assert!(!rx.has_changed().unwrap(), "a repeat changes nothing");
    }
}
