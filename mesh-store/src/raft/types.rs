//! What is replicated: the type configuration, the [`Command`] a writer proposes, and the
//! [`CommandOutcome`] the state machine answers with.
//!
//! A command carries everything its outcome depends on but the state it applies to: the time
//! stamped on the resource comes from the proposer (`time`), and the version and revision from
//! the state, so every node that applies the same log ends with the same bytes.

use chrono::{DateTime, Utc};
use mesh_api::{Resource, ResourceKey, ResourceType};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sled_store::WriteOp;
use crate::{ChangeKind, StoreError};

/// A node's id in the Raft cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Meridian's openraft type configuration: [`Command`] in, [`CommandOutcome`] out, nodes
    /// addressed by `host:port` of their peer listener, snapshots as bytes (JSON).
    pub TypeConfig:
        D = Command,
        R = CommandOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Vec<u8>,
);

/// A resource write, as proposed to the leader and applied by every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The creation/modification time the write stamps (the proposer's clock, read once).
    pub time: DateTime<Utc>,
    pub op: CommandOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum CommandOp {
    /// `resource`: the universal form.
    Create { resource: Value },
    /// Applies only when the stored version is `version`.
    Update { version: u64, resource: Value },
    Delete {
        key: WireKey,
        expected_version: Option<u64>,
    },
}

/// A resource key on the wire: the type by its registry name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireKey {
    #[serde(rename = "type")]
    pub rtype: String,
    pub mesh: Option<String>,
    pub name: String,
}

impl From<&ResourceKey> for WireKey {
    fn from(key: &ResourceKey) -> WireKey {
        WireKey {
            rtype: key.rtype.name().to_owned(),
            mesh: key.mesh.clone(),
            name: key.name.clone(),
        }
    }
}

impl WireKey {
    fn to_key(&self) -> Result<ResourceKey, CommandRejection> {
        let rtype =
            ResourceType::from_name(&self.rtype).ok_or_else(|| CommandRejection::Undecodable {
                reason: format!("unknown resource type {:?}", self.rtype),
            })?;
        Ok(ResourceKey::new(
            rtype,
            self.mesh.as_deref(),
            self.name.clone(),
        ))
    }
}

/// What applying one log entry produced, returned to the writer by `client_write`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum CommandOutcome {
    /// The write took revision `revision`; `resource` is the stored universal form.
    Applied {
        revision: u64,
        kind: WireKind,
        version: u64,
        resource: Value,
    },
    /// The write was refused; it is a committed no-op (no revision taken).
    Rejected { rejection: CommandRejection },
    /// A blank or membership entry.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireKind {
    Created,
    Updated,
    Deleted,
}

impl From<ChangeKind> for WireKind {
    fn from(kind: ChangeKind) -> WireKind {
        match kind {
            ChangeKind::Created => WireKind::Created,
            ChangeKind::Updated => WireKind::Updated,
            ChangeKind::Deleted => WireKind::Deleted,
        }
    }
}

/// Why a committed command changed nothing: the typed errors of [`StoreError`] a write can fail
/// with, in a form that crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "refusal")]
pub enum CommandRejection {
    NotFound {
        key: WireKey,
    },
    AlreadyExists {
        key: WireKey,
    },
    Conflict {
        key: WireKey,
        expected: u64,
        actual: u64,
    },
    InvalidKey {
        key: WireKey,
        reason: String,
    },
    /// The command could not be read (a resource that does not parse, an unknown type): a
    /// node of another version wrote it.
    Undecodable {
        reason: String,
    },
}

impl CommandRejection {
    /// The rejection a store error stands for, or `None` for an error that is not a refusal
    /// (I/O, corruption), which must stop the state machine instead.
    pub(crate) fn from_store_error(e: &StoreError) -> Option<CommandRejection> {
        Some(match e {
            StoreError::NotFound(key) => CommandRejection::NotFound { key: key.into() },
            StoreError::AlreadyExists(key) => CommandRejection::AlreadyExists { key: key.into() },
            StoreError::Conflict {
                key,
                expected,
                actual,
            } => CommandRejection::Conflict {
                key: key.into(),
                expected: *expected,
                actual: *actual,
            },
            StoreError::InvalidKey { key, reason } => CommandRejection::InvalidKey {
                key: key.into(),
                reason: reason.clone(),
            },
            _ => return None,
        })
    }

    /// The error the writer sees; `index` is the log index of the command.
    pub fn into_store_error(self, index: u64) -> StoreError {
        let key = |k: WireKey| match k.to_key() {
            Ok(key) => Ok(key),
            Err(_) => Err(StoreError::Corrupt {
                key: format!("raft log entry {index}"),
                reason: format!("unknown resource type {:?}", k.rtype),
            }),
        };
        let result = match self {
            CommandRejection::NotFound { key: k } => key(k).map(StoreError::NotFound),
            CommandRejection::AlreadyExists { key: k } => key(k).map(StoreError::AlreadyExists),
            CommandRejection::Conflict {
                key: k,
                expected,
                actual,
            } => key(k).map(|key| StoreError::Conflict {
                key,
                expected,
                actual,
            }),
            CommandRejection::InvalidKey { key: k, reason } => {
                key(k).map(|key| StoreError::InvalidKey { key, reason })
            }
            CommandRejection::Undecodable { reason } => Ok(StoreError::Corrupt {
                key: format!("raft log entry {index}"),
                reason,
            }),
        };
        result.unwrap_or_else(|e| e)
    }
}

impl Command {
    pub fn create(resource: &Resource, time: DateTime<Utc>) -> Command {
        Command {
            time,
            op: CommandOp::Create {
                resource: mesh_api::to_universal(resource),
            },
        }
    }

    pub fn update(resource: &Resource, time: DateTime<Utc>) -> Command {
        Command {
            time,
            op: CommandOp::Update {
                version: resource.meta.version,
                resource: mesh_api::to_universal(resource),
            },
        }
    }

    pub fn delete(
        key: &ResourceKey,
        expected_version: Option<u64>,
        time: DateTime<Utc>,
    ) -> Command {
        Command {
            time,
            op: CommandOp::Delete {
                key: key.into(),
                expected_version,
            },
        }
    }

    /// The store write this command is, or why it cannot be one.
    pub(crate) fn to_write(&self) -> Result<WriteOp, CommandRejection> {
        let parse = |value: &Value| {
            mesh_api::parse_resource(value.clone())
                .map(|parsed| parsed.resource)
                .map_err(|e| CommandRejection::Undecodable {
                    reason: format!("the resource does not parse: {e}"),
                })
        };
        Ok(match &self.op {
            CommandOp::Create { resource } => WriteOp::Create(parse(resource)?),
            CommandOp::Update { version, resource } => {
                let mut resource = parse(resource)?;
                resource.meta.version = *version;
                WriteOp::Update(resource)
            }
            CommandOp::Delete {
                key,
                expected_version,
            } => WriteOp::Delete(key.to_key()?, *expected_version),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_round_trip_to_the_store_errors_they_stand_for() {
        let key = ResourceKey::new(ResourceType::MeshTimeout, Some("default"), "a");
        for error in [
            StoreError::NotFound(key.clone()),
            StoreError::AlreadyExists(key.clone()),
            StoreError::Conflict {
                key: key.clone(),
                expected: 1,
                actual: 2,
            },
        ] {
            let rejection = CommandRejection::from_store_error(&error).expect("a refusal");
            let json = serde_json::to_string(&rejection).expect("encode");
            let back: CommandRejection = serde_json::from_str(&json).expect("decode");
            assert_eq!(back.into_store_error(7).to_string(), error.to_string());
        }
        assert!(CommandRejection::from_store_error(&StoreError::Io("disk".into())).is_none());
    }

    #[test]
    fn an_unknown_type_is_undecodable_not_a_panic() {
        let command = Command {
            time: Utc::now(),
            op: CommandOp::Delete {
                key: WireKey {
                    rtype: "NoSuchType".into(),
                    mesh: None,
                    name: "x".into(),
                },
                expected_version: None,
            },
        };
        assert!(matches!(
            command.to_write(),
            Err(CommandRejection::Undecodable { .. })
        ));
    }
}
