//! A process task as its instances run it: the unpacked artifact, how its processes start, and
//! the translation of a runtime-neutral [`FunctionCall`] into one exec-mode process.
//!
//! The environment a function process sees is built here and nowhere else: an exec process gets
//! the guest environment every runtime shares (the task's variables, the caller's, `SPEAR_*`)
//! plus `PATH` and `LAMBDA_TASK_ROOT`; a Lambda worker gets the variables the Runtime API
//! clients expect ([`ProcessTask::lambda_worker_environment`]), fixed when the worker starts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use spearlet_core::ProcessSettings;
use spearlet_runtime::{CallReport, FunctionCall};

use crate::exec::{ProcessCall, run_exec};
use crate::sandbox::ProcessLimits;

/// The `PATH` function processes get (nothing is inherited from the node).
const FUNCTION_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A process task: its unpacked artifact and how to run it.
#[derive(Debug)]
pub struct ProcessTask {
    /// `LAMBDA_TASK_ROOT`: where the artifact was unpacked.
    pub root: PathBuf,
    pub entrypoint: PathBuf,
    pub settings: ProcessSettings,
    pub limits: ProcessLimits,
    /// The task's declared variables (`spearlet.env.*`).
    pub environment: BTreeMap<String, String>,
    /// The handler a lambda worker serves (`_HANDLER`).
    pub handler: String,
    /// Per-instance working directories are created under it.
    pub workdir_base: PathBuf,
    pub task_name: String,
    pub version: String,
    /// Synthesised, stable per task.
    pub function_arn: String,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.
    pub memory_limit_mb: u32,
}

impl ProcessTask {
    /// Runs one exec-mode call: a new process with `argv = [program, function_name]`, the input
    /// on stdin, the output from stdout and the logs from stderr.
    pub async fn run_exec_call(&self, call: FunctionCall) -> CallReport {
        let mut environment = call.guest_environment(&self.environment);
        environment.extend([
            ("PATH".to_owned(), FUNCTION_PATH.to_owned()),
            (
                "LAMBDA_TASK_ROOT".to_owned(),
                self.root.display().to_string(),
            ),
        ]);
        let report = run_exec(
            &self.entrypoint,
            ProcessCall {
                stdin: call.input,
                arguments: vec![call.function_name],
                environment,
                max_output_bytes: call.limits.max_output_bytes,
                max_log_bytes: call.limits.max_log_bytes,
                deadline: call.deadline,
                cancellation: call.cancellation,
                output_chunks: call.output_chunks,
            },
            &self.limits,
            &self.workdir_base,
        )
        .await;
        CallReport {
            outcome: report.outcome,
            output: report.output,
            output_content_type: None,
            logs: report.logs,
            // The sandbox caps a process's memory but does not measure it.
            memory_used_bytes: None,
            start_duration: report.spawn_duration,
            metrics: [("process_id".to_owned(), report.process_id.to_string())].into(),
            instance_still_usable: true,
        }
    }

    /// The environment of a lambda worker: the task's declared variables plus what the Runtime
    /// API clients expect (`AWS_LAMBDA_RUNTIME_API` is added when the worker starts). A worker
    /// serves call after call, so per-call variables (the caller's, `SPEAR_*`) cannot reach it;
    /// the call's identity travels in the Runtime API's headers instead.
    pub fn lambda_worker_environment(&self) -> Vec<(String, String)> {
        let mut environment = self.environment.clone();
        let root = self.root.display().to_string();
        for (name, value) in [
            ("PATH", FUNCTION_PATH.to_owned()),
            ("LANG", "C.UTF-8".to_owned()),
            ("TZ", ":UTC".to_owned()),
            ("LAMBDA_TASK_ROOT", root.clone()),
            ("LAMBDA_RUNTIME_DIR", root),
            ("_HANDLER", self.handler.clone()),
            ("AWS_LAMBDA_FUNCTION_NAME", self.task_name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", self.version.clone()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                self.memory_limit_mb.to_string(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/spearlet/{}", self.task_name),
            ),
            ("AWS_LAMBDA_LOG_STREAM_NAME", self.task_name.clone()),
            ("AWS_REGION", "spearlet".to_owned()),
            ("AWS_DEFAULT_REGION", "spearlet".to_owned()),
            ("AWS_EXECUTION_ENV", "spearlet".to_owned()),
        ] {
            environment.insert(name.to_owned(), value);
        }
        environment.into_iter().collect()
    }
}
