//! The `weir` process: config errors exit 64 with file and line; SIGTERM drains and exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A started weir: the process, the rest of its log, and its public and admin addresses (read
/// from its "serving" log line).
struct Started {
    child: std::process::Child,
    stderr: BufReader<std::process::ChildStderr>,
    addr: String,
    admin: String,
}

fn start_weir(path: &std::path::Path) -> Started {
    start_weir_with(path, &[])
}

/// [`start_weir`] with `env` set for the process.
fn start_weir_with(path: &std::path::Path, env: &[(&str, &str)]) -> Started {
    let mut child = weir()
        .arg("--config")
        .arg(path)
        .envs(env.iter().copied())
        .env("WEIR_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().expect("piped"));
    // Owned by the result from here on: the tests wait for it.
    let mut started = Started {
        child,
        stderr,
        addr: String::new(),
        admin: String::new(),
    };
    let field = |line: &str, name: &str| {
        let at = line.find(name)? + name.len();
        Some(line[at..].split_whitespace().next()?.to_owned())
    };
    let mut line = String::new();
    loop {
        line.clear();
        if started.stderr.read_line(&mut line).unwrap() == 0 {
            let status = started.child.wait();
            panic!("weir exited before serving: {status:?}");
        }
        if let (Some(addr), Some(admin)) = (field(&line, "listen="), field(&line, "admin=")) {
            started.addr = addr;
            started.admin = admin;
            return started;
        }
    }
}

const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
auth = "off"

[[providers]]
name = "mock"
base_url = "BASE"
allow_http = true

[[routes]]
model = "m"
targets = [{ provider = "mock", model = "mock" }]
"#;

#[test]
fn check_refuses_a_bad_config_with_file_line_and_key() {
    let dir = temp_dir("bad");
    let path = write_config(
        &dir,
        &CONFIG.replace("allow_http = true", "allow_http = true\ntimeout = 3"),
    );
    let out = weir()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:10:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("timeout"), "{stderr}");

    let good = write_config(&dir, &CONFIG.replace("BASE", "http://127.0.0.1:1/v1"));
    let out = weir().args(["check", "-c"]).arg(&good).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_lists_every_mistake_in_file_order_with_key_paths() {
    let dir = temp_dir("several");
    let text = CONFIG
        .replace("BASE", "http://127.0.0.1:1/v1")
        .replace("auth = \"off\"", "auth = \"off\"\ndrain_timeout = 30")
        .replace(
            "allow_http = true",
            "allow_http = true\nrespone_timeout = \"5s\"",
        )
        .replace("provider = \"mock\"", "provider = \"mokc\"");
    let path = write_config(&dir, &text);
    let out = weir().args(["check", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "weir: invalid configuration, 3 problems:".to_owned(),
            format!("{file}:5:17: server.drain_timeout: expected a duration such as \"30s\", found the number 30"),
            format!("{file}:11:1: providers[0].respone_timeout: unknown key (did you mean `response_timeout`?)"),
            format!("{file}:15:25: routes[0].targets[0].provider: no provider is named `mokc`"),
        ]
    );
}

#[test]
fn missing_env_var_is_named_at_start() {
    let dir = temp_dir("env");
    let text = CONFIG.replace("BASE", "http://127.0.0.1:1/v1").replace(
        "allow_http = true",
        "allow_http = true\napi_key = \"${WEIR_TEST_SURELY_UNSET}\"",
    );
    let path = write_config(&dir, &text);
    let out = weir()
        .arg("--config")
        .arg(&path)
        .env_remove("WEIR_TEST_SURELY_UNSET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WEIR_TEST_SURELY_UNSET"));
}

#[test]
fn sigterm_drains_a_live_stream_then_exits_zero() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(weir_test::MockUpstream::start());
    let dir = temp_dir("term");
    let path = write_config(
        &dir,
        &CONFIG.replace("BASE", &mock.base_url()).replace(
            "model = \"mock\"",
            "model = \"mock@chunks=10,delay_ms=100\"",
        ),
    );
    let Started {
        mut child,
        mut stderr,
        addr,
        ..
    } = start_weir(&path);
    let mut tcp = TcpStream::connect(&addr).unwrap();
    let body = r#"{"model":"m","stream":true}"#;
    write!(tcp, "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 15];
    tcp.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    tcp.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("tok9 "), "the whole answer arrived");
    assert!(rest.contains("data: [DONE]"), "and its end");
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert!(log.contains("drained"), "{log}");
}

#[test]
fn shipped_example_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files: Vec<_> = std::fs::read_dir(root.join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(root.join("deploy/compose-weir.toml"));
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let config = weir::config::parse(path, &text, &|name| match name {
            "REDIS_URL" => Some("redis://redis:6379/0".into()),
            name => (!name.starts_with("OTEL_")).then(|| "example-value".into()),
        });
        assert!(
            config.is_ok(),
            "{}: {}",
            path.display(),
            config.unwrap_err()
        );
    }
    assert!(files.len() >= 3);
}

#[test]
fn hash_key_prints_the_sha256_a_keys_entry_takes() {
    use std::io::Write;
    let mut child = weir()
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // SHA-256("secret"), the trailing newline not included.
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
    let empty = weir()
        .arg("hash-key")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(64));
}

/// `GET path` on `addr`, the whole answer (`None` if nothing answers).
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: weir\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Polls `done` every 50 ms, at most 200 times (a real process: no paused clock here).
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn sighup_reloads_the_file_and_refuses_a_bad_one() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(weir_test::MockUpstream::start());
    let dir = temp_dir("hup");
    let route = |model: &str| {
        format!("\n[[routes]]\nmodel = \"{model}\"\ntargets = [{{ provider = \"mock\", model = \"mock\" }}]\n")
    };
    let base = CONFIG.replace("BASE", &mock.base_url()).replace(
        "[[routes]]\nmodel = \"m\"\ntargets = [{ provider = \"mock\", model = \"mock\" }]\n",
        "",
    );
    let path = write_config(&dir, &(base.clone() + &route("first")));
    let Started {
        mut child,
        mut stderr,
        addr,
        admin,
    } = start_weir(&path);
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let hup = |child: &std::process::Child| {
        let ok = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };

    write_config(&dir, &(base.clone() + &route("first") + &route("second")));
    hup(&child);
    assert!(wait_until(
        || http_get(&addr, "/v1/models").is_some_and(|m| m.contains("\"second\""))
    ));

    // A broken file: refused, and both routes still served.
    write_config(&dir, "[server]\nlisten = 1\n");
    hup(&child);
    assert!(wait_until(|| http_get(&admin, "/metrics").is_some_and(
        |m| m.contains("weir_config_reloads_total{result=\"failed\"} 1")
    )));
    let listed = http_get(&addr, "/v1/models").unwrap();
    assert!(
        listed.contains("\"first\"") && listed.contains("\"second\""),
        "{listed}"
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = log.join().unwrap();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        log.contains("weir.toml:2:10"),
        "the refusal names the line: {log}"
    );
}

/// A completion request with a client key, over its own connection: the status.
fn http_post_completion(addr: &str, key: &str) -> u16 {
    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    let mut tcp = TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn three_weir_processes_on_one_redis_admit_one_limit_between_them() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mock = runtime.block_on(weir_test::MockUpstream::start());
    let redis = weir_test::redis::RedisServer::start();
    let key = "sk-weir-processes-5e1b";
    let dir = temp_dir("replicas");
    let path = write_config(
        &dir,
        &format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[ratelimit]
store = "redis"
url = "${{REDIS_URL}}"
budget = "50ms"
replicas = 3

[[providers]]
name = "mock"
base_url = "{}"
allow_http = true
health = {{ probe = "off" }}

[[routes]]
model = "gpt-test"
targets = [{{ provider = "mock", model = "mock" }}]

[[keys]]
name = "team"
hash = "{}"
limits = {{ requests_per_minute = 30 }}
"#,
            mock.base_url(),
            weir::config::hash_key(key)
        ),
    );
    let url = redis.url();
    let mut replicas: Vec<Started> = (0..3)
        .map(|_| start_weir_with(&path, &[("REDIS_URL", &url)]))
        .collect();
    // Each process connects to Redis in the background at start.
    runtime.block_on(redis.until("three processes connected", |r| r.clients() >= 3));
    let mut admitted = [0u32; 3];
    for i in 0..90 {
        match http_post_completion(&replicas[i % 3].addr, key) {
            200 => admitted[i % 3] += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    let total: u32 = admitted.iter().sum();
    assert!((30..=32).contains(&total), "{admitted:?}");
    for r in &mut replicas {
        let metrics = http_get(&r.admin, "/metrics").unwrap();
        assert!(
            metrics.contains(
                "weir_ratelimit_store_decisions_total{store=\"redis\",by=\"fallback\"} 0"
            ),
            "{metrics}"
        );
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}
