//! The Responses and Messages APIs through every layer, as a client notices: errors in the
//! API's own shape whichever layer refuses (a rate limit, a missing lane, a bad body), stored
//! responses fetched from the provider that made them (or refused clearly), a request that
//! reached the wrong kind of provider never sent.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weir_e2e::Read;
use weir_test::MockUpstream;

async fn send(
    weir: &weir::Running,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, Read) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", weir.addr()))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(
            request
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, weir_e2e::read(response).await)
}

/// An Anthropic-shaped error body: its `error.type` and message.
fn anthropic_error(read: &Read) -> (String, String) {
    let json = read.json();
    assert_eq!(json["type"], "error", "{json}");
    assert!(
        json.get("error").is_some_and(|e| e.get("param").is_none()),
        "{json}"
    );
    (
        json["error"]["type"].as_str().unwrap().to_owned(),
        json["error"]["message"].as_str().unwrap().to_owned(),
    )
}

const MESSAGE: &str =
    r#"{"model":"claude","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn every_layer_refuses_a_messages_client_in_anthropics_shape() {
    let mock = MockUpstream::start().await;
    let weir = weir_e2e::weir_with(&[
        weir_e2e::provider("an", &mock.base_url(), "api = \"anthropic\""),
        weir_e2e::provider("oa", &mock.base_url(), ""),
        weir_e2e::route(
            "claude",
            r#"[{ provider = "an", model = "m" }]"#,
            "rate_limit = { requests_per_minute = 1 }",
        ),
        weir_e2e::route("gpt-only", r#"[{ provider = "oa", model = "m" }]"#, ""),
    ])
    .await;
    let (status, _, read) = send(&weir, Method::POST, "/v1/messages", &[], MESSAGE).await;
    assert_eq!(status, 200, "{:?}", read.bytes);
    assert_eq!(
        read.json()["content"][0]["text"],
        "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15 "
    );
    // The route's limit (weir_ratelimit made the 429): Anthropic's shape, its headers kept.
    let (status, headers, read) = send(&weir, Method::POST, "/v1/messages", &[], MESSAGE).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    let (kind, message) = anthropic_error(&read);
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("requests per minute"), "{message}");
    // A model whose providers speak only OpenAI's API: no request goes anywhere.
    let asked = mock.requests().len();
    let body = MESSAGE.replace("claude", "gpt-only");
    let (status, _, read) = send(&weir, Method::POST, "/v1/messages", &[], &body).await;
    assert_eq!(status, 404);
    let (kind, message) = anthropic_error(&read);
    assert_eq!(kind, "not_found_error");
    assert!(
        message.contains("no provider that speaks Anthropic's Messages API"),
        "{message}"
    );
    assert_eq!(mock.requests().len(), asked);
    // The same for Responses the other way round: OpenAI's shape.
    let (status, _, read) = send(
        &weir,
        Method::POST,
        "/v1/responses",
        &[],
        r#"{"model":"claude","input":"hi"}"#,
    )
    .await;
    assert_eq!(status, 404);
    let error = weir_e2e::assert_openai_error(&read);
    assert_eq!(error["code"], "model_not_found");
    // A body that is not JSON, a wrong method, a model left out.
    let (status, _, read) = send(&weir, Method::POST, "/v1/messages", &[], "{nope").await;
    assert_eq!(
        (status, anthropic_error(&read).0.as_str()),
        (400, "invalid_request_error")
    );
    let (status, _, read) = send(&weir, Method::GET, "/v1/messages", &[], "").await;
    assert_eq!(
        (status, anthropic_error(&read).0.as_str()),
        (405, "invalid_request_error")
    );
    let (status, _, read) = send(
        &weir,
        Method::POST,
        "/v1/messages",
        &[],
        r#"{"messages":[]}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(anthropic_error(&read).1.contains("model"));
}

#[tokio::test]
async fn a_weir_key_is_taken_as_x_api_key_and_a_wrong_one_is_refused_in_shape() {
    let mock = MockUpstream::start().await;
    let key = "sk-weir-0123456789abcdef";
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}{}\n[[keys]]\nname = \"team\"\nhash = \"{}\"\n",
        weir_e2e::provider("an", &mock.base_url(), "api = \"anthropic\""),
        weir_e2e::route("claude", r#"[{ provider = "an", model = "m" }]"#, ""),
        weir::config::hash_key(key),
    );
    let config = weir::config::parse("keys.toml".as_ref(), &text, &|_| None).unwrap();
    let weir = weir::start(&config).await.unwrap();
    let (status, _, _) = send(
        &weir,
        Method::POST,
        "/v1/messages",
        &[("x-api-key", key)],
        MESSAGE,
    )
    .await;
    assert_eq!(status, 200);
    let bearer = format!("Bearer {key}");
    let (status, _, _) = send(
        &weir,
        Method::POST,
        "/v1/messages",
        &[("authorization", &bearer)],
        MESSAGE,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, read) = send(
        &weir,
        Method::POST,
        "/v1/messages",
        &[("x-api-key", "sk-wrong")],
        MESSAGE,
    )
    .await;
    assert_eq!(
        (status, anthropic_error(&read).0.as_str()),
        (401, "authentication_error")
    );
    // Neither of the client's headers went upstream; the anthropic-version did.
    for r in mock.requests() {
        assert!(!format!("{:?}", r.headers).contains(key));
        assert_eq!(r.headers.get("anthropic-version").unwrap(), "2023-06-01");
    }
    // The client's own version goes as it sent it.
    send(
        &weir,
        Method::POST,
        "/v1/messages",
        &[
            ("x-api-key", key),
            ("anthropic-version", "2099-01-01"),
            ("anthropic-beta", "x-1"),
        ],
        MESSAGE,
    )
    .await;
    let last = mock.requests().pop().unwrap();
    assert_eq!(last.headers.get("anthropic-version").unwrap(), "2099-01-01");
    assert_eq!(last.headers.get("anthropic-beta").unwrap(), "x-1");
}

#[tokio::test]
async fn a_stored_response_is_fetched_from_the_provider_that_made_it() {
    let first = MockUpstream::start().await;
    let second = MockUpstream::start().await;
    let weir = weir_e2e::weir_with(&[
        weir_e2e::provider("one", &first.base_url(), ""),
        weir_e2e::provider("two", &second.base_url(), ""),
        // The first provider refuses, so the second makes the response.
        weir_e2e::route(
            "gpt-r",
            r#"[{ provider = "one", model = "m@fault=context_length" }, { provider = "two", model = "m" }]"#,
            "",
        ),
        weir_e2e::route("gpt-one", r#"[{ provider = "one", model = "m" }]"#, ""),
        weir_e2e::route(
            "gpt-both",
            r#"[{ provider = "one", model = "m" }, { provider = "two", model = "m" }]"#,
            "",
        ),
    ])
    .await;
    let (status, headers, read) = send(
        &weir,
        Method::POST,
        "/v1/responses",
        &[],
        r#"{"model":"gpt-r","input":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200, "{:?}", read.bytes);
    assert_eq!(headers["x-weir-provider"], "two");
    let id = read.json()["id"].as_str().unwrap().to_owned();
    // A response that continues it goes to the provider that keeps it, though the route
    // would ask `one` first; a new one follows the route's order.
    let body = format!(r#"{{"model":"gpt-both","input":"more","previous_response_id":"{id}"}}"#);
    let (status, headers, _) = send(&weir, Method::POST, "/v1/responses", &[], &body).await;
    assert_eq!(
        (status, headers["x-weir-provider"].to_str().unwrap()),
        (200, "two")
    );
    let (status, headers, _) = send(
        &weir,
        Method::POST,
        "/v1/responses",
        &[],
        r#"{"model":"gpt-both","input":"new"}"#,
    )
    .await;
    assert_eq!(
        (status, headers["x-weir-provider"].to_str().unwrap()),
        (200, "one")
    );
    let asked = (first.requests().len(), second.requests().len());
    let (status, _, read) = send(
        &weir,
        Method::GET,
        &format!("/v1/responses/{id}?include=x"),
        &[],
        "",
    )
    .await;
    assert_eq!(
        (status, read.json()["id"].as_str()),
        (200, Some(id.as_str()))
    );
    let (status, _, _) = send(
        &weir,
        Method::GET,
        &format!("/v1/responses/{id}/input_items"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, read) = send(
        &weir,
        Method::DELETE,
        &format!("/v1/responses/{id}"),
        &[],
        "",
    )
    .await;
    assert_eq!(
        (status, read.json()["deleted"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(
        first.requests().len(),
        asked.0,
        "never the provider that did not make it"
    );
    let paths: Vec<(Method, String)> = second.requests()[asked.1..]
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        paths,
        [
            (Method::GET, format!("/v1/responses/{id}")),
            (Method::GET, format!("/v1/responses/{id}/input_items")),
            (Method::DELETE, format!("/v1/responses/{id}")),
        ]
    );
    // Deleted, and with two providers to choose from: refused, saying why.
    let (status, _, read) = send(&weir, Method::GET, &format!("/v1/responses/{id}"), &[], "").await;
    assert_eq!(status, 404);
    let error = weir_e2e::assert_openai_error(&read);
    assert_eq!(error["code"], "response_not_found");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("another weir instance"),
        "{error}"
    );
    // A stateless response is not remembered (the provider keeps nothing).
    let (_, _, read) = send(
        &weir,
        Method::POST,
        "/v1/responses",
        &[],
        r#"{"model":"gpt-one","input":"hi","store":false}"#,
    )
    .await;
    let id = read.json()["id"].as_str().unwrap().to_owned();
    let (status, _, _) = send(&weir, Method::GET, &format!("/v1/responses/{id}"), &[], "").await;
    assert_eq!(status, 404);
    // Only an id and what the API has under it: nothing else rides on the provider's key.
    let asked = (first.requests().len(), second.requests().len());
    for path in [
        "/v1/responses/../files/file-1",
        "/v1/responses/resp_1/../../models",
        "/v1/responses/%2e%2e",
        "/v1/responses/resp_1/other",
        "/v1/responses/",
    ] {
        let (status, _, read) = send(&weir, Method::DELETE, path, &[], "").await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(weir_e2e::assert_openai_error(&read)["code"], "unknown_url");
    }
    assert_eq!((first.requests().len(), second.requests().len()), asked);
    let (status, headers, _) = send(&weir, Method::PUT, "/v1/responses/resp_1", &[], "").await;
    assert_eq!(
        (status, headers["allow"].to_str().unwrap()),
        (405, "GET, DELETE")
    );
}
