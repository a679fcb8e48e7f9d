//! The official `openai` Python SDK, streaming and not, through weir.
//!
//! Needs a Python with the `openai` package: `WEIR_PYTHON`, or `.venv/bin/python` at the
//! workspace root (`cargo xtask test` creates it).

use std::path::PathBuf;
use weir_e2e::Harness;

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("WEIR_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the openai SDK: run `cargo xtask test` (it creates .venv) or set WEIR_PYTHON"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_streams_through_weir_unchanged() {
    let h = Harness::start().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/openai_sdk_check.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .arg(h.base_url())
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK check failed:\n{stdout}\n{stderr}"
    );
    for step in [
        "ok streaming 21",
        "ok streaming usage 20",
        "ok non-streaming",
        "ok unknown model -> 404 model_not_found",
        "ok cut stream raises",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    // The SDK's key stayed at weir.
    assert!(h
        .mock
        .requests()
        .iter()
        .all(|r| !format!("{:?}", r.headers).contains("sk-client-side-key")));
}
