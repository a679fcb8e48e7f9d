//! `cargo xtask bench`: weir against a direct connection to the same mock upstream, in one
//! run, with nginx as a peer when it is installed.
//!
//! Layout on this 2-core machine: the proxy under test (weir, or nginx) is pinned to core 1;
//! the mock upstream and this load generator share core 0. Figures are ratios against the
//! direct connection measured in the same run: these machines are shared and noisy.

use crate::load::Conn;
use crate::{cargo, Result};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub(crate) const MOCK: &str = "127.0.0.1:18091";
pub(crate) const WEIR: &str = "127.0.0.1:18080";
const WEIR_ADMIN: &str = "127.0.0.1:18090";
const NGINX: &str = "127.0.0.1:18081";
const HAPROXY: &str = "127.0.0.1:18082";
/// The proxies measured, and where each listens.
pub(crate) const BENCH_PROXIES: &[(&str, &str)] =
    &[("weir", WEIR), ("nginx", NGINX), ("haproxy", HAPROXY)];
pub(crate) const PATH: &str = "/v1/chat/completions";
/// SHA-256 of `bench-client`, the key the load generator sends.
const BENCH_KEY_SHA256: &str = "a013b77f3ea807afb0a918c3131aee8af7c5716ba3f66f9030e61baf9bc26f5d";

/// A child process whose output lines can be awaited; killed when dropped.
pub(crate) struct Proc {
    name: &'static str,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Proc {
    pub(crate) fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self> {
        let mut cmd = tokio::process::Command::from(std::mem::replace(cmd, Command::new("true")));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("{name}: {e}"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let forward = |tx: mpsc::UnboundedSender<String>, mut reader: BufReader<_>| async move {
            let mut line = String::new();
            while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
                let _ = tx.send(std::mem::take(&mut line));
            }
        };
        tokio::spawn(forward(
            tx.clone(),
            BufReader::new(Box::new(out) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ));
        tokio::spawn(forward(
            tx,
            BufReader::new(Box::new(err) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ));
        Ok(Self { name, child, lines })
    }

    pub(crate) async fn wait_line(&mut self, needle: &str) -> Result {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return Ok(());
                }
                if line.contains("ERROR") || line.contains("error") {
                    eprint!("{}: {line}", self.name);
                }
            }
            Err(format!("{} exited before saying `{needle}`", self.name))
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .map_err(|_| format!("{} did not say `{needle}` within 30 s", self.name))?
    }

    pub(crate) async fn wait(&mut self) {
        let _ = self.child.wait().await;
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

/// CPU time of every thread of `pid`, in nanoseconds (schedstat: not tick-rounded).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Resident memory of `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

pub(crate) fn pinned(core: u32, program: &Path) -> Command {
    if Command::new("taskset").arg("--version").output().is_ok() {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(core.to_string()).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

struct Options {
    /// Another build of weir to measure (an older commit's), with the mock's directives not
    /// forwarded (older builds do not know `forward_headers`): the ttft and throughput
    /// sections, which ask for the mock's default answer, compare builds fairly.
    weir: Option<PathBuf>,
    quick: bool,
    streams: Vec<usize>,
    nginx: bool,
    /// Run one section only: `limiter`, `ttft`, `throughput`, `streams`, `websocket` or `slow`.
    only: Option<String>,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        weir: None,
        quick: false,
        streams: vec![1000, 9500],
        nginx: true,
        only: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--no-nginx" => o.nginx = false,
            "--weir" => o.weir = Some(PathBuf::from(args.next().ok_or("--weir needs a path")?)),
            "--only" => {
                let section = args.next().ok_or("--only needs a section")?;
                if ![
                    "limiter",
                    "ttft",
                    "throughput",
                    "streams",
                    "websocket",
                    "slow",
                    "redis",
                    "tls",
                ]
                .contains(&section.as_str())
                {
                    return Err(format!(
                        "--only: `{section}` is not limiter, ttft, throughput, streams, websocket, slow, redis or tls"
                    ));
                }
                o.only = Some(section.clone());
            }
            "--streams" => {
                let list = args.next().ok_or("--streams needs a list like 1000,9500")?;
                o.streams = list
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .map_err(|_| format!("--streams: `{n}` is not a number"))
                    })
                    .collect::<Result<_>>()?;
            }
            other => return Err(format!("bench: unknown option `{other}`")),
        }
    }
    Ok(o)
}

pub(crate) fn run(root: &Path, args: &[String]) -> Result {
    let options = options(args)?;
    // The load generator runs on core 0, beside the mock; the proxy under test gets core 1.
    if std::env::var_os("WEIR_BENCH_PINNED").is_none()
        && Command::new("taskset").arg("--version").output().is_ok()
    {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let status = Command::new("taskset")
            .args(["-c", "0"])
            .arg(exe)
            .arg("bench")
            .args(args)
            .env("WEIR_BENCH_PINNED", "1")
            .status()
            .map_err(|e| e.to_string())?;
        return if status.success() {
            Ok(())
        } else {
            Err("bench failed".into())
        };
    }
    build(root)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(bench(root, options))
}

/// The release binaries the bench runs.
pub(crate) fn build(root: &Path) -> Result {
    crate::run(cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "weir",
        "-p",
        "weir-test",
    ]))
}

/// The bench's weir config; with `forward`, the mock's directives (`x-mock`) pass through
/// (the profile sends only the mock's default answer, and runs older builds of weir too,
/// which do not know the key).
pub(crate) fn bench_config(dir: &Path, forward: bool) -> Result<PathBuf> {
    bench_config_as(dir, forward, "weir-bench.toml", WEIR, WEIR_ADMIN, "")
}

/// [`bench_config`] listening on `listen` and `admin`, with `extra` sections added.
pub(crate) fn bench_config_as(
    dir: &Path,
    forward: bool,
    file: &str,
    listen: &str,
    admin: &str,
    extra: &str,
) -> Result<PathBuf> {
    let path = dir.join(file);
    let forward = if forward {
        "forward_headers = [\"x-mock\"]   # the mock's directives\n"
    } else {
        ""
    };
    let text = format!(
        r#"# written by cargo xtask bench
[server]
listen = "{listen}"
admin_listen = "{admin}"
drain_timeout = "1s"
{forward}max_concurrency = 20000
queue_timeout = "5s"
rate_limit = {{ requests_per_minute = 4000000000, tokens_per_minute = 4000000000 }}

[telemetry]
log_level = "warn"

# The bench sends completions back to back on one connection: the per-connection message
# rate (10 per second by default) is set far above that, like the other limits.
[websocket]
messages_per_second = 1000000
message_burst = 1000000

[[providers]]
name = "mock"
base_url = "http://{MOCK}/v1"
allow_http = true
pool_max_idle = 1024
max_concurrency = 20000
max_connections = 20000
rate_limit = {{ requests_per_minute = 4000000000, tokens_per_minute = 4000000000 }}

[[routes]]
model = "bench"
targets = [{{ provider = "mock", model = "bench" }}]
rate_limit = {{ requests_per_minute = 4000000000, tokens_per_minute = 4000000000 }}

# The load generator's key (`Bearer bench-client`): authentication and per-key limits on too.
[[keys]]
name = "bench"
hash = "sha256:{BENCH_KEY_SHA256}"
limits = {{ requests_per_minute = 4000000000, tokens_per_minute = 4000000000 }}
{extra}"#
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

pub(crate) fn nginx_config(dir: &Path) -> Result<PathBuf> {
    nginx_config_as(
        dir,
        "nginx",
        NGINX,
        &format!("upstream mock {{ server {MOCK}; keepalive 64; }}"),
        "proxy_pass http://mock;",
    )
}

/// nginx as a streaming reverse proxy (one worker, unbuffered, keep-alive upstream), its
/// files named after `name`, listening on `listen`, with `upstream` (an `upstream` block)
/// and `proxy` (the `proxy_pass` line and its companions).
pub(crate) fn nginx_config_as(
    dir: &Path,
    name: &str,
    listen: &str,
    upstream: &str,
    proxy: &str,
) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.conf"));
    let d = dir.display();
    let text = format!(
        r#"# written by cargo xtask bench: nginx as a streaming reverse proxy, for comparison
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log {d}/{name}-error.log warn;
pid {d}/{name}.pid;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {upstream}
    server {{
        listen {listen} backlog=4096;
        location / {{
            {proxy}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

/// HAProxy as a streaming reverse proxy: one thread, keep-alive to the mock.
pub(crate) fn haproxy_config(dir: &Path) -> Result<PathBuf> {
    haproxy_config_as(dir, "haproxy", HAPROXY, &format!("server mock {MOCK}"))
}

/// HAProxy (one thread, keep-alive, connections reused) listening on `listen`, to `server`
/// (its backend's `server` line), its file named after `name`.
pub(crate) fn haproxy_config_as(
    dir: &Path,
    name: &str,
    listen: &str,
    server: &str,
) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.cfg"));
    let text = format!(
        r#"# written by cargo xtask bench: HAProxy as a streaming reverse proxy, for comparison
global
    maxconn 9700
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    option http-keep-alive
frontend bench
    bind {listen} backlog 4096
    default_backend mock
backend mock
    http-reuse always
    {server}
"#
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: Option<u32>,
}

async fn bench(root: &Path, options: Options) -> Result {
    let dir = std::env::temp_dir().join(format!("weir-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let bin = root.join("target/release");
    let mut mock = start_mock(&bin).await?;
    let weir_bin = options.weir.clone().unwrap_or_else(|| bin.join("weir"));
    let forward = options.weir.is_none();
    let mut weir = start_weir(&weir_bin, &dir, forward).await?;

    let have_nginx = options.nginx && Command::new("nginx").arg("-v").output().is_ok();
    let mut nginx = if have_nginx {
        let conf = nginx_config(&dir)?;
        let mut cmd = pinned(1, Path::new("nginx"));
        cmd.arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"));
        let proc = Proc::spawn("nginx", &mut cmd)?;
        wait_port(NGINX.parse().expect("an address")).await?;
        Some(proc)
    } else {
        None
    };

    let have_haproxy = options.nginx && Command::new("haproxy").arg("-v").output().is_ok();
    let mut haproxy = if have_haproxy {
        let conf = haproxy_config(&dir)?;
        let mut cmd = pinned(1, Path::new("haproxy"));
        cmd.arg("-db").arg("-f").arg(&conf);
        let proc = Proc::spawn("haproxy", &mut cmd)?;
        wait_port(HAPROXY.parse().expect("an address")).await?;
        Some(proc)
    } else {
        None
    };

    let mut targets = vec![
        Target {
            name: "direct",
            addr: MOCK.parse().expect("an address"),
            pid: None,
        },
        Target {
            name: "weir",
            addr: WEIR.parse().expect("an address"),
            pid: Some(weir.pid()),
        },
    ];
    if let Some(nginx) = &nginx {
        targets.push(Target {
            name: "nginx",
            addr: NGINX.parse().expect("an address"),
            pid: Some(nginx.pid()),
        });
    }

    if let Some(haproxy) = &haproxy {
        targets.push(Target {
            name: "haproxy",
            addr: HAPROXY.parse().expect("an address"),
            pid: Some(haproxy.pid()),
        });
    }

    println!("weir bench: proxies pinned to core 1, mock upstream and load generator on core 0");
    if !have_nginx && options.nginx {
        println!("(nginx not installed: `apt-get install nginx-light` to compare against it)");
    }
    if !have_haproxy && options.nginx {
        println!("(HAProxy not installed: `apt-get install haproxy` to compare against it)");
    }
    let run = |section: &str| options.only.as_deref().is_none_or(|only| only == section);
    if run("limiter") {
        limiter_cost(if options.quick { 200_000 } else { 1_000_000 });
    }
    if run("ttft") {
        let ttft_n = if options.quick { 500 } else { 3000 };
        ttft(&targets, ttft_n).await?;
    }
    if run("throughput") {
        let (streams, clients) = if options.quick {
            (4000, 16)
        } else {
            (20_000, 32)
        };
        throughput(&targets, streams, clients, Work::Stream).await?;
        throughput(&targets, streams, clients, Work::Whole).await?;
    }
    if run("streams") {
        for n in &options.streams {
            // weir, and nginx (when installed) in the same run.
            for target in targets.iter().skip(1) {
                open_streams(target, *n).await?;
            }
        }
    }
    if run("slow") {
        // After the others: what the slow clients leave in weir's heap would count in the
        // figures above.
        let window = Duration::from_secs(if options.quick { 3 } else { 8 });
        slow_clients(&targets[1], window).await?;
    }
    if run("redis") {
        let (streams, clients) = if options.quick {
            (4000, 16)
        } else {
            (20_000, 32)
        };
        let n = if options.quick { 500 } else { 3000 };
        crate::redisbench::run(&weir_bin, &dir, forward, &targets[..2], n, streams, clients)
            .await?;
    }
    if run("tls") {
        let (streams, clients) = if options.quick {
            (4000, 16)
        } else {
            (20_000, 32)
        };
        let n = if options.quick { 500 } else { 3000 };
        crate::tlsbench::run(&bin, &weir_bin, &dir, options.nginx, n, streams, clients).await?;
    }
    if run("websocket") {
        // A fresh weir: memory the sections above freed would be reused, and read as zero.
        weir.terminate();
        let _ = tokio::time::timeout(Duration::from_secs(5), weir.child.wait()).await;
        weir = start_weir(&weir_bin, &dir, forward).await?;
        targets[1].pid = Some(weir.pid());
        let n = if options.quick { 300 } else { 2000 };
        crate::wsbench::ttft(&targets[1], &targets[0], n).await?;
        let n = options.streams.iter().copied().max().unwrap_or(9500);
        crate::wsbench::idle(&targets[1], n).await?;
    }

    weir.terminate();
    if let Some(nginx) = &mut nginx {
        nginx.terminate();
    }
    if let Some(haproxy) = &mut haproxy {
        haproxy.terminate();
    }
    mock.terminate();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The mock upstream on core 0, once it listens.
pub(crate) async fn start_mock(bin: &Path) -> Result<Proc> {
    let mut mock = Proc::spawn(
        "weir-mock",
        pinned(0, &bin.join("weir-mock")).args(["--listen", MOCK, "--threads", "1"]),
    )?;
    mock.wait_line("listening on").await?;
    Ok(mock)
}

/// weir on core 1 with the bench config, once it says it serves.
async fn start_weir(weir: &Path, dir: &Path, forward: bool) -> Result<Proc> {
    let mut weir = Proc::spawn(
        "weir",
        pinned(1, weir)
            .arg("--config")
            .arg(bench_config(dir, forward)?)
            .env("WEIR_LOG", "warn,weir=info"),
    )?;
    weir.wait_line("weir is serving").await?;
    Ok(weir)
}

async fn wait_port(addr: SocketAddr) -> Result {
    wait_port_for(addr, Duration::from_secs(5)).await
}

/// Waits until something listens on `addr`.
pub(crate) async fn wait_port_for(addr: SocketAddr, within: Duration) -> Result {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("nothing listens on {addr}"))
}

pub(crate) fn request_body() -> Bytes {
    Bytes::from_static(br#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"Write twenty tokens."}]}"#)
}

/// The rate limiter's cost per request (admission and settling a token charge), with one key
/// and with 100,000 keys in turn, measured in this process.
fn limiter_cost(calls: u32) {
    use std::num::NonZeroU32;
    use weir_ratelimit::{Limiter, Rate};
    let huge = NonZeroU32::new(4_000_000_000).expect("non-zero");
    let limiter = |max_keys| {
        Limiter::builder()
            .requests(Rate::per_minute(huge))
            .tokens(Rate::per_minute(huge))
            .max_keys(max_keys)
            .build::<u32>()
    };
    let run = |keys: u32| {
        let limiter = limiter(keys as usize + 1);
        // Warm: every key has state.
        for key in 0..keys {
            if let Ok((charge, _)) = limiter.check(key, 100) {
                charge.settle(60);
            }
        }
        let start = Instant::now();
        let mut refused = 0;
        for i in 0..calls {
            match limiter.check(i % keys, 100) {
                Ok((charge, _)) => charge.settle(60),
                Err(_) => refused += 1,
            }
        }
        (
            start.elapsed().as_nanos() as f64 / f64::from(calls),
            refused,
        )
    };
    let (one, refused_one) = run(1);
    let (many, refused_many) = run(100_000);
    println!(
        "\nrate limiter (requests and tokens quotas), admission plus settling, per request, in the load generator's process:\n  1 key: {one:.0} ns   100,000 keys: {many:.0} ns   ({} refused; against about 16 µs of weir CPU per stream)",
        refused_one + refused_many
    );
}

/// Time to first token at low load: one client, requests one after another, the targets
/// interleaved request by request so that drift in the machine's load hits all alike.
pub(crate) async fn ttft(targets: &[Target], n: usize) -> Result {
    let body = request_body();
    let mut conns = Vec::new();
    for t in targets {
        conns.push(Conn::open(t.addr).await?);
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); targets.len()];
    for round in 0..(n + n / 10) {
        for (i, conn) in conns.iter_mut().enumerate() {
            let ttft = conn.stream(PATH, &body, "chunks=20").await?;
            if round >= n / 10 {
                samples[i].push(ttft); // the first tenth warms up
            }
        }
    }
    println!(
        "\ntime to first token, 20-chunk stream, 1 client, {n} requests per target (interleaved)"
    );
    println!(
        "  {:<10} {:>8} {:>10} {:>12} {:>12}",
        "target", "p50 ms", "p99 ms", "added p50", "added p99"
    );
    let mut base = (Duration::ZERO, Duration::ZERO);
    for (i, t) in targets.iter().enumerate() {
        samples[i].sort_unstable();
        let (p50, p99) = (percentile(&samples[i], 0.5), percentile(&samples[i], 0.99));
        if i == 0 {
            base = (p50, p99);
            println!("  {:<10} {:>8.3} {:>10.3}", t.name, ms(p50), ms(p99));
        } else {
            println!(
                "  {:<10} {:>8.3} {:>10.3} {:>9.3} ms {:>9.3} ms   ({:.2}x direct p50)",
                t.name,
                ms(p50),
                ms(p99),
                ms(p50.saturating_sub(base.0)),
                ms(p99.saturating_sub(base.1)),
                p50.as_secs_f64() / base.0.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Streams per second with `clients` concurrent keep-alive clients, and the proxy's CPU time
/// per stream.
/// What a throughput run asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// A 20-chunk stream.
    Stream,
    /// The same answer whole (`"stream": false`).
    Whole,
}

pub(crate) async fn throughput(
    targets: &[Target],
    requests: usize,
    clients: usize,
    work: Work,
) -> Result {
    let what = match work {
        Work::Stream => "20-chunk streams",
        Work::Whole => "whole (non-streamed) answers of the same 20 chunks",
    };
    println!("\nthroughput, {what}, {clients} concurrent clients, {requests} per target");
    println!(
        "  {:<10} {:>10} {:>10} {:>16} {:>10}",
        "target", "requests/s", "vs direct", "CPU/request µs", "÷ nginx"
    );
    let mut direct = 0.0;
    let mut nginx = None;
    for t in targets {
        let done = Arc::new(AtomicUsize::new(0));
        let cpu_before = t.pid.map(cpu_ns);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let done = done.clone();
            let addr = t.addr;
            tasks.push(tokio::spawn(async move {
                let body = match work {
                    Work::Stream => request_body(),
                    Work::Whole => whole_body(),
                };
                let mut conn = Conn::open(addr).await?;
                while done.fetch_add(1, Ordering::Relaxed) < requests {
                    match work {
                        Work::Stream => drop(conn.stream(PATH, &body, "chunks=20").await?),
                        Work::Whole => drop(conn.whole(PATH, &body, "chunks=20").await?),
                    }
                }
                Ok::<(), String>(())
            }));
        }
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let rate = requests as f64 / elapsed;
        let cpu = match (t.pid, cpu_before) {
            (Some(pid), Some(before)) => {
                Some((cpu_ns(pid) - before) as f64 / requests as f64 / 1e3)
            }
            _ => None,
        };
        if t.name == "direct" {
            direct = rate;
        }
        if t.name == "nginx" {
            nginx = cpu;
        }
        let ratio = match (cpu, nginx) {
            (Some(mine), Some(theirs)) => format!("{:.2}x", mine / theirs),
            _ => "-".into(),
        };
        println!(
            "  {:<10} {:>10.0} {:>9.2}x {:>16} {:>10}",
            t.name,
            rate,
            rate / direct,
            cpu.map_or("-".into(), |c| format!("{c:.1}")),
            ratio
        );
    }
    Ok(())
}

/// The bench's request for a whole answer.
pub(crate) fn whole_body() -> Bytes {
    Bytes::from_static(
        br#"{"model":"bench","messages":[{"role":"user","content":"Write twenty tokens."}]}"#,
    )
}

/// Streams done in a run, and their times to first token (sorted).
type Run = (usize, Vec<Duration>);

/// What `clients` fast clients got in `window`: streams done, and their times to first token.
async fn fast_clients(addr: SocketAddr, clients: usize, window: Duration) -> Result<Run> {
    let deadline = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let body = request_body();
            let mut conn = Conn::open(addr).await?;
            let mut ttfts = Vec::new();
            while Instant::now() < deadline {
                ttfts.push(conn.stream(PATH, &body, "chunks=20").await?);
            }
            Ok::<_, String>(ttfts)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| e.to_string())??);
    }
    all.sort_unstable();
    Ok((all.len(), all))
}

/// A client that reads its stream at about 1 KB/s (a 4 KiB receive buffer, 1 KiB a second)
/// until `stop`. Returns the bytes it read.
async fn slow_reader(
    addr: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(4096)
        .map_err(|e| e.to_string())?;
    let mut stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let body = request_body();
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
         authorization: Bearer bench-client\r\n\
         x-mock: chunks=100000,word=slowslowslowslowslowslowslowslowslowslow\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(&body).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1024];
    let mut read = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(read),
            n = stream.read(&mut buf) => match n {
                Ok(0) | Err(_) => return Ok(read),
                Ok(n) => read += n,
            },
        }
        tokio::select! {
            _ = stop.changed() => return Ok(read),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// 64 fast clients alone, then beside 200 clients that read at 1 KB/s, then alone again: the
/// fast ones' time to first token and throughput beside the slow ones, as ratios to the mean
/// of the two runs without them (which brackets the machine's drift).
async fn slow_clients(t: &Target, window: Duration) -> Result {
    const FAST: usize = 64;
    const SLOW: usize = 200;
    // Warm up: the previous phase may still be settling.
    fast_clients(t.addr, FAST, window / 2).await?;
    let cpu = || t.pid.map(cpu_ns).unwrap_or(0);
    let at = cpu();
    let before = fast_clients(t.addr, FAST, window).await?;
    let cpu_before = (cpu() - at) as f64 / before.0.max(1) as f64 / 1e3;
    let rss_before = t.pid.map(rss_kib);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(tokio::spawn(slow_reader(t.addr, stop.clone())));
    }
    // Let the slow streams fill their buffers and stall before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_slow = t.pid.map(rss_kib);
    let at = cpu();
    let beside = fast_clients(t.addr, FAST, window).await?;
    let cpu_beside = (cpu() - at) as f64 / beside.0.max(1) as f64 / 1e3;
    let _ = stop_tx.send(true);
    let mut slow_bytes = 0;
    let mut slow_failed = 0;
    for task in slow {
        match task.await.map_err(|e| e.to_string())? {
            Ok(n) => slow_bytes += n,
            Err(_) => slow_failed += 1,
        }
    }
    let at = cpu();
    let after = fast_clients(t.addr, FAST, window).await?;
    let cpu_after = (cpu() - at) as f64 / after.0.max(1) as f64 / 1e3;
    let rate = |(n, _): &Run| *n as f64 / window.as_secs_f64();
    let p = |run: &Run, q| percentile(&run.1, q).as_secs_f64();
    println!(
        "\n{FAST} fast clients (20-chunk streams, {:.0} s per run) through {}, without and beside {SLOW} clients reading at 1 KB/s",
        window.as_secs_f64(),
        t.name
    );
    println!(
        "  {:<14} {:>11} {:>10} {:>10} {:>16}",
        "run", "streams/s", "TTFT p50", "TTFT p99", "CPU/stream µs"
    );
    for (name, run, cpu) in [
        ("alone", &before, cpu_before),
        ("beside slow", &beside, cpu_beside),
        ("alone again", &after, cpu_after),
    ] {
        println!(
            "  {:<14} {:>11.0} {:>7.3} ms {:>7.3} ms {:>16.1}",
            name,
            rate(run),
            p(run, 0.5) * 1e3,
            p(run, 0.99) * 1e3,
            cpu
        );
    }
    let mean = |f: &dyn Fn(&Run) -> f64| (f(&before) + f(&after)) / 2.0;
    println!(
        "  beside / alone: throughput {:.2}x, TTFT p50 {:.2}x, p99 {:.2}x; the slow clients read {} KiB in all ({} failed)",
        rate(&beside) / mean(&|r| rate(r)),
        p(&beside, 0.5) / mean(&|r| p(r, 0.5)),
        p(&beside, 0.99) / mean(&|r| p(r, 0.99)),
        slow_bytes / 1024,
        slow_failed,
    );
    if let (Some(before), Some(slow)) = (rss_before, rss_slow) {
        println!(
            "  weir's resident memory with the {SLOW} slow clients open: +{} KiB ({:.1} KiB each)",
            slow.saturating_sub(before),
            slow.saturating_sub(before) as f64 / SLOW as f64
        );
    }
    Ok(())
}

/// `n` streams held open at once through the proxy (1 chunk per second each): resident memory
/// per stream, and CPU share per 1,000 streams.
async fn open_streams(t: &Target, n: usize) -> Result {
    let pid = t.pid.ok_or("open streams are measured through a proxy")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(pid);
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (opened, failed, mut stop) = (opened.clone(), failed.clone(), stop.clone());
        let addr = t.addr;
        tasks.push(tokio::spawn(async move {
            let body = request_body();
            let stream = async {
                let mut conn = Conn::open(addr).await?;
                conn.open_stream(PATH, &body, "chunks=600,delay_ms=1000")
                    .await
                    .map(|b| (conn, b))
            };
            match stream.await {
                Ok((_conn, mut body)) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    use http_body_util::BodyExt;
                    loop {
                        tokio::select! {
                            _ = stop.changed() => break,
                            frame = body.frame() => if frame.is_none() { break },
                        }
                    }
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        if i % 250 == 249 {
            // Connect in waves, so that the listen backlog never overflows.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        if start.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = opened.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open = rss_kib(pid);
    let cpu_before = cpu_ns(pid);
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let cpu = (cpu_ns(pid) - cpu_before) as f64 / window.as_nanos() as f64;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let per_stream = (rss_open.saturating_sub(rss_before)) as f64 / ready.max(1) as f64;
    println!(
        "\n{n} open streams through {} ({ready} opened, {} failed, in {:.1} s)\n  resident: {} KiB before, {} KiB open → {:.2} KiB per stream\n  CPU: {:.2}% of one core at 1 chunk/s per stream → {:.2}% per 1,000 streams",
        t.name,
        failed.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        rss_before,
        rss_open,
        per_stream,
        cpu * 100.0,
        cpu * 100.0 * 1000.0 / ready.max(1) as f64,
    );
    // weir must open every stream; a peer that cannot is reported as it is.
    if ready < n && t.name == "weir" {
        return Err(format!("only {ready} of {n} streams opened"));
    }
    Ok(())
}
