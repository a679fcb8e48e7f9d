//! `cargo xtask bench --only redis`: weir with its limits shared through Redis (a
//! `redis-server` on loopback, on the load generator's core) beside weir with local limits,
//! in one run: added time to first token, CPU per stream, and Redis commands per request.

use crate::bench::{bench_config_as, pinned, throughput, ttft, wait_port_for, Proc, Target, Work};
use crate::Result;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const REDIS: &str = "127.0.0.1:18379";
const WEIR_REDIS: &str = "127.0.0.1:18083";
const WEIR_REDIS_ADMIN: &str = "127.0.0.1:18093";

/// `targets`: direct and weir (local limits), as the rest of the bench started them.
pub(crate) async fn run(
    weir: &Path,
    dir: &Path,
    forward: bool,
    targets: &[Target],
    n: usize,
    streams: usize,
    clients: usize,
) -> Result {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("\n(redis-server not installed: `apt-get install redis-server` for the shared-limits section)");
        return Ok(());
    }
    let mut redis = Proc::spawn(
        "redis-server",
        pinned(0, Path::new("redis-server")).args([
            "--bind",
            "127.0.0.1",
            "--port",
            "18379",
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
    )?;
    wait_port_for(REDIS.parse().expect("an address"), Duration::from_secs(5)).await?;
    // Every limit of the bench config (key, route, server, provider) shared.
    let extra = "\n[ratelimit]\nstore = \"redis\"\nurl = \"${WEIR_BENCH_REDIS}\"\nbudget = \"50ms\"\nreplicas = 1\n";
    let config = bench_config_as(
        dir,
        forward,
        "weir-bench-redis.toml",
        WEIR_REDIS,
        WEIR_REDIS_ADMIN,
        extra,
    )?;
    let mut shared = Proc::spawn(
        "weir",
        pinned(1, weir)
            .arg("--config")
            .arg(&config)
            .env("WEIR_BENCH_REDIS", format!("redis://{REDIS}/0"))
            .env("WEIR_LOG", "warn,weir=info"),
    )?;
    shared.wait_line("weir is serving").await?;
    let all = vec![
        Target {
            name: targets[0].name,
            addr: targets[0].addr,
            pid: targets[0].pid,
        },
        Target {
            name: "weir",
            addr: targets[1].addr,
            pid: targets[1].pid,
        },
        Target {
            name: "weir+redis",
            addr: WEIR_REDIS.parse().expect("an address"),
            pid: Some(shared.pid()),
        },
    ];
    println!(
        "\nlimits shared through Redis (redis-server on loopback, core 0) beside local limits"
    );
    ttft(&all, n).await?;
    let before = scripts()?;
    throughput(&all[..], streams, clients, Work::Stream).await?;
    let after = scripts()?;
    // Only weir+redis talks to Redis.
    let per = (after - before) as f64 / streams as f64;
    println!(
        "  Redis round trips per stream through weir+redis: {per:.2} scripts (a decision for each of the key, route, server and provider limits, waited for in turn; their token settles batched into one script sent without waiting), and one pipelined read of the cool-downs every 250 ms"
    );
    shared.terminate();
    redis.terminate();
    Ok(())
}

/// How many scripts Redis ran (`cmdstat_evalsha` calls): one per decision and per settle.
fn scripts() -> Result<u64> {
    let mut c = TcpStream::connect(REDIS).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    c.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .map_err(|e| e.to_string())?;
    // A bulk string: `$<length>\r\n<text>\r\n`.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n") {
            let len: usize = head.trim_start_matches('$').parse().unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&reply);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}
