//! Every NATS name the cluster uses, derived from the cluster's name so two clusters can share
//! one NATS server: `<name>_nodes` (membership KV), `<name>_tasks` (task KV) and
//! `<name>_artifacts` (artifact Object Store).

/// The buckets of one cluster.
#[derive(Clone, Debug)]
pub struct ClusterNames {
    pub cluster_name: String,
    /// KV: node id → its latest heartbeat (JSON); entries expire after three heartbeats.
    pub nodes_bucket: String,
    /// KV: task key → the task's record (JSON), written with compare-and-swap.
    pub tasks_bucket: String,
    /// Object Store: lowercase sha256 hex → artifact bytes.
    pub artifacts_bucket: String,
    /// Stream (work-queue retention): accepted async executions on `<name>.work.<task key>`.
    pub work_stream: String,
    /// KV: execution key → the execution's state, changed only by compare-and-swap.
    pub executions_bucket: String,
}

impl ClusterNames {
    pub fn new(cluster_name: &str) -> ClusterNames {
        ClusterNames {
            cluster_name: cluster_name.to_owned(),
            nodes_bucket: format!("{cluster_name}_nodes"),
            tasks_bucket: format!("{cluster_name}_tasks"),
            artifacts_bucket: format!("{cluster_name}_artifacts"),
            work_stream: format!("{cluster_name}_work"),
            executions_bucket: format!("{cluster_name}_executions"),
        }
    }
}

/// The task bucket's key for a task name. Task names may hold `:` (and dots in places) that
/// NATS keys refuse, so the key is the name in hex; the value carries the name itself.
pub fn task_key(task_name: &str) -> String {
    let mut key = String::with_capacity(2 + task_name.len() * 2);
    key.push_str("t_");
    for byte in task_name.as_bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// The membership bucket's key for a node id (`:` becomes `_3a`, like a hex escape, since node
/// ids follow the id rules: letters, digits, `.`, `_`, `:`, `-`).
pub fn node_key(node_id: &str) -> String {
    let mut key = String::from("n_");
    for byte in node_id.as_bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_nats_keys_and_distinct() {
        let names = ["echo", "a:b", "a.b", "a..b.", "x-y_z", "A"];
        let keys: Vec<String> = names.iter().map(|name| task_key(name)).collect();
        for key in &keys {
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{key}"
            );
        }
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_ne!(node_key("n1"), task_key("n1"));
    }

    #[test]
    fn bucket_names_carry_the_cluster_name() {
        let names = ClusterNames::new("blue");
        assert_eq!(names.nodes_bucket, "blue_nodes");
        assert_eq!(names.tasks_bucket, "blue_tasks");
        assert_eq!(names.artifacts_bucket, "blue_artifacts");
    }
}
