//! weir's developer tasks. Run as `cargo xtask <task>`.
//!
//! - `test`: the whole suite (creates `.venv` with the `openai` SDK first);
//! - `ci`: format check, clippy with `-D warnings`, the dependency rule, then `test`;
//! - `deps`: proves that no layer crate depends on another layer crate or on the binary;
//! - `demo`: the mock upstream, weir with `deploy/examples/mock.toml`, and one streamed
//!   completion printed as it arrives;
//! - `bench`: weir against a direct connection to the same mock, in one run;
//! - `models FILE`: refreshes the known models' figures from LiteLLM's price table;
//! - `profile`: instructions per stream and per whole answer under callgrind, weir beside
//!   nginx and HAProxy (repeatable where wall-clock CPU is not);
//! - `soak`: many concurrent streams whose primary is cut at random bytes, continued on a
//!   backup; counts the streams that looked complete but were wrong (must be 0).

mod bench;
mod load;
mod models;
mod profile;
mod redisbench;
mod tlsbench;
mod wsbench;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <test|ci|deps|demo|bench|models|profile|soak> [options]
  test                 run the whole test suite (creates .venv with the openai SDK)
  ci                   fmt --check, clippy -D warnings, deps, test
  deps                 check that layer crates depend on no other layer nor on the binary
  demo [--keep]        run weir on the mock upstream and stream one completion
  bench [--quick] [--streams N,N] [--no-nginx] [--only SECTION] [--weir PATH]
                       (sections: limiter ttft throughput streams slow redis tls websocket)
                       weir vs. a direct connection (and nginx, if installed)
  models FILE          refresh bin/weir/data/models.toml from LiteLLM's price table
  profile [--requests N] [--weir PATH] [--only PROXY]
                       instructions per stream and per whole answer (callgrind), with peers
  soak [--streams N] [--concurrency N] [--seed N]
                       streams cut at random bytes and continued; release build";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = root();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&root),
        Some("ci") => ci(&root),
        Some("deps") => deps(&root),
        Some("demo") => demo(&root, args.iter().any(|a| a == "--keep")),
        Some("bench") => bench::run(&root, &args[1..]),
        Some("models") => models::run(&root, &args[1..]),
        Some("profile") => profile::run(&root, &args[1..]),
        Some("soak") => soak(&root, &args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) type Result<T = ()> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub(crate) fn run(cmd: &mut Command) -> Result {
    eprintln!("$ {}", shown(cmd));
    let status = cmd.status().map_err(|e| format!("{}: {e}", shown(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", shown(cmd)))
    }
}

fn shown(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// `.venv` with the packages of `tests/python/requirements.txt`; returns its python.
fn python_env(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    let requirements = root.join("tests/python/requirements.txt");
    let stamp = venv.join(".weir-requirements");
    let wanted = std::fs::read_to_string(&requirements).map_err(|e| e.to_string())?;
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let system = if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    };
    run(Command::new(system).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
}

fn test(root: &Path) -> Result {
    let python = python_env(root)?;
    redis_server()?;
    let nextest = cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if nextest {
        run(cargo()
            .current_dir(root)
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .env("WEIR_PYTHON", &python))?;
    } else {
        run(cargo()
            .current_dir(root)
            .args(["test", "--workspace", "--no-fail-fast"])
            .env("WEIR_PYTHON", &python))?;
    }
    // nextest does not run doctests; the docs' examples are tests too.
    run(cargo()
        .current_dir(root)
        .args(["test", "--workspace", "--doc"]))
}

/// The shared-limit tests start a real `redis-server`: installed from Debian's packages when
/// missing and this runs as root (as CI does), else a clear error before any test runs.
fn redis_server() -> Result {
    let have = || {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root && Command::new("apt-get").arg("--version").output().is_ok() {
        eprintln!("xtask: installing redis-server (the shared rate-limit tests start one)");
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "redis-server"]))?;
        // Debian's package starts a service of its own; the tests start their own servers.
        let _ = Command::new("service")
            .args(["redis-server", "stop"])
            .output();
        if have() {
            return Ok(());
        }
    }
    Err("the tests need redis-server on the PATH: apt-get install redis-server".into())
}

/// The soak test (`tests/tests/soak.rs`) at a size given on the command line, release build.
fn soak(root: &Path, args: &[String]) -> Result {
    let mut cmd = cargo();
    cmd.current_dir(root).args([
        "test",
        "--release",
        "-p",
        "weir-e2e",
        "--test",
        "soak",
        "--",
        "--nocapture",
    ]);
    cmd.env("WEIR_SOAK_STREAMS", "50000");
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let var = match flag.as_str() {
            "--streams" => "WEIR_SOAK_STREAMS",
            "--concurrency" => "WEIR_SOAK_CONCURRENCY",
            "--seed" => "WEIR_SOAK_SEED",
            other => return Err(format!("soak: unknown option `{other}`")),
        };
        let value = rest
            .next()
            .ok_or(format!("soak: `{flag}` needs a number"))?;
        value
            .parse::<u64>()
            .map_err(|_| format!("soak: `{flag}` needs a number, got `{value}`"))?;
        cmd.env(var, value);
    }
    run(&mut cmd)
}

fn ci(root: &Path) -> Result {
    run(cargo().current_dir(root).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    deps(root)?;
    run(cargo()
        .current_dir(root)
        .args(["doc", "--workspace", "--no-deps", "--quiet"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    test(root)
}

/// Layer crates (`crates/weir-*` but the vocabulary and test crates) must not depend on one
/// another or on the binary.
fn deps(root: &Path) -> Result {
    let out = cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let packages = meta["packages"]
        .as_array()
        .ok_or("no packages in cargo metadata")?;
    // The vocabulary, the layers' shared primitives, and test support (dev only).
    let shared = ["weir-llm", "weir-util", "weir-test"];
    let is_layer =
        |name: &str| name.starts_with("weir-") && !shared.contains(&name) && name != "weir-e2e";
    let mut broken = Vec::new();
    let mut layers = 0;
    for package in packages {
        let name = package["name"].as_str().unwrap_or_default();
        if !is_layer(name) {
            continue;
        }
        layers += 1;
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            let dev = dep["kind"].as_str() == Some("dev");
            if dep_name == "weir" || (is_layer(dep_name) && !dev) {
                broken.push(format!("{name} depends on {dep_name}"));
            }
        }
    }
    if broken.is_empty() {
        eprintln!("deps: {layers} layer crates, none depends on another layer or on the binary");
        Ok(())
    } else {
        Err(format!(
            "layer dependency rule broken: {}",
            broken.join(", ")
        ))
    }
}

fn demo(root: &Path, keep: bool) -> Result {
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "weir", "-p", "weir-test"]))?;
    let bin = root.join("target/release");
    let config = root.join("deploy/examples/mock.toml");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let mut mock = bench::Proc::spawn(
            "weir-mock",
            Command::new(bin.join("weir-mock")).args(["--listen", "127.0.0.1:8091"]),
        )?;
        mock.wait_line("listening on").await?;
        let mut weir = bench::Proc::spawn(
            "weir",
            Command::new(bin.join("weir")).arg("--config").arg(&config).env("WEIR_LOG", "info"),
        )?;
        weir.wait_line("weir is serving").await?;
        eprintln!("\nweir listens on 127.0.0.1:8080 (admin 127.0.0.1:9090), in front of the mock on 127.0.0.1:8091.");
        eprintln!("POST /v1/chat/completions {{\"model\":\"gpt-4o-mini\",\"stream\":true,...}}\n");
        let result = load::print_stream("127.0.0.1:8080".parse().expect("an address"), "gpt-4o-mini").await;
        if keep && result.is_ok() {
            eprintln!("\nweir keeps running (Ctrl-C to stop). Try:\n  curl -N localhost:8080/v1/chat/completions -d '{{\"model\":\"gpt-4o-mini\",\"stream\":true,\"messages\":[]}}'");
            let _ = tokio::signal::ctrl_c().await;
        }
        weir.terminate();
        mock.terminate();
        result
    })
}
