//! Binding the gRPC and HTTP listeners and serving until shutdown, with graceful drain.
//!
//! gRPC serves `spearlet.FunctionService`, `grpc.health.v1.Health` (fed from the node's real
//! health every second) and server reflection, behind the authentication layer. HTTP serves the
//! JSON gateway (`gateway`), `/metrics` and the probes. Both take the same TLS material when
//! configured, and both limit the requests one connection may have in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spearlet_core::{SpearError, SpearResult};
use spearlet_proto::function_service_server::FunctionServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::auth::GrpcAuthenticationLayer;
use crate::cluster_link::ClusterLink;
use crate::config::ClusterConfig;
use crate::connection_io::TcpStreamWithoutVectoredWrites;
use crate::errors::OversizedRequestStatusLayer;
use crate::node::Node;
use crate::service::FunctionServiceHandler;
use crate::tls::ServerTls;

/// Headroom above the output cap for the rest of a response message.
const RESPONSE_HEADROOM_BYTES: usize = 1024 * 1024;

/// How often `grpc.health.v1.Health` is brought up to date with the node's health.
const HEALTH_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The service name `grpc.health.v1.Health` reports FunctionService under.
pub const FUNCTION_SERVICE_NAME: &str = "spearlet.FunctionService";

/// A node serving gRPC and HTTP. Drop or call [`RunningServer::shutdown`] to stop it.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Whether both listeners speak TLS (`https://` addresses).
    pub tls: bool,
    pub node: Arc<Node>,
    stop_accepting: CancellationToken,
    grpc_task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    http_task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets running calls finish for up to the grace period, cancels the rest.
    pub async fn shutdown(mut self) -> SpearResult<()> {
        self.shutdown_inner().await
    }

    /// Waits until the server stops by itself (it only does so on error).
    pub async fn wait(mut self) -> SpearResult<()> {
        let Some(task) = self.grpc_task.take() else {
            return Ok(());
        };
        task.await
            .map_err(|error| SpearError::internal(format!("server task failed: {error}")))?
            .map_err(|error| SpearError::internal(format!("gRPC server failed: {error}")))
    }

    async fn shutdown_inner(&mut self) -> SpearResult<()> {
        // Out of the cluster's routing first, so peers stop sending work while this drains.
        if let Some(cluster) = &self.node.cluster {
            cluster.leave().await;
        }
        self.stop_accepting.cancel();
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
        if let Some(task) = self.grpc_task.take() {
            let _ = tokio::time::timeout(grace, task).await;
        }
        if let Some(task) = self.http_task.take() {
            let _ = tokio::time::timeout(grace, task).await;
        }
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_accepting.cancel();
    }
}

/// What a cluster link is built from (see [`serve_in_cluster`]).
pub struct ClusterJoin {
    pub config: ClusterConfig,
    /// The node's data directory (created if missing); the generated node id is kept there.
    pub data_dir: std::path::PathBuf,
    /// The bound gRPC address as a URL, the advertised address when none is configured.
    pub grpc_url: String,
    /// Requests up to this size must be forwardable to peers.
    pub max_request_bytes: usize,
}

/// Connects a node to its cluster (the binary passes `spearlet-cluster`'s join).
pub type ClusterConnector = Box<
    dyn FnOnce(
            ClusterJoin,
        ) -> futures::future::BoxFuture<'static, SpearResult<Arc<dyn ClusterLink>>>
        + Send,
>;

/// Builds the node from `config`, binds both addresses and serves in the background.
pub async fn serve(config: crate::NodeConfig) -> SpearResult<RunningServer> {
    serve_in_cluster(config, None).await
}

/// As [`serve`]; with `[cluster] nats_url` set, `connector` joins the cluster before the node is
/// built (so registrations reach it) and the link starts once both listeners serve.
pub async fn serve_in_cluster(
    config: crate::NodeConfig,
    connector: Option<ClusterConnector>,
) -> SpearResult<RunningServer> {
    config.validate()?;
    let tls = config.tls.as_ref().map(ServerTls::load).transpose()?;
    let grpc_listener = bind("grpc_addr", config.grpc_addr).await?;
    let http_listener = bind("http_addr", config.http_addr).await?;
    let grpc_addr = local_addr(&grpc_listener)?;
    let http_addr = local_addr(&http_listener)?;
    let cluster = match (config.cluster.is_enabled(), connector) {
        (false, _) => None,
        (true, None) => {
            return Err(SpearError::invalid_argument(
                "config: cluster.nats_url is set but this program was built without cluster \
                 support",
            ));
        }
        (true, Some(connector)) => {
            let scheme = if tls.is_some() { "https" } else { "http" };
            Some(
                connector(ClusterJoin {
                    config: config.cluster.clone(),
                    data_dir: config.data_dir.clone(),
                    grpc_url: format!("{scheme}://{grpc_addr}"),
                    max_request_bytes: config.max_request_bytes,
                })
                .await?,
            )
        }
    };
    let node = Node::build_in_cluster(config, cluster.clone()).await?;
    let stop_accepting = CancellationToken::new();
    let grpc_task = serve_grpc(&node, grpc_listener, tls.as_ref(), stop_accepting.clone())?;
    let http_task = tokio::spawn(crate::gateway::serve_http(
        node.clone(),
        http_listener,
        tls.map(|tls| tls.http_config),
        stop_accepting.clone(),
    ));
    let scheme = if node.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if let Some(cluster) = &cluster {
        cluster.start(Arc::downgrade(&node)).await?;
    }
    tracing::info!(
        %grpc_addr,
        %http_addr,
        scheme,
        auth = node.access.is_enabled(),
        data_dir = %node.config.data_dir.display(),
        "spearlet serving"
    );
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        tls: node.config.tls.is_some(),
        node,
        stop_accepting,
        grpc_task: Some(grpc_task),
        http_task: Some(http_task),
    })
}

async fn bind(key: &str, address: SocketAddr) -> SpearResult<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|error| SpearError::unavailable(format!("binding {key} {address}: {error}")))
}

fn local_addr(listener: &TcpListener) -> SpearResult<SocketAddr> {
    listener
        .local_addr()
        .map_err(|error| SpearError::internal(format!("reading the bound address: {error}")))
}

fn serve_grpc(
    node: &Arc<Node>,
    listener: TcpListener,
    tls: Option<&ServerTls>,
    stop_accepting: CancellationToken,
) -> SpearResult<JoinHandle<Result<(), tonic::transport::Error>>> {
    let max_request_bytes = node.config.max_request_bytes;
    let max_response_bytes = usize::try_from(node.config.task_defaults.max_output_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(RESPONSE_HEADROOM_BYTES)
        .max(max_request_bytes);
    let function_service = FunctionServiceServer::new(FunctionServiceHandler::new(node.clone()))
        .max_decoding_message_size(max_request_bytes)
        .max_encoding_message_size(max_response_bytes);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(
        node.clone(),
        health_reporter,
        stop_accepting.clone(),
    ));
    // Both reflection versions: grpcurl before 1.9 and many other tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(spearlet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_service = reflection()
        .build_v1()
        .map_err(|error| SpearError::internal(format!("building reflection: {error}")))?;
    let reflection_service_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|error| SpearError::internal(format!("building reflection: {error}")))?;
    // Nagle's algorithm would hold each response's trailing frames until the client's delayed
    // ACK (about 40 ms). `Server::tcp_nodelay` does not apply to a caller-provided incoming
    // stream, so the accepted sockets get it here.
    // Each accepted stream hides its vectored writes from h2, so a small response and its
    // trailers leave in one write (see `connection_io`).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(TcpStreamWithoutVectoredWrites));
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(node.config.max_requests_per_connection);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&tls.certificate_pem, &tls.key_pem),
            ))
            .map_err(|error| SpearError::invalid_argument(format!("tls: {error}")))?;
    }
    let router = builder
        .layer(OversizedRequestStatusLayer { max_request_bytes })
        .layer(GrpcAuthenticationLayer {
            policy: node.access.clone(),
        })
        .add_service(function_service)
        .add_service(health_service)
        .add_service(reflection_service)
        .add_service(reflection_service_v1alpha);
    Ok(tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, stop_accepting.cancelled_owned())
            .await
    }))
}

/// Keeps `grpc.health.v1.Health` true: FunctionService (and the whole server, service "")
/// is SERVING while the node takes work (healthy or degraded) and NOT_SERVING once it shuts down.
async fn report_health(
    node: Arc<Node>,
    reporter: tonic_health::server::HealthReporter,
    stop_accepting: CancellationToken,
) {
    let mut interval = tokio::time::interval(HEALTH_REFRESH_INTERVAL);
    let mut last = None;
    loop {
        let serving = tokio::select! {
            _ = interval.tick() => crate::stats::is_ready(&node),
            () = stop_accepting.cancelled() => false,
        };
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter
                .set_service_status(FUNCTION_SERVICE_NAME, status)
                .await;
            reporter.set_service_status("", status).await;
            last = Some(serving);
        }
        if stop_accepting.is_cancelled() {
            return;
        }
    }
}
