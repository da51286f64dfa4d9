//! `meshctl global members list|add|remove`: the global's Raft membership over its REST API
//! (`/global/members`, docs/raft.md). Any node takes the calls; the leader does the change.
//! `meshctl global backup|restore`: a consistent backup of the replicated state
//! (`GET /global/backup`), and seeding a new node's data dir from one (`global-cp restore`).

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;

use crate::client::ApiClient;
use crate::OutputFormat;

/// A node's view of the cluster, as `GET /global/members` answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub node_id: u64,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    #[serde(default)]
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
}

impl ClusterView {
    /// Parses an answer of `/global/members`; `what` names the request in errors.
    pub fn from_value(value: &Value, what: &str) -> anyhow::Result<ClusterView> {
        serde_json::from_value(value.clone())
            .with_context(|| format!("unexpected answer to {what}: not a cluster view"))
    }

    /// The members as a table: ID, ADDRESS, SUFFRAGE (voter or learner), LEADER (`*`).
    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .members
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    if m.voter { "voter" } else { "learner" }.to_owned(),
                    if self.leader_id == Some(m.id) {
                        "*"
                    } else {
                        ""
                    }
                    .to_owned(),
                ]
            })
            .collect();
        crate::output::align(&["ID", "ADDRESS", "SUFFRAGE", "LEADER"], &rows)
    }

    /// One line about the node asked: `node 2 (follower), term 3, leader 1`.
    pub fn summary(&self) -> String {
        let leader = match self.leader_id {
            Some(id) => format!("leader {id}"),
            None => "no leader (an election is under way, or a quorum is unreachable)".to_owned(),
        };
        format!(
            "asked node {} ({}), term {}, {leader}",
            self.node_id, self.role, self.term
        )
    }
}

/// `meshctl global members [list]`.
pub async fn list(client: &ApiClient, output: OutputFormat) -> anyhow::Result<()> {
    let value = client
        .global_members()
        .await
        .with_context(|| format!("cannot list the members of the global at {}", client.base()))?;
    match output {
        OutputFormat::Json => print!("{}", crate::output::to_json(&value)),
        OutputFormat::Yaml => print!("{}", crate::output::to_yaml(&value)),
        OutputFormat::Table => {
            let view = ClusterView::from_value(&value, "GET /global/members")?;
            print!("{}", view.table());
            println!("{}", view.summary());
        }
    }
    Ok(())
}

/// `meshctl global members add --id N --address host:port`.
pub async fn add(client: &ApiClient, id: u64, address: &str) -> anyhow::Result<()> {
    let value = client
        .add_global_member(id, address)
        .await
        .with_context(|| {
            format!(
                "cannot add node {id} ({address}) to the global at {}",
                client.base()
            )
        })?;
    let view = ClusterView::from_value(&value, "POST /global/members")?;
    println!("added node {id} ({address})");
    print!("{}", view.table());
    Ok(())
}

/// `meshctl global members remove --id N`: refused here when `id` is not a member (the cluster
/// would take it as a change that changes nothing).
pub async fn remove(client: &ApiClient, id: u64) -> anyhow::Result<()> {
    let what = || {
        format!(
            "cannot remove node {id} from the global at {}",
            client.base()
        )
    };
    let value = client.global_members().await.with_context(what)?;
    let view = ClusterView::from_value(&value, "GET /global/members")?;
    if !view.members.iter().any(|m| m.id == id) {
        let ids: Vec<String> = view.members.iter().map(|m| m.id.to_string()).collect();
        anyhow::bail!(
            "{}: node {id} is not a member (members: {})",
            what(),
            ids.join(", ")
        );
    }
    let value = client.remove_global_member(id).await.with_context(what)?;
    let view = ClusterView::from_value(&value, "DELETE /global/members")?;
    println!("removed node {id}");
    print!("{}", view.table());
    Ok(())
}

/// `meshctl global backup --output FILE`: the backup is checked to be JSON before it is written
/// (atomically: a temporary file, then a rename), readable by its owner only: it holds the
/// meshes' CA keys and the token signing keys.
pub async fn backup(client: &ApiClient, output: &std::path::Path) -> anyhow::Result<()> {
    let text = client
        .global_backup()
        .await
        .with_context(|| format!("cannot back up the global at {}", client.base()))?;
    let parsed: Value = serde_json::from_str(&text)
        .with_context(|| format!("the backup from {} is not JSON", client.base()))?;
    let count = parsed["resources"].as_array().map_or(0, Vec::len);
    if output == std::path::Path::new("-") {
        println!("{text}");
        return Ok(());
    }
    crate::fsutil::write_atomic(output, text.as_bytes(), Some(0o600))?;
    println!(
        "backup of {count} resources (revision {}) written to {}",
        parsed["revision"],
        output.display()
    );
    Ok(())
}

/// `meshctl global restore --input FILE --data-dir DIR`: runs `global-cp restore` (found next
/// to meshctl or on PATH), which does the work offline.
pub fn restore(
    input: &std::path::Path,
    data_dir: &std::path::Path,
    node_id: u64,
    peer_address: &str,
) -> anyhow::Result<()> {
    let own_exe = std::env::current_exe().ok();
    let path = std::env::var_os("PATH");
    let global = crate::up::locate_binary("global-cp", own_exe.as_deref(), path.as_ref())?;
    let status = std::process::Command::new(&global)
        .arg("restore")
        .arg("--input")
        .arg(input)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--node-id", &node_id.to_string()])
        .args(["--peer-address", peer_address])
        .status()
        .with_context(|| format!("cannot run {}", global.display()))?;
    if !status.success() {
        anyhow::bail!("{} restore failed ({status})", global.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cluster_view_reads_and_prints() {
        let value = json!({
            "nodeId": 2, "role": "follower", "term": 3, "leaderId": 1,
            "leaderAddr": "127.0.0.1:1", "lastAppliedIndex": 9,
            "members": [
                {"id": 1, "addr": "127.0.0.1:1", "voter": true},
                {"id": 4, "addr": "127.0.0.1:4", "voter": false}
            ]
        });
        let view = ClusterView::from_value(&value, "GET").unwrap();
        let table = view.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID   ADDRESS"), "{table}");
        assert!(
            lines[1].contains("voter") && lines[1].ends_with('*'),
            "{table}"
        );
        assert!(lines[2].contains("learner"), "{table}");
        assert_eq!(view.summary(), "asked node 2 (follower), term 3, leader 1");
        let leaderless = ClusterView {
            leader_id: None,
            ..view
        };
        assert!(leaderless.summary().contains("no leader"));
        assert!(
            ClusterView::from_value(&json!({"x": 1}), "GET /global/members")
                .unwrap_err()
                .to_string()
                .contains("GET /global/members")
        );
    }
}
