//! Decrypted archive JSON into the clean message's fields: a pure function with table-driven
//! tests. Every msgtype of the domain page is handled, switch and recall records included, and
//! unknown msgtypes are kept whole (WeCom adds types; a new type is not an error).

use serde_json::{Map, Value};

/// The normalised fields of one message (the clean record without its source coordinates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    pub msgid: String,
    pub action: String,
    pub from: String,
    pub tolist: Vec<String>,
    pub roomid: String,
    pub msgtime: i64,
    pub msgtype: String,
    /// The type's payload object as JSON (`{}` when the type has none).
    pub payload_json: String,
    /// Top-level fields outside the common set and the payload (`voiceid`, `voipid`, ...).
    pub extra_json: Option<String>,
    /// Searchable text, lines joined by `\n`.
    pub text: Option<String>,
    pub recalled_msgid: Option<String>,
    pub conversation_id: String,
    pub is_external: bool,
}

/// Why a decrypted message is not a valid message. Carries field names, never content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormaliseError {
    #[error("decrypted message is not valid UTF-8")]
    InvalidUtf8,
    #[error("decrypted message is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("decrypted message is not a JSON object")]
    NotAnObject,
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("decrypted msgid does not match the archive item's msgid")]
    MsgidMismatch,
}

impl NormaliseError {
    /// The dead-letter class (a bounded label).
    pub fn class(&self) -> &'static str {
        match self {
            NormaliseError::InvalidUtf8 | NormaliseError::InvalidJson(_) => "invalid_json",
            NormaliseError::NotAnObject
            | NormaliseError::MissingField(_)
            | NormaliseError::WrongType { .. } => "missing_field",
            NormaliseError::MsgidMismatch => "msgid_mismatch",
        }
    }
}

/// The JSON key holding a msgtype's payload, where it differs from the type.
pub fn payload_key(msgtype: &str) -> &str {
    match msgtype {
        "docmsg" => "doc",
        "markdown" | "news" | "voiptext" | "qydiskfile" => "info",
        "external_redpacket" => "redpacket",
        "revoke" => "revoke",
        other => other,
    }
}

/// Fields of a payload whose strings are searchable text, per msgtype.
fn text_fields(msgtype: &str) -> &'static [&'static str] {
    match msgtype {
        "text" | "markdown" => &["content"],
        "link" => &["title", "description"],
        "weapp" => &["title", "description", "displayname"],
        "file" | "voip_doc_share" | "qydiskfile" => &["filename"],
        "location" => &["title", "address"],
        "card" => &["corpname"],
        "todo" => &["title", "content"],
        "vote" => &["votetitle", "voteitem"],
        "collect" => &["room_name", "title", "details", "ques"],
        "redpacket" | "external_redpacket" => &["wish"],
        "meeting" => &["topic", "address", "remarks"],
        "docmsg" => &["title"],
        "news" => &["item", "title", "description"],
        "calendar" => &["title", "place", "remarks"],
        "meeting_voice_call" => &["demofiledata", "filename"],
        "sphfeed" => &["sph_name", "feed_desc"],
        "chatrecord" | "mixed" => &["title"],
        _ => &[],
    }
}

const COMMON: [&str; 7] = [
    "msgid", "action", "from", "tolist", "roomid", "msgtime", "msgtype",
];

/// Where a byte of JSON text stands: inside a string or not, after a backslash or not.
#[derive(Debug, Default)]
struct JsonStrings {
    in_string: bool,
    escaped: bool,
}

impl JsonStrings {
    /// Moves past byte `b`; true when it is a raw control character inside a string.
    fn raw_control(&mut self, b: u8) -> bool {
        let raw = self.in_string && b < 0x20 && !self.escaped;
        if self.escaped {
            self.escaped = false;
        } else if b == b'\\' && self.in_string {
            self.escaped = true;
        } else if b == b'"' {
            self.in_string = !self.in_string;
        }
        raw
    }
}

/// Escapes raw control characters inside JSON strings (WeCom sends some unescaped), leaving
/// everything else byte for byte.
pub fn escape_control_chars(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut scan = JsonStrings::default();
    if !input.iter().any(|&b| scan.raw_control(b)) {
        return std::borrow::Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len() + 16);
    let mut scan = JsonStrings::default();
    for &b in input {
        if scan.raw_control(b) {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Parses decrypted bytes as a JSON object, tolerating raw control characters in strings.
pub fn parse_object(plaintext: &[u8]) -> Result<Map<String, Value>, NormaliseError> {
    std::str::from_utf8(plaintext).map_err(|_| NormaliseError::InvalidUtf8)?;
    let cleaned = escape_control_chars(plaintext);
    let value: Value = serde_json::from_slice(&cleaned).map_err(|e| {
        // serde_json's message names a line and column, never content.
        NormaliseError::InvalidJson(e.to_string())
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(NormaliseError::NotAnObject),
    }
}

fn required_str(map: &Map<String, Value>, field: &'static str) -> Result<String, NormaliseError> {
    match map.get(field) {
        None | Some(Value::Null) => Err(NormaliseError::MissingField(field)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(NormaliseError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn required_i64(map: &Map<String, Value>, field: &'static str) -> Result<i64, NormaliseError> {
    match map.get(field) {
        None | Some(Value::Null) => Err(NormaliseError::MissingField(field)),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or(NormaliseError::WrongType {
                field,
                expected: "an integer",
            }),
    }
}

fn string_list(
    map: &Map<String, Value>,
    field: &'static str,
) -> Result<Vec<String>, NormaliseError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or(NormaliseError::WrongType {
                        field,
                        expected: "an array of strings",
                    })
            })
            .collect(),
        Some(_) => Err(NormaliseError::WrongType {
            field,
            expected: "an array of strings",
        }),
    }
}

/// External contacts' ids start with `wo` or `wm`.
pub fn is_external_id(id: &str) -> bool {
    id.starts_with("wo") || id.starts_with("wm")
}

/// roomid for groups; `single:<a>:<b>` with the two parties sorted for 1:1 chats, so both
/// directions of a conversation share one id (and one clean-topic partition).
pub fn conversation_id(from: &str, tolist: &[String], roomid: &str) -> String {
    if !roomid.is_empty() {
        return roomid.to_string();
    }
    let other = tolist.first().map_or("", String::as_str);
    let (a, b) = if from <= other {
        (from, other)
    } else {
        (other, from)
    };
    format!("single:{a}:{b}")
}

/// Collects the strings found under `fields` anywhere in `value` (arrays and nested objects
/// are walked; `item[].content` strings that hold JSON are parsed and walked too).
fn collect_text(value: &Value, fields: &[&str], out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            // In the order the fields are listed (title before description), not key order.
            for field in fields {
                if let Some(v) = map.get(*field) {
                    push_strings(v, fields, out);
                }
            }
            for (key, v) in map {
                if !fields.contains(&key.as_str())
                    && matches!(v, Value::Array(_) | Value::Object(_))
                {
                    collect_text(v, fields, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_text(v, fields, out)),
        _ => {}
    }
}

fn push_strings(value: &Value, fields: &[&str], out: &mut Vec<String>) {
    match value {
        Value::String(s) if !s.trim().is_empty() => out.push(s.trim_end().to_string()),
        Value::Array(items) => items.iter().for_each(|v| push_strings(v, fields, out)),
        Value::Object(_) => collect_text(value, fields, out),
        _ => {}
    }
}

/// The item types of `mixed` and `chatrecord`: each item's `content` is a JSON string of a
/// message of that type.
fn item_text(item: &Value, out: &mut Vec<String>) {
    let Some(content) = item.get("content").and_then(Value::as_str) else {
        return;
    };
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_start_matches("ChatRecord")
        .to_ascii_lowercase();
    let Ok(inner) = serde_json::from_slice::<Value>(&escape_control_chars(content.as_bytes()))
    else {
        return;
    };
    let fields: &[&str] = match kind.as_str() {
        "mixed" | "chatrecord" => {
            if let Some(items) = inner.get("item").and_then(Value::as_array) {
                items.iter().for_each(|i| item_text(i, out));
            }
            &["title"]
        }
        "" => &["content", "title", "filename", "description"],
        other => {
            let f = text_fields(other);
            if f.is_empty() {
                &["content", "title", "filename", "description"]
            } else {
                f
            }
        }
    };
    collect_text(&inner, fields, out);
}

fn searchable_text(msgtype: &str, payload: &Value) -> Option<String> {
    let mut out = Vec::new();
    collect_text(payload, text_fields(msgtype), &mut out);
    if let ("mixed" | "chatrecord", Some(items)) =
        (msgtype, payload.get("item").and_then(Value::as_array))
    {
        items.iter().for_each(|i| item_text(i, &mut out));
    }
    if out.is_empty() {
        None
    } else {
        Some(out.join("\n"))
    }
}

/// Normalises one decrypted archive message. `expected_msgid` is the archive item's msgid, which
/// the decrypted one must equal.
pub fn normalise(
    plaintext: &[u8],
    expected_msgid: Option<&str>,
) -> Result<Normalised, NormaliseError> {
    let mut map = parse_object(plaintext)?;
    let msgid = required_str(&map, "msgid")?;
    if expected_msgid.is_some_and(|m| m != msgid) {
        return Err(NormaliseError::MsgidMismatch);
    }
    let action = required_str(&map, "action")?;
    if action == "switch" {
        let user = required_str(&map, "user")?;
        let time = required_i64(&map, "time")?;
        map.remove("msgid");
        map.remove("action");
        return Ok(Normalised {
            msgid,
            action,
            from: user.clone(),
            tolist: Vec::new(),
            roomid: String::new(),
            msgtime: time,
            msgtype: "switch".into(),
            payload_json: Value::Object(map).to_string(),
            extra_json: None,
            text: None,
            recalled_msgid: None,
            conversation_id: format!("switch:{user}"),
            is_external: false,
        });
    }
    let from = required_str(&map, "from")?;
    let msgtime = required_i64(&map, "msgtime")?;
    let msgtype = required_str(&map, "msgtype")?;
    let tolist = string_list(&map, "tolist")?;
    let roomid = match map.get("roomid") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(NormaliseError::WrongType {
                field: "roomid",
                expected: "a string",
            });
        }
    };
    let key = payload_key(&msgtype).to_string();
    let payload = map.remove(&key).unwrap_or(Value::Object(Map::new()));
    let recalled_msgid = if action == "recall" || msgtype == "revoke" {
        let pre = payload
            .get("pre_msgid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(NormaliseError::MissingField("revoke.pre_msgid"))?;
        Some(pre.to_string())
    } else {
        None
    };
    let text = searchable_text(&msgtype, &payload);
    for field in COMMON {
        map.remove(field);
    }
    let extra_json = (!map.is_empty()).then(|| Value::Object(map).to_string());
    let is_external = msgid.ends_with("_external")
        || is_external_id(&from)
        || tolist.iter().any(|t| is_external_id(t));
    Ok(Normalised {
        conversation_id: conversation_id(&from, &tolist, &roomid),
        msgid,
        action,
        from,
        tolist,
        roomid,
        msgtime,
        msgtype,
        payload_json: payload.to_string(),
        extra_json,
        text,
        recalled_msgid,
        is_external,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> Normalised {
        normalise(json.as_bytes(), None).expect("normalises")
    }

    #[test]
    fn official_examples_normalise() {
        let text = ok(
            r#"{"msgid":"CAQQluDa4QUY0On2rYSAgAMgzPrShAE=","action":"send","from":"XuJinSheng","tolist":["icefog"],"roomid":"","msgtime":1547087894783,"msgtype":"text","text":{"content":"test"}}"#,
        );
        assert_eq!(text.text.as_deref(), Some("test"));
        assert_eq!(text.conversation_id, "single:XuJinSheng:icefog");
        assert_eq!(text.payload_json, r#"{"content":"test"}"#);
        assert!(!text.is_external);

        let recall = ok(
            r#"{"msgid":"15775510700152506326_1603875615","action":"recall","from":"kenshin","tolist":["wmUu0zBgAALV7ZymkcMyxvbTe8YdWxxA"],"roomid":"","msgtime":1603875615723,"msgtype":"revoke","revoke":{"pre_msgid":"14822339130656386894_1603875600"}}"#,
        );
        assert_eq!(
            recall.recalled_msgid.as_deref(),
            Some("14822339130656386894_1603875600")
        );
        assert!(recall.is_external);
        assert_eq!(
            recall.conversation_id,
            "single:kenshin:wmUu0zBgAALV7ZymkcMyxvbTe8YdWxxA"
        );

        let file = ok(
            r#"{"msgid":"18039699423706571225_1603875608","action":"send","from":"kens","tolist":["wmErxtDgAArDlFIhf76O6w4GxU81al8w"],"roomid":"","msgtime":1603875608214,"msgtype":"file","file":{"md5sum":"18e93fc2ea884df23b3d2d3b8667b9f0","filename":"资料.docx","fileext":"docx","filesize":18181,"sdkfileid":"x"}}"#,
        );
        assert_eq!(file.text.as_deref(), Some("资料.docx"));

        let mixed = ok(
            r#"{"msgid":"DAQQluDa4QUY0On4kYSABAMgzPrShAE=","action":"send","from":"HeMiao","tolist":["HeChangTian","LiuZeYu"],"roomid":"wr_tZ2BwAAUwHpYMwy9cIWqnlU3Hzqfg","msgtime":1577414359072,"msgtype":"mixed","mixed":{"item":[{"type":"text","content":"{\"content\":\"你好[微笑]\\n\"}"},{"type":"image","content":"{\"md5sum\":\"368b\",\"filesize\":13177,\"sdkfileid\":\"CtYB\"}"}]}}"#,
        );
        assert_eq!(mixed.text.as_deref(), Some("你好[微笑]"));
        assert_eq!(mixed.conversation_id, "wr_tZ2BwAAUwHpYMwy9cIWqnlU3Hzqfg");

        let switch = ok(
            r#"{"msgid":"125289002219525886280","action":"switch","time":1554119421840,"user":"XuJinSheng"}"#,
        );
        assert_eq!(switch.msgtype, "switch");
        assert_eq!(switch.msgtime, 1554119421840);
        assert_eq!(switch.from, "XuJinSheng");
        assert_eq!(switch.conversation_id, "switch:XuJinSheng");
    }

    #[test]
    fn payload_keys_that_differ_from_the_type() {
        // (msgtype, payload key, payload, expected text)
        let cases = [
            (
                "docmsg",
                "doc",
                r#"{"title":"需求文档","link_url":"u"}"#,
                Some("需求文档"),
            ),
            (
                "markdown",
                "info",
                r#"{"content":"**通知**"}"#,
                Some("**通知**"),
            ),
            (
                "news",
                "info",
                r#"{"item":[{"title":"公司新闻","description":"d","url":"u"}]}"#,
                Some("公司新闻\nd"),
            ),
            (
                "voiptext",
                "info",
                r#"{"callduration":3,"invitetype":1}"#,
                None,
            ),
            (
                "qydiskfile",
                "info",
                r#"{"filename":"微盘文件.pdf"}"#,
                Some("微盘文件.pdf"),
            ),
            (
                "external_redpacket",
                "redpacket",
                r#"{"type":1,"wish":"恭喜发财"}"#,
                Some("恭喜发财"),
            ),
            (
                "vote",
                "vote",
                r#"{"votetitle":"去哪里","voteitem":["爬山","烧烤"]}"#,
                Some("去哪里\n爬山\n烧烤"),
            ),
            (
                "link",
                "link",
                r#"{"title":"T","description":"D","link_url":"u"}"#,
                Some("T\nD"),
            ),
            (
                "image",
                "image",
                r#"{"md5sum":"m","filesize":1,"sdkfileid":"s"}"#,
                None,
            ),
        ];
        for (msgtype, key, payload, text) in cases {
            let json = format!(
                r#"{{"msgid":"1_1","action":"send","from":"a","tolist":["b"],"roomid":"","msgtime":1,"msgtype":"{msgtype}","{key}":{payload}}}"#
            );
            let n = normalise(json.as_bytes(), Some("1_1"))
                .unwrap_or_else(|e| panic!("{msgtype}: {e}"));
            let expected: Value = serde_json::from_str(payload).expect("payload");
            let got: Value = serde_json::from_str(&n.payload_json).expect("payload_json");
            assert_eq!(got, expected, "{msgtype}: payload taken from `{key}`");
            assert_eq!(n.text.as_deref(), text, "{msgtype}");
            assert_eq!(n.extra_json, None, "{msgtype}");
        }
    }

    #[test]
    fn extra_top_level_fields_are_kept() {
        let n = ok(
            r#"{"msgid":"1_1","action":"send","from":"a","tolist":["b"],"roomid":"","msgtime":1,"msgtype":"meeting_voice_call","voiceid":"v1","meeting_voice_call":{"endtime":2,"demofiledata":[{"filename":"演示.pptx"}]}}"#,
        );
        assert_eq!(n.extra_json.as_deref(), Some(r#"{"voiceid":"v1"}"#));
        assert_eq!(n.text.as_deref(), Some("演示.pptx"));
    }

    #[test]
    fn chatrecord_items_are_searchable() {
        let inner = serde_json::json!({"content": "记录里的话"}).to_string();
        let json = serde_json::json!({
            "msgid": "1_1", "action": "send", "from": "a", "tolist": ["b"], "roomid": "wrX",
            "msgtime": 1, "msgtype": "chatrecord",
            "chatrecord": {"title": "群聊的聊天记录", "item": [{"type": "ChatRecordText", "content": inner}]}
        });
        let n = ok(&json.to_string());
        assert_eq!(n.text.as_deref(), Some("群聊的聊天记录\n记录里的话"));
        assert_eq!(n.conversation_id, "wrX");
    }

    #[test]
    fn raw_control_characters_are_tolerated() {
        let raw = "{\"msgid\":\"1_1\",\"action\":\"send\",\"from\":\"a\",\"tolist\":[\"b\"],\"roomid\":\"\",\"msgtime\":1,\"msgtype\":\"text\",\"text\":{\"content\":\"第一行\u{1}\u{8}\t第二行\n\\\"x\\\"\"}}";
        let n = normalise(raw.as_bytes(), None).expect("tolerant");
        assert_eq!(n.text.as_deref(), Some("第一行\u{1}\u{8}\t第二行\n\"x\""));
        // Control characters outside strings are whitespace JSON allows (\n) or errors.
        assert!(escape_control_chars(b"{\"a\":1}\n").is_borrowed_like());
    }

    trait BorrowedLike {
        fn is_borrowed_like(&self) -> bool;
    }
    impl BorrowedLike for std::borrow::Cow<'_, [u8]> {
        fn is_borrowed_like(&self) -> bool {
            matches!(self, std::borrow::Cow::Borrowed(_))
        }
    }

    #[test]
    fn unknown_msgtypes_are_kept_not_rejected() {
        let n = ok(
            r#"{"msgid":"1_1","action":"send","from":"a","tolist":["b"],"roomid":"","msgtime":1,"msgtype":"hologram","hologram":{"x":1},"other":2}"#,
        );
        assert_eq!(n.payload_json, r#"{"x":1}"#);
        assert_eq!(n.extra_json.as_deref(), Some(r#"{"other":2}"#));
    }

    #[test]
    fn conversation_ids_are_canonical() {
        assert_eq!(conversation_id("b", &["a".into()], ""), "single:a:b");
        assert_eq!(conversation_id("a", &["b".into()], ""), "single:a:b");
        assert_eq!(
            conversation_id("a", &["b".into(), "c".into()], "wr1"),
            "wr1"
        );
    }

    #[test]
    fn invalid_messages_have_their_class() {
        let cases: [(&[u8], &str); 8] = [
            (b"{\"msgid\":\"1_1\",\"action\":\"se", "invalid_json"),
            (b"\xff\xfe", "invalid_json"),
            (b"[1,2]", "missing_field"),
            (br#"{"action":"send"}"#, "missing_field"),
            (br#"{"msgid":"1_1","action":"send","from":"a","msgtype":"text"}"#, "missing_field"),
            (br#"{"msgid":"1_1","action":"send","from":"a","msgtime":"x","msgtype":"text"}"#, "missing_field"),
            (br#"{"msgid":"1_1","action":"recall","from":"a","msgtime":1,"msgtype":"revoke","revoke":{}}"#, "missing_field"),
            (br#"{"msgid":"other","action":"send","from":"a","msgtime":1,"msgtype":"text"}"#, "msgid_mismatch"),
        ];
        for (input, class) in cases {
            let err = normalise(input, Some("1_1")).expect_err("must fail");
            assert_eq!(err.class(), class, "{err}");
        }
    }
}
