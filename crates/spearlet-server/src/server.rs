//! Binding the gRPC listener and serving until shutdown, with graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spearlet_core::{SpearError, SpearResult};
use spearlet_proto::function_service_server::FunctionServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::errors::OversizedRequestStatusLayer;
use crate::node::Node;
use crate::service::FunctionServiceHandler;

/// Headroom above the output cap for the rest of a response message.
const RESPONSE_HEADROOM_BYTES: usize = 1024 * 1024;

/// A node serving gRPC. Drop or call [`RunningServer::shutdown`] to stop it.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub node: Arc<Node>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl RunningServer {
    /// Stops accepting, lets running calls finish for up to the grace period, cancels the rest.
    pub async fn shutdown(mut self) -> SpearResult<()> {
        self.shutdown_inner().await
    }

    /// Waits until the server stops by itself (it only does so on error).
    pub async fn wait(mut self) -> SpearResult<()> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        task.await
            .map_err(|error| SpearError::internal(format!("server task failed: {error}")))?
            .map_err(|error| SpearError::internal(format!("gRPC server failed: {error}")))
    }

    async fn shutdown_inner(&mut self) -> SpearResult<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let grace = Duration::from_millis(self.node.config.shutdown_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        self.node.manager.begin_shutdown();
        while (self.node.manager.running_count() > 0 || self.node.manager.queued_count() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.node
            .manager
            .shut_down("the node is shutting down")
            .await;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(grace, task).await;
        }
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Builds the node from `config`, binds the gRPC address and serves in the background.
pub async fn serve(config: crate::NodeConfig) -> SpearResult<RunningServer> {
    let grpc_addr = config.grpc_addr;
    let listener = TcpListener::bind(grpc_addr).await.map_err(|error| {
        SpearError::unavailable(format!("binding grpc_addr {grpc_addr}: {error}"))
    })?;
    let grpc_addr = listener
        .local_addr()
        .map_err(|error| SpearError::internal(format!("reading the bound address: {error}")))?;
    let node = Node::build(config).await?;
    let max_request_bytes = node.config.max_request_bytes;
    let max_response_bytes = usize::try_from(node.config.task_defaults.max_output_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(RESPONSE_HEADROOM_BYTES)
        .max(max_request_bytes);
    let service = FunctionServiceServer::new(FunctionServiceHandler::new(node.clone()))
        .max_decoding_message_size(max_request_bytes)
        .max_encoding_message_size(max_response_bytes);
    let (shutdown_sender, shutdown_receiver) = oneshot::channel::<()>();
    // Nagle's algorithm would hold each response's trailing frames until the client's delayed
    // ACK (about 40 ms). `Server::tcp_nodelay` does not apply to a caller-provided incoming
    // stream, so the accepted sockets get it here.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = tonic::transport::Server::builder()
        .layer(OversizedRequestStatusLayer { max_request_bytes })
        .add_service(service);
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_receiver.await;
            })
            .await
    });
    tracing::info!(%grpc_addr, data_dir = %node.config.data_dir.display(), "spearlet serving gRPC");
    Ok(RunningServer {
        grpc_addr,
        node,
        shutdown: Some(shutdown_sender),
        task: Some(task),
    })
}
