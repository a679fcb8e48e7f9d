//! `cargo xtask profile`: instructions per stream and per whole answer, counted by callgrind,
//! for weir and its peers (nginx, HAProxy when installed) on the same mock upstream.
//!
//! Wall-clock CPU on a shared 2-core machine moves by 10-20% from run to run; instruction
//! counts do not. Each proxy runs under `valgrind --tool=callgrind`; after a warm-up, its
//! counters are zeroed, a fixed number of sequential requests goes through it, and the counters
//! are dumped (`callgrind_control`), so start-up and warm-up are not counted. The dumps stay
//! in `target/profile/` for `callgrind_annotate`. `--weir PATH` profiles another build of weir
//! (an older commit's, for a before/after figure).

use crate::bench::{haproxy_config, nginx_config, request_body, Proc, BENCH_PROXIES, PATH};
use crate::load::Conn;
use crate::Result;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What one proxy cost: instructions per stream and per whole answer.
struct Cost {
    name: &'static str,
    stream: f64,
    whole: f64,
}

pub(crate) fn run(root: &Path, args: &[String]) -> Result {
    let mut streams = 2000;
    let mut weir = None;
    let mut only = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => {
                streams = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--requests needs a number")?
            }
            "--weir" => weir = Some(PathBuf::from(args.next().ok_or("--weir needs a path")?)),
            "--only" => {
                only = Some(
                    args.next()
                        .ok_or("--only needs a proxy: weir, nginx or haproxy")?
                        .clone(),
                )
            }
            other => return Err(format!("profile: unknown option `{other}`")),
        }
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err("profile needs valgrind (apt-get install valgrind)".into());
    }
    crate::bench::build(root)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let weir = weir.unwrap_or_else(|| root.join("target/release/weir"));
    runtime.block_on(profile(root, streams, &weir, only.as_deref()))
}

async fn profile(root: &Path, requests: usize, weir: &Path, only: Option<&str>) -> Result {
    let out = root.join("target/profile");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let bin = root.join("target/release");
    let mut mock = crate::bench::start_mock(&bin).await?;
    println!(
        "instructions per request (callgrind), {requests} sequential requests on one connection, after a warm-up"
    );
    let mut costs = Vec::new();
    for &(name, addr) in BENCH_PROXIES {
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let Some(mut cmd) = command(name, weir, &out)? else {
            continue;
        };
        let mut proc = Proc::spawn(name, &mut cmd)?;
        let addr: SocketAddr = addr.parse().expect("an address");
        crate::bench::wait_port_for(addr, Duration::from_secs(60)).await?;
        let cost = measure(name, &mut proc, addr, requests, &out).await;
        proc.terminate();
        let _ = tokio::time::timeout(Duration::from_secs(20), proc.wait()).await;
        costs.push(cost?);
    }
    println!(
        "  {:<8} {:>12} {:>12} {:>13} {:>12}",
        "proxy", "per stream", "per whole", "stream÷nginx", "whole÷nginx"
    );
    let nginx = costs
        .iter()
        .find(|c| c.name == "nginx")
        .map(|c| (c.stream, c.whole));
    for cost in &costs {
        let ratio = |mine: f64, theirs: Option<f64>| {
            theirs.map_or("-".to_owned(), |t| format!("{:.2}x", mine / t))
        };
        println!(
            "  {:<8} {:>12.0} {:>12.0} {:>13} {:>12}",
            cost.name,
            cost.stream,
            cost.whole,
            ratio(cost.stream, nginx.map(|n| n.0)),
            ratio(cost.whole, nginx.map(|n| n.1)),
        );
    }
    mock.terminate();
    println!("dumps in {} (callgrind_annotate FILE)", out.display());
    Ok(())
}

/// The proxy under callgrind, or `None` when it is not installed.
fn command(name: &str, weir: &Path, out: &Path) -> Result<Option<Command>> {
    let mut cmd = Command::new("valgrind");
    // Every dump self-contained (no names defined in another part), for callgrind_annotate.
    cmd.args([
        "--tool=callgrind",
        "--quiet",
        "--compress-strings=no",
        "--compress-pos=no",
    ])
    .arg(format!("--callgrind-out-file={}/{name}.%p", out.display()));
    match name {
        "weir" => {
            let config = crate::bench::bench_config(out, false)?;
            cmd.arg(weir)
                .arg("--config")
                .arg(config)
                .env("WEIR_LOG", "warn");
        }
        "nginx" => {
            if Command::new("nginx").arg("-v").output().is_err() {
                println!("  (nginx not installed: apt-get install nginx-light)");
                return Ok(None);
            }
            let conf = nginx_config(out)?;
            cmd.arg("nginx").arg("-c").arg(&conf).arg("-p").arg(out);
        }
        "haproxy" => {
            if Command::new("haproxy").arg("-v").output().is_err() {
                println!("  (HAProxy not installed: apt-get install haproxy)");
                return Ok(None);
            }
            let conf = haproxy_config(out)?;
            cmd.arg("haproxy").arg("-db").arg("-f").arg(conf);
        }
        other => return Err(format!("no command for `{other}`")),
    }
    Ok(Some(cmd))
}

async fn measure(
    name: &'static str,
    proc: &mut Proc,
    addr: SocketAddr,
    requests: usize,
    out: &Path,
) -> Result<Cost> {
    let streamed = request_body();
    let whole = crate::bench::whole_body();
    let mut conn = Conn::open(addr).await?;
    for _ in 0..200 {
        conn.stream(PATH, &streamed, "chunks=20").await?;
        conn.whole(PATH, &whole, "chunks=20").await?;
    }
    let pid = proc.pid();
    control(pid, "-z")?;
    for _ in 0..requests {
        conn.stream(PATH, &streamed, "chunks=20").await?;
    }
    let stream = dump(pid, out, &format!("{name}-streams"))? as f64 / requests as f64;
    control(pid, "-z")?;
    for _ in 0..requests {
        conn.whole(PATH, &whole, "chunks=20").await?;
    }
    let whole = dump(pid, out, &format!("{name}-whole"))? as f64 / requests as f64;
    Ok(Cost {
        name,
        stream,
        whole,
    })
}

fn control(pid: u32, what: &str) -> Result {
    let status = Command::new("callgrind_control")
        .arg(what)
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if status.status.success() {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {what} {pid}: {}",
            String::from_utf8_lossy(&status.stderr)
        ))
    }
}

/// Dumps the counters since the last zeroing and returns their instructions; the dump is kept
/// as `out/{label}.callgrind`.
fn dump(pid: u32, out: &Path, label: &str) -> Result<u64> {
    let before = dumps(out, pid);
    control(pid, "-d")?;
    let new = dumps(out, pid)
        .into_iter()
        .find(|p| !before.contains(p))
        .ok_or("callgrind wrote no dump")?;
    let text = std::fs::read_to_string(&new).map_err(|e| e.to_string())?;
    let kept = out.join(format!("{label}.callgrind"));
    std::fs::rename(&new, &kept).map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", kept.display()))
}

/// The dump files callgrind has written for `pid`.
fn dumps(out: &Path, pid: u32) -> Vec<PathBuf> {
    let suffix = format!(".{pid}.");
    std::fs::read_dir(out)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.contains(&suffix))
                })
                .collect()
        })
        .unwrap_or_default()
}
