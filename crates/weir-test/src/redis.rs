//! A real `redis-server` on a loopback port, for the tests of limits shared through Redis:
//! started, stopped, started again on the same port, and blocked for a while (`DEBUG SLEEP`)
//! to play a slow Redis. Needs `redis-server` on the `PATH` (`apt-get install redis-server`).

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` process; stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free loopback port, and waits until it accepts connections.
    pub fn start() -> RedisServer {
        Self::start_as(None)
    }

    /// Starts one that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_as(Some(password.to_owned()))
    }

    fn start_as(password: Option<String>) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = RedisServer {
            port,
            password,
            child: None,
        };
        redis.restart();
        redis
    }

    /// Starts it again (on the same port) after [`stop`](Self::stop).
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Stops it (a kill: what a crashed or unreachable Redis looks like).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:PORT/` (with `:PASSWORD@` when it has one).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The URL without the password, for a test that checks a wrong one is refused.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Blocks the server for `seconds` (`DEBUG SLEEP`, sent on a connection of its own);
    /// returns once the command is on its way.
    pub fn block_for(&self, seconds: f64) {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("redis accepts");
        let arg = seconds.to_string();
        let command = format!(
            "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{arg}\r\n",
            arg.len()
        );
        c.write_all(command.as_bytes()).expect("sent");
        // The connection stays open until the sleep is over.
        std::thread::spawn(move || {
            let mut reply = [0u8; 16];
            let _ = std::io::Read::read(&mut c, &mut reply);
        });
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl RedisServer {
    /// How many scripts the server has run by hash (`EVALSHA` calls, from `INFO
    /// commandstats`): what a test counts round trips with.
    pub fn script_calls(&self) -> u64 {
        self.info("commandstats", "cmdstat_evalsha:calls=")
    }

    /// How many scripts ran: `EVALSHA` calls less the failed ones (a script not loaded yet is
    /// refused with `NOSCRIPT`, loaded, and called again).
    pub fn scripts_run(&self) -> u64 {
        let line = self.info_line("commandstats", "cmdstat_evalsha:");
        let field = |name: &str| {
            line.split(',')
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        field("calls=").saturating_sub(field("failed_calls="))
    }

    /// How many clients are connected (`INFO clients`), this query's own connection left out.
    pub fn clients(&self) -> u64 {
        self.info("clients", "connected_clients:").saturating_sub(1)
    }

    /// The number after `field` in `INFO section` (0 when absent).
    fn info(&self, section: &str, field: &str) -> u64 {
        self.info_line(section, field)
            .split(',')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The rest of the line of `INFO section` that starts with `field` (empty when absent).
    fn info_line(&self, section: &str, field: &str) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("redis accepts");
        if let Some(password) = &self.password {
            let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
            c.write_all(auth.as_bytes()).expect("sent");
            let mut ok = [0u8; 5];
            std::io::Read::read_exact(&mut c, &mut ok).expect("+OK");
        }
        let command = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        c.write_all(command.as_bytes()).expect("sent");
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = std::io::Read::read(&mut c, &mut buf).expect("an answer");
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            // A bulk string: `$<length>\r\n<text>\r\n`.
            let whole = text.split_once("\r\n").is_some_and(|(head, body)| {
                head.trim_start_matches('$')
                    .parse::<usize>()
                    .is_ok_and(|len| body.len() >= len)
            });
            if n == 0 || whole {
                break;
            }
        }
        String::from_utf8_lossy(&reply)
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `done` holds (checked every 5 ms, for at most 10 s): what a test waits on
    /// instead of a guessed sleep, since Redis answers over a real socket in real time.
    pub async fn until(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        for _ in 0..2000 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("redis: {what} did not happen within 10 s");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
