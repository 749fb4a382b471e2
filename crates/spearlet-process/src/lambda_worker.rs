//! A warm lambda-mode worker: one process of a task speaking the AWS Lambda Runtime API to its
//! own loopback server, serving one invocation after another.
//!
//! Start: a per-instance working directory, the Runtime API server on 127.0.0.1:0, the process
//! (sandboxed, its own process group) with [`ProcessTask::lambda_worker_environment`] and
//! `AWS_LAMBDA_RUNTIME_API` pointing at the server; the worker is ready when it first polls
//! `/next`. It fails to start when it reports `/init/error`, exits first, or does not poll within
//! the task's init timeout.
//!
//! A call hands the invocation to the server and races its answer against the process exiting
//! (WORKER_CRASHED), the deadline (TIMEOUT) and cancellation: the last two kill the worker, since
//! a worker cannot be interrupted mid-invocation and must not answer a call that has ended.
//!
//! Logs: the worker's stdout and stderr are pipes the call itself reads while it waits for the
//! answer, and drains once more after it, straight from the pipes' descriptors (bypassing the
//! reactor's readiness, which can lag behind the kernel): whatever the worker wrote to them
//! before it answered is in that call's record. What a worker writes between calls is dropped
//! when the next call begins.
//!
//! Invariants: at most one call at a time (the pool gives a worker capacity 1, and the process
//! is behind an async lock); dropping the worker kills its process group and removes its
//! working directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use spearlet_core::{ErrorCode, Outcome};
use spearlet_runtime::{CallReport, FunctionCall};
use tokio::io::AsyncReadExt;

use crate::runtime_api::{LambdaInvocation, LambdaOutcome, RuntimeApiServer};
use crate::sandbox::{
    ChildStderr, ChildStdout, SandboxSpec, SandboxWorkdir, SandboxedChild, spawn_sandboxed,
};
use crate::task::ProcessTask;

/// Why a worker could not start; the message says what happened and ends with the tail of what
/// the worker wrote, if anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStartError {
    pub message: String,
}

/// How much of a failed start's output goes into its error message.
const START_OUTPUT_TAIL_CHARS: usize = 2000;

/// How much is read from a pipe at a time.
const READ_CHUNK_BYTES: usize = 8192;

pub struct LambdaWorker {
    api: RuntimeApiServer,
    process: tokio::sync::Mutex<WorkerProcess>,
    process_id: u32,
    alive: AtomicBool,
    max_log_bytes: usize,
    task: Arc<ProcessTask>,
    /// Removed when the worker is dropped (after its process group is killed).
    _workdir: SandboxWorkdir,
}

/// The worker's process and its output pipes, used by one call at a time.
struct WorkerProcess {
    child: SandboxedChild,
    stdout: WorkerPipe<ChildStdout>,
    stderr: WorkerPipe<ChildStderr>,
}

/// One output pipe of the worker, read two ways: asynchronously while a call waits for its
/// answer, and synchronously (non-blocking, from a duplicate of the descriptor) to drain it.
struct WorkerPipe<Pipe> {
    pipe: Pipe,
    drain: File,
    closed: bool,
    /// Where reads land; on the heap, so a call's future does not carry it.
    buffer: Box<[u8]>,
}

impl<Pipe: AsFd> WorkerPipe<Pipe> {
    fn new(pipe: Pipe) -> std::io::Result<WorkerPipe<Pipe>> {
        // A duplicate shares the open file description, so it is non-blocking like the pipe.
        let drain = File::from(pipe.as_fd().try_clone_to_owned()?);
        Ok(WorkerPipe {
            pipe,
            drain,
            closed: false,
            buffer: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
        })
    }

    /// Reads everything the pipe holds now into `logs`, without waiting.
    fn drain_into(&mut self, logs: &mut CapturedLogs) {
        while !self.closed {
            match self.drain.read(&mut self.buffer) {
                Ok(0) => self.closed = true,
                Ok(read) => logs.append(&self.buffer[..read]),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                // WouldBlock: the pipe is empty now. Anything else: nothing more to read.
                Err(_) => break,
            }
        }
    }
}

/// What the worker wrote during one call, up to the log cap.
struct CapturedLogs {
    bytes: BytesMut,
    capacity: usize,
}

impl CapturedLogs {
    fn new(capacity: usize) -> CapturedLogs {
        CapturedLogs {
            bytes: BytesMut::new(),
            capacity,
        }
    }

    fn append(&mut self, chunk: &[u8]) {
        let room = self.capacity.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

impl LambdaWorker {
    /// Starts a worker of `task` and waits until it polls for its first invocation. Answers
    /// larger than `max_response_bytes` are refused; each call keeps at most `max_log_bytes` of
    /// output.
    pub async fn start(
        task: Arc<ProcessTask>,
        max_response_bytes: u64,
        max_log_bytes: u64,
    ) -> Result<LambdaWorker, WorkerStartError> {
        let start_error = |message: String| WorkerStartError { message };
        let workdir = SandboxWorkdir::create(&task.workdir_base)
            .map_err(|error| start_error(error.message))?;
        let api = RuntimeApiServer::start(max_response_bytes)
            .await
            .map_err(|error| start_error(format!("binding the Runtime API: {error}")))?;
        let mut environment = task.lambda_worker_environment();
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
        let pipes = match (child.take_stdout(), child.take_stderr()) {
            (Some(stdout), Some(stderr)) => WorkerPipe::new(stdout)
                .and_then(|stdout| Ok((stdout, WorkerPipe::new(stderr)?)))
                .map_err(|error| format!("duplicating the worker's output pipes: {error}")),
            _ => Err("the worker's output pipes are missing".to_owned()),
        };
        let (stdout, stderr) = match pipes {
            Ok(pipes) => pipes,
            Err(message) => {
                child.kill_group().await;
                return Err(start_error(message));
            }
        };
        let mut process = WorkerProcess {
            child,
            stdout,
            stderr,
        };
        let max_log_bytes = usize::try_from(max_log_bytes).unwrap_or(usize::MAX);
        let mut start_output = CapturedLogs::new(max_log_bytes);
        let init_timeout = Duration::from_millis(task.settings.init_timeout_ms);
        let ready = {
            let WorkerProcess {
                child,
                stdout,
                stderr,
            } = &mut process;
            let waiting = async {
                tokio::select! {
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
                }
            };
            read_pipes_until(waiting, stdout, stderr, &mut start_output).await
        };
        if let Err(message) = ready {
            process.child.kill_group().await;
            process.stdout.drain_into(&mut start_output);
            process.stderr.drain_into(&mut start_output);
            let output = String::from_utf8_lossy(&start_output.bytes);
            let tail = output.trim();
            return Err(start_error(if tail.is_empty() {
                message
            } else {
                format!(
                    "{message}; its output: {}",
                    last_chars(tail, START_OUTPUT_TAIL_CHARS)
                )
            }));
        }
        tracing::debug!(task_name = %task.task_name, process_id, "lambda worker ready");
        Ok(LambdaWorker {
            api,
            process: tokio::sync::Mutex::new(process),
            process_id,
            alive: AtomicBool::new(true),
            max_log_bytes,
            task,
            _workdir: workdir,
        })
    }

    /// Whether the worker process is still running (checked without waiting).
    pub fn is_alive(&self) -> bool {
        if !self.alive.load(Ordering::Relaxed) {
            return false;
        }
        match self.process.try_lock() {
            // A call holds it: it is alive as far as anyone can tell now.
            Err(_) => true,
            Ok(mut process) => {
                let running = process.child.is_running();
                if !running {
                    self.alive.store(false, Ordering::Relaxed);
                }
                running
            }
        }
    }

    /// Runs one call on the worker: the input is the event, the execution id the request id.
    pub async fn invoke(&self, call: FunctionCall) -> CallReport {
        let mut process = self.process.lock().await;
        let WorkerProcess {
            child,
            stdout,
            stderr,
        } = &mut *process;
        // What the worker wrote since the last call belongs to no call.
        let mut discarded = CapturedLogs::new(0);
        stdout.drain_into(&mut discarded);
        stderr.drain_into(&mut discarded);
        let mut logs = CapturedLogs::new(self.max_log_bytes);

        let deadline_unix_ms = unix_ms()
            + call
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64;
        let invocation = LambdaInvocation {
            request_id: call.execution_id,
            payload: call.input,
            deadline_unix_ms,
            invoked_function_arn: self.task.function_arn.clone(),
            trace_id: call.trace.xray_trace_id(),
            output_chunks: call.output_chunks,
        };
        let cancellation = call.cancellation;
        let deadline = call.deadline;
        let mut metrics: BTreeMap<String, String> =
            [("process_id".to_owned(), self.process_id.to_string())].into();
        let answer = async {
            tokio::select! {
                outcome = self.api.invoke(invocation) => AnswerEnd::Answered(outcome),
                status = child.wait() => AnswerEnd::Exited(match status {
                    Ok(status) => status.to_string(),
                    Err(error) => error.to_string(),
                }),
                () = tokio::time::sleep_until(deadline) => AnswerEnd::DeadlinePassed,
                () = cancellation.cancelled() => AnswerEnd::Cancelled,
            }
        };
        let end = read_pipes_until(answer, stdout, stderr, &mut logs).await;
        let mut content_type = None;
        let (outcome, output, usable) = match end {
            AnswerEnd::Answered(LambdaOutcome::Response {
                body,
                content_type: declared,
            }) => {
                content_type = declared;
                (Outcome::Completed, body, true)
            }
            AnswerEnd::Answered(LambdaOutcome::FunctionError {
                error_type,
                error_message,
                body,
            }) => {
                metrics.insert("error_type".into(), error_type);
                (
                    Outcome::Failed {
                        code: ErrorCode::FunctionError,
                        message: error_message,
                    },
                    body,
                    true,
                )
            }
            AnswerEnd::Answered(LambdaOutcome::ResponseTooLarge { limit }) => (
                Outcome::Failed {
                    code: ErrorCode::OutputTooLarge,
                    message: format!("the response exceeded the cap of {limit} bytes"),
                },
                Bytes::new(),
                true,
            ),
            AnswerEnd::Answered(LambdaOutcome::InitError(error)) => {
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
            AnswerEnd::Exited(described) => (
                Outcome::Failed {
                    code: ErrorCode::WorkerCrashed,
                    message: format!(
                        "the worker process {} ended during the call ({described})",
                        self.process_id
                    ),
                },
                Bytes::new(),
                false,
            ),
            AnswerEnd::DeadlinePassed => (
                Outcome::TimedOut {
                    message: "the call did not finish before its deadline".into(),
                },
                Bytes::new(),
                false,
            ),
            AnswerEnd::Cancelled => (
                Outcome::Cancelled {
                    reason: "cancelled".into(),
                },
                Bytes::new(),
                false,
            ),
        };
        if !usable {
            self.alive.store(false, Ordering::Relaxed);
            child.kill_group().await;
        }
        // Whatever the worker wrote before it answered (or died) is in the pipes by now.
        stdout.drain_into(&mut logs);
        stderr.drain_into(&mut logs);
        CallReport {
            outcome,
            output,
            output_content_type: content_type,
            logs: logs.bytes.freeze(),
            // The sandbox caps a worker's memory but does not measure it.
            memory_used_bytes: None,
            start_duration: Duration::ZERO,
            metrics,
            instance_still_usable: usable,
        }
    }
}

/// How waiting for a worker's answer ended.
enum AnswerEnd {
    Answered(LambdaOutcome),
    Exited(String),
    DeadlinePassed,
    Cancelled,
}

/// Polls `until` to its end while reading both pipes into `logs`, so a worker that writes more
/// than a pipe holds never blocks on it.
async fn read_pipes_until<T>(
    until: impl Future<Output = T>,
    stdout: &mut WorkerPipe<ChildStdout>,
    stderr: &mut WorkerPipe<ChildStderr>,
    logs: &mut CapturedLogs,
) -> T {
    let mut until = std::pin::pin!(until);
    loop {
        // Reads from the pipes are cancel-safe: a read dropped before it completes consumed
        // nothing.
        tokio::select! {
            biased;
            end = &mut until => return end,
            read = stdout.pipe.read(&mut stdout.buffer), if !stdout.closed => match read {
                Ok(0) | Err(_) => stdout.closed = true,
                Ok(read) => logs.append(&stdout.buffer[..read]),
            },
            read = stderr.pipe.read(&mut stderr.buffer), if !stderr.closed => match read {
                Ok(0) | Err(_) => stderr.closed = true,
                Ok(read) => logs.append(&stderr.buffer[..read]),
            },
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
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
        let mut logs = CapturedLogs::new(5);
        logs.append(b"abc");
        logs.append(b"defg");
        assert_eq!(&logs.bytes[..], b"abcde");
        assert_eq!(last_chars("hello", 3), "llo");
        assert_eq!(last_chars("hi", 3), "hi");
    }
}
