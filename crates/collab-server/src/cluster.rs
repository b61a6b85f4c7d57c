//! Several `collab` instances serving the same documents (the broadcaster
//! between rooms of different processes).
//!
//! PostgreSQL decides the order of ops: a room's write names the revision it
//! expects, and the loser of a race catches up from the log and transforms
//! again (see `rooms::room`). Redis only *carries* news between instances:
//! committed ops, presence and deletions, on one channel per document. A
//! message Redis drops costs nothing but time: rooms that see a gap, every
//! room when the subscription comes back, and every open room once a second
//! read what they missed from the op log.

use std::time::Duration;

use collab_ot::Operation;
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::domain::DocumentId;
use crate::store::Revocation;

/// News from one instance to the others about one document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterMessage {
    /// Ops committed by `from`, in revision order.
    Ops {
        from: String,
        ops: Vec<ClusterOp>,
    },
    /// A peer connected to `from` moved its selection (also sent as a
    /// heartbeat, so peers of a dead instance expire).
    Presence {
        from: String,
        client_id: String,
        selection: Option<[usize; 2]>,
        user: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    Leave {
        from: String,
        client_id: String,
    },
    Deleted {
        from: String,
    },
}

impl ClusterMessage {
    pub fn from(&self) -> &str {
        match self {
            ClusterMessage::Ops { from, .. }
            | ClusterMessage::Presence { from, .. }
            | ClusterMessage::Leave { from, .. }
            | ClusterMessage::Deleted { from } => from,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterOp {
    pub rev: u64,
    pub op: Operation,
    pub client_id: Option<String>,
    pub seq: Option<u64>,
    #[serde(default)]
    pub author: Option<String>,
}

impl From<ClusterOp> for collab_ot::Committed {
    fn from(o: ClusterOp) -> Self {
        Self {
            rev: o.rev,
            op: o.op,
            client_id: o.client_id,
            seq: o.seq,
            author: o.author,
        }
    }
}

/// How rooms publish. Never blocks: when Redis is slow or down, messages
/// are dropped and the other instances catch up from the op log.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    instance: String,
    prefix: String,
    tx: mpsc::Sender<Job>,
    presence_ttl: Duration,
    client: redis::Client,
}

/// Work for the publisher task.
#[derive(Debug)]
enum Job {
    Publish {
        channel: String,
        payload: String,
    },
    /// Presence is also kept in a hash per document, so a room that opens
    /// later learns who is already there (heartbeats refresh `at`).
    SetPresence {
        key: String,
        client_id: String,
        value: String,
        /// The whole hash expires when nobody refreshes it (dead instances).
        expire_secs: i64,
    },
    ClearPresence {
        key: String,
        client_id: String,
    },
}

/// A peer as kept in the presence hash.
#[derive(Debug, Serialize, Deserialize)]
struct StoredPresence {
    selection: Option<[usize; 2]>,
    user: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    /// Unix milliseconds of the last announcement.
    at: u64,
}

/// A peer connected to another instance.
pub struct RemotePeer {
    pub client_id: String,
    pub selection: Option<[usize; 2]>,
    pub user: serde_json::Value,
    pub user_id: Option<String>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Messages waiting for Redis before new ones are dropped.
const PUBLISH_QUEUE: usize = 4096;

impl ClusterLink {
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn presence_ttl(&self) -> Duration {
        self.presence_ttl
    }

    pub fn publish(&self, doc: &DocumentId, message: &ClusterMessage) {
        let Ok(payload) = serde_json::to_string(message) else {
            return;
        };
        match message {
            ClusterMessage::Presence {
                client_id,
                selection,
                user,
                user_id,
                ..
            } => {
                let stored = StoredPresence {
                    selection: *selection,
                    user: user.clone(),
                    user_id: user_id.clone(),
                    at: unix_ms(),
                };
                if let Ok(value) = serde_json::to_string(&stored) {
                    self.send(Job::SetPresence {
                        key: self.presence_key(doc),
                        client_id: client_id.clone(),
                        value,
                        expire_secs: (self.presence_ttl.as_secs() as i64 * 4).max(4),
                    });
                }
            }
            ClusterMessage::Leave { client_id, .. } => self.send(Job::ClearPresence {
                key: self.presence_key(doc),
                client_id: client_id.clone(),
            }),
            _ => {}
        }
        let channel = format!("{}:doc:{}", self.prefix, doc);
        self.send(Job::Publish { channel, payload });
    }

    /// Tells the other instances about a revocation, so their connections
    /// using the token close at once (the table poll is the fallback).
    pub fn publish_revocation(&self, revocation: &Revocation) {
        if let Ok(payload) = serde_json::to_string(revocation) {
            let channel = auth_channel(&self.prefix);
            self.send(Job::Publish { channel, payload });
        }
    }

    /// Tells the other instances where a peer connected here is.
    pub fn announce(&self, doc: &DocumentId, peer: &collab_ot::Peer) {
        let message = ClusterMessage::Presence {
            from: self.instance.clone(),
            client_id: peer.client_id.clone(),
            selection: peer.selection,
            user: peer.user.clone(),
            user_id: peer.user_id.clone(),
        };
        self.publish(doc, &message);
    }

    fn send(&self, job: Job) {
        if self.tx.try_send(job).is_err() {
            debug!("cluster publish queue full; peers will catch up from the log");
        }
    }

    fn presence_key(&self, doc: &DocumentId) -> String {
        format!("{}:presence:{}", self.prefix, doc)
    }

    /// The peers other instances announced within the presence TTL.
    pub async fn peers(&self, doc: &DocumentId) -> Vec<RemotePeer> {
        let Ok(mut conn) = self.client.get_multiplexed_async_connection().await else {
            return Vec::new();
        };
        let all: std::collections::HashMap<String, String> =
            match conn.hgetall(self.presence_key(doc)).await {
                Ok(all) => all,
                Err(_) => return Vec::new(),
            };
        let fresh_after = unix_ms().saturating_sub(self.presence_ttl.as_millis() as u64);
        all.into_iter()
            .filter_map(|(client_id, value)| {
                let p: StoredPresence = serde_json::from_str(&value).ok()?;
                (p.at >= fresh_after).then_some(RemotePeer {
                    client_id,
                    selection: p.selection,
                    user: p.user,
                    user_id: p.user_id,
                })
            })
            .collect()
    }
}

/// Connects to Redis and starts the publisher; call [`subscribe`] once the
/// rooms exist.
pub async fn connect(
    url: &str,
    prefix: &str,
    instance: &str,
    presence_ttl: Duration,
) -> redis::RedisResult<(ClusterLink, redis::Client)> {
    let client = redis::Client::open(url)?;
    // Fail fast at start when Redis is unreachable or the URL is wrong.
    let mut probe = client.get_multiplexed_async_connection().await?;
    let _: String = redis::cmd("PING").query_async(&mut probe).await?;
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    tokio::spawn(publisher(client.clone(), rx));
    let link = ClusterLink {
        instance: instance.to_owned(),
        prefix: prefix.to_owned(),
        tx,
        presence_ttl,
        client: client.clone(),
    };
    Ok((link, client))
}

async fn publisher(client: redis::Client, mut rx: mpsc::Receiver<Job>) {
    let mut conn = None;
    while let Some(job) = rx.recv().await {
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        let Some(c) = conn.as_mut() else {
            // Down: this message is lost; the subscribers' catch-up covers it.
            continue;
        };
        let done: redis::RedisResult<()> = match job {
            Job::Publish { channel, payload } => c.publish(&channel, &payload).await,
            Job::SetPresence {
                key,
                client_id,
                value,
                expire_secs,
            } => {
                let set: redis::RedisResult<()> = c.hset(&key, &client_id, &value).await;
                match set {
                    Ok(()) => c.expire(&key, expire_secs).await,
                    Err(e) => Err(e),
                }
            }
            Job::ClearPresence { key, client_id } => c.hdel(&key, &client_id).await,
        };
        if let Err(e) = done {
            debug!(error = %e, "Redis write failed; reconnecting");
            conn = None;
        }
    }
}

fn auth_channel(prefix: &str) -> String {
    format!("{prefix}:auth")
}

/// Where news from the other instances goes. The rooms and the revocation
/// set implement it, so this module depends on neither.
pub trait Inbound: Send + Sync + 'static {
    /// A message about document `doc` from another instance.
    fn deliver(&self, doc: &DocumentId, message: ClusterMessage);
    /// The subscription is (again) live: messages sent while it was not
    /// are lost, so whatever they said must be read from the database.
    fn resubscribed(&self);
    /// Another instance revoked a token or a user.
    fn revoked(&self, revocation: Revocation);
}

/// Listens to every document's channel and to the revocation channel, and
/// hands what arrives to `inbound`.
pub fn subscribe(client: redis::Client, prefix: String, instance: String, inbound: impl Inbound) {
    tokio::spawn(async move {
        let pattern = format!("{prefix}:doc:*");
        let channel_prefix = format!("{prefix}:doc:");
        let auth = auth_channel(&prefix);
        let mut delay = Duration::from_millis(100);
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    let subscribed = match pubsub.psubscribe(&pattern).await {
                        Ok(()) => pubsub.subscribe(&auth).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = subscribed {
                        warn!(error = %e, "could not subscribe to Redis");
                    } else {
                        info!(%pattern, "subscribed to cluster news");
                        delay = Duration::from_millis(100);
                        // Whatever happened while we were away is in the log.
                        inbound.resubscribed();
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            if msg.get_channel_name() == auth {
                                match msg
                                    .get_payload::<String>()
                                    .map(|p| serde_json::from_str::<Revocation>(&p))
                                {
                                    Ok(Ok(r)) => inbound.revoked(r),
                                    _ => debug!("unreadable revocation message"),
                                }
                                continue;
                            }
                            let Some(doc) = msg
                                .get_channel_name()
                                .strip_prefix(&channel_prefix)
                                .and_then(DocumentId::parse)
                            else {
                                continue;
                            };
                            let Ok(payload) = msg.get_payload::<String>() else {
                                continue;
                            };
                            match serde_json::from_str::<ClusterMessage>(&payload) {
                                Ok(m) if m.from() != instance => inbound.deliver(&doc, m),
                                Ok(_) => {}
                                Err(e) => debug!(error = %e, "unreadable cluster message"),
                            }
                        }
                        warn!("lost the Redis subscription; reconnecting");
                    }
                }
                Err(e) => warn!(error = %e, "cannot reach Redis; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = ClusterMessage::Ops {
            from: "a".into(),
            ops: vec![ClusterOp {
                rev: 3,
                op: Operation::insert(1, "x"),
                client_id: Some("c".into()),
                seq: Some(2),
                author: Some("alice".into()),
            }],
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ClusterMessage>(&json).unwrap(), m);
        assert_eq!(m.from(), "a");
    }
}
