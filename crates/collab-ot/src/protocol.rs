//! The WebSocket messages of the protocol (docs/protocol.md §3), as plain data.
//!
//! Parsing is a pure function from a text frame to a message or to the
//! protocol's error, so the server and the Rust client share one definition
//! and every malformed frame maps to a precise error code without touching
//! any document.

use serde::{Deserialize, Serialize};

use crate::document::Peer;
use crate::op::Operation;

/// An operation as listed by REST `GET …/ops` and in a resume `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    /// The revision this operation produced.
    pub rev: u64,
    pub op: Operation,
    pub client_id: Option<String>,
    pub seq: Option<u64>,
    /// The `sub` of the token the op was sent with; `null` in open mode.
    #[serde(default)]
    pub author: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// What a token lets its holder do with one document, lowest first, so
/// roles compare with `<`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// See the document and everyone's edits and cursors.
    Read,
    /// Also edit it and show a cursor.
    Write,
    /// Also rename, delete and share it.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Op {
        rev: u64,
        seq: u64,
        op: Operation,
    },
    Presence {
        selection: Option<[usize; 2]>,
        user: Option<User>,
    },
    /// A fresh token for the same user, replacing the connection's current one.
    Auth {
        token: String,
    },
}

/// Longest token an `auth` frame may carry, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who a peer is, as shown next to their cursor. Other keys a client sends
/// are dropped; both strings are bounded ([`MAX_USER_NAME_CHARS`],
/// [`MAX_USER_COLOR_CHARS`]), so a peer costs every newcomer's `welcome` a
/// few hundred bytes at most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub color: String,
}

/// Longest `user.name`, in characters.
pub const MAX_USER_NAME_CHARS: usize = 100;
/// Longest `user.color`, in characters (`#rrggbb`, `hsl(…)`, a CSS name).
pub const MAX_USER_COLOR_CHARS: usize = 32;

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        client_id: String,
        rev: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ops: Option<Vec<OpRecord>>,
        peers: Vec<PeerInfo>,
        /// The connection's role on this document (`admin` in open mode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        /// When the connection's token expires (Unix seconds); `null` in
        /// open mode.
        #[serde(default)]
        exp: Option<u64>,
    },
    /// The answer to a client's `auth` frame: the refreshed token's grant.
    Auth {
        role: Role,
        exp: u64,
    },
    Ack {
        seq: u64,
        rev: u64,
    },
    Op {
        rev: u64,
        op: Operation,
        client_id: Option<String>,
        seq: Option<u64>,
        #[serde(default)]
        author: Option<String>,
    },
    Presence {
        client_id: String,
        selection: Option<[usize; 2]>,
        user: serde_json::Value,
        /// The token's `sub` in token mode; absent in open mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    Leave {
        client_id: String,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

/// `Peer` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub client_id: String,
    pub selection: Option<[usize; 2]>,
    pub user: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl From<&Peer> for PeerInfo {
    fn from(p: &Peer) -> Self {
        PeerInfo {
            client_id: p.client_id.clone(),
            selection: p.selection,
            user: p.user.clone(),
            user_id: p.user_id.clone(),
        }
    }
}

/// The protocol's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    InvalidOp,
    RevOutOfRange,
    TooLarge,
    RateLimited,
    NotFound,
    DocumentDeleted,
    /// No valid token: missing, malformed, badly signed, expired or revoked.
    Unauthorized,
    /// A valid token that does not grant this (the document, or the role).
    Forbidden,
    /// The server could not take the edit right now (its store failed); the
    /// client reconnects and resends, nothing was applied.
    Unavailable,
    /// Anything this version does not know; keeps old clients parsing new servers.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Whether the connection stays open after this error.
    pub fn is_recoverable(self) -> bool {
        !matches!(
            self,
            ErrorCode::NotFound | ErrorCode::DocumentDeleted | ErrorCode::Unauthorized
        )
    }
}

/// A frame the server refuses, with what to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The `seq` of the refused op, when the frame got that far.
    pub seq: Option<u64>,
}

impl FrameError {
    fn bad(message: impl Into<String>) -> Self {
        FrameError {
            code: ErrorCode::BadMessage,
            message: message.into(),
            seq: None,
        }
    }

    /// The `error` message to send back.
    pub fn to_message(&self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message.clone(),
            seq: self.seq,
        }
    }
}

/// The frame's outer shape; `op` is parsed on its own so that a well-formed
/// frame with an invalid operation gets `invalid_op`, not `bad_message`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RawClientMessage {
    Op {
        rev: u64,
        seq: u64,
        op: serde_json::Value,
    },
    Presence {
        selection: Option<[usize; 2]>,
        #[serde(default)]
        user: Option<User>,
    },
    Auth {
        token: String,
    },
}

/// Parses one text frame from a client. The JSON is read strictly
/// ([`crate::json`]): a duplicate key or an integer past 2^53 − 1 anywhere
/// in the frame makes it a `bad_message`.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, FrameError> {
    let value = crate::json::parse_strict(text)
        .map_err(|e| FrameError::bad(format!("not a valid message: {e}")))?;
    let raw: RawClientMessage = serde_json::from_value(value)
        .map_err(|e| FrameError::bad(format!("not a valid message: {e}")))?;
    match raw {
        RawClientMessage::Op { rev, seq, op } => {
            if seq == 0 {
                return Err(FrameError::bad("seq must be a positive integer"));
            }
            let op = Operation::deserialize(op).map_err(|e| FrameError {
                code: ErrorCode::InvalidOp,
                message: format!("invalid operation: {e}"),
                seq: Some(seq),
            })?;
            Ok(ClientMessage::Op { rev, seq, op })
        }
        RawClientMessage::Presence { selection, user } => {
            if let Some(user) = &user {
                check_user(user)?;
            }
            Ok(ClientMessage::Presence { selection, user })
        }
        RawClientMessage::Auth { token } => {
            if token.len() > MAX_TOKEN_BYTES {
                return Err(FrameError {
                    code: ErrorCode::TooLarge,
                    message: format!("a token is at most {MAX_TOKEN_BYTES} bytes"),
                    seq: None,
                });
            }
            Ok(ClientMessage::Auth { token })
        }
    }
}

fn check_user(user: &User) -> Result<(), FrameError> {
    for (field, value, max) in [
        ("name", &user.name, MAX_USER_NAME_CHARS),
        ("color", &user.color, MAX_USER_COLOR_CHARS),
    ] {
        let chars = value.chars().count();
        if chars > max {
            return Err(FrameError {
                code: ErrorCode::TooLarge,
                message: format!("user.{field} has {chars} characters; at most {max} are allowed"),
                seq: None,
            });
        }
    }
    Ok(())
}

impl ClientMessage {
    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        let value = match self {
            ClientMessage::Op { rev, seq, op } => {
                serde_json::json!({"type": "op", "rev": rev, "seq": seq, "op": op})
            }
            ClientMessage::Presence { selection, user } => match user {
                Some(user) => {
                    serde_json::json!({"type": "presence", "selection": selection, "user": user})
                }
                None => serde_json::json!({"type": "presence", "selection": selection}),
            },
            ClientMessage::Auth { token } => serde_json::json!({"type": "auth", "token": token}),
        };
        value.to_string()
    }
}

impl ServerMessage {
    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_client_message(text).unwrap_err().code
    }

    #[test]
    fn parses_frames() {
        let m = parse_client_message(r#"{"type":"op","rev":3,"seq":1,"op":[1,"x"]}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Op {
                rev: 3,
                seq: 1,
                op: Operation::insert(1, "x")
            }
        );
        assert_eq!(parse_client_message(&m.to_json()).unwrap(), m, "round trip");
        let p = parse_client_message(
            r##"{"type":"presence","selection":[1,4],"user":{"name":"A","color":"#f00"}}"##,
        )
        .unwrap();
        assert_eq!(parse_client_message(&p.to_json()).unwrap(), p);
        let cleared = parse_client_message(r#"{"type":"presence","selection":null}"#).unwrap();
        assert_eq!(
            cleared,
            ClientMessage::Presence {
                selection: None,
                user: None
            }
        );
    }

    #[test]
    fn maps_bad_frames_to_codes() {
        for bad in [
            "",
            "nope",
            "[]",
            "{}",
            r#"{"type":"hello"}"#,
            r#"{"type":"op","rev":1,"op":[]}"#,
            r#"{"type":"op","rev":-1,"seq":1,"op":[]}"#,
            r#"{"type":"op","rev":1,"seq":0,"op":[]}"#,
            r#"{"type":"op","rev":"1","seq":1,"op":[]}"#,
            r#"{"type":"presence","selection":[1]}"#,
            r#"{"type":"presence","selection":[1,2],"user":"me"}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::BadMessage, "{bad}");
        }
        let e = parse_client_message(r#"{"type":"op","rev":1,"seq":7,"op":[0]}"#).unwrap_err();
        assert_eq!((e.code, e.seq), (ErrorCode::InvalidOp, Some(7)));
        assert_eq!(
            code(r#"{"type":"op","rev":1,"seq":7,"op":{"d":1}}"#),
            ErrorCode::InvalidOp
        );
    }

    #[test]
    fn integers_past_2_pow_53_and_duplicate_keys_are_bad_messages() {
        for bad in [
            r#"{"type":"op","rev":1,"seq":9223372036854775808,"op":[]}"#,
            r#"{"type":"op","rev":9007199254740992,"seq":1,"op":[]}"#,
            r#"{"type":"op","rev":1,"seq":1,"op":[9007199254740992,"x"]}"#,
            r#"{"type":"op","rev":1,"seq":1,"op":[{"d":9007199254740992}]}"#,
            r#"{"type":"op","rev":1,"seq":1,"op":[{"d":1,"d":1}]}"#,
            r#"{"type":"op","type":"op","rev":1,"seq":1,"op":[]}"#,
            r#"{"type":"presence","selection":[0,9007199254740992]}"#,
        ] {
            let e = parse_client_message(bad).unwrap_err();
            assert_eq!((e.code, e.seq), (ErrorCode::BadMessage, None), "{bad}");
        }
        let max = crate::json::MAX_SAFE_INTEGER;
        let ok = format!(r#"{{"type":"op","rev":{max},"seq":{max},"op":[]}}"#);
        assert!(parse_client_message(&ok).is_ok());
    }

    #[test]
    fn users_are_bounded() {
        let presence = |name: &str, color: &str| {
            serde_json::json!({"type": "presence", "selection": null,
                "user": {"name": name, "color": color, "extra": "dropped"}})
            .to_string()
        };
        let ok = parse_client_message(&presence(&"é".repeat(MAX_USER_NAME_CHARS), "#fff"));
        let Ok(ClientMessage::Presence {
            user: Some(user), ..
        }) = ok
        else {
            panic!("{ok:?}")
        };
        assert_eq!(
            serde_json::to_value(&user)
                .unwrap()
                .as_object()
                .unwrap()
                .len(),
            2
        );
        let long_name = presence(&"x".repeat(MAX_USER_NAME_CHARS + 1), "#fff");
        assert_eq!(code(&long_name), ErrorCode::TooLarge);
        let long_color = presence("A", &"x".repeat(MAX_USER_COLOR_CHARS + 1));
        assert_eq!(code(&long_color), ErrorCode::TooLarge);
    }

    #[test]
    fn server_messages_match_the_contract() {
        let welcome = ServerMessage::Welcome {
            client_id: "c".into(),
            rev: 2,
            content: Some("hi".into()),
            ops: None,
            peers: vec![],
            role: Some(Role::Write),
            exp: Some(1_900_000_000),
        };
        assert_eq!(
            welcome.to_json(),
            r#"{"type":"welcome","client_id":"c","rev":2,"content":"hi","peers":[],"role":"write","exp":1900000000}"#
        );
        let auth = parse_client_message(r#"{"type":"auth","token":"a.b.c"}"#).unwrap();
        assert_eq!(parse_client_message(&auth.to_json()).unwrap(), auth);
        assert_eq!(
            ServerMessage::Auth {
                role: Role::Read,
                exp: 5
            }
            .to_json(),
            r#"{"type":"auth","role":"read","exp":5}"#
        );
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        assert!(ErrorCode::Forbidden.is_recoverable());
        let err = FrameError::bad("x").to_message();
        assert_eq!(
            err.to_json(),
            r#"{"type":"error","code":"bad_message","message":"x"}"#
        );
        let parsed: ServerMessage =
            serde_json::from_str(r#"{"type":"error","code":"brand_new","message":"m"}"#).unwrap();
        assert!(matches!(
            parsed,
            ServerMessage::Error {
                code: ErrorCode::Unknown,
                ..
            }
        ));
        assert!(!ErrorCode::DocumentDeleted.is_recoverable());
        assert!(ErrorCode::RateLimited.is_recoverable());
    }
}
