//! deploy/: the compose stack and its configs are valid, and the Grafana dashboard queries only
//! metrics weir exports. (The stack cannot run here: no container engine.)

use std::path::PathBuf;
use weir_e2e::two::{ask, setup_with};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_compose_stack_follows_the_spec_and_its_files_exist() {
    let dir = std::env::temp_dir().join(format!("weir-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(weir_e2e::python("check-jsonschema"))
        .arg(root().join("tests/python/deploy_check.py"))
        .arg(root().join("deploy"))
        .arg(&dir)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "ok compose schema",
        "ok mounts",
        "ok yaml",
        "ok collector pipeline",
        "ok dashboard",
    ] {
        assert!(stdout.contains(step), "{step} missing in:\n{stdout}");
    }
    // The Kubernetes ConfigMap's weir.toml is a config weir accepts, limits shared.
    let text = std::fs::read_to_string(dir.join("kubernetes-weir.toml")).unwrap();
    let config = weir::config::parse("weir.yaml".as_ref(), &text, &deploy_env).expect("valid");
    assert!(matches!(config.ratelimit, weir::config::LimitStore::Redis(ref r) if r.replicas == 10));
}

/// The environment the deploy configs name: the Secret's keys and the Redis URL.
fn deploy_env(name: &str) -> Option<String> {
    match name {
        "REDIS_URL" => Some("redis://weir-redis:6379/0".to_owned()),
        "OPENAI_API_KEY" | "DEEPSEEK_API_KEY" | "OPENAI_ORG" => Some(format!("{name}-value")),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_dashboard_queries_only_metrics_weir_exports() {
    let s = setup_with(None, "", None, "").await;
    assert_eq!(ask(&s.weir, "chunks=2").await.status, 200);
    let text = weir_e2e::metrics_at(s.weir.admin_addr()).await;
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/observability/grafana/dashboards/weir.json"))
            .unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("weir_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|f| families.contains(f))
                    .unwrap_or(&name);
                assert!(
                    families.contains(&family),
                    "panel `{}` queries `{name}`, which weir does not export",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10);
}
