//! Mode `exec`: a new process per call.
//!
//! The call's input goes to stdin (closed once written), stdout is the output and stderr the
//! logs, each captured up to its cap. Arguments and environment are the call's; exit codes mean
//! what they mean for a wasm command: 0 completes the call, anything else fails it.
//!
//! Invariant: when [`run_exec`] returns, the process and everything it started in its process
//! group are dead and reaped (the group is killed even after a normal exit, so a backgrounded
//! grandchild dies too), and its working directory is gone.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spearlet_core::{ErrorCode, Outcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sandbox::{ProcessLimits, SandboxSpec, SandboxWorkdir, SandboxedChild, spawn_sandboxed};

/// One call of an exec-mode function.
pub struct ProcessCall {
    /// Written to the process's stdin, which is then closed.
    pub stdin: Bytes,
    /// `argv[1..]` (the runtime passes the function name); `argv[0]` is the program path.
    pub arguments: Vec<String>,
    /// The process's whole environment (nothing is inherited from the node).
    pub environment: Vec<(String, String)>,
    /// The stdout cap: writing more fails the call with `OUTPUT_TOO_LARGE`.
    pub max_output_bytes: u64,
    /// The stderr cap: writing more fails the call with `OUTPUT_TOO_LARGE`.
    pub max_log_bytes: u64,
    pub deadline: Instant,
    pub cancellation: CancellationToken,
    /// Receives stdout chunk by chunk as the process writes it (for streaming callers).
    pub output_chunks: Option<UnboundedSender<Bytes>>,
}

/// How one exec-mode call went.
#[derive(Debug)]
pub struct ProcessReport {
    pub outcome: Outcome,
    /// stdout, up to its cap.
    pub output: Bytes,
    /// stderr, up to its cap.
    pub logs: Bytes,
    /// The pid the process had (0 when it never started).
    pub process_id: u32,
    /// How long starting the process took (fork to successful exec).
    pub spawn_duration: Duration,
}

/// After the process exits, how long to keep reading what it left in its pipes. Its group is
/// dead by then, so the pipes close at once unless a descendant escaped the group.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// How much is read from a pipe at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Runs `program` once for `call`: spawns it sandboxed under `limits` in a fresh working
/// directory under `workdir_base`, feeds stdin, captures stdout and stderr with their caps, and
/// races the process against the deadline and the cancellation (either kills the whole group:
/// `TIMEOUT` / `CANCELLED`).
///
/// A process that cannot be started (a missing or foreign executable, a working directory that
/// cannot be created) fails the call with `INIT_FAILED` and the reason.
pub async fn run_exec(
    program: &Path,
    call: ProcessCall,
    limits: &ProcessLimits,
    workdir_base: &Path,
) -> ProcessReport {
    let workdir = match SandboxWorkdir::create(workdir_base) {
        Ok(workdir) => workdir,
        Err(error) => return not_started_report(error.message, Duration::ZERO),
    };
    let spec = SandboxSpec {
        program: program.to_path_buf(),
        arguments: call.arguments,
        environment: call.environment,
        working_directory: workdir.path().to_path_buf(),
        limits: limits.clone(),
        stdin: true,
    };
    let spawn_started = Instant::now();
    let spawned = spawn_sandboxed(spec);
    let spawn_duration = spawn_started.elapsed();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => return not_started_report(error.message, spawn_duration),
    };
    let mut captures = Captures {
        stdout: StreamCapture::new("stdout", call.max_output_bytes, call.output_chunks),
        stderr: StreamCapture::new("stderr", call.max_log_bytes, None),
    };
    let end = supervise(
        &mut child,
        call.stdin,
        &mut captures,
        call.deadline,
        &call.cancellation,
    )
    .await;
    // Every path ends with the group dead and the leader reaped; `supervise` already did that
    // after a normal exit, and this is then a no-op.
    child.kill_group().await;
    let process_id = child.pid();
    drop(child);
    drop(workdir);
    ProcessReport {
        outcome: captures.outcome_of(end),
        output: captures.stdout.buffer.freeze(),
        logs: captures.stderr.buffer.freeze(),
        process_id,
        spawn_duration,
    }
}

fn not_started_report(message: String, spawn_duration: Duration) -> ProcessReport {
    ProcessReport {
        outcome: Outcome::Failed {
            code: ErrorCode::InitFailed,
            message,
        },
        output: Bytes::new(),
        logs: Bytes::new(),
        process_id: 0,
        spawn_duration,
    }
}

/// How the supervised process's run ended.
enum CallEnd {
    Exited(std::io::Result<ExitStatus>),
    /// A stream went over its cap; the group was killed.
    OutputTooLarge,
    DeadlinePassed,
    Cancelled,
}

/// Feeds stdin and reads stdout and stderr until the process exits, a cap is exceeded, the
/// deadline passes or the call is cancelled. After an exit, drains what is left in the pipes.
async fn supervise(
    child: &mut SandboxedChild,
    stdin_bytes: Bytes,
    captures: &mut Captures,
    deadline: Instant,
    cancellation: &CancellationToken,
) -> CallEnd {
    let stdin = child.take_stdin();
    let mut stdout = child.take_stdout();
    let mut stderr = child.take_stderr();
    let feed_stdin = async move {
        if let Some(mut stdin) = stdin {
            // A process that exits (or closes stdin) without reading everything is its own
            // business: the broken pipe is not an error of the call.
            let _ = stdin.write_all(&stdin_bytes).await;
            let _ = stdin.shutdown().await;
        }
    };
    tokio::pin!(feed_stdin);
    let mut stdin_done = false;
    let mut stdout_buffer = vec![0; READ_CHUNK_BYTES];
    let mut stderr_buffer = vec![0; READ_CHUNK_BYTES];
    let exit = loop {
        tokio::select! {
            () = &mut feed_stdin, if !stdin_done => stdin_done = true,
            read = read_some(&mut stdout, &mut stdout_buffer), if stdout.is_some() => {
                if !captures.stdout.take_read(read, &mut stdout, &stdout_buffer) {
                    return CallEnd::OutputTooLarge;
                }
            }
            read = read_some(&mut stderr, &mut stderr_buffer), if stderr.is_some() => {
                if !captures.stderr.take_read(read, &mut stderr, &stderr_buffer) {
                    return CallEnd::OutputTooLarge;
                }
            }
            status = child.wait() => break status,
            () = tokio::time::sleep_until(deadline) => return CallEnd::DeadlinePassed,
            () = cancellation.cancelled() => return CallEnd::Cancelled,
        }
    };
    // The leader is reaped and its group killed: read what the process wrote before it exited.
    let drain = async {
        while stdout.is_some() || stderr.is_some() {
            tokio::select! {
                read = read_some(&mut stdout, &mut stdout_buffer), if stdout.is_some() => {
                    if !captures.stdout.take_read(read, &mut stdout, &stdout_buffer) {
                        return false;
                    }
                }
                read = read_some(&mut stderr, &mut stderr_buffer), if stderr.is_some() => {
                    if !captures.stderr.take_read(read, &mut stderr, &stderr_buffer) {
                        return false;
                    }
                }
            }
        }
        true
    };
    match tokio::time::timeout(DRAIN_GRACE, drain).await {
        Ok(false) => CallEnd::OutputTooLarge,
        Ok(true) | Err(_) => CallEnd::Exited(exit),
    }
}

/// Reads once from `stream` (which the caller checked is present).
async fn read_some<Stream: AsyncRead + Unpin>(
    stream: &mut Option<Stream>,
    buffer: &mut [u8],
) -> std::io::Result<usize> {
    match stream {
        Some(stream) => stream.read(buffer).await,
        None => std::future::pending().await,
    }
}

struct Captures {
    stdout: StreamCapture,
    stderr: StreamCapture,
}

impl Captures {
    fn outcome_of(&self, end: CallEnd) -> Outcome {
        for capture in [&self.stdout, &self.stderr] {
            if capture.overflowed {
                return Outcome::Failed {
                    code: ErrorCode::OutputTooLarge,
                    message: format!(
                        "the process wrote more than the {} cap of {} bytes",
                        capture.stream_name, capture.capacity
                    ),
                };
            }
        }
        match end {
            CallEnd::Exited(Ok(status)) => exit_outcome(status),
            CallEnd::Exited(Err(error)) => Outcome::Failed {
                code: ErrorCode::ExitCode,
                message: format!("could not wait for the process: {error}"),
            },
            // Only reached with an overflowed capture, handled above.
            CallEnd::OutputTooLarge => Outcome::Failed {
                code: ErrorCode::OutputTooLarge,
                message: "the process wrote more than its cap".into(),
            },
            CallEnd::DeadlinePassed => Outcome::TimedOut {
                message: "the call did not finish before its deadline".into(),
            },
            CallEnd::Cancelled => Outcome::Cancelled {
                reason: "cancelled".into(),
            },
        }
    }
}

/// Exit code 0 completes the call; a non-zero code or a signal fails it as `EXIT_CODE`.
fn exit_outcome(status: ExitStatus) -> Outcome {
    if let Some(code) = status.code() {
        if code == 0 {
            return Outcome::Completed;
        }
        return Outcome::Failed {
            code: ErrorCode::ExitCode,
            message: format!("exited with code {code}"),
        };
    }
    let signal = status.signal().unwrap_or(0);
    let core_dumped = if status.core_dumped() {
        ", core dumped"
    } else {
        ""
    };
    Outcome::Failed {
        code: ErrorCode::ExitCode,
        message: format!(
            "killed by signal {signal} ({}{core_dumped})",
            signal_name(signal)
        ),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU, the CPU time limit",
        libc::SIGXFSZ => "SIGXFSZ, the file size limit",
        libc::SIGSYS => "SIGSYS",
        _ => "unnamed signal",
    }
}

/// One captured stream: kept up to its cap, and forwarded chunk by chunk if asked.
struct StreamCapture {
    stream_name: &'static str,
    buffer: BytesMut,
    capacity: usize,
    overflowed: bool,
    chunks: Option<UnboundedSender<Bytes>>,
}

impl StreamCapture {
    fn new(
        stream_name: &'static str,
        capacity: u64,
        chunks: Option<UnboundedSender<Bytes>>,
    ) -> StreamCapture {
        StreamCapture {
            stream_name,
            buffer: BytesMut::new(),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            overflowed: false,
            chunks,
        }
    }

    /// Takes the result of one read: appends the bytes (closing `stream` at end of file or on
    /// an error). `false` when the stream went over its cap.
    fn take_read<Stream>(
        &mut self,
        read: std::io::Result<usize>,
        stream: &mut Option<Stream>,
        read_buffer: &[u8],
    ) -> bool {
        match read {
            Ok(0) | Err(_) => {
                *stream = None;
                true
            }
            Ok(length) => self.append(&read_buffer[..length]),
        }
    }

    /// Keeps what fits under the cap; `false` (and remembered) when `bytes` did not all fit.
    fn append(&mut self, bytes: &[u8]) -> bool {
        let room = self.capacity - self.buffer.len();
        let kept = &bytes[..bytes.len().min(room)];
        if !kept.is_empty() {
            self.buffer.extend_from_slice(kept);
            if let Some(chunks) = &self.chunks {
                // A closed receiver means nobody is watching live any more; capturing goes on.
                let _ = chunks.send(Bytes::copy_from_slice(kept));
            }
        }
        if bytes.len() > room {
            self.overflowed = true;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_keep_what_fits_and_remember_overflow() {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut capture = StreamCapture::new("stdout", 5, Some(sender));
        assert!(capture.append(b"abc"));
        assert!(!capture.append(b"defg"));
        assert!(capture.overflowed);
        assert_eq!(&capture.buffer[..], b"abcde");
        assert_eq!(receiver.try_recv().unwrap(), Bytes::from_static(b"abc"));
        assert_eq!(receiver.try_recv().unwrap(), Bytes::from_static(b"de"));
    }

    #[test]
    fn exit_statuses_map_to_outcomes() {
        assert_eq!(exit_outcome(ExitStatus::from_raw(0)), Outcome::Completed);
        assert_eq!(
            exit_outcome(ExitStatus::from_raw(3 << 8)),
            Outcome::Failed {
                code: ErrorCode::ExitCode,
                message: "exited with code 3".into()
            }
        );
        assert_eq!(
            exit_outcome(ExitStatus::from_raw(libc::SIGKILL)),
            Outcome::Failed {
                code: ErrorCode::ExitCode,
                message: "killed by signal 9 (SIGKILL)".into()
            }
        );
    }
}
