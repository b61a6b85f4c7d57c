//! The parts of a room that exist only when several instances share the
//! documents: catching up from the op log, relaying other instances' ops and
//! presence, heartbeats, and forgetting the peers of silent instances.
//! Single-instance rooms never run any of it.

use std::time::Instant;

use collab_ot::protocol::ServerMessage;
use collab_ot::{Committed, Document, SubmitError};
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
                match replay_op(doc, o.rev, o.op, o.client_id, o.seq) {
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
                    match replay_op(doc, o.rev, o.op, o.client_id, o.seq) {
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
                ..
            } => {
                let peer = doc.set_presence(&client_id, selection, Some(user));
                let frame = frame(&ServerMessage::Presence {
                    client_id: peer.client_id.clone(),
                    selection: peer.selection,
                    user: peer.user.clone(),
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
pub(super) fn replay_op(
    doc: &mut Document,
    rev: u64,
    op: collab_ot::Operation,
    client_id: Option<String>,
    seq: Option<u64>,
) -> Result<Frame, SubmitError> {
    let frame = frame(&ServerMessage::Op {
        rev,
        op: op.clone(),
        client_id: client_id.clone(),
        seq,
    });
    doc.replay(Committed {
        rev,
        op,
        client_id,
        seq,
    })?;
    Ok(frame)
}
