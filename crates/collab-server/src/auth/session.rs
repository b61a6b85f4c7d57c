//! The access of one live WebSocket session, as a small state machine the
//! connection task consults: may this frame go through, what does an
//! `auth` frame change, has the token lapsed. No I/O, so every transition
//! is unit-tested here.

use collab_ot::protocol::{ClientMessage, ErrorCode, FrameError, Role, User};

use super::{Access, Auth, TokenError};

/// A refusal to send, and whether the session must close after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: ErrorCode,
    pub message: String,
    pub close: bool,
}

impl Refused {
    fn unauthorized(e: TokenError) -> Self {
        Refused {
            code: ErrorCode::Unauthorized,
            message: e.to_string(),
            close: true,
        }
    }
}

/// What one session may do on its document, kept current by `auth` frames.
#[derive(Debug, Clone)]
pub struct SessionAccess {
    access: Access,
    role: Role,
    doc: String,
    /// The color the client last gave, kept when the name is the token's.
    color: String,
}

impl SessionAccess {
    /// A session of `access` on `doc`; refused when the token grants
    /// nothing there.
    pub fn new(access: Access, doc: &str) -> Result<Self, Refused> {
        let role = access.role_on(doc).ok_or_else(|| Refused {
            code: ErrorCode::Forbidden,
            message: format!("this token does not grant access to document {doc}"),
            close: true,
        })?;
        Ok(Self {
            access,
            role,
            doc: doc.to_owned(),
            color: String::new(),
        })
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this session may send `message`: `op` and `presence` need
    /// `write`; a `read` session gets `forbidden` (with the op's `seq`) and
    /// stays open.
    pub fn permits(&self, message: &ClientMessage) -> Result<(), FrameError> {
        let (what, seq) = match message {
            ClientMessage::Op { seq, .. } => ("ops", Some(*seq)),
            ClientMessage::Presence { .. } => ("presence", None),
            ClientMessage::Auth { .. } => return Ok(()),
        };
        if self.role >= Role::Write {
            return Ok(());
        }
        Err(FrameError {
            code: ErrorCode::Forbidden,
            message: format!(
                "sending {what} needs the write role; this session has {}",
                self.role
            ),
            seq,
        })
    }

    /// An `auth` frame: the new token replaces the old one if it verifies,
    /// is not revoked, belongs to the same user and still grants the
    /// document. Anything else ends the session.
    pub fn refresh(&mut self, auth: &Auth, token: &str) -> Result<(Role, u64), Refused> {
        let Some(current) = self.access.token() else {
            return Err(Refused {
                code: ErrorCode::BadMessage,
                message: "the server is open: there is no token to refresh".to_owned(),
                close: false,
            });
        };
        let access = auth
            .authenticate(Some(token))
            .map_err(Refused::unauthorized)?;
        let fresh = access.token().expect("token mode gives tokens");
        if fresh.sub != current.sub {
            return Err(Refused::unauthorized(TokenError::OtherUser));
        }
        let role = access.role_on(&self.doc).ok_or_else(|| Refused {
            code: ErrorCode::Forbidden,
            message: format!(
                "the new token does not grant access to document {}",
                self.doc
            ),
            close: true,
        })?;
        let exp = fresh.exp;
        self.access = access;
        self.role = role;
        Ok((role, exp))
    }

    /// Whether the token still holds (not revoked, not past `exp` and
    /// the leeway).
    pub fn check_live(&self, auth: &Auth) -> Result<(), Refused> {
        match self.access.token() {
            None => Ok(()),
            Some(t) => auth.still_valid(t).map_err(Refused::unauthorized),
        }
    }

    /// When the session must end unless refreshed (Unix seconds).
    pub fn deadline(&self, auth: &Auth) -> Option<u64> {
        self.access.token().map(|t| auth.expires_at(t))
    }

    /// The `user` to show with this session's presence: in token mode the
    /// name is the token's `name` when it has one, whatever the client
    /// says (a client cannot pass itself off as someone else).
    pub fn presence_user(&mut self, user: Option<User>) -> Option<User> {
        if let Some(u) = &user {
            self.color.clone_from(&u.color);
        }
        match self.access.token().and_then(|t| t.name.clone()) {
            Some(name) => Some(User {
                name,
                color: self.color.clone(),
            }),
            None => user,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Claims, Secret, Verifier};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        Auth::new(Verifier::new(Some(&Secret::new(SECRET)), None, 0).unwrap())
    }

    fn token(sub: &str, docs: &[(&str, &str)], name: Option<&str>) -> String {
        let now = crate::auth::now_secs();
        crate::auth::mint_with(
            &Secret::new(SECRET),
            &Claims {
                sub: sub.into(),
                exp: now + 600,
                iat: Some(now),
                nbf: None,
                jti: None,
                name: name.map(Into::into),
                docs: Some(
                    docs.iter()
                        .map(|(p, r)| ((*p).to_owned(), (*r).to_owned()))
                        .collect(),
                ),
            },
        )
        .unwrap()
    }

    fn session(auth: &Auth, t: &str) -> Result<SessionAccess, Refused> {
        SessionAccess::new(auth.authenticate(Some(t)).unwrap(), "notes")
    }

    #[test]
    fn roles_gate_frames_and_refresh_changes_them_at_once() {
        let a = auth();
        let mut s = session(&a, &token("u", &[("notes", "write")], None)).unwrap();
        let op = ClientMessage::Op {
            rev: 0,
            seq: 7,
            op: collab_ot::Operation::insert(0, "x"),
        };
        let presence = ClientMessage::Presence {
            selection: None,
            user: None,
        };
        let auth = ClientMessage::Auth { token: "t".into() };
        assert!(s.permits(&op).is_ok() && s.permits(&presence).is_ok());
        let (role, _) = s.refresh(&a, &token("u", &[("*", "read")], None)).unwrap();
        assert_eq!(role, Role::Read);
        let refused = s.permits(&op).unwrap_err();
        assert_eq!((refused.code, refused.seq), (ErrorCode::Forbidden, Some(7)));
        assert_eq!(s.permits(&presence).unwrap_err().seq, None);
        assert!(s.permits(&auth).is_ok(), "a reader may still refresh");
        s.refresh(&a, &token("u", &[("notes", "admin")], None))
            .unwrap();
        assert_eq!(s.role(), Role::Admin);
    }

    #[test]
    fn bad_refreshes_end_the_session() {
        let a = auth();
        let mut s = session(&a, &token("u", &[("notes", "write")], None)).unwrap();
        let other = s
            .refresh(&a, &token("v", &[("notes", "write")], None))
            .unwrap_err();
        assert_eq!((other.code, other.close), (ErrorCode::Unauthorized, true));
        let bad = s.refresh(&a, "x.y.z").unwrap_err();
        assert_eq!((bad.code, bad.close), (ErrorCode::Unauthorized, true));
        let gone = s
            .refresh(&a, &token("u", &[("other", "write")], None))
            .unwrap_err();
        assert_eq!((gone.code, gone.close), (ErrorCode::Forbidden, true));
        assert_eq!(s.role(), Role::Write, "a refused refresh changes nothing");
    }

    #[test]
    fn ungranted_documents_are_refused() {
        let a = auth();
        let refused = session(&a, &token("u", &[("other", "admin")], None)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
    }

    #[test]
    fn names_come_from_the_token() {
        let a = auth();
        let mut s = session(&a, &token("u", &[("notes", "write")], Some("Ann"))).unwrap();
        let claimed = User {
            name: "Mallory".into(),
            color: "#0f0".into(),
        };
        assert_eq!(
            s.presence_user(Some(claimed)),
            Some(User {
                name: "Ann".into(),
                color: "#0f0".into()
            })
        );
        assert_eq!(s.presence_user(None).unwrap().color, "#0f0", "color kept");
        let mut open = SessionAccess::new(Access::Open, "notes").unwrap();
        assert_eq!(open.presence_user(None), None);
    }

    #[test]
    fn revocation_and_expiry_are_noticed() {
        let a = auth();
        let s = session(&a, &token("u", &[("notes", "write")], None)).unwrap();
        assert!(s.check_live(&a).is_ok());
        a.revocations().add([crate::store::Revocation::User {
            sub: "u".into(),
            before: i64::MAX,
        }]);
        let r = s.check_live(&a).unwrap_err();
        assert_eq!(
            (r.code, r.message.as_str()),
            (ErrorCode::Unauthorized, "token revoked")
        );
    }
}
