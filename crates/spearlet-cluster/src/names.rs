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

/// A bucket key: `prefix` and the text in hex. Task names, node ids and execution ids may hold
/// `:` (and dots in places) that NATS keys refuse; the values carry the text itself.
fn hex_key(prefix: &str, text: &str) -> String {
    format!("{prefix}{}", hex::encode(text))
}

/// The task bucket's key for a task name.
pub fn task_key(task_name: &str) -> String {
    hex_key("t_", task_name)
}

/// The membership bucket's key for a node id.
pub fn node_key(node_id: &str) -> String {
    hex_key("n_", node_id)
}

/// The execution bucket's key for an execution id.
pub fn execution_key(execution_id: &str) -> String {
    hex_key("e_", execution_id)
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
