//! The parts of a room that exist only when several instances share the
//! documents: catching up from the op log, relaying other instances' ops and
//! presence, heartbeats, and forgetting the peers of silent instances.
//! Single-instance rooms never run any of it.

use std::time::Instant;

use collab_ot::protocol::ServerMessage;
use collab_ot::{
    compose, transform, transform_range, Committed, Document, Operation, Peer, Side, SubmitError,
};
use tracing::warn;

use super::{frame, Frame, Room};
use crate::cluster::{ClusterLink, ClusterMessage};

impl Room {
    /// Reads the ops other instances committed since our revision from the
    /// log, applies them and sends them to our sessions. Must run with
    /// nothing staged.
    pub(super) async fn catch_up(&mut self) {
        let Some(doc) = self.doc.as_mut() else {
            return;
        };
        let mut frames = Vec::new();
        let mut failed = None;
        loop {
            let ops = match self.shared.store.ops_since(&self.id, doc.rev(), 1000).await {
                Ok(ops) => ops,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            };
            if ops.is_empty() {
                break;
            }
            for o in ops {
                match replay_op(doc, o.into()) {
                    Ok(frame) => frames.push(frame),
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            if failed.is_some() {
                break;
            }
        }
        if let Some(why) = failed {
            // Start again from the log on the next command.
            warn!(why, "could not catch up; reloading");
            self.doc = None;
            self.checkpoint = None;
        } else {
            self.checkpoint = self.doc.clone();
        }
        for frame in &frames {
            self.broadcast(frame, None);
        }
    }

    pub(super) async fn catch_up_if_clustered(&mut self) {
        if self.shared.cluster.is_some() {
            self.catch_up().await;
        }
    }

    /// News from another instance.
    pub(super) async fn remote(&mut self, message: ClusterMessage) {
        let Some(doc) = self.doc.as_mut() else {
            return;
        };
        match message {
            ClusterMessage::Ops { ops, .. } => {
                let mut frames = Vec::new();
                let mut gap = false;
                for o in ops {
                    if o.rev <= doc.rev() {
                        continue;
                    }
                    if o.rev > doc.rev() + 1 {
                        gap = true;
                        break;
                    }
                    match replay_op(doc, o.into()) {
                        Ok(frame) => frames.push(frame),
                        Err(_) => {
                            gap = true;
                            break;
                        }
                    }
                }
                self.checkpoint = self.doc.clone();
                for frame in &frames {
                    self.broadcast(frame, None);
                }
                if gap {
                    self.catch_up().await;
                }
            }
            ClusterMessage::Presence {
                client_id,
                selection,
                user,
                user_id,
                ..
            } => {
                let peer = doc.set_presence(&client_id, selection, Some(user), user_id.as_deref());
                let frame = frame(&ServerMessage::Presence {
                    client_id: peer.client_id.clone(),
                    selection: peer.selection,
                    user: peer.user.clone(),
                    user_id: peer.user_id.clone(),
                });
                self.remote_peers.insert(client_id, Instant::now());
                self.broadcast(&frame, None);
            }
            ClusterMessage::Leave { client_id, .. } => {
                self.remote_peers.remove(&client_id);
                self.forget_peer(&client_id);
            }
            ClusterMessage::Deleted { .. } => {}
        }
    }

    /// A quiet moment in a cluster: catch up from the log, send heartbeats
    /// for our peers, and forget the peers of instances that went silent.
    pub(super) async fn tick(&mut self) {
        let Some(cluster) = self.shared.cluster.clone() else {
            return;
        };
        self.flush().await;
        self.catch_up().await;
        let ttl = cluster.presence_ttl();
        if self.last_heartbeat.elapsed() >= ttl / 3 {
            self.last_heartbeat = Instant::now();
            self.heartbeat(&cluster);
        }
        let silent: Vec<String> = self
            .remote_peers
            .iter()
            .filter(|(_, seen)| seen.elapsed() > ttl)
            .map(|(client, _)| client.clone())
            .collect();
        for client in silent {
            self.remote_peers.remove(&client);
            self.forget_peer(&client);
        }
    }

    /// Re-announces the presence of the peers connected here.
    pub(super) fn heartbeat(&self, cluster: &ClusterLink) {
        let Some(doc) = &self.doc else { return };
        for peer in doc.peers() {
            if self
                .sessions
                .values()
                .any(|s| s.client_id == peer.client_id)
            {
                cluster.announce(&self.id, peer);
            }
        }
    }

    /// Removes a peer that is not connected here and tells our sessions.
    pub(super) fn forget_peer(&mut self, client_id: &str) {
        if self.sessions.values().any(|s| s.client_id == client_id) {
            return;
        }
        let left = self.doc.as_mut().and_then(|d| d.remove_peer(client_id));
        if left.is_some() {
            let frame = frame(&ServerMessage::Leave {
                client_id: client_id.to_owned(),
            });
            self.broadcast(&frame, None);
        }
    }
}

/// Applies an op another instance committed, and the frame that tells our
/// sessions about it.
pub(super) fn replay_op(doc: &mut Document, committed: Committed) -> Result<Frame, SubmitError> {
    let frame = frame(&ServerMessage::Op {
        rev: committed.rev,
        op: committed.op.clone(),
        client_id: committed.client_id.clone(),
        seq: committed.seq,
        author: committed.author.clone(),
    });
    doc.replay(committed)?;
    Ok(frame)
}

/// Our peers' selections after a rebase. They counted positions in the
/// document with our batch applied; the rebased document has the other
/// instances' ops (`theirs`) before our batch. Moving the selections through
/// `theirs` transformed past `ours` lands them next to the same characters
/// (TP1), where the state we rebased from would have put them back where
/// they were before our batch.
pub(super) fn rebase_peers(
    peers: Vec<Peer>,
    ours: &[Operation],
    theirs: &[Operation],
) -> Vec<Peer> {
    let all = |ops: &[Operation]| ops.iter().fold(Operation::new(), |a, op| compose(&a, op));
    // Ours went in as if submitted after theirs (left); theirs is the right.
    let theirs = transform(&all(theirs), &all(ours), Side::Right);
    peers
        .into_iter()
        .map(|mut peer| {
            peer.selection = peer.selection.map(|s| transform_range(s, &theirs));
            peer
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(json: &str) -> Operation {
        Operation::from_json(json).expect("op")
    }

    fn apply(text: &str, ops: &[Operation]) -> String {
        ops.iter()
            .fold(text.to_owned(), |t, o| o.apply_str(&t).expect("apply"))
    }

    #[test]
    fn peers_keep_their_characters_through_a_rebase() {
        // Base "abc". Our batch typed "X" at 0, then "Z" at the end: in
        // "XabcZ" a peer's caret sat between "c" and "Z" (4), another's
        // selection covered "ab" (1..3).
        let ours = [op(r#"["X"]"#), op(r#"[4, "Z"]"#)];
        assert_eq!(apply("abc", &ours), "XabcZ");
        // Meanwhile another instance wrote "YY" inside "ab" and deleted "c".
        let theirs = [op(r#"[1, "YY"]"#), op(r#"[4, {"d": 1}]"#)];
        assert_eq!(apply("abc", &theirs), "aYYb");
        // The rebased document: theirs, then ours moved past them.
        let all = |ops: &[Operation]| ops.iter().fold(Operation::new(), |a, o| compose(&a, o));
        let rebased = transform(&all(&ours), &all(&theirs), Side::Left);
        assert_eq!(apply("aYYb", &[rebased]), "XaYYbZ");

        let peer = |id: &str, selection| Peer {
            client_id: id.into(),
            selection: Some(selection),
            user: serde_json::Value::Null,
            user_id: None,
        };
        let moved = rebase_peers(
            vec![peer("caret", [4, 4]), peer("range", [1, 3])],
            &ours,
            &theirs,
        );
        // The caret's "c" is gone: it sits after "b", still before "Z".
        assert_eq!(moved[0].selection, Some([5, 5]));
        // The selection covers what "ab" became: "aYYb".
        assert_eq!(moved[1].selection, Some([1, 5]));
    }
}
