//! A warm lambda-mode worker: one process of a task speaking the AWS Lambda Runtime API to its
//! own loopback server, serving one invocation after another.
//!
//! Start: a per-instance working directory, the Runtime API server on 127.0.0.1:0, the process
//! (sandboxed, its own process group) with `AWS_LAMBDA_RUNTIME_API` pointing at the server; the
//! worker is ready when it first polls `/next`. It fails to start when it reports `/init/error`,
//! exits first, or does not poll within the task's init timeout.
//!
//! A call hands the invocation to the server and races its answer against the process exiting
//! (WORKER_CRASHED), the deadline (TIMEOUT) and cancellation: the last two kill the worker, since
//! a worker cannot be interrupted mid-invocation and must not answer a call that has ended.
//!
//! Invariants: at most one call at a time (the pool gives a worker capacity 1); the worker's
//! stdout and stderr become the logs of the call during which they were written; dropping the
//! worker kills its process group and removes its working directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use spearlet_core::{ErrorCode, Outcome};
use spearlet_pool::InstanceStartError;
use spearlet_process::runtime_api::{LambdaInvocation, LambdaOutcome, RuntimeApiServer};
use spearlet_process::sandbox::{SandboxSpec, SandboxWorkdir, SandboxedChild, spawn_sandboxed};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::clock::unix_ms;
use crate::instances::{CallReport, InstanceCall, ProcessTask};

pub struct LambdaWorker {
    api: RuntimeApiServer,
    child: tokio::sync::Mutex<SandboxedChild>,
    process_id: u32,
    alive: Arc<AtomicBool>,
    /// What the worker wrote to stdout and stderr since the current call began.
    logs: Arc<Mutex<CapturedLogs>>,
    task: Arc<ProcessTask>,
    /// Removed when the worker is dropped (after its process group is killed).
    _workdir: SandboxWorkdir,
}

struct CapturedLogs {
    bytes: BytesMut,
    capacity: usize,
}

impl CapturedLogs {
    fn append(&mut self, chunk: &[u8]) {
        let room = self.capacity.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

impl LambdaWorker {
    pub async fn start(
        task: Arc<ProcessTask>,
        mut environment: Vec<(String, String)>,
        max_response_bytes: u64,
        max_log_bytes: u64,
    ) -> Result<LambdaWorker, InstanceStartError> {
        let start_error = |message: String| InstanceStartError { message };
        let workdir = SandboxWorkdir::create(&task.workdir_base)
            .map_err(|error| start_error(error.message))?;
        let api = RuntimeApiServer::start(max_response_bytes)
            .await
            .map_err(|error| start_error(format!("binding the Runtime API: {error}")))?;
        environment.push(("AWS_LAMBDA_RUNTIME_API".into(), api.address().to_string()));
        let mut child = spawn_sandboxed(SandboxSpec {
            program: task.entrypoint.clone(),
            arguments: Vec::new(),
            environment,
            working_directory: workdir.path().to_path_buf(),
            limits: task.limits.clone(),
            stdin: false,
        })
        .map_err(|error| start_error(error.message))?;
        let process_id = child.pid();
        let logs = Arc::new(Mutex::new(CapturedLogs {
            bytes: BytesMut::new(),
            capacity: usize::try_from(max_log_bytes).unwrap_or(usize::MAX),
        }));
        if let Some(stdout) = child.take_stdout() {
            tokio::spawn(capture_into(stdout, logs.clone()));
        }
        if let Some(stderr) = child.take_stderr() {
            tokio::spawn(capture_into(stderr, logs.clone()));
        }
        let init_timeout = Duration::from_millis(task.settings.init_timeout_ms);
        let ready = tokio::select! {
            ready = api.wait_until_ready() => ready.map_err(|error| {
                format!("the worker reported an init error: {}: {}", error.error_type, error.error_message)
            }),
            status = child.wait() => Err(match status {
                Ok(status) => format!("the worker exited ({status}) before polling for an invocation"),
                Err(error) => format!("waiting for the worker failed: {error}"),
            }),
            () = tokio::time::sleep(init_timeout) => Err(format!(
                "the worker did not poll for an invocation within spearlet.process.init_timeout_ms = {} ms",
                init_timeout.as_millis()
            )),
        };
        if let Err(message) = ready {
            child.kill_group().await;
            let logs = logs.lock().bytes.split().freeze();
            let tail = String::from_utf8_lossy(&logs);
            let tail = tail.trim();
            return Err(start_error(if tail.is_empty() {
                message
            } else {
                format!("{message}; its output: {}", last_chars(tail, 2000))
            }));
        }
        tracing::debug!(task_name = %task.task_name, process_id, "lambda worker ready");
        logs.lock().bytes.clear();
        Ok(LambdaWorker {
            api,
            child: tokio::sync::Mutex::new(child),
            process_id,
            alive: Arc::new(AtomicBool::new(true)),
            logs,
            task,
            _workdir: workdir,
        })
    }

    /// Whether the worker process is still running (checked without waiting).
    pub fn is_alive(&self) -> bool {
        if !self.alive.load(Ordering::Relaxed) {
            return false;
        }
        match self.child.try_lock() {
            // A call holds it: it is alive as far as anyone can tell now.
            Err(_) => true,
            Ok(mut child) => {
                let running = child.is_running();
                if !running {
                    self.alive.store(false, Ordering::Relaxed);
                }
                running
            }
        }
    }

    pub async fn invoke(&self, call: InstanceCall) -> CallReport {
        let mut child = self.child.lock().await;
        self.logs.lock().bytes.clear();
        let deadline_unix_ms = unix_ms().max(0) as u64
            + call
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64;
        let invocation = LambdaInvocation {
            request_id: call.execution_id.clone(),
            payload: call.stdin,
            deadline_unix_ms,
            invoked_function_arn: self.task.function_arn.clone(),
            trace_id: call.trace.xray_trace_id(),
            output_chunks: call.output_chunks,
        };
        let mut metrics: BTreeMap<String, String> =
            [("process_id".to_owned(), self.process_id.to_string())].into();
        let (outcome, output, usable) = tokio::select! {
            outcome = self.api.invoke(invocation) => match outcome {
                LambdaOutcome::Response { body } => (Outcome::Completed, body, true),
                LambdaOutcome::FunctionError { error_type, error_message, body } => {
                    metrics.insert("error_type".into(), error_type);
                    (
                        Outcome::Failed { code: ErrorCode::FunctionError, message: error_message },
                        body,
                        true,
                    )
                }
                LambdaOutcome::ResponseTooLarge { limit } => (
                    Outcome::Failed {
                        code: ErrorCode::OutputTooLarge,
                        message: format!("the response exceeded the cap of {limit} bytes"),
                    },
                    Bytes::new(),
                    true,
                ),
                LambdaOutcome::InitError(error) => {
                    metrics.insert("error_type".into(), error.error_type.clone());
                    (
                        Outcome::Failed {
                            code: ErrorCode::InitFailed,
                            message: format!("{}: {}", error.error_type, error.error_message),
                        },
                        Bytes::new(),
                        false,
                    )
                }
            },
            status = child.wait() => {
                let described = match status {
                    Ok(status) => status.to_string(),
                    Err(error) => error.to_string(),
                };
                (
                    Outcome::Failed {
                        code: ErrorCode::WorkerCrashed,
                        message: format!("the worker process {} ended during the call ({described})", self.process_id),
                    },
                    Bytes::new(),
                    false,
                )
            }
            () = tokio::time::sleep_until(call.deadline) => (
                Outcome::TimedOut { message: "the call did not finish before its deadline".into() },
                Bytes::new(),
                false,
            ),
            () = call.cancellation.cancelled() => (
                Outcome::Cancelled { reason: "cancelled".into() },
                Bytes::new(),
                false,
            ),
        };
        if !usable {
            self.alive.store(false, Ordering::Relaxed);
            child.kill_group().await;
        }
        // Give the log readers a moment to drain what the worker wrote during the call.
        tokio::task::yield_now().await;
        let logs = self.logs.lock().bytes.split().freeze();
        CallReport {
            outcome,
            output,
            logs,
            peak_memory_bytes: 0,
            start_duration: Duration::ZERO,
            metrics,
            instance_still_usable: usable,
        }
    }
}

async fn capture_into(mut stream: impl AsyncRead + Unpin, logs: Arc<Mutex<CapturedLogs>>) {
    let mut buffer = vec![0u8; 8192];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        logs.lock().append(&buffer[..read]);
    }
}

fn last_chars(text: &str, count: usize) -> &str {
    let start = text
        .char_indices()
        .rev()
        .nth(count.saturating_sub(1))
        .map_or(0, |(index, _)| index);
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_keep_at_most_their_capacity() {
        let mut logs = CapturedLogs {
            bytes: BytesMut::new(),
            capacity: 5,
        };
        logs.append(b"abc");
        logs.append(b"defg");
        assert_eq!(&logs.bytes[..], b"abcde");
        assert_eq!(last_chars("hello", 3), "llo");
        assert_eq!(last_chars("hi", 3), "hi");
    }
}
