//! Spilling sync and stream calls to a peer with capacity, over gRPC to the peer's advertised
//! address.
//!
//! Why gRPC and not NATS request-reply: a forwarded call carries up to `max_request_bytes`
//! (8 MiB by default) in and the output cap out, where NATS' default max payload is 1 MB; gRPC
//! streams a stream call's chunks as they come, carries the deadline (`grpc-timeout`), and
//! cancels the peer's execution when the caller goes away (the HTTP/2 stream is reset, the
//! peer's handler is dropped, and a sync caller that goes away cancels its execution) — all
//! without a protocol of our own. Connections to peers are kept and reused (one HTTP/2 channel
//! per peer address).
//!
//! Choosing a peer: among routable peers (fresh heartbeat, not draining) that have the task
//! ready and a free run slot and either an idle instance or room to start one, two are drawn at
//! random and the better comes first — an idle warm instance beats a cold start, then more free
//! slots (power of two choices: no herd on the one best-looking node, whose heartbeat is up to a
//! second old). A peer answers RESOURCE_EXHAUSTED at once when it cannot grant the call now (a
//! forwarded call is never queued there); UNAVAILABLE means it could not be reached. Either way
//! the next candidate is tried, at most two in all; then the call runs here, queueing as usual.
//! A forwarded call carries `x-spearlet-forwarded-from`, so it never travels a second hop.
//!
//! Identity: the caller's bearer token travels as `authorization`, so the peer authorizes the
//! call by its own rules, exactly as if the caller had called it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::seq::SliceRandom;
use spearlet_core::SpearResult;
use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use spearlet_server::cluster_link::{
    ExecutionResultStream, FORWARDED_FROM_METADATA_KEY, Forwarding, LOCAL_RECORD_METADATA_KEY,
};
use spearlet_server::errors::from_status;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::membership::{Heartbeat, Membership};

/// Candidates tried per call before it runs (and maybe queues) locally.
pub const MAX_CANDIDATES: usize = 2;

/// How long connecting to a peer may take before the next candidate is tried.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Forwarder {
    node_id: String,
    membership: Arc<Membership>,
    peer_tls: Option<ClientTlsConfig>,
    max_message_bytes: usize,
    /// Advertised address → its channel.
    channels: Mutex<HashMap<String, Channel>>,
}

/// Why a candidate did not take the call.
enum Refusal {
    /// Try the next candidate.
    TryNext,
    /// The peer's answer stands (bad input, not allowed, …): the caller gets it.
    Final(tonic::Status),
}

impl Forwarder {
    pub fn new(
        node_id: String,
        membership: Arc<Membership>,
        peer_tls: Option<ClientTlsConfig>,
        max_message_bytes: usize,
    ) -> Forwarder {
        Forwarder {
            node_id,
            membership,
            peer_tls,
            max_message_bytes,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Up to [`MAX_CANDIDATES`] peers to try for the task, best first (see the module
    /// documentation).
    pub fn candidates(&self, task_id: &str) -> Vec<Heartbeat> {
        let mut eligible: Vec<Heartbeat> = self
            .membership
            .routable_peers()
            .into_iter()
            .filter(|peer| {
                peer.free_slots > 0
                    && peer
                        .task(task_id)
                        .is_some_and(|task| task.could_take_a_call())
            })
            .collect();
        eligible.shuffle(&mut rand::rng());
        eligible.truncate(MAX_CANDIDATES);
        eligible.sort_by_key(|peer| {
            let idle = peer.task(task_id).map_or(0, |task| task.idle_instances);
            (idle == 0, std::cmp::Reverse(peer.free_slots))
        });
        eligible
    }

    fn client(&self, address: &str) -> SpearResult<FunctionServiceClient<Channel>> {
        let channel = {
            let mut channels = self.channels.lock();
            match channels.get(address) {
                Some(channel) => channel.clone(),
                None => {
                    let mut endpoint = Endpoint::from_shared(address.to_owned())
                        .map_err(|error| {
                            spearlet_core::SpearError::unavailable(format!(
                                "peer address {address:?}: {error}"
                            ))
                        })?
                        .connect_timeout(PEER_CONNECT_TIMEOUT)
                        .tcp_nodelay(true);
                    if let Some(tls) = &self.peer_tls
                        && address.starts_with("https://")
                    {
                        endpoint = endpoint.tls_config(tls.clone()).map_err(|error| {
                            spearlet_core::SpearError::invalid_argument(format!(
                                "cluster.peer_ca_file: {error}"
                            ))
                        })?;
                    }
                    let channel = endpoint.connect_lazy();
                    channels.insert(address.to_owned(), channel.clone());
                    channel
                }
            }
        };
        Ok(FunctionServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    fn request(
        &self,
        message: &proto::InvokeFunctionRequest,
        forwarding: &Forwarding,
    ) -> tonic::Request<proto::InvokeFunctionRequest> {
        let mut request = tonic::Request::new(message.clone());
        let metadata = request.metadata_mut();
        if let Ok(value) = self.node_id.parse() {
            metadata.insert(FORWARDED_FROM_METADATA_KEY, value);
        }
        if let Some(authorization) = &forwarding.authorization
            && let Ok(value) = authorization.parse()
        {
            metadata.insert("authorization", value);
        }
        if let Some(traceparent) = &forwarding.traceparent
            && let Ok(value) = traceparent.parse()
        {
            metadata.insert("traceparent", value);
        }
        if let Some(deadline) = forwarding.deadline {
            request.set_timeout(deadline);
        }
        request
    }

    /// Runs a sync call on a peer; `None` when no candidate took it.
    pub async fn invoke(
        &self,
        message: proto::InvokeFunctionRequest,
        forwarding: Forwarding,
    ) -> Option<SpearResult<proto::InvokeFunctionResponse>> {
        self.first_peer_to_take(&message, &forwarding, |mut client, request| async move {
            client
                .invoke_function(request)
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    /// Runs a stream call on a peer, relaying its messages; `None` when no candidate took it.
    pub async fn stream(
        &self,
        message: proto::InvokeFunctionRequest,
        forwarding: Forwarding,
    ) -> Option<SpearResult<ExecutionResultStream>> {
        self.first_peer_to_take(&message, &forwarding, |mut client, request| async move {
            client
                .stream_function(request)
                .await
                .map(|response| Box::pin(response.into_inner()) as ExecutionResultStream)
        })
        .await
    }

    /// Offers the call to each candidate in turn with `offer`, until one takes it or refuses
    /// for good (see [`Forwarder::judge`]).
    async fn first_peer_to_take<T, Offer, Offered>(
        &self,
        message: &proto::InvokeFunctionRequest,
        forwarding: &Forwarding,
        offer: Offer,
    ) -> Option<SpearResult<T>>
    where
        Offer: Fn(
            FunctionServiceClient<Channel>,
            tonic::Request<proto::InvokeFunctionRequest>,
        ) -> Offered,
        Offered: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        for peer in self.candidates(&forwarding.task_id) {
            let client = match self.client(&peer.advertise_addr) {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(peer = %peer.node_id, "{}", error.message);
                    continue;
                }
            };
            match offer(client, self.request(message, forwarding)).await {
                Ok(answer) => return Some(Ok(answer)),
                Err(status) => match self.judge(&peer, status) {
                    Refusal::TryNext => continue,
                    Refusal::Final(status) => return Some(Err(from_status(&status))),
                },
            }
        }
        None
    }

    /// The output of the owner's own record of an execution (its attempt `attempt`), asked with
    /// the caller's `authorization`; `None` if the owner cannot be asked or has another attempt.
    pub async fn owner_output(
        &self,
        address: &str,
        execution_id: &str,
        attempt: u32,
        authorization: Option<String>,
    ) -> Option<bytes::Bytes> {
        let mut client = self.client(address).ok()?;
        let mut request = tonic::Request::new(proto::GetExecutionStatusRequest {
            execution_id: execution_id.to_owned(),
            include_result: true,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert(LOCAL_RECORD_METADATA_KEY, "true".parse().ok()?);
        if let Some(authorization) = authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.parse().ok()?);
        }
        request.set_timeout(Duration::from_secs(10));
        let result = client
            .get_execution_status(request)
            .await
            .ok()?
            .into_inner()
            .result?;
        if result.metrics.get("attempt") != Some(&attempt.to_string()) {
            return None;
        }
        Some(bytes::Bytes::from(result.output?.data))
    }

    /// RESOURCE_EXHAUSTED (the peer is busy) and UNAVAILABLE (unreachable, or gone) send the
    /// call to the next candidate; anything else is the peer's answer to the caller.
    fn judge(&self, peer: &Heartbeat, status: tonic::Status) -> Refusal {
        match status.code() {
            Code::ResourceExhausted | Code::Unavailable => {
                tracing::debug!(
                    peer = %peer.node_id,
                    code = ?status.code(),
                    "forwarded call refused: {}",
                    status.message()
                );
                Refusal::TryNext
            }
            _ => Refusal::Final(status),
        }
    }
}
