//! Validated values of the protocol (docs/protocol.md): document ids, titles and timestamps.
//!
//! Parsing happens once, at the edge (the routes), so the rooms and the store
//! never see an id or a title that breaks the protocol's rules.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use time::OffsetDateTime;

/// The longest id a client may choose (docs/protocol.md §2).
pub const MAX_ID_LEN: usize = 64;
/// The longest title, in characters after trimming (docs/protocol.md §2).
pub const MAX_TITLE_CHARS: usize = 200;

/// A document id: `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId(String);

/// The protocol's rule for every id a client may choose: `[A-Za-z0-9_-]{1,64}`.
fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl DocumentId {
    pub fn parse(s: &str) -> Option<Self> {
        is_valid_id(s).then(|| Self(s.to_owned()))
    }

    /// A fresh random id; 32 lowercase hex characters, so it always parses.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for DocumentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A live client's id (`client_id` of the WebSocket protocol), same rule as
/// document ids; generated when the client brings none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(s: &str) -> Option<Self> {
        is_valid_id(s).then(|| Self(s.to_owned()))
    }

    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A title: 1..=200 characters after trimming; stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub fn parse(s: &str) -> Result<Self, TitleError> {
        let trimmed = s.trim();
        if trimmed.contains('\0') {
            return Err(TitleError::Nul);
        }
        match trimmed.chars().count() {
            0 => Err(TitleError::Empty),
            n if n > MAX_TITLE_CHARS => Err(TitleError::TooLong(n)),
            _ => Ok(Self(trimmed.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TitleError {
    #[error("title must not be empty")]
    Empty,
    #[error("title has {0} characters; at most {MAX_TITLE_CHARS} are allowed")]
    TooLong(usize),
    /// PostgreSQL cannot store U+0000 in text, so no store accepts it.
    #[error("title must not contain U+0000 (NUL)")]
    Nul,
}

/// A point in time as unix milliseconds, the unit both databases store;
/// rendered as RFC 3339 UTC on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// The current time, strictly later than any earlier call in this process.
    ///
    /// Writes that land in the same millisecond would otherwise tie, and
    /// "newest `updated_at` first" would stop being a meaningful order.
    pub fn now() -> Self {
        static LAST: AtomicI64 = AtomicI64::new(0);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let prev = LAST
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(wall.max(last + 1))
            })
            .unwrap_or(wall);
        Self(wall.max(prev + 1))
    }

    /// RFC 3339 in UTC with exactly three fractional digits, so that the
    /// strings sort like the times they stand for.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) if (0..=9999).contains(&t.year()) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            // Only reachable with a corrupt row far outside years 0..=9999.
            _ => "1970-01-01T00:00:00.000Z".to_owned(),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract() {
        assert!(DocumentId::parse("a").is_some());
        assert!(DocumentId::parse("Az09_-").is_some());
        assert!(DocumentId::parse(&"x".repeat(64)).is_some());
        assert!(DocumentId::parse(&"x".repeat(65)).is_none());
        assert!(DocumentId::parse("").is_none());
        assert!(DocumentId::parse("a b").is_none());
        assert!(DocumentId::parse("é").is_none());
        assert!(DocumentId::parse("a/b").is_none());
        assert!(DocumentId::parse(DocumentId::generate().as_str()).is_some());
    }

    #[test]
    fn titles_are_trimmed_and_counted_in_chars() {
        assert_eq!(Title::parse("  hi ").unwrap().as_str(), "hi");
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse(&"😭".repeat(200)).is_ok());
        assert!(Title::parse(&"😭".repeat(201)).is_err());
        assert!(matches!(Title::parse("a\0b"), Err(TitleError::Nul)));
    }

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        assert_eq!(
            Timestamp::from_millis(0).to_rfc3339(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_700_000_000_100).to_rfc3339(),
            "2023-11-14T22:13:20.100Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_700_000_000_123).to_rfc3339(),
            "2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn now_is_strictly_increasing() {
        let a = Timestamp::now();
        let b = Timestamp::now();
        assert!(b > a);
    }
}
