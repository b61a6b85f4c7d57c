//! The client's side of the protocol: the ot.js / ShareDB state machine.
//!
//! A client is *synchronized* (nothing unacknowledged), *awaiting* an ack for
//! one op in flight, or awaiting with a *buffer* of local edits composed into
//! one op. At most one op is in flight, so the server never has to transform a
//! client's op against the same client's earlier unacknowledged op.
//!
//! Like the rest of the crate it does no I/O: each method returns what to
//! send, and the caller sends it.

use ropey::Rope;

use crate::document::Committed;
use crate::op::{OpError, Operation};
use crate::transform::{compose, transform, Side};

/// What an op in a resume list turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// Our op in flight, committed before the connection dropped.
    Acked { seq: u64, rev: u64 },
    /// Someone else's op, as applied to the local content.
    Remote {
        rev: u64,
        op: Operation,
        client_id: Option<String>,
        seq: Option<u64>,
    },
}

/// An op to send to the server: `{"type":"op","rev":…,"seq":…,"op":…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingOp {
    pub rev: u64,
    pub seq: u64,
    pub op: Operation,
}

/// The server said something this client cannot fit into its state: the
/// caller should reconnect and resume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("ack for seq {seq}, but that op is not in flight")]
    UnexpectedAck { seq: u64 },
    #[error("expected revision {expected}, got {got}: an op is missing")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("a local edit does not fit the local document: {0}")]
    InvalidLocalEdit(OpError),
    #[error("a remote op does not fit the local document: {0}")]
    Diverged(OpError),
    #[error("cannot replace the content while local edits are unacknowledged")]
    PendingEdits,
}

#[derive(Debug, Clone)]
struct InFlight {
    seq: u64,
    op: Operation,
}

/// One replica of a document on the client side.
#[derive(Debug, Clone)]
pub struct Client {
    client_id: String,
    content: Rope,
    rev: u64,
    next_seq: u64,
    inflight: Option<InFlight>,
    buffer: Option<Operation>,
}

impl Client {
    /// A synchronized client holding `content` at revision `rev`.
    pub fn new(client_id: impl Into<String>, content: Rope, rev: u64) -> Self {
        Client {
            client_id: client_id.into(),
            content,
            rev,
            next_seq: 1,
            inflight: None,
            buffer: None,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The local content, with local edits already applied.
    pub fn content(&self) -> &Rope {
        &self.content
    }

    /// The last server revision this client has seen.
    pub fn rev(&self) -> u64 {
        self.rev
    }

    /// True while some local edit is not yet acknowledged.
    pub fn has_pending(&self) -> bool {
        self.inflight.is_some()
    }

    /// Seqs are positive and strictly increasing per client id; a client that
    /// keeps its id across restarts must start above every seq it used before.
    pub fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq.max(1);
    }

    /// Applies a local edit. Returns the op to send now, if nothing was in flight.
    pub fn local_edit(&mut self, op: Operation) -> Result<Option<OutgoingOp>, ClientError> {
        op.apply(&mut self.content)
            .map_err(ClientError::InvalidLocalEdit)?;
        if self.inflight.is_none() {
            return Ok(Some(self.send(op)));
        }
        self.buffer = Some(match self.buffer.take() {
            Some(buffer) => compose(&buffer, &op),
            None => op,
        });
        Ok(None)
    }

    /// The server committed our op in flight at `rev`. Returns the buffered
    /// edits to send next, if any.
    pub fn ack(&mut self, seq: u64, rev: u64) -> Result<Option<OutgoingOp>, ClientError> {
        let inflight = self.inflight.as_ref().map(|f| f.seq);
        if inflight != Some(seq) {
            // A resend that the server had already committed, answered again
            // after we learned of it from a resume list: nothing to do.
            let stale = seq < inflight.unwrap_or(self.next_seq) && rev <= self.rev;
            return if stale {
                Ok(None)
            } else {
                Err(ClientError::UnexpectedAck { seq })
            };
        }
        self.expect_next(rev)?;
        self.inflight = None;
        self.rev = rev;
        Ok(self.buffer.take().map(|op| self.send(op)))
    }

    /// Another client's op, committed at `rev`. Returns it as applied to the
    /// local content (transformed past our pending edits), for the editor.
    pub fn remote(&mut self, rev: u64, op: Operation) -> Result<Operation, ClientError> {
        self.expect_next(rev)?;
        let mut op = op;
        if let Some(inflight) = &mut self.inflight {
            let theirs = transform(&op, &inflight.op, Side::Right);
            inflight.op = transform(&inflight.op, &op, Side::Left);
            op = theirs;
        }
        if let Some(buffer) = &mut self.buffer {
            let theirs = transform(&op, buffer, Side::Right);
            *buffer = transform(buffer, &op, Side::Left);
            op = theirs;
        }
        op.apply(&mut self.content).map_err(ClientError::Diverged)?;
        self.rev = rev;
        Ok(op)
    }

    /// After a reconnect: takes the ops a resume `welcome` listed, recognising
    /// our own op in flight among them. Says what each newly seen op was.
    /// Then send [`Client::resend`], if any.
    pub fn resume<'a>(
        &mut self,
        ops: impl IntoIterator<Item = &'a Committed>,
    ) -> Result<Vec<Resumed>, ClientError> {
        let mut seen = Vec::new();
        for c in ops {
            if c.rev <= self.rev {
                continue;
            }
            let inflight = self.inflight.as_ref().map(|f| f.seq);
            match c.seq {
                Some(seq)
                    if Some(seq) == inflight
                        && c.client_id.as_deref() == Some(self.client_id.as_str()) =>
                {
                    // What comes out of the buffer is sent by `resend`.
                    self.ack(seq, c.rev)?;
                    seen.push(Resumed::Acked { seq, rev: c.rev });
                }
                _ => {
                    let op = self.remote(c.rev, c.op.clone())?;
                    seen.push(Resumed::Remote {
                        rev: c.rev,
                        op,
                        client_id: c.client_id.clone(),
                        seq: c.seq,
                    });
                }
            }
        }
        Ok(seen)
    }

    /// Forgets every unacknowledged local edit, after the server refused one
    /// for good. The local content still shows them: follow with
    /// [`Client::reset`] to the server's content.
    pub fn discard_pending(&mut self) {
        self.inflight = None;
        self.buffer = None;
    }

    /// The op in flight, rebased on the current revision, to send again after
    /// a reconnect. The server recognises it by `(client_id, seq)` if it had
    /// committed it already.
    pub fn resend(&self) -> Option<OutgoingOp> {
        self.inflight.as_ref().map(|f| OutgoingOp {
            rev: self.rev,
            seq: f.seq,
            op: f.op.clone(),
        })
    }

    /// Replaces the content after a full-content `welcome`. Only possible
    /// with nothing pending: a client with pending edits resumes with `since`.
    pub fn reset(&mut self, content: Rope, rev: u64) -> Result<(), ClientError> {
        if self.inflight.is_some() {
            return Err(ClientError::PendingEdits);
        }
        self.content = content;
        self.rev = rev;
        Ok(())
    }

    fn send(&mut self, op: Operation) -> OutgoingOp {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight = Some(InFlight {
            seq,
            op: op.clone(),
        });
        OutgoingOp {
            rev: self.rev,
            seq,
            op,
        }
    }

    fn expect_next(&self, rev: u64) -> Result<(), ClientError> {
        if rev != self.rev + 1 {
            return Err(ClientError::OutOfOrder {
                expected: self.rev + 1,
                got: rev,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Document, DocumentLimits, Submitted};

    fn op(json: &str) -> Operation {
        Operation::from_json(json).unwrap()
    }

    fn submit(doc: &mut Document, id: &str, out: &OutgoingOp) -> u64 {
        match doc
            .submit(Some(id), Some(out.seq), out.rev, out.op.clone())
            .unwrap()
        {
            Submitted::Applied(c) => c.rev,
            Submitted::Duplicate { rev } => rev,
        }
    }

    #[test]
    fn buffers_while_awaiting_and_converges() {
        let mut server = Document::new(Rope::from_str("ab"), 0, DocumentLimits::default());
        let mut a = Client::new("a", Rope::from_str("ab"), 0);
        let mut b = Client::new("b", Rope::from_str("ab"), 0);

        let a1 = a.local_edit(op(r#"["1"]"#)).unwrap().unwrap();
        assert_eq!(a.local_edit(op(r#"[1, "2"]"#)).unwrap(), None);
        let b1 = b.local_edit(op(r#"[2, "z"]"#)).unwrap().unwrap();

        let r1 = submit(&mut server, "a", &a1);
        let r2 = submit(&mut server, "b", &b1);
        // a learns of its first commit and sends its buffer, still based on r1.
        let a2 = a.ack(a1.seq, r1).unwrap().unwrap();
        assert_eq!(
            (a2.seq, a2.rev, a2.op.to_json()),
            (2, 1, r#"[1,"2"]"#.to_owned())
        );
        let r3 = submit(&mut server, "a", &a2);
        let from_server = |server: &Document, rev: u64| {
            server
                .ops_since(rev - 1)
                .unwrap()
                .next()
                .unwrap()
                .op
                .clone()
        };
        let applied = a.remote(r2, from_server(&server, r2)).unwrap();
        assert_eq!(applied.to_json(), r#"[4,"z"]"#);
        a.ack(a2.seq, r3).unwrap();
        b.remote(r1, from_server(&server, r1)).unwrap();
        b.ack(b1.seq, r2).unwrap();
        b.remote(r3, from_server(&server, r3)).unwrap();
        assert_eq!(server.content().to_string(), "12abz");
        assert_eq!(a.content(), server.content());
        assert_eq!(b.content(), server.content());
    }

    #[test]
    fn resume_recognises_own_op() {
        let mut server = Document::new(Rope::new(), 0, DocumentLimits::default());
        let mut a = Client::new("a", Rope::new(), 0);
        let out = a.local_edit(op(r#"["x"]"#)).unwrap().unwrap();
        a.local_edit(op(r#"[1, "y"]"#)).unwrap();
        submit(&mut server, "a", &out); // committed, but the ack was lost
        server
            .submit(Some("b"), Some(1), 1, op(r#"["b"]"#))
            .unwrap();

        let seen = a.resume(server.ops_since(0).unwrap()).unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], Resumed::Acked { seq: 1, rev: 1 });
        assert!(matches!(&seen[1], Resumed::Remote { rev: 2, .. }));
        let next = a.resend().unwrap();
        assert_eq!((next.seq, next.rev), (2, 2));
        let rev = submit(&mut server, "a", &next);
        a.ack(next.seq, rev).unwrap();
        assert_eq!(a.content(), server.content());
        assert_eq!(server.content().to_string(), "bxy");
        assert!(!a.has_pending());
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut a = Client::new("a", Rope::from_str("ab"), 3);
        assert!(matches!(
            a.local_edit(op(r#"[5, "x"]"#)),
            Err(ClientError::InvalidLocalEdit(_))
        ));
        assert_eq!(
            a.remote(5, op(r#"["x"]"#)),
            Err(ClientError::OutOfOrder {
                expected: 4,
                got: 5
            })
        );
        assert_eq!(a.ack(1, 4), Err(ClientError::UnexpectedAck { seq: 1 }));
        a.local_edit(op(r#"["p"]"#)).unwrap();
        a.ack(1, 4).unwrap();
        // The same ack again (a duplicate resend's answer) changes nothing.
        assert_eq!(a.ack(1, 4), Ok(None));
        assert_eq!(a.ack(1, 9), Err(ClientError::UnexpectedAck { seq: 1 }));
        assert_eq!(a.rev(), 4);
        a.local_edit(op(r#"["q"]"#)).unwrap();
        assert_eq!(a.reset(Rope::new(), 9), Err(ClientError::PendingEdits));
        a.discard_pending();
        assert_eq!(a.reset(Rope::from_str("new"), 9), Ok(()));
        assert_eq!((a.content().to_string(), a.rev()), ("new".to_owned(), 9));
    }
}
