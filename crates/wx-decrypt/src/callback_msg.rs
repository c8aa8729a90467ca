//! A decrypted callback (WeCom app or Official Account message, XML or JSON) into the clean
//! message's fields. Events (`MsgType=event`, such as `msgaudit_notify`) are not messages and
//! are filtered.
//!
//! Mapping: msgid = `callback:<AgentID or ToUserName>:<MsgId>` (WeCom repeats MsgId on every
//! retry, so duplicates keep one identity, and the prefix keeps it apart from archive msgids);
//! from = FromUserName; tolist = [the app: `agent:<AgentID>`, or ToUserName]; msgtime =
//! CreateTime (seconds) in ms; msgtype = MsgType; payload = every field as JSON; text = Content
//! (or Title/Description); conversation = `app:<agent>:<user>`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::failure::Failure;
use crate::normalise::{Normalised, is_external_id};

/// A message, or an event that is filtered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    Message(Box<Normalised>),
    Event,
}

fn fields(plaintext: &[u8]) -> Result<BTreeMap<String, String>, Failure> {
    let trimmed = plaintext.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        let value: Value = serde_json::from_slice(trimmed)
            .map_err(|e| Failure::new("invalid_json", format!("callback JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Failure::new(
                "invalid_json",
                "callback JSON is not an object",
            ));
        };
        Ok(map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Number(n) => Some((k, n.to_string())),
                _ => None,
            })
            .collect())
    } else {
        wx_crypto::xml_fields(plaintext).map_err(|e| Failure::new("invalid_xml", e))
    }
}

/// Normalises one decrypted callback of `corp_id`.
pub fn normalise(plaintext: &[u8], corp_id: &str) -> Result<CallbackOutcome, Failure> {
    let fields = fields(plaintext)?;
    let get = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    };
    let msgtype = get("MsgType").ok_or_else(|| Failure::new("missing_field", "MsgType"))?;
    if msgtype == "event" {
        return Ok(CallbackOutcome::Event);
    }
    let msg_id = get("MsgId").ok_or_else(|| Failure::new("missing_field", "MsgId"))?;
    let from = get("FromUserName").ok_or_else(|| Failure::new("missing_field", "FromUserName"))?;
    let created = get("CreateTime")
        .ok_or_else(|| Failure::new("missing_field", "CreateTime"))?
        .parse::<i64>()
        .map_err(|_| Failure::new("missing_field", "CreateTime is not an integer"))?;
    let app = get("AgentID").map_or_else(
        || get("ToUserName").unwrap_or(corp_id).to_string(),
        |a| format!("agent:{a}"),
    );
    let text: Vec<&str> = ["Content", "Title", "Description"]
        .iter()
        .filter_map(|f| get(f))
        .collect();
    let payload: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Ok(CallbackOutcome::Message(Box::new(Normalised {
        msgid: format!("callback:{app}:{msg_id}"),
        action: "send".into(),
        from: from.to_string(),
        tolist: vec![app.clone()],
        roomid: String::new(),
        msgtime: created.saturating_mul(1000),
        msgtype: msgtype.to_string(),
        payload_json: Value::Object(payload).to_string(),
        extra_json: None,
        text: (!text.is_empty()).then(|| text.join("\n")),
        recalled_msgid: None,
        conversation_id: format!("app:{app}:{from}"),
        is_external: is_external_id(from),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_official_a2_message_normalises() {
        let xml = "<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun</FromUserName><CreateTime>1476422779</CreateTime><MsgType>text</MsgType><Content>你好</Content><MsgId>1456453720</MsgId><AgentID>1000002</AgentID></xml>";
        let CallbackOutcome::Message(n) =
            normalise(xml.as_bytes(), "ww1436e0e65a779aee").expect("normalises")
        else {
            panic!("a text message is not an event");
        };
        assert_eq!(n.msgid, "callback:agent:1000002:1456453720");
        assert_eq!(n.from, "ChenJiaShun");
        assert_eq!(n.msgtime, 1_476_422_779_000);
        assert_eq!(n.msgtype, "text");
        assert_eq!(n.text.as_deref(), Some("你好"));
        assert_eq!(n.conversation_id, "app:agent:1000002:ChenJiaShun");
    }

    #[test]
    fn events_are_filtered_and_broken_callbacks_have_a_class() {
        let event = "<xml><ToUserName><![CDATA[ww1]]></ToUserName><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[msgaudit_notify]]></Event></xml>";
        assert_eq!(
            normalise(event.as_bytes(), "ww1").expect("event"),
            CallbackOutcome::Event
        );
        let json = r#"{"ToUserName":"ww1","FromUserName":"u","CreateTime":1,"MsgType":"text","Content":"hi","MsgId":7}"#;
        assert!(matches!(
            normalise(json.as_bytes(), "ww1"),
            Ok(CallbackOutcome::Message(n)) if n.msgid == "callback:ww1:7"
        ));
        let cases: [(&str, &str); 3] = [
            ("<xml><MsgType>text</MsgType></xml>", "missing_field"),
            ("<xml><MsgType>text", "invalid_xml"),
            ("{\"MsgType\":", "invalid_json"),
        ];
        for (input, class) in cases {
            let err = normalise(input.as_bytes(), "ww1").expect_err(input);
            assert_eq!(err.class, class, "{input}");
        }
    }
}
