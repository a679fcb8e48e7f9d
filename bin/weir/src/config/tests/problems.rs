//! How problems are reported: all of them, in file order, in words.

use super::*;

#[test]
fn every_problem_in_one_run_in_file_order_with_key_paths() {
    // The mistakes a first config has: a number where a duration goes, a typo in a key, a
    // provider name that does not exist, a typo in a choice, a wrong type in a nested table.
    let text = GOOD
        .replace("drain_timeout = \"5s\"", "drain_timeout = 30")
        .replace("response_timeout = \"30s\"", "respone_timeout = \"30s\"")
        .replace("provider = \"local\"", "provider = \"locl\"")
        .replace(
            "strategy = \"failover\"",
            "strategy = \"failovr\"\nretry = { backoff = 5 }",
        );
    let problems: Vec<String> = load(&text)
        .unwrap_err()
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "weir.toml:5:17: server.drain_timeout: expected a duration such as \"30s\", found the number 30",
            "weir.toml:12:1: providers[0].respone_timeout: unknown key (did you mean `response_timeout`?)",
            "weir.toml:21:12: routes[0].strategy: `failovr` is not one of \"failover\", \"weighted\" (did you mean \"failover\"?)",
            "weir.toml:22:21: routes[0].retry.backoff: expected a duration such as \"30s\", found the number 5",
            "weir.toml:27:25: routes[1].targets[0].provider: no provider is named `locl`",
        ]
    );
}

#[test]
fn types_are_named_in_words_and_numbers_read_as_toml_writes_them() {
    let with = |from: &str, to: &str| error(&GOOD.replace(from, to));
    let message = with("drain_timeout = \"5s\"", "max_request_bytes = \"4MB\"");
    assert!(
        message.ends_with(
            "server.max_request_bytes: expected a whole number, found the string \"4MB\""
        ),
        "{message}"
    );
    let message = with("drain_timeout = \"5s\"", "max_request_bytes = -1");
    assert!(
        message.ends_with("server.max_request_bytes: must be 0 or more"),
        "{message}"
    );
    let message = with("drain_timeout = \"5s\"", "listen_timeout = true");
    assert!(
        message.contains("server.listen_timeout: unknown key"),
        "{message}"
    );
    let message = with(
        "allow_http = true",
        "allow_http = true\npool_max_idle = 1.5",
    );
    assert!(
        message
            .ends_with("providers[1].pool_max_idle: expected a whole number, found the number 1.5"),
        "{message}"
    );
    let message = with(
        "targets = [{ provider = \"openai\", model = \"gpt-4.1-2025-04-14\" }]",
        "targets = \"openai\"",
    );
    assert!(
        message.contains("routes[0].targets: expected a list of tables"),
        "{message}"
    );

    let config = load(&GOOD.replace(
        "drain_timeout = \"5s\"",
        "max_request_bytes = 1_048_576\nmax_concurrency = 0x10",
    ))
    .unwrap();
    assert_eq!(config.server.max_request_bytes, 1 << 20);
    assert_eq!(config.server.concurrency.unwrap().max, 16);
}

#[test]
fn a_long_or_secret_value_is_not_echoed() {
    let secret = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyz";
    let message = error(&GOOD.replace(
        "allow_http = true",
        &format!("allow_http = true\nheaders = \"{secret}\""),
    ));
    assert!(
        message.contains("providers[1].headers: expected a table, found a string"),
        "{message}"
    );
    assert!(!message.contains(secret), "{message}");
    let long = "m".repeat(5000);
    let message = error(&GOOD.replace("provider = \"local\"", &format!("provider = \"{long}\"")));
    assert!(message.len() < 300, "{} bytes", message.len());
}

#[test]
fn syntax_errors_are_all_reported_and_columns_count_characters() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\nadmin_listen = = 3\n[[providers]]\nname = \n";
    let problems = load(text).unwrap_err();
    let lines: Vec<usize> = problems.problems().iter().map(|p| p.line()).collect();
    assert!(
        lines.len() >= 2 && lines.windows(2).all(|w| w[0] <= w[1]),
        "{problems}"
    );

    let text = GOOD.replace("model = \"llama\"", "model = \"llamá\"\nweigth = 2");
    let message = error(&text);
    assert!(
        message.contains("routes[1].weigth: unknown key"),
        "{message}"
    );
    let text = GOOD.replace("\"meta/llama\"", "\"méta/llama\", weigth = 2");
    let message = error(&text);
    assert!(
        message.starts_with(
            "weir.toml:26:56: routes[1].targets[0].weigth: unknown key (did you mean `weight`?)"
        ),
        "{message}"
    );
}

#[test]
fn missing_sections_and_keys_are_named() {
    let problems = load("[[providers]]\nname = \"a\"\n")
        .unwrap_err()
        .to_string();
    for needed in [
        "server: a [server] table with `listen` and `admin_listen` is required",
        "providers[0].base_url: is required",
        "routes: at least one [[routes]] entry is needed",
    ] {
        assert!(problems.contains(needed), "{needed}: {problems}");
    }
    let message = error(&GOOD.replace(
        "targets = [{ provider = \"local\", model = \"meta/llama\" }]",
        "",
    ));
    assert!(
        message.contains("routes[1].targets: is required"),
        "{message}"
    );
}

#[test]
fn a_forwarded_header_that_picks_the_account_is_refused_with_its_reason() {
    let with = |names: &str| {
        error(&GOOD.replace(
            "drain_timeout = \"5s\"",
            &format!("drain_timeout = \"5s\"\nforward_headers = {names}"),
        ))
    };
    for name in [
        "OpenAI-Organization",
        "authorization",
        "x-api-key",
        "connection",
    ] {
        let message = with(&format!("[\"x-team\", \"{name}\"]"));
        assert!(
            message.contains("server.forward_headers: `")
                && message.contains("never comes from a client"),
            "{name}: {message}"
        );
    }
    let message = with("[\"not a name\"]");
    assert!(
        message.contains("server.forward_headers: `not a name` is not a header name"),
        "{message}"
    );
    let server = load(&GOOD.replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nforward_headers = [\"X-Team\", \"x-vendor-*\"]",
    ))
    .expect("valid names are accepted")
    .server;
    assert_eq!(server.forward_headers, ["x-team", "x-vendor-*"]);
}

#[test]
fn the_shared_store_is_read_and_its_mistakes_named_without_the_url() {
    let with = |section: &str| load(&format!("{GOOD}\n{section}"));
    // Absent: local.
    assert_eq!(load(GOOD).unwrap().ratelimit, LimitStore::Local);
    let text = "[ratelimit]\nstore = \"redis\"\nurl = \"${OPENAI_API_KEY}\"\nreplicas = 3\n";
    let message = with(text).unwrap_err().to_string();
    assert!(
        message.contains("ratelimit.url: must be a redis:// or rediss:// URL"),
        "{message}"
    );
    assert!(
        !message.contains("sk-canary-123"),
        "the value is never shown: {message}"
    );

    let text = "[ratelimit]\nstore = \"redis\"\nurl = \"redis://:${ORG}@10.0.0.5:6379/2\"\nbudget = 5\non_failure = \"clsed\"\n";
    let problems: Vec<String> = with(text)
        .unwrap_err()
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].ends_with("ratelimit.replicas: is required with store = \"redis\": while Redis does not answer, each replica keeps limit ÷ replicas"), "{problems:?}");
    assert!(
        problems[1]
            .ends_with("ratelimit.budget: expected a duration such as \"30s\", found the number 5"),
        "{problems:?}"
    );
    assert!(problems[2].contains("ratelimit.on_failure: `clsed` is not one of \"open\", \"closed\" (did you mean \"closed\"?)"), "{problems:?}");

    let message = error(&format!("{GOOD}\n[ratelimit]\nreplicas = 2\n"));
    assert!(
        message.contains("ratelimit.replicas: applies only with store = \"redis\""),
        "{message}"
    );

    let text = "[ratelimit]\nstore = \"redis\"\nurl = \"rediss://:${ORG}@redis.internal:6380\"\nreplicas = 3\non_failure = \"closed\"\nbudget = \"10ms\"\n";
    let LimitStore::Redis(redis) = with(text).unwrap().ratelimit else {
        panic!("redis")
    };
    assert_eq!(redis.url.expose(), "rediss://:acme@redis.internal:6380");
    assert_eq!(format!("{:?}", redis.url), "[redacted]");
    assert_eq!(redis.namespace, "weir");
    assert_eq!(redis.budget, Duration::from_millis(10));
    assert!(redis.fail_closed);
    assert_eq!(redis.replicas, 3);
    assert!(["key", "route", "server", "provider"]
        .iter()
        .all(|s| redis.shares(s)));

    let text = "[ratelimit]\nstore = \"redis\"\nurl = \"redis://${ORG}:6379\"\nreplicas = 3\nscopes = [\"provider\", \"keys\"]\n";
    let message = with(text).unwrap_err().to_string();
    assert!(
        message.contains(
            "ratelimit.scopes: `keys` is not one of \"key\", \"route\", \"server\", \"provider\""
        ),
        "{message}"
    );
    let text = "[ratelimit]\nstore = \"redis\"\nurl = \"redis://${ORG}:6379\"\nreplicas = 3\nscopes = [\"provider\"]\n";
    let LimitStore::Redis(redis) = with(text).unwrap().ratelimit else {
        panic!("redis")
    };
    assert!(redis.shares("provider") && !redis.shares("key"));
}
