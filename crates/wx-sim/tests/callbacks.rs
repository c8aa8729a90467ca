//! The simulator's callbacks verify and decrypt with WXBizMsgCrypt on the receiving side, and a
//! failed delivery is retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use wx_crypto::{CallbackCrypt, Envelope};
use wx_sim::{CallbackConfig, CallbackSender};

const TOKEN: &str = "QDG6eK";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const CORP: &str = "wwcallback";

#[derive(Default)]
struct Received {
    requests: u32,
    fail_first: u32,
    messages: Vec<String>,
}

type Shared = Arc<Mutex<Received>>;

async fn receive(
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let mut state = state.lock().expect("lock");
    state.requests += 1;
    if state.requests <= state.fail_first {
        return (StatusCode::SERVICE_UNAVAILABLE, "broker down".into());
    }
    let crypt = CallbackCrypt::new(TOKEN, KEY, CORP).expect("crypt");
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let envelope = if json {
        Envelope::from_json(body.as_bytes())
    } else {
        Envelope::from_xml(body.as_bytes())
    }
    .expect("envelope");
    match crypt.decrypt_message(&q["msg_signature"], &q["timestamp"], &q["nonce"], &envelope) {
        Ok(plain) => {
            state
                .messages
                .push(String::from_utf8(plain).expect("utf-8"));
            (StatusCode::OK, "success".into())
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn receiver(fail_first: u32) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Received {
        fail_first,
        ..Received::default()
    }));
    let app = Router::new()
        .route("/callback", post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/callback", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

fn sender(url: &str, json: bool) -> CallbackSender {
    CallbackSender::new(CallbackConfig {
        url: url.into(),
        token: TOKEN.into(),
        encoding_aes_key: KEY.into(),
        attempts: 3,
        retry_ms: 50,
        json,
    })
    .expect("sender")
}

#[tokio::test]
async fn msgaudit_notify_is_signed_encrypted_and_retried_until_accepted() {
    let (url, state) = receiver(1).await;
    let delivery = sender(&url, false).msgaudit_notify(CORP).await;
    assert!(delivery.delivered, "{delivery:?}");
    assert_eq!(
        delivery.attempts, 2,
        "the first answer was 503, so WeCom retries"
    );
    let state = state.lock().expect("lock");
    assert_eq!(state.messages.len(), 1);
    assert!(state.messages[0].contains("<Event><![CDATA[msgaudit_notify]]></Event>"));
    assert!(state.messages[0].contains(&format!("<ToUserName><![CDATA[{CORP}]]></ToUserName>")));
}

/// The text of consecutive CDATA sections (a `]]>` in content is split across two of them).
fn cdata_text(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<![CDATA[") {
        let after = &rest[start + 9..];
        let end = after.find("]]>").expect("closed CDATA");
        out.push_str(&after[..end]);
        rest = &after[end + 3..];
    }
    out
}

#[tokio::test]
async fn text_messages_arrive_in_xml_and_json_envelopes() {
    for json in [false, true] {
        let (url, state) = receiver(0).await;
        let delivery = sender(&url, json)
            .text_message(CORP, "ChenJiaShun", "你好 ]]> 😀", 1456453720)
            .await;
        assert!(delivery.delivered && delivery.attempts == 1, "{delivery:?}");
        let state = state.lock().expect("lock");
        let plain = &state.messages[0];
        let content = plain
            .split("<Content>")
            .nth(1)
            .and_then(|c| c.split("</Content>").next())
            .map(cdata_text)
            .expect("content");
        assert_eq!(content, "你好 ]]> 😀", "json={json}: {plain}");
        assert!(plain.contains("<MsgId>1456453720</MsgId>"));
    }
}

#[tokio::test]
async fn a_receiver_that_never_accepts_gets_every_attempt_and_the_delivery_says_so() {
    let (url, state) = receiver(u32::MAX).await;
    let delivery = sender(&url, false).msgaudit_notify(CORP).await;
    assert!(!delivery.delivered);
    assert_eq!(delivery.attempts, 3);
    assert_eq!(state.lock().expect("lock").requests, 3);
    let nobody = sender("http://127.0.0.1:1/callback", false)
        .msgaudit_notify(CORP)
        .await;
    assert!(!nobody.delivered && nobody.attempts == 3);
}
