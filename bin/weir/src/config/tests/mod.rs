use super::*;
use std::time::Duration;

const GOOD: &str = r#"[server]
auth = "off"
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"
drain_timeout = "5s"

[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1/"
api_key = "${OPENAI_API_KEY}"
headers = { "OpenAI-Organization" = "org-${ORG}" }
response_timeout = "30s"

[[providers]]
name = "local"
base_url = "http://127.0.0.1:8000/v1"
allow_http = true

[[routes]]
model = "gpt-4.1"
strategy = "failover"
targets = [{ provider = "openai", model = "gpt-4.1-2025-04-14" }]

[[routes]]
model = "llama"
targets = [{ provider = "local", model = "meta/llama" }]
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-canary-123".to_owned()),
        "ORG" => Some("acme".to_owned()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("weir.toml"), text, &env)
}

fn error(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn reads_a_good_file() {
    let config = load(GOOD).unwrap();
    assert_eq!(config.server.listen.port(), 8080);
    assert_eq!(config.server.drain_timeout, Duration::from_secs(5));
    assert_eq!(config.server.max_request_bytes, 4 << 20);
    let openai = &config.providers[0];
    assert_eq!(openai.base_url.to_string(), "https://api.openai.com/v1");
    assert_eq!(openai.api_key.as_ref().unwrap().expose(), "sk-canary-123");
    assert_eq!(openai.headers[0].0.as_str(), "openai-organization");
    assert_eq!(openai.headers[0].1.expose(), "org-acme");
    assert_eq!(openai.response_timeout, Duration::from_secs(30));
    assert_eq!(config.routes[1].targets[0].provider, 1);
    assert_eq!(config.routes[0].targets[0].model, "gpt-4.1-2025-04-14");
    assert_eq!(
        openai.health.probe,
        Probe::Models,
        "probes are on by default"
    );
    assert_eq!(openai.breaker, weir_breaker::PolicyConfig::default());
}

#[test]
fn debug_never_shows_a_secret() {
    let config = load(GOOD).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("sk-canary-123"), "{shown}");
    assert!(!shown.contains("org-acme"));
    assert!(shown.contains("[redacted]"));
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = GOOD.replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nlisten_backlog = 5",
    );
    let message = error(&text);
    assert!(message.starts_with("weir.toml:6:"), "{message}");
    assert!(message.contains("listen_backlog"), "{message}");
}

#[test]
fn wrong_type_names_the_line() {
    let text = GOOD.replace("allow_http = true", "allow_http = \"yes\"");
    let message = error(&text);
    assert!(message.starts_with("weir.toml:17:14:"), "{message}");
}

#[test]
fn missing_env_var_is_named() {
    let text = GOOD.replace("${OPENAI_API_KEY}", "${NOT_SET_ANYWHERE}");
    let message = error(&text);
    assert!(message.starts_with("weir.toml:10:11:"), "{message}");
    assert!(message.contains("providers[0].api_key"), "{message}");
    assert!(
        message.contains("`NOT_SET_ANYWHERE` is not set"),
        "{message}"
    );
}

#[test]
fn literal_api_key_is_refused_without_echoing_it() {
    let text = GOOD.replace("${OPENAI_API_KEY}", "sk-literal-secret");
    let message = error(&text);
    assert!(
        message.contains("must name an environment variable"),
        "{message}"
    );
    assert!(!message.contains("sk-literal-secret"), "{message}");
}

#[test]
fn dangling_provider_reference() {
    let text = GOOD.replace("provider = \"local\"", "provider = \"nowhere\"");
    let message = error(&text);
    assert!(message.starts_with("weir.toml:26:25:"), "{message}");
    assert!(
        message.contains("routes[1].targets[0].provider"),
        "{message}"
    );
    assert!(
        message.contains("no provider is named `nowhere`"),
        "{message}"
    );
}

#[test]
fn plain_http_needs_consent() {
    let text = GOOD.replace("allow_http = true", "");
    let message = error(&text);
    assert!(message.contains("providers[1].base_url"), "{message}");
    assert!(message.contains("allow_http"), "{message}");
}

#[test]
fn credentials_in_url_refused() {
    let text = GOOD.replace(
        "https://api.openai.com/v1/",
        "https://user:pw@api.openai.com/v1",
    );
    let message = error(&text);
    assert!(message.contains("must not carry credentials"), "{message}");
}

#[test]
fn bad_values() {
    let text = GOOD.replace("drain_timeout = \"5s\"", "drain_timeout = \"soon\"");
    assert!(error(&text).contains("server.drain_timeout: `soon` is not a duration"));
    let text = GOOD.replace("127.0.0.1:9090", "localhost");
    assert!(error(&text).contains("server.admin_listen"));
    let text = GOOD.replace("model = \"llama\"", "model = \"gpt-4.1\"");
    assert!(error(&text).contains("routed twice"));
    let text = GOOD.replace("strategy = \"failover\"", "strategy = \"random\"");
    assert!(
        error(&text)
            .contains("routes[0].strategy: `random` is not one of \"failover\", \"weighted\""),
        "{}",
        error(&text)
    );
    let text = GOOD.replace(
        "allow_http = true",
        "allow_http = true\nhttp_version = \"h3\"",
    );
    let message = error(&text);
    assert!(
        message.contains(
            "providers[1].http_version: `h3` is not one of \"auto\", \"http1\", \"http2\""
        ),
        "{message}"
    );
}

#[test]
fn several_targets_in_order() {
    let text = GOOD.replace(
        "targets = [{ provider = \"local\", model = \"meta/llama\" }]",
        "targets = [{ provider = \"local\", model = \"a\" },\n           { provider = \"openai\", model = \"b\" }]",
    );
    let config = load(&text).unwrap();
    let targets = &config.routes[1].targets;
    assert_eq!((targets[0].provider, targets[1].provider), (1, 0));
    let bad = text.replace(
        "provider = \"openai\", model = \"b\"",
        "provider = \"nobody\", model = \"b\"",
    );
    let message = error(&bad);
    assert!(
        message.starts_with("weir.toml:27:") && message.contains("routes[1].targets[1].provider"),
        "{message}"
    );
}

#[test]
fn breaker_and_health_settings() {
    let text = GOOD.replace(
        "response_timeout = \"30s\"",
        "response_timeout = \"30s\"\nbreaker = { error_rate = 0.25, window = \"10s\", min_requests = 5, open_for = \"2s\", consecutive_failures = 0, half_open_probes = 0 }\nhealth = { probe = \"completion\", model = \"gpt-4.1-mini\", interval = \"7s\", timeout = \"1s\", unhealthy_after = 2 }",
    );
    let config = load(&text).unwrap();
    let p = &config.providers[0];
    assert_eq!(p.breaker.failure_rate, Some(0.25));
    assert_eq!(p.breaker.consecutive_failures, None, "0 turns the rule off");
    assert_eq!(p.breaker.window, Duration::from_secs(10));
    assert_eq!(p.breaker.min_calls, 5);
    assert_eq!(p.breaker.open_for, Duration::from_secs(2));
    assert_eq!(p.breaker.half_open_probes, 0);
    assert_eq!(p.breaker.unhealthy_after, 2);
    assert_eq!(p.health.probe, Probe::Completion("gpt-4.1-mini".into()));
    assert_eq!(p.health.interval, Duration::from_secs(7));

    let bad = GOOD.replace(
        "response_timeout = \"30s\"",
        "breaker = { error_rate = 1.5 }",
    );
    assert!(error(&bad).contains("providers[0].breaker.error_rate: must be between 0 (off) and 1"));
    let bad = GOOD.replace(
        "response_timeout = \"30s\"",
        "health = { probe = \"completion\" }",
    );
    assert!(error(&bad).contains("providers[0].health.probe: a \"completion\" probe needs `model`"));
    let bad = GOOD.replace("response_timeout = \"30s\"", "breaker = { trip_after = 3 }");
    let message = error(&bad);
    assert!(
        message.starts_with("weir.toml:12:13:") && message.contains("trip_after"),
        "{message}"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
    assert_eq!(parse_duration("1d"), None);
    assert_eq!(parse_duration("s"), None);
}

#[test]
fn tls_ca_is_read_relative_to_the_config_file() {
    let dir = std::env::temp_dir().join(format!("weir-tls-ca-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["models.internal".to_owned()]).unwrap();
    std::fs::write(dir.join("certs/ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.join("certs/empty.pem"), "not a certificate").unwrap();
    let file = dir.join("weir.toml");
    let with = |path: &str| {
        GOOD.replace(
            "allow_http = true",
            &format!("allow_http = true\ntls_ca = \"{path}\""),
        )
    };

    let config = parse(&file, &with("certs/ca.pem"), &env).unwrap();
    assert_eq!(config.providers[1].extra_roots.len(), 1);

    let message = parse(&file, &with("certs/missing.pem"), &env)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(":18:") && message.contains("providers[1].tls_ca: cannot read"),
        "{message}"
    );
    let message = parse(&file, &with("certs/empty.pem"), &env)
        .unwrap_err()
        .to_string();
    assert!(message.contains("holds no PEM certificate"), "{message}");
}

#[test]
fn route_retry_settings() {
    let text = GOOD.replace(
        "strategy = \"failover\"",
        "strategy = \"failover\"\nretry = { rate_limit_wait_ceiling = \"2s\", server_error_retries = 0, backoff = \"100ms\" }\nretry_budget = { ratio = 0.5, per_second = 0, window = \"30s\" }\nhedge_after = \"3s\"\nfirst_token_timeout = \"20s\"",
    );
    let config = load(&text).unwrap();
    let route = &config.routes[0];
    assert_eq!(route.retry.rate_limit_wait_ceiling, Duration::from_secs(2));
    assert_eq!(route.retry.server_error_retries, 0);
    assert_eq!(route.retry.backoff, Duration::from_millis(100));
    assert_eq!(
        route.retry.connect_retries, 1,
        "unset keys keep their defaults"
    );
    assert_eq!(route.retry_budget.ratio, 0.5);
    assert_eq!(route.retry_budget.window, Duration::from_secs(30));
    assert_eq!(route.hedge_after, Some(Duration::from_secs(3)));
    assert_eq!(route.first_token_timeout, Duration::from_secs(20));
    assert_eq!(
        config.routes[1].retry,
        weir_failover::RetryPolicy::default()
    );
    let bad = GOOD.replace("strategy = \"failover\"", "retry = { retries = 3 }");
    assert!(error(&bad).contains("retries"), "{}", error(&bad));
}

#[test]
fn concurrency_limits_read_with_their_defaults() {
    let text = GOOD
        .replace(
            "drain_timeout = \"5s\"",
            "drain_timeout = \"5s\"\nmax_concurrency = 4096\nclient_stall_timeout = \"20s\"",
        )
        .replace(
            "response_timeout = \"30s\"",
            "response_timeout = \"30s\"\nmax_concurrency = 64\nmax_queue = 10\nqueue_timeout = \"2s\"\n\
             adaptive_concurrency = { min = 4, first_token_target = \"1500ms\" }\nmax_connections = 80",
        );
    let config = load(&text).unwrap();
    let server = config.server.concurrency.unwrap();
    assert_eq!((server.max, server.max_queue), (4096, 4096));
    assert_eq!(server.queue_timeout, Duration::from_secs(10));
    assert_eq!(config.server.client_stall_timeout, Duration::from_secs(20));
    let openai = &config.providers[0];
    let limit = openai.concurrency.as_ref().unwrap();
    assert_eq!((limit.max, limit.max_queue), (64, 10));
    assert_eq!(limit.queue_timeout, Duration::from_secs(2));
    let adaptive = limit.adaptive.as_ref().unwrap();
    assert_eq!(adaptive.min, 4);
    assert_eq!(adaptive.first_token_target, Duration::from_millis(1500));
    assert_eq!(openai.max_connections, Some(80));
    assert_eq!(config.providers[1].concurrency, None);
    assert_eq!(config.providers[1].max_connections, None);
    assert_eq!(
        load(GOOD).unwrap().server.client_stall_timeout,
        Duration::from_secs(60)
    );
}

#[test]
fn limit_keys_without_a_limit_or_out_of_range_are_named() {
    let orphan = GOOD.replace("response_timeout = \"30s\"", "max_queue = 10");
    let message = error(&orphan);
    assert!(message.starts_with("weir.toml:12:13:"), "{message}");
    assert!(
        message.contains("providers[0].max_queue: needs `max_concurrency`"),
        "{message}"
    );

    let zero = GOOD.replace("drain_timeout = \"5s\"", "max_concurrency = 0");
    let message = error(&zero);
    assert!(
        message.contains("server.max_concurrency: must be at least 1"),
        "{message}"
    );

    let adaptive = GOOD.replace(
        "response_timeout = \"30s\"",
        "max_concurrency = 8\nadaptive_concurrency = { min = 9, first_token_target = \"1s\" }",
    );
    let message = error(&adaptive);
    assert!(
        message.contains(
            "providers[0].adaptive_concurrency.min: must be between 1 and max_concurrency (8)"
        ),
        "{message}"
    );
}

#[test]
fn rate_limits_and_keys_read_and_refuse_what_is_wrong() {
    let hash = hash_key("sk-client");
    let good = GOOD.replace("auth = \"off\"\n", "");
    let text = format!(
        "{good}\n[[keys]]\nname = \"team-a\"\nhash = \"{hash}\"\nmodels = [\"llama\"]\nlimits = {{ requests_per_minute = 60, tokens_per_minute = 1000, token_burst = 200 }}\n"
    )
    .replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nrate_limit = { requests_per_minute = 600 }",
    )
    .replace(
        "response_timeout = \"30s\"",
        "response_timeout = \"30s\"\nrate_limit = { tokens_per_minute = 90000, wait = \"2s\" }",
    );
    let config = load(&text).unwrap();
    let key = &config.keys[0];
    assert_eq!(key.name, "team-a");
    assert_eq!(key.models.as_deref(), Some(&["llama".to_owned()][..]));
    let limits = key.limits.as_ref().unwrap();
    assert_eq!(
        (limits.requests, limits.tokens),
        (Some((60, 60)), Some((1000, 200)))
    );
    assert_eq!(
        config.server.rate_limit.as_ref().unwrap().requests,
        Some((600, 600))
    );
    let provider = config.providers[0].rate_limit.as_ref().unwrap();
    assert_eq!(provider.wait, Duration::from_secs(2));
    assert!(!format!("{config:?}").contains("sk-client"));

    let bad_hash = text.replace(&hash, "sha256:1234");
    assert!(error(&bad_hash).contains("keys[0].hash: must be `sha256:` and 64 hex digits"));
    let unknown_model = text.replace("models = [\"llama\"]", "models = [\"nope\"]");
    assert!(error(&unknown_model).contains("keys[0].models: no route serves the model `nope`"));
    let client_wait = text.replace(
        "rate_limit = { requests_per_minute = 600 }",
        "rate_limit = { requests_per_minute = 600, wait = \"1s\" }",
    );
    assert!(error(&client_wait).contains("server.rate_limit.wait: only a provider's limit"));
    let empty = text.replace(
        "rate_limit = { requests_per_minute = 600 }",
        "rate_limit = { }",
    );
    assert!(
        error(&empty).contains("server.rate_limit: needs requests_per_minute or tokens_per_minute")
    );
}

#[test]
fn accepting_every_client_must_be_said_in_the_file() {
    let unsaid = GOOD.replace("auth = \"off\"\n", "");
    let message = error(&unsaid);
    assert!(
        message.starts_with("weir.toml:1:1: server.auth: no [[keys]]"),
        "{message}"
    );
    assert!(message.contains("auth = \"off\""), "{message}");

    let keys = format!(
        "\n[[keys]]\nname = \"a\"\nhash = \"{}\"\n",
        hash_key("sk-a")
    );
    let both = format!("{GOOD}{keys}");
    assert!(error(&both).contains("server.auth: is \"off\" but [[keys]] are configured"));
    let with_keys = format!("{unsaid}{keys}");
    assert_eq!(load(&with_keys).unwrap().keys.len(), 1);
    let typo = GOOD.replace("auth = \"off\"", "auth = \"none\"");
    assert!(error(&typo).contains("server.auth: `none` is not one of"));
}

#[test]
fn telemetry_from_the_file_and_from_otel_variables() {
    let config = load(GOOD).unwrap();
    assert!(config.telemetry.access_log);
    assert_eq!(config.telemetry.otlp, None, "no endpoint: no export");

    let text = format!(
        "{GOOD}\n[telemetry]\notlp_endpoint = \"http://collector:4318\"\notlp_protocol = \"http/protobuf\"\nsample_ratio = 0.25\n"
    );
    let otlp = load(&text).unwrap().telemetry.otlp.unwrap();
    assert_eq!(otlp.endpoint, "http://collector:4318");
    assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(
        (otlp.sample_ratio, otlp.service_name.as_str()),
        (0.25, "weir")
    );

    // The standard variables fill what the file leaves out; the file wins.
    let otel = |name: &str| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env-collector:4317".to_owned()),
        "OTEL_SERVICE_NAME" => Some("gateway-eu".to_owned()),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_owned()),
        other => env(other),
    };
    let from_env = parse(Path::new("weir.toml"), GOOD, &otel).unwrap();
    let otlp = from_env.telemetry.otlp.unwrap();
    assert_eq!(
        (
            otlp.endpoint.as_str(),
            otlp.service_name.as_str(),
            otlp.protocol
        ),
        (
            "http://env-collector:4317",
            "gateway-eu",
            OtlpProtocol::HttpProtobuf
        )
    );
    let from_file = parse(Path::new("weir.toml"), &text, &otel).unwrap();
    assert_eq!(
        from_file.telemetry.otlp.unwrap().endpoint,
        "http://collector:4318"
    );
    let disabled = |name: &str| match name {
        "OTEL_SDK_DISABLED" => Some("true".to_owned()),
        other => otel(other),
    };
    let off = parse(Path::new("weir.toml"), &text, &disabled).unwrap();
    assert_eq!(off.telemetry.otlp, None);
}

#[test]
fn bad_telemetry_and_prices_name_key_and_line() {
    let with = |tail: &str| format!("{GOOD}\n{tail}\n");
    let lines = GOOD.lines().count() + 3;
    let message = error(&with("[telemetry]\notlp_endpoint = \"collector:4317\""));
    assert!(
        message.contains(&format!(
            "weir.toml:{lines}:17: telemetry.otlp_endpoint: `collector:4317` is not an http:// or https:// URL"
        )),
        "{message}"
    );
    let message = error(&with(
        "[telemetry]\notlp_endpoint = \"http://c:4317\"\notlp_protocol = \"udp\"",
    ));
    assert!(
        message
            .contains("telemetry.otlp_protocol: `udp` is not one of \"grpc\", \"http/protobuf\""),
        "{message}"
    );
    let message = error(&with(
        "[telemetry]\notlp_endpoint = \"http://c:4317\"\nsample_ratio = 2.0",
    ));
    assert!(
        message.contains("telemetry.sample_ratio: must be between 0 and 1"),
        "{message}"
    );
    let bad_env = |name: &str| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4317".to_owned()),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("carrier-pigeon".to_owned()),
        other => env(other),
    };
    let message = parse(Path::new("weir.toml"), GOOD, &bad_env)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("OTEL_EXPORTER_OTLP_PROTOCOL: `carrier-pigeon`"),
        "{message}"
    );

    let prices = |body: &str| with(&format!("[prices]\n{body}"));
    let ok = load(&prices("\"meta/llama\" = { input = 0.1, output = 0.2 }")).unwrap();
    assert_eq!(
        ok.prices["meta/llama"],
        weir_metrics::Price {
            input: 0.1,
            output: 0.2
        }
    );
    let message = error(&prices("\"gpt-5\" = { input = 1.0, output = 2.0 }"));
    assert!(
        message.contains(&format!(
            "weir.toml:{lines}:1: prices.\"gpt-5\": no route target sends the model `gpt-5`"
        )),
        "{message}"
    );
    let message = error(&prices("\"meta/llama\" = { input = -1.0, output = 2.0 }"));
    assert!(
        message.contains("prices.\"meta/llama\".input: must be a price in USD per million tokens"),
        "{message}"
    );
    let message = error(&prices("\"meta/llama\" = { input = 1.0, outptu = 2.0 }"));
    assert!(
        message.contains("prices.\"meta/llama\".outptu: unknown key (did you mean `output`?)"),
        "{message}"
    );
}

mod problems;

#[test]
fn a_provider_speaks_openai_unless_it_says_anthropic() {
    let config = load(GOOD).unwrap();
    assert_eq!(config.providers[0].api, ProviderApi::OpenAi);
    let text = GOOD.replace(
        "name = \"local\"\n",
        "name = \"local\"\napi = \"anthropic\"\nanthropic_version = \"2024-01-01\"\n",
    );
    let config = load(&text).unwrap();
    assert_eq!(config.providers[1].api, ProviderApi::Anthropic);
    assert_eq!(config.providers[1].anthropic_version, "2024-01-01");
    assert!(ProviderApi::Anthropic.serves(weir_llm::Endpoint::Messages));
    assert!(!ProviderApi::Anthropic.serves(weir_llm::Endpoint::Responses));
    assert!(ProviderApi::OpenAi.serves(weir_llm::Endpoint::Responses));
    let message = error(&GOOD.replace(
        "name = \"local\"\n",
        "name = \"local\"\napi = \"antropic\"\n",
    ));
    assert!(
        message.contains("weir.toml:16:7: providers[1].api: `antropic` is not one of \"openai\", \"anthropic\" (did you mean \"anthropic\"?)"),
        "{message}"
    );
}

#[test]
fn the_example_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    for name in ["providers.toml", "mock.toml"] {
        let path = root.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let env = |name: &str| {
            name.ends_with("_KEY")
                .then(|| "from-the-environment".to_owned())
        };
        let config = parse(&path, &text, &env).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "providers.toml" {
            assert!(config
                .providers
                .iter()
                .any(|p| p.api == ProviderApi::Anthropic));
        }
    }
}
