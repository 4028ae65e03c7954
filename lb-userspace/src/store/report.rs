//! What each node publishes about itself (`nodes/<node>`), and what
//! `lbctl cluster status` concludes from all of them: which nodes are
//! current, and whether nodes at one revision disagree.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A node's report, as it writes it to the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// lbd's version.
    pub version: String,
    /// The desired state's revision the node's maps hold.
    pub applied_revision: i64,
    /// A later revision the node refused, and why (it keeps the applied one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Per VIP (`ADDR[:PORT]/PROTO`): the live table's checksum (`None`:
    /// no backend in it).
    pub tables: BTreeMap<String, Option<String>>,
    /// The node's health view: the backends its table has down, as `VIP
    /// BACKEND`.
    pub down: BTreeSet<String>,
    /// What its own checks see down (its votes under quorum; the same as
    /// `down` when it decides alone).
    #[serde(default)]
    pub observed_down: BTreeSet<String>,
    /// How it decides health: `local`, `quorum (N nodes)`, or `local
    /// (fallback: ...)`.
    #[serde(default)]
    pub health: String,
    /// The addresses it announces now.
    pub announced: BTreeSet<String>,
    pub drained: bool,
}

/// One node's line in `lbctl cluster status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLine {
    pub report: NodeReport,
    /// Applied the desired state's latest revision.
    pub current: bool,
    /// Disagreements with the other nodes at its revision, for people.
    pub drift: Vec<String>,
}

/// What the reports say together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The desired state's latest revision.
    pub revision: i64,
    pub nodes: Vec<NodeLine>,
    /// True when nodes at one revision with one health view build
    /// different tables: that is a bug, never an expected state.
    pub bug: bool,
    /// Members with no live report: cut off from the store, stopped, or
    /// gone for good (`lbctl cluster forget`).
    #[serde(default)]
    pub missing: Vec<String>,
}

/// Compares every node with the others at its revision. Different tables
/// are expected while health views differ (each node decides health
/// itself); with the same view they must be the same, and a difference is
/// flagged as a bug.
pub fn analyse(revision: i64, reports: Vec<NodeReport>, members: &[String]) -> ClusterView {
    let missing = members
        .iter()
        .filter(|m| !reports.iter().any(|r| &r.node == *m))
        .cloned()
        .collect();
    let mut bug = false;
    let nodes = reports
        .iter()
        .map(|r| {
            let mut drift = Vec::new();
            for other in reports
                .iter()
                .filter(|o| o.node != r.node && o.applied_revision == r.applied_revision)
            {
                let differing: Vec<&str> = r
                    .tables
                    .iter()
                    .filter(|(vip, sum)| other.tables.get(*vip).is_some_and(|o| o != *sum))
                    .map(|(vip, _)| vip.as_str())
                    .collect();
                if differing.is_empty() && r.tables.keys().eq(other.tables.keys()) {
                    continue;
                }
                let what = if differing.is_empty() {
                    "holds other VIPs".to_string()
                } else {
                    format!("has other tables for {}", differing.join(", "))
                };
                if r.down == other.down {
                    bug = true;
                    drift.push(format!(
                        "BUG: same revision and health view as {}, but {what}",
                        other.node
                    ));
                } else {
                    drift.push(format!(
                        "{what} than {} (their health views differ)",
                        other.node
                    ));
                }
            }
            NodeLine {
                report: r.clone(),
                current: r.applied_revision == revision,
                drift,
            }
        })
        .collect();
    ClusterView {
        revision,
        nodes,
        bug,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, rev: i64, tables: &[(&str, &str)], down: &[&str]) -> NodeReport {
        NodeReport {
            node: node.into(),
            applied_revision: rev,
            tables: tables
                .iter()
                .map(|(v, s)| (v.to_string(), Some(s.to_string())))
                .collect(),
            down: down.iter().map(|d| d.to_string()).collect(),
            ..NodeReport::default()
        }
    }

    #[test]
    fn agreeing_nodes_show_no_drift() {
        let v = analyse(
            7,
            vec![
                report("a", 7, &[("10.0.0.1:80/tcp", "ab")], &[]),
                report("b", 7, &[("10.0.0.1:80/tcp", "ab")], &[]),
                report("c", 6, &[("10.0.0.1:80/tcp", "cd")], &[]),
            ],
            &["a".into(), "b".into(), "c".into(), "d".into()],
        );
        assert_eq!(v.missing, ["d"], "a member without a report");
        let current: Vec<bool> = v.nodes.iter().map(|n| n.current).collect();
        assert_eq!(current, [true, true, false]);
        assert!(v.nodes.iter().all(|n| n.drift.is_empty()), "{v:?}");
        assert!(!v.bug);
    }

    #[test]
    fn same_revision_and_view_with_other_tables_is_a_bug() {
        let v = analyse(
            7,
            vec![
                report("a", 7, &[("10.0.0.1:80/tcp", "ab")], &[]),
                report("b", 7, &[("10.0.0.1:80/tcp", "ff")], &[]),
            ],
            &[],
        );
        assert!(v.bug);
        assert!(v.nodes[0].drift[0].starts_with("BUG"), "{v:?}");
    }

    #[test]
    fn other_tables_from_other_health_views_are_explained_not_flagged() {
        let v = analyse(
            7,
            vec![
                report(
                    "a",
                    7,
                    &[("10.0.0.1:80/tcp", "ab")],
                    &["10.0.0.1:80/tcp 10.1.0.2"],
                ),
                report("b", 7, &[("10.0.0.1:80/tcp", "ff")], &[]),
            ],
            &[],
        );
        assert!(!v.bug);
        assert!(v.nodes[1].drift[0].contains("health views differ"), "{v:?}");
    }
}
