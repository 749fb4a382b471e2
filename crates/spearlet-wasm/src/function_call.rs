//! The runtime boundary on the wasm side: a runtime-neutral [`FunctionCall`] becomes a WASI
//! invocation (argv `[task name, function name]`, the shared guest environment, stdin, the
//! task's preopened directories), and the run's report becomes a [`CallReport`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use spearlet_core::AllowedOutboundHosts;
use spearlet_runtime::{CallReport, FunctionCall};

use crate::component::{ComponentEntry, ComponentInvocation, WasmComponent};
use crate::module::{EntryPoint, RunReport, WasmInvocation, WasmModule};
use crate::reusable::ReusableInstance;

/// What every call of one wasm task shares, fixed at registration.
#[derive(Clone, Debug, Default)]
pub struct WasmTaskSettings {
    /// The task's declared variables (`spearlet.env.*`).
    pub environment: BTreeMap<String, String>,
    /// Read-only directories: host path (already checked against the allowed roots), guest
    /// path.
    pub preopened_directories: Vec<(PathBuf, String)>,
    /// Where a component may send outbound HTTP (`spearlet.http.allowed_hosts`).
    pub allowed_outbound_hosts: Arc<AllowedOutboundHosts>,
}

impl WasmTaskSettings {
    /// The WASI invocation of `call` on `entry_point`.
    pub fn invocation(&self, entry_point: EntryPoint, call: FunctionCall) -> WasmInvocation {
        let environment = call.guest_environment(&self.environment);
        WasmInvocation {
            entry_point,
            stdin: call.input,
            arguments: vec![call.task_name, call.function_name],
            environment,
            preopened_directories: self.preopened_directories.clone(),
            memory_limit_bytes: call.limits.memory_limit_bytes,
            max_output_bytes: call.limits.max_output_bytes,
            max_log_bytes: call.limits.max_log_bytes,
            deadline: call.deadline,
            cancellation: call.cancellation,
            output_chunks: call.output_chunks,
        }
    }
}

impl WasmComponent {
    /// Runs `call` on a fresh instance of the component. A command gets the WASI invocation a
    /// module gets; an HTTP handler gets the request `entry` names, with the call's headers and
    /// its input as the body.
    pub async fn run_call(
        &self,
        entry: ComponentEntry,
        settings: &WasmTaskSettings,
        call: FunctionCall,
    ) -> CallReport {
        let environment = call.guest_environment(&settings.environment);
        let invocation = ComponentInvocation {
            entry,
            input: call.input,
            arguments: vec![call.task_name, call.function_name],
            environment,
            request_headers: call.caller_headers,
            preopened_directories: settings.preopened_directories.clone(),
            allowed_outbound_hosts: settings.allowed_outbound_hosts.clone(),
            memory_limit_bytes: call.limits.memory_limit_bytes,
            max_output_bytes: call.limits.max_output_bytes,
            max_log_bytes: call.limits.max_log_bytes,
            deadline: call.deadline,
            cancellation: call.cancellation,
            output_chunks: call.output_chunks,
            http_response_head: call.http_response_head,
        };
        call_report(self.run(invocation).await, true)
    }
}

impl WasmModule {
    /// Runs `call` on a fresh instance of the module (`per_call` isolation).
    pub async fn run_call(
        &self,
        entry_point: EntryPoint,
        settings: &WasmTaskSettings,
        call: FunctionCall,
    ) -> CallReport {
        let report = self.run(settings.invocation(entry_point, call)).await;
        call_report(report, true)
    }
}

impl ReusableInstance {
    /// Runs `call` on this live instance (`reuse` isolation). The report says whether the
    /// instance may serve again.
    pub async fn run_call(
        &mut self,
        entry_point: EntryPoint,
        settings: &WasmTaskSettings,
        call: FunctionCall,
    ) -> CallReport {
        let call = self.call(settings.invocation(entry_point, call)).await;
        call_report(call.report, call.instance_still_usable)
    }
}

fn call_report(report: RunReport, instance_still_usable: bool) -> CallReport {
    CallReport {
        outcome: report.outcome,
        output: report.output,
        output_content_type: None,
        logs: report.logs,
        memory_used_bytes: Some(report.peak_memory_bytes),
        start_duration: report.instantiate_duration,
        metrics: report.metrics,
        instance_still_usable,
    }
}
