//! The media a message carries, read from its payload: one definition for the media stage
//! (what to download, where to store it) and the sink (the search document's `has_media`,
//! file name, extension and size). Pure.
//!
//! Media-bearing payloads carry `sdkfileid`, usually `md5sum` and a size (`filesize`,
//! `voice_size` or `imagesize`); `mixed.item[]` and `chatrecord.item[]` hold items whose
//! `content` is itself a JSON string (../shared/domain/wecom.md §3).

use serde_json::Value;

use crate::months::Month;

/// One media item of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaItem {
    /// 0 for a message that is one media file; the item's index in `mixed.item[]` or
    /// `chatrecord.item[]` otherwise.
    pub item: u32,
    /// What it is: `image`, `voice`, `video`, `emotion`, `file`, `meeting_voice_call`, ...
    /// (a chatrecord item's `ChatRecordImage` is `image`).
    pub kind: String,
    pub sdkfileid: String,
    /// The MD5 WeCom states (lower-case hex), when it states one.
    pub md5sum: Option<String>,
    /// The size WeCom states, when it states one.
    pub size: Option<u64>,
    pub file_name: Option<String>,
    pub file_ext: Option<String>,
    /// A callback's `MediaId`, for a media message that came by callback (WeCom app or Official
    /// Account: `image`, `voice`, `video`, `shortvideo`, `file`): it has no `sdkfileid`, and
    /// its file is fetched with `media/get` within 3 days. (`sdkfileid` is then empty.)
    pub callback_media_id: Option<String>,
}

impl MediaItem {
    /// What WeCom serves the file by: the callback's `MediaId` (media/get), else the
    /// `sdkfileid` (GetMediaData).
    pub fn file_id(&self) -> &str {
        self.callback_media_id.as_deref().unwrap_or(&self.sdkfileid)
    }

    /// The object's content type (what a browser needs to show it).
    pub fn content_type(&self) -> &'static str {
        let ext = self.file_ext.as_deref().unwrap_or("").to_ascii_lowercase();
        match (self.kind.as_str(), ext.as_str()) {
            ("image", _) => "image/jpeg",
            ("emotion", _) => "image/gif",
            ("voice" | "meeting_voice_call", _) => "audio/amr",
            ("video", _) => "video/mp4",
            (_, "pdf") => "application/pdf",
            (_, "jpg" | "jpeg") => "image/jpeg",
            (_, "png") => "image/png",
            (_, "txt") => "text/plain",
            (_, "docx") => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            (_, "xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            (_, "pptx") => {
                "application/vnd.openxmlformats-officedocument.presentationml.presentation"
            }
            (_, "zip") => "application/zip",
            _ => "application/octet-stream",
        }
    }
}

/// The media items of a message of `msgtype` with payload `payload_json` (none when it has
/// none, or when the payload is not JSON: the message itself is stored either way).
pub fn media_items(msgtype: &str, payload_json: &str) -> Vec<MediaItem> {
    // Every item names its file by one of these keys; a payload without either (most messages)
    // is not parsed. Payloads are written by serde_json, which never escapes a key's letters.
    if !payload_json.contains("sdkfileid") && !payload_json.contains("MediaId") {
        return Vec::new();
    }
    let Ok(payload) = serde_json::from_str::<Value>(payload_json) else {
        return Vec::new();
    };
    match msgtype {
        "mixed" | "chatrecord" => payload
            .get("item")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, entry)| {
                let content = entry.get("content").and_then(Value::as_str)?;
                let content: Value = serde_json::from_str(content).ok()?;
                let kind = entry.get("type").and_then(Value::as_str).unwrap_or("file");
                let kind = kind.strip_prefix("ChatRecord").unwrap_or(kind);
                item(u32::try_from(i).ok()?, &kind.to_ascii_lowercase(), &content)
            })
            .collect(),
        _ => item(0, msgtype, &payload)
            .or_else(|| callback_item(msgtype, &payload))
            .into_iter()
            .collect(),
    }
}

/// A callback's media file: its `MediaId`, for the media kinds callbacks carry.
fn callback_item(msgtype: &str, payload: &Value) -> Option<MediaItem> {
    let kind = match msgtype {
        "image" | "voice" | "video" | "file" => msgtype,
        "shortvideo" => "video",
        _ => return None,
    };
    let media_id = text(payload, "MediaId")?;
    Some(MediaItem {
        item: 0,
        kind: kind.to_string(),
        sdkfileid: String::new(),
        md5sum: None,
        size: None,
        file_name: None,
        file_ext: text(payload, "Format").map(|f| f.to_ascii_lowercase()),
        callback_media_id: Some(media_id),
    })
}

fn text(value: &Value, field: &str) -> Option<String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn item(index: u32, kind: &str, payload: &Value) -> Option<MediaItem> {
    let sdkfileid = text(payload, "sdkfileid")?;
    let size = ["filesize", "voice_size", "imagesize"]
        .iter()
        .find_map(|f| payload.get(*f).and_then(Value::as_u64));
    let file_name = text(payload, "filename");
    let file_ext = text(payload, "fileext").or_else(|| {
        file_name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, ext)| ext.to_string())
    });
    Some(MediaItem {
        item: index,
        kind: kind.to_string(),
        sdkfileid,
        md5sum: text(payload, "md5sum").map(|m| m.to_ascii_lowercase()),
        size,
        file_name,
        file_ext,
        callback_media_id: None,
    })
}

/// The object key of a media item: `<corp>/<yyyy>/<mm>/<msgid>/<item>`, the month of `msgtime`
/// (UTC). A msgid's characters other than letters, digits and `-_.=` are percent-encoded (old
/// style msgids are base64 and may hold `/` or `+`), so one msgid is one key segment.
pub fn media_object_key(corp_id: &str, msgtime: i64, msgid: &str, item: u32) -> String {
    let month = Month::of_ms(msgtime);
    let mut segment = String::with_capacity(msgid.len());
    for b in msgid.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.=".contains(&b) {
            segment.push(char::from(b));
        } else {
            segment.push_str(&format!("%{b:02X}"));
        }
    }
    format!(
        "{corp_id}/{:04}/{:02}/{segment}/{item}",
        month.year, month.month
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_message_is_one_item_with_its_name_extension_and_size() {
        let items = media_items(
            "file",
            r#"{"md5sum":"18E93FC2EA884DF23B3D2D3B8667B9F0","filename":"资料.docx","fileext":"docx","filesize":18181,"sdkfileid":"abc"}"#,
        );
        assert_eq!(
            items,
            vec![MediaItem {
                item: 0,
                kind: "file".into(),
                sdkfileid: "abc".into(),
                md5sum: Some("18e93fc2ea884df23b3d2d3b8667b9f0".into()),
                size: Some(18181),
                file_name: Some("资料.docx".into()),
                file_ext: Some("docx".into()),
                callback_media_id: None,
            }]
        );
        assert!(items[0].content_type().contains("wordprocessingml"));
    }

    #[test]
    fn voice_and_emotion_sizes_come_from_their_own_fields() {
        let voice = media_items(
            "voice",
            r#"{"md5sum":"a","voice_size":4355,"play_length":10,"sdkfileid":"v"}"#,
        );
        assert_eq!(voice[0].size, Some(4355));
        let emotion = media_items(
            "emotion",
            r#"{"type":1,"imagesize":2000,"md5sum":"b","sdkfileid":"e"}"#,
        );
        assert_eq!(emotion[0].size, Some(2000));
        assert_eq!(emotion[0].content_type(), "image/gif");
    }

    #[test]
    fn mixed_and_chatrecord_items_keep_their_index_and_skip_text() {
        let mixed = r#"{"item":[{"type":"text","content":"{\"content\":\"hi\"}"},{"type":"image","content":"{\"md5sum\":\"368b\",\"filesize\":13177,\"sdkfileid\":\"CtYB\"}"}]}"#;
        let items = media_items("mixed", mixed);
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].item, items[0].kind.as_str()), (1, "image"));
        assert_eq!(items[0].sdkfileid, "CtYB");
        let record = r#"{"title":"t","item":[{"type":"ChatRecordImage","content":"{\"md5sum\":\"x\",\"filesize\":5,\"sdkfileid\":\"R\"}"},{"type":"ChatRecordText","content":"{\"content\":\"a\"}"}]}"#;
        let items = media_items("chatrecord", record);
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].item, items[0].kind.as_str()), (0, "image"));
    }

    #[test]
    fn a_callbacks_media_is_its_media_id() {
        let image = media_items(
            "image",
            r#"{"MsgType":"image","PicUrl":"http://p/1.jpg","MediaId":"MID1","MsgId":"9"}"#,
        );
        assert_eq!(image.len(), 1);
        assert_eq!(image[0].callback_media_id.as_deref(), Some("MID1"));
        assert_eq!(
            (image[0].kind.as_str(), image[0].sdkfileid.as_str()),
            ("image", "")
        );
        let voice = media_items("voice", r#"{"MediaId":"MID2","Format":"AMR"}"#);
        assert_eq!(voice[0].file_ext.as_deref(), Some("amr"));
        assert_eq!(
            media_items("shortvideo", r#"{"MediaId":"M3"}"#)[0].kind,
            "video"
        );
        assert!(media_items("text", r#"{"Content":"hi","MediaId":"M4"}"#).is_empty());
        assert!(media_items("image", r#"{"PicUrl":"http://p/1.jpg"}"#).is_empty());
    }

    #[test]
    fn messages_without_media_or_with_broken_payloads_have_none() {
        assert!(media_items("text", r#"{"content":"test"}"#).is_empty());
        assert!(media_items("image", "not json").is_empty());
        assert!(media_items("image", r#"{"sdkfileid":""}"#).is_empty());
        assert!(media_items("mixed", r#"{"item":[{"type":"image","content":"{"}]}"#).is_empty());
    }

    #[test]
    fn object_keys_are_monthly_and_escape_the_msgid() {
        // 2019-01-10 (the official text example's msgtime).
        assert_eq!(
            media_object_key("ww1", 1_547_087_894_783, "CAQQ/luDa+4=", 2),
            "ww1/2019/01/CAQQ%2FluDa%2B4=/2"
        );
        assert_eq!(
            media_object_key("ww1", 1_603_875_608_214, "180396_1603875608", 0),
            "ww1/2020/10/180396_1603875608/0"
        );
    }
}
