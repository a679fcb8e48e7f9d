use super::complete::{error_fields, usage_object};
use super::connection::{parse, Bucket, ClientMessage};
use super::*;
use std::time::Duration;

#[test]
fn messages_are_read_into_requests_and_refusals() {
    let ClientMessage::Completion { id, body } = parse(
        r#"{"type":"completion","id":"c1","model":"gpt-test","messages":[],"temperature":0.2,"stream":false}"#,
    ) else {
        panic!("a completion")
    };
    assert_eq!(id, r#""c1""#);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"model":"gpt-test","messages":[],"temperature":0.2,"stream":true,"stream_options":{"include_usage":true}})
    );
    assert!(
        matches!(parse(r#"{"type":"cancel","id":7}"#), ClientMessage::Cancel { id } if id == "7")
    );
    assert!(matches!(
        parse(r#"{"type":"ping"}"#),
        ClientMessage::Ping { id: None }
    ));
    assert!(matches!(parse(r#"{"type":"reset"}"#), ClientMessage::Reset));
    for bad in [
        "not json",
        "[1,2]",
        r#"{"type":"completion","model":"m"}"#,
        r#"{"type":"completion","id":{"x":1}}"#,
        r#"{"type":"dance"}"#,
        r#"{"id":1}"#,
        r#"{"type":"cancel"}"#,
    ] {
        assert!(matches!(parse(bad), ClientMessage::Invalid { .. }), "{bad}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_bucket_refills_at_its_rate_up_to_its_burst() {
    let mut bucket = Bucket::new(2, 3);
    assert!((0..3).all(|_| bucket.take()));
    assert!(!bucket.take());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(bucket.take());
    assert!(!bucket.take());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!((0..10).filter(|_| bucket.take()).count(), 3);
}

#[test]
fn usage_and_errors_are_read_from_events() {
    assert_eq!(
        usage_object(br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#).as_deref(),
        Some(&br#"{"completion_tokens":4,"prompt_tokens":3,"total_tokens":7}"#[..])
    );
    assert_eq!(
        usage_object(br#"{"choices":[{"delta":{}}],"usage":null}"#),
        None
    );
    assert_eq!(
        error_fields(br#"{"error":{"message":"No such model.","type":"invalid_request_error","code":"model_not_found"}}"#, StatusCode::NOT_FOUND),
        ("model_not_found".to_owned(), "No such model.".to_owned())
    );
    assert_eq!(error_fields(b"", StatusCode::BAD_GATEWAY).0, "http_502");
}
