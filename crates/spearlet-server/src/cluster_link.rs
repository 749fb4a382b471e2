//! The seam between the node and cluster mode: what the node asks of a cluster, implemented by
//! `spearlet-cluster` over NATS JetStream. The node never names NATS; a node without a cluster
//! holds no `ClusterLink` and none of this runs.
//!
//! The registry's part (publishing and withdrawing tasks) is `registry::ClusterTaskCatalog`,
//! which this trait extends, so the registry does not depend on the rest of the node.
//!
//! Invariants: a sync or stream call reaches the link only when the local dispatcher cannot
//! grant it now (a node with spare capacity pays one dispatcher check); async calls, and status,
//! wait and cancel of executions, go through the link in cluster mode (the cluster holds their
//! state). The link never calls back into the node while the node waits on it, except through
//! the `Weak<Node>` handed to `start`.

use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use spearlet_core::{ExecutionRecord, SpearResult};
use spearlet_proto as proto;

use crate::manager::{CancelResult, ExecutionRequest};
use crate::node::Node;
use crate::registry::ClusterTaskCatalog;

/// Metadata key marking a call a peer forwarded here: it runs only if it can be granted now
/// (never queued behind local work) and is never forwarded again (at most one hop). Sending it
/// can only restrict what happens to a call, so it needs no secret.
pub const FORWARDED_FROM_METADATA_KEY: &str = "x-spearlet-forwarded-from";

/// Metadata key asking GetExecutionStatus for this node's own record of an execution rather
/// than the cluster's state: how a node fetches an output larger than the cluster keeps from
/// the node that ran it. It only narrows what is read, so it needs no secret.
pub const LOCAL_RECORD_METADATA_KEY: &str = "x-spearlet-local-record";

/// A stream of `StreamFunction` messages, local or relayed from a peer.
pub type ExecutionResultStream =
    Pin<Box<dyn Stream<Item = Result<proto::StreamExecutionResult, tonic::Status>> + Send>>;

/// What travels with a call forwarded to a peer.
#[derive(Clone, Debug)]
pub struct Forwarding {
    /// The cluster-wide task id the call resolved to here.
    pub task_id: String,
    /// The caller's `authorization` header value, for the peer's own checks.
    pub authorization: Option<String>,
    pub traceparent: Option<String>,
    /// What is left of the caller's deadline.
    pub deadline: Option<Duration>,
}

/// Cluster mode as the node sees it.
pub trait ClusterLink: ClusterTaskCatalog {
    /// This node's id in the cluster.
    fn node_id(&self) -> &str;

    /// Starts the heartbeat and the task watcher once the node is built; returns when the
    /// node holds every task the cluster has (as far as they could be loaded).
    fn start(&self, node: Weak<Node>) -> BoxFuture<'_, SpearResult<()>>;

    /// Runs a sync call on a peer with capacity. `None`: no peer could take it now (run it
    /// here, queueing as usual).
    fn forward_invoke(
        &self,
        request: proto::InvokeFunctionRequest,
        forwarding: Forwarding,
    ) -> BoxFuture<'_, Option<SpearResult<proto::InvokeFunctionResponse>>>;

    /// Runs a stream call on a peer with capacity, relaying its messages; `None` as for
    /// `forward_invoke`.
    fn forward_stream(
        &self,
        request: proto::InvokeFunctionRequest,
        forwarding: Forwarding,
    ) -> BoxFuture<'_, Option<SpearResult<ExecutionResultStream>>>;

    /// Accepts an async call into the cluster's durable work queue (any node with the task
    /// ready and free capacity runs it); returns the execution as accepted, or the existing
    /// one for a repeated client execution id (ALREADY_EXISTS if it names other work).
    fn submit_async<'a>(
        &'a self,
        request: &'a ExecutionRequest,
    ) -> BoxFuture<'a, SpearResult<ExecutionRecord>>;

    /// A cluster execution as the cluster holds it (from any node, also while the node that
    /// ran it is down); `None` if the cluster has no such execution. An output longer than the
    /// cluster keeps is completed from the record of the node that ran it, when that node is up
    /// (asked with the caller's `authorization`).
    fn execution(
        &self,
        execution_id: String,
        authorization: Option<String>,
    ) -> BoxFuture<'_, SpearResult<Option<ExecutionRecord>>>;

    /// Waits up to `budget` for a cluster execution to end; its state then.
    fn wait_execution(
        &self,
        execution_id: String,
        budget: Duration,
    ) -> BoxFuture<'_, SpearResult<Option<ExecutionRecord>>>;

    /// Cancels a cluster execution wherever it is: a pending one never runs, a running one is
    /// stopped by its node. `None` if the cluster has no such execution.
    fn cancel_execution(
        &self,
        execution_id: String,
        reason: String,
    ) -> BoxFuture<'_, SpearResult<Option<CancelResult>>>;

    /// The cluster section of GetHealth and GetStats.
    fn status(&self) -> proto::ClusterStatus;

    /// Graceful leave: heartbeat `draining`, then remove this node's entry.
    fn leave(&self) -> BoxFuture<'_, ()>;
}
