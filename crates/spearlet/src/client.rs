//! The client commands: each one turns its arguments into one request to
//! `spearlet.FunctionService` (or a few, for pagination), and prints the answer with `output`.
//!
//! Exit codes: 0 when the node did what was asked, 1 when it refused (a gRPC error, an unknown
//! id, a cancellation that did not happen) or when the function itself failed. Errors travel up
//! as `anyhow::Error`s and `main` prints them as `error: …` on stderr.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::cli::{
    ExecutionCancelArguments, ExecutionCommand, ExecutionGetArguments, ExecutionListArguments,
    InvokeArguments, StatsArguments, TASK_SETTING_PREFIX, TaskCommand, TaskCreateArguments,
    TaskDeleteArguments, TaskGetArguments, TaskListArguments,
};
use crate::output::{self, Table, or_dash, render_key_values};

/// A connection to the node that sends the bearer token (if any) with every request.
pub type NodeChannel = InterceptedService<Channel, BearerToken>;
pub type NodeClient = FunctionServiceClient<NodeChannel>;

/// How to reach a node: its address (`http://`, `https://` or `host:port`), the bearer token it
/// may require, and the CA that signed its certificate for `https://`.
#[derive(Clone, Debug, Default)]
pub struct NodeConnection {
    pub address: String,
    pub token: Option<String>,
    pub tls_ca_file: Option<std::path::PathBuf>,
}

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl NodeConnection {
    /// A plaintext connection without a token (the bench's in-process baseline).
    pub fn plain(address: impl Into<String>) -> NodeConnection {
        NodeConnection {
            address: address.into(),
            ..NodeConnection::default()
        }
    }

    /// The endpoint with the settings every client connection of this binary uses, and TLS for
    /// `https://` addresses.
    pub fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let address = normalize_node_address(&self.address);
        let mut endpoint = Endpoint::from_shared(address.clone())
            .with_context(|| format!("{address:?} is not a valid node address"))?
            .tcp_nodelay(true);
        if address.starts_with("https://") {
            let tls = match &self.tls_ca_file {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .with_context(|| format!("reading --tls-ca {}", path.display()))?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .context("configuring TLS for the node address")?;
        } else if self.tls_ca_file.is_some() {
            bail!("--tls-ca is given but the address {address} is not https://");
        }
        Ok(endpoint)
    }

    pub fn bearer_token(&self) -> anyhow::Result<BearerToken> {
        let value = match &self.token {
            None => None,
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| anyhow!("--token must be printable ASCII"))?,
            ),
        };
        Ok(BearerToken(value))
    }

    pub async fn channel(&self) -> anyhow::Result<NodeChannel> {
        let channel = self.endpoint()?.connect().await.with_context(|| {
            format!(
                "cannot connect to {}",
                normalize_node_address(&self.address)
            )
        })?;
        Ok(InterceptedService::new(channel, self.bearer_token()?))
    }
}

/// The largest answer the client accepts. Outputs are capped by the node
/// (`task_defaults.max_output_bytes`); this only has to be larger than any sensible cap.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Error messages in the execution table are cut to this many characters.
const TABLE_ERROR_MESSAGE_CHARACTERS: usize = 60;

/// Location schemes the node fetches itself; anything else is read as a local path.
const REMOTE_ARTIFACT_SCHEMES: &[&str] =
    &["http://", "https://", "file://", "data:", "artifact://"];

/// `host:port` → `http://host:port`; URLs with a scheme are kept.
pub fn normalize_node_address(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

pub async fn connect(connection: &NodeConnection) -> anyhow::Result<NodeClient> {
    let channel = connection.channel().await?;
    Ok(FunctionServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// The response metadata key in which the node says when a refused call (RESOURCE_EXHAUSTED) is
/// worth retrying, in milliseconds.
const RETRY_AFTER_METADATA_KEY: &str = "retry-after-ms";

/// A gRPC error as the CLI reports it: `NotFound: task_id "x" is unknown`. A status carrying
/// `retry-after-ms` gets the hint appended, `… (retry after 120 ms)`, unless the message already
/// says exactly that.
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let mut message = format!("{:?}: {}", status.code(), status.message());
    let retry_after_ms = status
        .metadata()
        .get(RETRY_AFTER_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok());
    if let Some(retry_after_ms) = retry_after_ms {
        let hint = format!("retry after {retry_after_ms} ms");
        if !status.message().contains(&hint) {
            message.push_str(&format!(" ({hint})"));
        }
    }
    anyhow!(message)
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).context("writing to stdout")?;
    stdout.flush().context("writing to stdout")
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    write_stdout(output::render_json(value).as_bytes())
}

fn to_hash_map(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs.iter().cloned().collect()
}

// invoke

/// The input bytes: `--input`, `--input-file`, or stdin when it is piped, else nothing.
fn read_invoke_input(arguments: &InvokeArguments) -> anyhow::Result<Vec<u8>> {
    if let Some(text) = &arguments.input_text {
        return Ok(text.as_bytes().to_vec());
    }
    if let Some(path) = &arguments.input_file {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    let mut stdin = std::io::stdin().lock();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    stdin.read_to_end(&mut input).context("reading stdin")?;
    Ok(input)
}

/// The request `spearlet invoke` sends: mode from `--async` / `--stream`, context from the
/// remaining flags.
fn invoke_request(arguments: &InvokeArguments) -> anyhow::Result<proto::InvokeFunctionRequest> {
    let input = read_invoke_input(arguments)?;
    let execution_mode = if arguments.stream {
        proto::ExecutionMode::Stream
    } else if arguments.asynchronous {
        proto::ExecutionMode::Async
    } else {
        proto::ExecutionMode::Sync
    };
    Ok(proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::ExistingTask as i32,
        task_id: arguments.task.clone(),
        function_name: arguments.function_name.clone().unwrap_or_default(),
        execution_mode: execution_mode as i32,
        wait: arguments.wait_for_end,
        input: Some(proto::Payload {
            content_type: "application/octet-stream".into(),
            data: input,
        }),
        context: Some(proto::ExecutionContext {
            execution_id: arguments.execution_id.clone().unwrap_or_default(),
            timeout_ms: arguments.timeout_ms.unwrap_or(0),
            max_retries: arguments.max_retries.unwrap_or(0),
            headers: to_hash_map(&arguments.headers),
            environment: to_hash_map(&arguments.environment),
            ..Default::default()
        }),
        force_new_instance: arguments.placement.force_new_instance,
        invocation_metadata: arguments.placement.invocation_metadata(),
        ..Default::default()
    })
}

/// `spearlet invoke`: sync by default, `--async` (optionally `--wait`), or `--stream`.
pub async fn invoke(
    client: &mut NodeClient,
    arguments: &InvokeArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let request = invoke_request(arguments)?;
    if arguments.stream {
        return invoke_streaming(client, request, json_output).await;
    }
    let response = client
        .invoke_function(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    if arguments.asynchronous && !arguments.wait_for_end {
        if arguments.quiet {
            return print_accepted_execution_id(&response);
        }
        return print_accepted_execution(&response, json_output);
    }
    print_finished_execution(&response, json_output)
}

/// An async acceptance: the execution id and where to follow it, or the whole answer as JSON.
fn print_accepted_execution(
    response: &proto::InvokeFunctionResponse,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    if json_output {
        print_json(&output::invoke_response_json(response))?;
    } else {
        let result = response.result.clone().unwrap_or_default();
        let estimated_completion = if response.estimated_completion_ms > 0 {
            format!("{}ms", response.estimated_completion_ms)
        } else {
            output::EMPTY_CELL.to_owned()
        };
        write_stdout(
            render_key_values(&[
                ("EXECUTION ID", response.execution_id.clone()),
                ("STATUS", output::status_cell(result.status)),
                ("STATUS ENDPOINT", or_dash(&response.status_endpoint)),
                ("ESTIMATED COMPLETION", estimated_completion),
            ])
            .as_bytes(),
        )?;
    }
    if response.success {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("error: {}", response.message);
    Ok(ExitCode::FAILURE)
}

/// An async acceptance with `--quiet`: only the execution id and a newline, so that
/// `id=$(spearlet invoke … --async -q)` holds the id.
fn print_accepted_execution_id(
    response: &proto::InvokeFunctionResponse,
) -> anyhow::Result<ExitCode> {
    write_stdout(format!("{}\n", response.execution_id).as_bytes())?;
    if response.success {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("error: {}", response.message);
    Ok(ExitCode::FAILURE)
}

/// A sync answer, or an async one after `--wait`: the output on stdout (or the answer as JSON),
/// and `error: <STATUS> <ERROR CODE>: <message>` on stderr when the function did not complete.
fn print_finished_execution(
    response: &proto::InvokeFunctionResponse,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let result = response.result.clone().unwrap_or_default();
    if json_output {
        print_json(&output::invoke_response_json(response))?;
    } else {
        let output_bytes = match &result.output {
            Some(payload) => payload.data.clone(),
            None => result
                .result
                .as_ref()
                .and_then(spearlet_proto::well_known::unpack_bytes)
                .unwrap_or_default(),
        };
        write_stdout(&output_bytes)?;
    }
    if response.success {
        return Ok(ExitCode::SUCCESS);
    }
    let still_live = [
        proto::ExecutionStatus::Pending,
        proto::ExecutionStatus::Running,
    ]
    .map(|status| status as i32)
    .contains(&result.status);
    if still_live {
        // `--wait` ran out of time (the node's max_wait_ms): the message says how to follow it.
        eprintln!("error: {}", response.message);
    } else {
        eprintln!(
            "error: {} {}: {}",
            output::execution_status_name(result.status),
            or_dash(&result.error_code),
            result.error_message
        );
    }
    Ok(ExitCode::FAILURE)
}

/// `--stream`: each output chunk goes to stdout the moment it arrives; the final message
/// decides the exit code, with the same error line as a sync call.
async fn invoke_streaming(
    client: &mut NodeClient,
    request: proto::InvokeFunctionRequest,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let mut stream = client
        .stream_function(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    let final_message = loop {
        let Some(message) = stream.message().await.map_err(rpc_error)? else {
            bail!("the stream ended before the execution's final status");
        };
        if json_output {
            write_stdout(
                output::render_json_line(&output::stream_message_json(&message)).as_bytes(),
            )?;
        } else {
            let chunk = output::stream_chunk_bytes(&message);
            if !chunk.is_empty() {
                write_stdout(&chunk)?;
            }
        }
        if message.is_final {
            break message;
        }
    };
    if final_message.status == proto::ExecutionStatus::Completed as i32 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: {} {}: {}",
        output::execution_status_name(final_message.status),
        or_dash(
            final_message
                .metadata
                .get("error_code")
                .map_or("", String::as_str)
        ),
        final_message.error_message
    );
    Ok(ExitCode::FAILURE)
}

// task

pub async fn run_task_command(
    client: &mut NodeClient,
    command: &TaskCommand,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::Create(arguments) => create_task(client, arguments, json_output).await,
        TaskCommand::Ls(arguments) => list_tasks(client, arguments, json_output).await,
        TaskCommand::Get(arguments) => get_task(client, arguments, json_output).await,
        TaskCommand::Rm(arguments) => delete_task(client, arguments, json_output).await,
    }
}

/// The location to send for `--artifact`: URLs as given, local files inline as a `data:` URL.
fn artifact_location(artifact: &str, artifact_type: &str) -> anyhow::Result<String> {
    let is_remote = REMOTE_ARTIFACT_SCHEMES
        .iter()
        .any(|scheme| artifact.starts_with(scheme))
        || artifact.contains("://");
    if is_remote {
        return Ok(artifact.to_owned());
    }
    let bytes = std::fs::read(artifact).with_context(|| format!("reading artifact {artifact}"))?;
    let media_type = if artifact_type == "wasm" {
        "application/wasm"
    } else {
        "application/octet-stream"
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("data:{media_type};base64,{encoded}"))
}

async fn create_task(
    client: &mut NodeClient,
    arguments: &TaskCreateArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let location = artifact_location(&arguments.artifact, &arguments.artifact_type)?;
    let metadata = arguments
        .settings
        .iter()
        .chain(&arguments.labels)
        .cloned()
        .collect();
    let request = proto::CreateTaskRequest {
        function_name: arguments.function_name.clone().unwrap_or_default(),
        task_name: arguments.task_name.clone(),
        task_description: arguments.description.clone().unwrap_or_default(),
        artifact_spec: Some(proto::ArtifactSpec {
            artifact_type: arguments.artifact_type.clone(),
            location,
            version: arguments.version.clone().unwrap_or_default(),
            checksum: arguments.checksum.clone().unwrap_or_default(),
            metadata,
            ..Default::default()
        }),
    };
    let task = client
        .create_task(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_output {
        print_json(&output::task_info_json(&task))?;
    } else {
        write_stdout(render_task_details(&task).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_tasks(
    client: &mut NodeClient,
    arguments: &TaskListArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let mut tasks = Vec::new();
    let mut start_after = String::new();
    let (has_more, next_start_after) = loop {
        let page = client
            .list_tasks(proto::ListTasksRequest {
                prefix: arguments.name_prefix.clone(),
                limit: arguments.page_size.unwrap_or(0),
                start_after: start_after.clone(),
                include_details: false,
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        tasks.extend(page.tasks);
        let follow = arguments.all_pages && page.has_more && !page.next_start_after.is_empty();
        if !follow {
            break (page.has_more, page.next_start_after);
        }
        start_after = page.next_start_after;
    };
    if json_output {
        print_json(&output::task_list_json(&tasks, has_more, &next_start_after))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "NAME",
        "ID",
        "TYPE",
        "VERSION",
        "EXECUTIONS",
        "LAST STATUS",
        "UPDATED",
    ]);
    for task in &tasks {
        let spec = task.artifact_spec.clone().unwrap_or_default();
        table.push_row(vec![
            task.task_name.clone(),
            task.task_id.clone(),
            or_dash(&spec.artifact_type),
            or_dash(&spec.version),
            task.execution_count.to_string(),
            output::status_cell(task.last_status),
            output::format_unix_ms(task.updated_at, false),
        ]);
    }
    write_stdout(table.render().as_bytes())?;
    if has_more {
        eprintln!("(more tasks after {next_start_after:?}; use --all to list every page)");
    }
    Ok(ExitCode::SUCCESS)
}

/// One task as `KEY: value` lines.
fn render_task_details(task: &proto::TaskInfo) -> String {
    let spec = task.artifact_spec.clone().unwrap_or_default();
    let (settings, labels): (HashMap<String, String>, HashMap<String, String>) = spec
        .metadata
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .partition(|(key, _)| key.starts_with(TASK_SETTING_PREFIX));
    let detail = |key: &str| or_dash(task.metadata.get(key).map_or("", String::as_str));
    render_key_values(&[
        ("NAME", task.task_name.clone()),
        ("ID", task.task_id.clone()),
        ("DESCRIPTION", detail("description")),
        ("TYPE", or_dash(&spec.artifact_type)),
        ("VERSION", or_dash(&spec.version)),
        ("ARTIFACT ID", or_dash(&spec.artifact_id)),
        ("LOCATION", output::abbreviate_location(&spec.location)),
        ("CHECKSUM", or_dash(&spec.checksum)),
        ("EXPORTS", detail("exported_functions")),
        ("SETTINGS", output::render_map(&settings)),
        ("LABELS", output::render_map(&labels)),
        ("ISOLATION", detail("isolation")),
        ("INSTANCES", instance_counts(&task.metadata)),
        ("INSTANCE IDS", detail("instance_ids")),
        ("CREATED", output::format_unix_ms(task.created_at, false)),
        ("UPDATED", output::format_unix_ms(task.updated_at, false)),
        ("EXECUTIONS", task.execution_count.to_string()),
        ("RUNNING", detail("running_executions")),
        ("LAST STATUS", output::status_cell(task.last_status)),
    ])
}

/// `2 (desired 3)` from a detailed TaskInfo's `instances` and `desired_instances`; the desired
/// count is left out when the autoscaler has not decided yet, `-` when the node sent neither.
fn instance_counts(task_metadata: &HashMap<String, String>) -> String {
    let current = task_metadata.get("instances").map(String::as_str);
    let desired = task_metadata.get("desired_instances").map(String::as_str);
    match (current, desired) {
        (Some(current), Some(desired)) => format!("{current} (desired {desired})"),
        (Some(current), None) => current.to_owned(),
        (None, Some(desired)) => format!("- (desired {desired})"),
        (None, None) => output::EMPTY_CELL.to_owned(),
    }
}

async fn get_task(
    client: &mut NodeClient,
    arguments: &TaskGetArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let response = client
        .get_task(proto::GetTaskRequest {
            task_id: arguments.task.clone(),
            include_executions: arguments.execution_limit.is_some(),
            execution_limit: arguments.execution_limit.unwrap_or(0),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let Some(task) = response.task.as_ref().filter(|_| response.found) else {
        bail!("task {:?} not found: {}", arguments.task, response.message);
    };
    if json_output {
        print_json(&output::get_task_json(&response))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = render_task_details(task);
    if arguments.execution_limit.is_some() {
        text.push('\n');
        text.push_str(&render_execution_table(&response.executions));
    }
    write_stdout(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

async fn delete_task(
    client: &mut NodeClient,
    arguments: &TaskDeleteArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let response = client
        .delete_task(proto::DeleteTaskRequest {
            task_id: arguments.task.clone(),
            force: arguments.force,
            cleanup_executions: arguments.cleanup_executions,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_output {
        print_json(&output::delete_task_json(&response))?;
    } else {
        println!("{}", response.message);
    }
    Ok(if response.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// exec

pub async fn run_execution_command(
    client: &mut NodeClient,
    command: &ExecutionCommand,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        ExecutionCommand::Get(arguments) => get_execution(client, arguments, json_output).await,
        ExecutionCommand::Ls(arguments) => list_executions(client, arguments, json_output).await,
        ExecutionCommand::Cancel(arguments) => {
            cancel_execution(client, arguments, json_output).await
        }
    }
}

fn truncate_characters(text: &str, limit: usize) -> String {
    let single_line = text.replace('\n', " ");
    if single_line.chars().count() <= limit {
        return single_line;
    }
    let mut truncated: String = single_line.chars().take(limit.saturating_sub(1)).collect();
    truncated.push('…');
    truncated
}

fn render_execution_table(executions: &[proto::ExecutionInfo]) -> String {
    let mut table = Table::new(&[
        "EXECUTION ID",
        "TASK",
        "FUNCTION",
        "STATUS",
        "STARTED",
        "DURATION",
        "ERROR",
    ]);
    for execution in executions {
        table.push_row(vec![
            execution.execution_id.clone(),
            execution.task_id.clone(),
            or_dash(&execution.function_name),
            output::status_cell(execution.status),
            output::format_timestamp(execution.started_at.as_ref(), false),
            output::format_execution_time(execution.execution_time_ms, &execution.metadata),
            or_dash(&truncate_characters(
                &execution.error_message,
                TABLE_ERROR_MESSAGE_CHARACTERS,
            )),
        ]);
    }
    table.render()
}

async fn get_execution(
    client: &mut NodeClient,
    arguments: &ExecutionGetArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let response = client
        .get_execution_status(proto::GetExecutionStatusRequest {
            execution_id: arguments.execution_id.clone(),
            include_result: !arguments.no_output,
            include_logs: arguments.include_logs,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if !response.found {
        bail!(
            "execution {:?} not found: {}",
            arguments.execution_id,
            response.message
        );
    }
    if json_output {
        print_json(&output::execution_status_json(&response))?;
        return Ok(ExitCode::SUCCESS);
    }
    let result = response.result.clone().unwrap_or_default();
    let mut text = render_key_values(&[
        ("EXECUTION ID", arguments.execution_id.clone()),
        ("STATUS", output::status_cell(result.status)),
        ("ERROR CODE", or_dash(&result.error_code)),
        ("ERROR", or_dash(&result.error_message)),
        (
            "STARTED",
            output::format_timestamp(result.started_at.as_ref(), true),
        ),
        (
            "COMPLETED",
            output::format_timestamp(result.completed_at.as_ref(), true),
        ),
        (
            "DURATION",
            output::format_execution_time(result.execution_time_ms, &result.metrics),
        ),
        (
            "MEMORY",
            output::format_measured_bytes(result.memory_used_bytes),
        ),
        ("METRICS", output::render_map(&result.metrics)),
    ]);
    if !arguments.no_output {
        let output_bytes = result
            .output
            .map(|payload| payload.data)
            .unwrap_or_default();
        text.push_str("\nOUTPUT:\n");
        match std::str::from_utf8(&output_bytes) {
            Ok(output_text) => {
                text.push_str(output_text);
                if !output_text.is_empty() && !output_text.ends_with('\n') {
                    text.push('\n');
                }
            }
            Err(_) => text.push_str(&format!(
                "<{} bytes of binary data; use --json to see them in base64>\n",
                output_bytes.len()
            )),
        }
    }
    if arguments.include_logs {
        text.push_str("\nLOGS:\n");
        for line in &response.logs {
            text.push_str(line);
            text.push('\n');
        }
    }
    write_stdout(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

async fn list_executions(
    client: &mut NodeClient,
    arguments: &ExecutionListArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let response = client
        .list_executions(proto::ListExecutionsRequest {
            task_id: arguments.task.clone().unwrap_or_default(),
            limit: arguments.page_size.unwrap_or(0),
            start_after: String::new(),
            status_filter: arguments
                .status
                .map_or(proto::ExecutionStatus::Unknown, |status| status.to_wire())
                as i32,
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_output {
        print_json(&output::execution_list_json(&response))?;
        return Ok(ExitCode::SUCCESS);
    }
    write_stdout(render_execution_table(&response.executions).as_bytes())?;
    if response.has_more {
        eprintln!(
            "(more executions after {:?}; raise --limit to see more)",
            response.next_start_after
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel_execution(
    client: &mut NodeClient,
    arguments: &ExecutionCancelArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let response = client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: arguments.execution_id.clone(),
            reason: arguments.reason.clone().unwrap_or_default(),
            force: arguments.force,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_output {
        print_json(&output::cancel_json(&response))?;
    }
    if !response.success {
        eprintln!("error: {}", response.message);
        return Ok(ExitCode::FAILURE);
    }
    if !json_output {
        println!(
            "{} (final status {})",
            response.message,
            output::execution_status_name(response.final_status)
        );
    }
    Ok(ExitCode::SUCCESS)
}

// health and stats

/// Exits 1 when the node says it is `unhealthy`, so the command works as a probe.
pub async fn health(client: &mut NodeClient, json_output: bool) -> anyhow::Result<ExitCode> {
    let response = client
        .get_health(proto::GetHealthRequest {
            include_details: true,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_output {
        print_json(&output::health_json(&response))?;
    } else {
        let mut pairs = vec![
            ("STATUS", response.status.clone()),
            ("MESSAGE", or_dash(&response.message)),
            ("UPTIME", output::format_seconds(response.uptime_seconds)),
        ];
        let mut system_info: Vec<(String, String)> = Vec::new();
        if let Some(details) = &response.details {
            pairs.extend([
                ("ACTIVE TASKS", details.active_tasks.to_string()),
                ("RUNNING", details.running_executions.to_string()),
                ("PENDING", details.pending_executions.to_string()),
                ("TOTAL EXECUTIONS", details.total_executions.to_string()),
                (
                    "MEMORY USED",
                    output::format_bytes(details.total_memory_used),
                ),
            ]);
            system_info = details
                .system_info
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            system_info.sort();
        }
        let mut text = render_key_values(&pairs);
        if !system_info.is_empty() {
            text.push_str("\nSYSTEM:\n");
            let system_pairs: Vec<(&str, String)> = system_info
                .iter()
                .map(|(key, value)| (key.as_str(), value.clone()))
                .collect();
            for line in render_key_values(&system_pairs).lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
        write_stdout(text.as_bytes())?;
    }
    Ok(if response.status == "unhealthy" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `spearlet cluster ls`: the cluster section of GetStats as a table.
pub async fn cluster_nodes(client: &mut NodeClient, json_output: bool) -> anyhow::Result<ExitCode> {
    let response = client
        .get_stats(proto::GetStatsRequest::default())
        .await
        .map_err(rpc_error)?
        .into_inner();
    let Some(cluster) = response.cluster else {
        return Err(anyhow!(
            "the node at this address is not in a cluster (it was started without \
             --cluster-nats / [cluster] nats_url)"
        ));
    };
    if json_output {
        print_json(&output::cluster_json(&cluster))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "NODE",
        "ADDRESS",
        "STATE",
        "FREE SLOTS",
        "RUNNING",
        "QUEUED",
        "HEARTBEAT",
        "TASKS READY",
    ]);
    for node in &cluster.nodes {
        let state = if node.draining {
            "draining"
        } else if node.is_self {
            "self"
        } else if node.routable {
            "ready"
        } else {
            "stale"
        };
        table.push_row(vec![
            node.node_id.clone(),
            node.advertise_addr.clone(),
            state.to_owned(),
            node.free_slots.to_string(),
            node.running.to_string(),
            node.queue_length.to_string(),
            format!("{} ms ago", node.heartbeat_age_ms),
            node.tasks.len().to_string(),
        ]);
    }
    let mut text = format!(
        "CLUSTER {}  (asked node {}, NATS {})\n",
        cluster.cluster_name,
        cluster.node_id,
        if cluster.nats_connected {
            "connected"
        } else {
            "DISCONNECTED"
        }
    );
    if !cluster.message.is_empty() {
        text.push_str(&format!("{}\n", cluster.message));
    }
    text.push_str(&table.render());
    write_stdout(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

pub async fn stats(
    client: &mut NodeClient,
    arguments: &StatsArguments,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let response = client
        .get_stats(proto::GetStatsRequest {
            include_task_stats: true,
            include_execution_stats: true,
            time_range_hours: arguments.time_range_hours.unwrap_or(0),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_output {
        print_json(&output::stats_json(&response))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    if let Some(service) = &response.service_stats {
        text.push_str("NODE\n");
        text.push_str(&indent(&render_key_values(&[
            ("UPTIME", output::format_seconds(service.uptime_seconds)),
            ("TASKS", service.total_tasks.to_string()),
            ("ARTIFACTS", service.artifact_count.to_string()),
            ("EXECUTIONS", service.total_executions.to_string()),
            ("SUCCEEDED", service.successful_executions.to_string()),
            ("FAILED", service.failed_executions.to_string()),
            (
                "AVG RESPONSE",
                format!("{:.2}ms", service.average_response_time_ms),
            ),
            (
                "MEMORY USED",
                output::format_bytes(service.total_memory_used),
            ),
            ("CPU", format!("{:.1}%", service.cpu_usage_percent)),
            ("MEMORY", format!("{:.1}%", service.memory_usage_percent)),
        ])));
        text.push_str("\nQUEUE\n");
        text.push_str(&indent(&render_key_values(&[
            (
                "WAITING",
                format!(
                    "{} (max {})",
                    service.queue_length, service.max_queue_length
                ),
            ),
            ("ASYNC WAITING", service.async_waiting.to_string()),
            ("WAIT", render_queue_wait(service.queue_wait.as_ref())),
        ])));
        text.push_str("\nINSTANCES\n");
        text.push_str(&indent(&render_key_values(&[
            (
                "LIVE",
                if service.instances_by_state.is_empty() {
                    service.instance_count.to_string()
                } else {
                    format!(
                        "{} ({})",
                        service.instance_count,
                        render_instances_by_state(&service.instances_by_state)
                    )
                },
            ),
            ("COLD STARTS", service.cold_starts.to_string()),
            ("WARM STARTS", service.warm_starts.to_string()),
            ("TERMINATED", service.instances_terminated.to_string()),
            ("FAILED", service.instances_failed.to_string()),
        ])));
    }
    if !response.pools.is_empty() {
        text.push_str("\nPOOLS\n");
        text.push_str(&indent(&render_pool_table(&response.pools)));
    }
    if let Some(tasks) = &response.task_stats {
        text.push_str("\nTASKS\n");
        text.push_str(&indent(&render_key_values(&[
            ("ACTIVE", tasks.active_tasks.to_string()),
            ("IDLE", tasks.idle_tasks.to_string()),
            ("BY TYPE", render_counts(&tasks.tasks_by_type)),
        ])));
        if !tasks.most_active_tasks.is_empty() {
            let mut table = Table::new(&["MOST ACTIVE", "EXECUTIONS", "LAST STATUS"]);
            for task in &tasks.most_active_tasks {
                table.push_row(vec![
                    task.task_name.clone(),
                    task.execution_count.to_string(),
                    output::status_cell(task.last_status),
                ]);
            }
            text.push('\n');
            text.push_str(&indent(&table.render()));
        }
    }
    if let Some(executions) = &response.execution_stats {
        let window = match arguments.time_range_hours {
            Some(hours) if hours > 0 => format!(" (last {hours}h)"),
            _ => String::new(),
        };
        text.push_str(&format!("\nEXECUTIONS{window}\n"));
        text.push_str(&indent(&render_key_values(&[
            ("RUNNING", executions.running_executions.to_string()),
            ("PENDING", executions.pending_executions.to_string()),
            ("COMPLETED", executions.completed_executions.to_string()),
            ("FAILED", executions.failed_executions.to_string()),
            (
                "AVG TIME",
                format!("{:.2}ms", executions.average_execution_time_ms),
            ),
            (
                "SUCCESS RATE",
                format!("{:.1}%", executions.success_rate_percent),
            ),
        ])));
        if !executions.executions_by_function.is_empty() {
            let mut counts: Vec<(&String, &i32)> =
                executions.executions_by_function.iter().collect();
            counts.sort_by(|left, right| right.1.cmp(left.1).then(left.0.cmp(right.0)));
            let mut table = Table::new(&["FUNCTION", "EXECUTIONS"]);
            for (function, count) in counts {
                table.push_row(vec![function.clone(), count.to_string()]);
            }
            text.push('\n');
            text.push_str(&indent(&table.render()));
        }
    }
    write_stdout(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `p50 0.012ms, p90 0.030ms, p99 1.204ms, max 3.500ms`, or `-` before the first call.
fn render_queue_wait(queue_wait: Option<&proto::QueueWaitPercentiles>) -> String {
    let Some(queue_wait) = queue_wait else {
        return output::EMPTY_CELL.to_owned();
    };
    format!(
        "p50 {:.3}ms, p90 {:.3}ms, p99 {:.3}ms, max {:.3}ms",
        queue_wait.p50_ms, queue_wait.p90_ms, queue_wait.p99_ms, queue_wait.max_ms
    )
}

/// Instance lifecycle states in the order an instance goes through them.
const INSTANCE_STATE_ORDER: [&str; 4] = ["creating", "ready", "running", "draining"];

/// `ready=2,running=1`: the known states in lifecycle order, then any others by name.
fn render_instances_by_state(instances_by_state: &HashMap<String, i32>) -> String {
    if instances_by_state.is_empty() {
        return output::EMPTY_CELL.to_owned();
    }
    let mut states: Vec<(&String, &i32)> = instances_by_state.iter().collect();
    let lifecycle_position = |state: &str| {
        INSTANCE_STATE_ORDER
            .iter()
            .position(|known| *known == state)
            .unwrap_or(INSTANCE_STATE_ORDER.len())
    };
    states.sort_by(|left, right| {
        lifecycle_position(left.0)
            .cmp(&lifecycle_position(right.0))
            .then(left.0.cmp(right.0))
    });
    states
        .iter()
        .map(|(state, count)| format!("{state}={count}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One row per task pool. INSTANCES is current/desired; PREDICTED is what the forecast alone
/// asks for.
fn render_pool_table(pools: &[proto::PoolStats]) -> String {
    let mut table = Table::new(&[
        "TASK",
        "ISOLATION",
        "POLICY",
        "INSTANCES",
        "MIN-MAX",
        "ACTIVE",
        "WAITING",
        "COLD",
        "WARM",
        "PREDICTED",
    ]);
    for pool in pools {
        let task = if pool.task_name.is_empty() {
            &pool.task_id
        } else {
            &pool.task_name
        };
        table.push_row(vec![
            task.clone(),
            or_dash(&pool.isolation),
            or_dash(&pool.scheduler_policy),
            format!("{}/{}", pool.current_instances, pool.desired_instances),
            format!("{}-{}", pool.min_instances, pool.max_instances),
            pool.active_executions.to_string(),
            pool.waiting.to_string(),
            pool.cold_starts.to_string(),
            pool.warm_starts.to_string(),
            pool.predicted_instances.to_string(),
        ]);
    }
    table.render()
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

fn render_counts(counts: &HashMap<String, i32>) -> String {
    let as_text: HashMap<String, String> = counts
        .iter()
        .map(|(key, count)| (key.clone(), count.to_string()))
        .collect();
    output::render_map(&as_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_a_scheme_get_http() {
        assert_eq!(normalize_node_address("127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(normalize_node_address("https://node:1"), "https://node:1");
    }

    #[test]
    fn urls_are_sent_as_given_and_local_files_inline() {
        for url in [
            "http://a/b.wasm",
            "https://a/b.wasm",
            "file:///b.wasm",
            "data:application/wasm;base64,AGFzbQ==",
            "artifact://sha256:00",
        ] {
            assert_eq!(artifact_location(url, "wasm").unwrap(), url);
        }
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("m.wasm");
        std::fs::write(&path, b"\0asm").unwrap();
        assert_eq!(
            artifact_location(path.to_str().unwrap(), "wasm").unwrap(),
            "data:application/wasm;base64,AGFzbQ=="
        );
    }

    #[test]
    fn a_retry_hint_is_added_to_the_error_once() {
        let with_hint = |message: &str, retry_after: &str| {
            let mut status = tonic::Status::resource_exhausted(message);
            status
                .metadata_mut()
                .insert(RETRY_AFTER_METADATA_KEY, retry_after.parse().unwrap());
            rpc_error(status).to_string()
        };
        let cases = [
            (
                with_hint("the queue is full; retry later", "120"),
                "ResourceExhausted: the queue is full; retry later (retry after 120 ms)",
            ),
            (
                with_hint("the pool is full; retry after 100 ms", "100"),
                "ResourceExhausted: the pool is full; retry after 100 ms",
            ),
            (
                with_hint("the queue is full", "soon"),
                "ResourceExhausted: the queue is full",
            ),
            (
                rpc_error(tonic::Status::not_found("task_id \"x\" is unknown")).to_string(),
                "NotFound: task_id \"x\" is unknown",
            ),
        ];
        for (reported, expected) in cases {
            assert_eq!(reported, expected);
        }
    }

    #[test]
    fn instance_counts_show_current_and_desired() {
        let metadata = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect()
        };
        let cases = [
            (
                metadata(&[("instances", "2"), ("desired_instances", "3")]),
                "2 (desired 3)",
            ),
            (metadata(&[("instances", "0")]), "0"),
            (metadata(&[]), "-"),
        ];
        for (task_metadata, expected) in cases {
            assert_eq!(instance_counts(&task_metadata), expected);
        }
    }

    #[test]
    fn instance_states_are_listed_in_lifecycle_order() {
        let states: HashMap<String, i32> = [("running", 1), ("zombie", 4), ("ready", 2)]
            .into_iter()
            .map(|(state, count)| (state.to_owned(), count))
            .collect();
        assert_eq!(
            render_instances_by_state(&states),
            "ready=2,running=1,zombie=4"
        );
        assert_eq!(render_instances_by_state(&HashMap::new()), "-");
    }

    #[test]
    fn pools_render_one_row_per_task() {
        let pool = proto::PoolStats {
            task_id: "task-1".into(),
            task_name: "echo".into(),
            isolation: "per_call".into(),
            scheduler_policy: "least_connections".into(),
            min_instances: 1,
            max_instances: 16,
            current_instances: 2,
            desired_instances: 3,
            predicted_instances: 1,
            active_executions: 4,
            waiting: 5,
            cold_starts: 6,
            warm_starts: 70,
            ..Default::default()
        };
        let unnamed = proto::PoolStats {
            task_id: "task-2".into(),
            ..Default::default()
        };
        assert_eq!(
            render_pool_table(&[pool, unnamed]),
            "TASK     ISOLATION   POLICY              INSTANCES   MIN-MAX   ACTIVE   WAITING   \
             COLD   WARM   PREDICTED\n\
             echo     per_call    least_connections   2/3         1-16      4        5         \
             6      70     1\n\
             task-2   -           -                   0/0         0-0       0        0         \
             0      0      0\n"
        );
    }

    #[test]
    fn long_error_messages_are_cut_for_tables() {
        assert_eq!(truncate_characters("a\nb", 10), "a b");
        assert_eq!(truncate_characters("abcdef", 4), "abc…");
    }
}
