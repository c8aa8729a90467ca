//! A deterministic (seeded) generator of WeCom archive messages: every msgtype of the domain
//! page with realistic payloads, groups and 1:1 chats, external contacts, recalls arriving before
//! and after what they recall, switch records, and injected faults. Every item comes with its
//! ground truth, so end-to-end tests can reconcile exactly.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The msgtypes of ../shared/domain/wecom.md §3, with the payload key of each.
pub const MSGTYPES: [(&str, &str); 30] = [
    ("text", "text"),
    ("image", "image"),
    ("revoke", "revoke"),
    ("agree", "agree"),
    ("disagree", "disagree"),
    ("voice", "voice"),
    ("video", "video"),
    ("card", "card"),
    ("location", "location"),
    ("emotion", "emotion"),
    ("file", "file"),
    ("link", "link"),
    ("weapp", "weapp"),
    ("chatrecord", "chatrecord"),
    ("todo", "todo"),
    ("vote", "vote"),
    ("collect", "collect"),
    ("redpacket", "redpacket"),
    ("meeting", "meeting"),
    ("docmsg", "doc"),
    ("markdown", "info"),
    ("news", "info"),
    ("calendar", "calendar"),
    ("mixed", "mixed"),
    ("meeting_voice_call", "meeting_voice_call"),
    ("voip_doc_share", "voip_doc_share"),
    ("external_redpacket", "redpacket"),
    ("sphfeed", "sphfeed"),
    ("voiptext", "info"),
    ("qydiskfile", "info"),
];

/// A fault injected into one item, recorded in its ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemFault {
    /// encrypt_chat_msg replaced by random bytes: poison, never recoverable.
    CorruptCiphertext,
    /// The random key is encrypted with a key version the decrypt stage is not given (the
    /// "withheld" version): poison until an operator adds that key and redrives.
    UnknownKeyVersion,
    /// A valid ciphertext of text that is not JSON: poison.
    InvalidJson,
    /// Raw control characters inside JSON strings: NOT poison, parsers must be tolerant.
    ControlChars,
}

impl ItemFault {
    /// True when the item must end in the dead-letter topic.
    pub fn is_poison(self) -> bool {
        !matches!(self, ItemFault::ControlChars)
    }
}

/// Per-item fault probabilities (0.0 to 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRates {
    pub corrupt_ciphertext: f64,
    pub unknown_key_version: f64,
    pub invalid_json: f64,
    pub control_chars: f64,
}

/// What a message is, as the pipeline must end up storing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    pub corp_id: String,
    pub seq: u64,
    pub msgid: String,
    /// `send`, `recall` or `switch`.
    pub action: String,
    /// The msgtype (`switch` for switch records).
    pub msgtype: String,
    /// roomid for groups; `single:<a>:<b>` (sorted) for 1:1 chats; `switch:<user>` for switch
    /// records.
    pub group: String,
    pub msgtime: i64,
    pub key_version: u32,
    pub fault: Option<ItemFault>,
    pub poison: bool,
}

/// One generated message, before encryption.
#[derive(Debug, Clone)]
pub struct PlainItem {
    pub truth: Truth,
    /// The decrypted JSON as WeCom would send it (may hold raw control characters, or not be
    /// JSON at all for the InvalidJson fault).
    pub plaintext: Vec<u8>,
}

/// Parties of one corp.
struct Cast {
    staff: Vec<String>,
    external: Vec<String>,
    robots: Vec<String>,
    rooms: Vec<(String, Vec<String>)>,
}

const STAFF: [&str; 12] = [
    "XuJinSheng",
    "HeMiao",
    "zhangsan",
    "lisi",
    "wangwu",
    "zhaoliu",
    "kenshin",
    "icefog",
    "LiuZeYu",
    "HeChangTian",
    "ChenJiaShun",
    "sunqi",
];

const SENTENCES: [&str; 12] = [
    "你好，今天下午三点开会",
    "收到，谢谢[微笑]",
    "合同已经发到邮箱了，请查收 📎",
    "客户说价格还可以再谈谈",
    "明天上午九点在会议室A见 👍",
    "这个方案我觉得没问题",
    "Please review the quarterly report before Friday.",
    "发票已开好，稍后寄出",
    "好的，我马上处理 🚀",
    "周末加班吗？😂",
    "系统维护通知：今晚22:00-23:00",
    "👌 OK",
];

fn alnum(rng: &mut ChaCha8Rng, n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

impl Cast {
    fn new(rng: &mut ChaCha8Rng) -> Cast {
        let staff: Vec<String> = STAFF.iter().map(|s| s.to_string()).collect();
        let external: Vec<String> = (0..6)
            .map(|i| format!("{}{}", if i % 2 == 0 { "wm" } else { "wo" }, alnum(rng, 30)))
            .collect();
        let robots = vec![format!("wb{}", alnum(rng, 20))];
        let rooms = (0..6)
            .map(|i| {
                let mut members: Vec<String> =
                    staff.choose_multiple(rng, 3 + i % 4).cloned().collect();
                if i % 3 == 0 {
                    members.push(external[i % external.len()].clone());
                }
                (format!("wr{}", alnum(rng, 28)), members)
            })
            .collect();
        Cast {
            staff,
            external,
            robots,
            rooms,
        }
    }
}

fn msgid(rng: &mut ChaCha8Rng, msgtime: i64, external: bool) -> String {
    if rng.gen_bool(0.03) {
        // Old-style, base64-like ids still occur.
        return format!("{}=", alnum(rng, 27));
    }
    let id: u64 = rng.gen_range(10_000_000_000_000_000_000..u64::MAX);
    // The timestamp in a msgid is close to, but not, msgtime.
    let secs = msgtime / 1000 + rng.gen_range(-2..=2);
    let suffix = if external {
        "_external"
    } else if rng.gen_bool(0.01) {
        "_updown_stream"
    } else {
        ""
    };
    format!("{id}_{secs}{suffix}")
}

/// Deterministic media content of a file id: what GetMediaData serves. The bytes are a ChaCha
/// stream seeded by the file id, so any range can be made without the bytes before it.
pub fn media_bytes(sdkfileid: &str, size: usize) -> Vec<u8> {
    media_range(sdkfileid, 0, size)
}

/// Bytes `offset..offset + len` of a file id's content (see [`media_bytes`]).
pub fn media_range(sdkfileid: &str, offset: usize, len: usize) -> Vec<u8> {
    use md5::Digest;
    let seed: [u8; 16] = md5::Md5::digest(sdkfileid.as_bytes()).into();
    let mut seed32 = [0u8; 32];
    seed32[..16].copy_from_slice(&seed);
    let mut rng = ChaCha8Rng::from_seed(seed32);
    // The stream is 32-bit words, little-endian: start at the word that holds `offset`.
    let skip = offset % 4;
    rng.set_word_pos((offset / 4) as u128);
    let mut out = vec![0u8; len + skip];
    rng.fill(&mut out[..]);
    out.drain(..skip);
    out
}

/// The MD5 of a file id's content, made a megabyte at a time (files reach tens of MB).
pub fn media_md5(sdkfileid: &str, size: usize) -> String {
    use md5::Digest;
    const STEP: usize = 1 << 20;
    let mut hasher = md5::Md5::new();
    let mut offset = 0;
    while offset < size {
        let len = STEP.min(size - offset);
        hasher.update(media_range(sdkfileid, offset, len));
        offset += len;
    }
    format!("{:x}", hasher.finalize())
}

/// A media reference: its sdkfileid, size and MD5 (recorded so GetMediaData can serve it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    pub sdkfileid: String,
    pub size: usize,
    pub md5: String,
    /// What it is (`image`, `voice`, `video`, `emotion`, `file`, ...).
    #[serde(default)]
    pub kind: String,
    /// GetMediaData answers "data expired" (10010) for it: it must end parked, not stored.
    #[serde(default)]
    pub expired: bool,
    /// Whether its message states its md5sum (a meeting_voice_call's recording does not). The
    /// simulator's MD5 fault corrupts only files whose corruption a client can see.
    #[serde(default = "stated")]
    pub md5_stated: bool,
}

fn stated() -> bool {
    true
}

impl MediaRef {
    /// The payload of a `file` message naming this file as `file_name` (tests and benchmarks
    /// that send a given file through the media stage).
    pub fn file_payload(&self, file_name: &str) -> String {
        let ext = file_name.rsplit_once('.').map_or("", |(_, e)| e);
        json!({ "md5sum": self.md5, "filename": file_name, "fileext": ext,
                "filesize": self.size, "sdkfileid": self.sdkfileid })
        .to_string()
    }

    /// A file of `size` bytes with the content the simulator serves for `sdkfileid`.
    pub fn file(sdkfileid: &str, size: usize) -> MediaRef {
        MediaRef {
            sdkfileid: sdkfileid.to_string(),
            size,
            md5: media_md5(sdkfileid, size),
            kind: "file".into(),
            expired: false,
            md5_stated: true,
        }
    }
}

/// How big generated media files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaSizes {
    /// 200 bytes to 40 KB, one in twenty 600 KB to 1.6 MB (spans chunks): cheap, the default.
    #[default]
    Small,
    /// By kind, log-uniform: images 10 KB-3 MB, voice 2-200 KB, emotions 5 KB-1 MB, video
    /// 300 KB up to `max_bytes`, files 1 KB up to `max_bytes`.
    Realistic,
    /// Every file exactly `max_bytes` (the resume test and `bench media`).
    Fixed,
}

/// The media of a feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSpec {
    pub sizes: MediaSizes,
    /// The largest file (`realistic`), or every file's size (`fixed`).
    pub max_bytes: usize,
    /// Share of files that have expired on the server (GetMediaData answers 10010), decided by
    /// the file id.
    pub expired_rate: f64,
}

impl Default for MediaSpec {
    fn default() -> Self {
        MediaSpec {
            sizes: MediaSizes::Small,
            max_bytes: 30 << 20,
            expired_rate: 0.0,
        }
    }
}

/// A size drawn log-uniformly from `lo..hi`.
fn log_uniform(rng: &mut ChaCha8Rng, lo: usize, hi: usize) -> usize {
    let hi = hi.max(lo + 1);
    let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
    (rng.gen_range(a..b).exp() as usize).clamp(lo, hi - 1)
}

/// A stable fraction in [0, 1) of a file id (FNV-1a), for per-file decisions that must not
/// move the feed's random stream.
pub fn file_fraction(sdkfileid: &str, salt: u64) -> f64 {
    let h = sdkfileid
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325 ^ salt, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    (h >> 11) as f64 / (1u64 << 53) as f64
}

struct MediaStore<'a> {
    spec: &'a MediaSpec,
    refs: Vec<MediaRef>,
}

impl MediaStore<'_> {
    fn add(&mut self, rng: &mut ChaCha8Rng, kind: &str) -> (String, usize, String) {
        let sdkfileid = format!("Cts{}", alnum(rng, 60));
        let max = self.spec.max_bytes.max(2048);
        let size = match self.spec.sizes {
            // Mostly small; one in twenty spans several 512 KB chunks.
            MediaSizes::Small if rng.gen_bool(0.05) => rng.gen_range(600_000..1_600_000),
            MediaSizes::Small => rng.gen_range(200..40_000),
            MediaSizes::Fixed => self.spec.max_bytes,
            MediaSizes::Realistic => match kind {
                "image" => log_uniform(rng, 10_000, 3_000_000.min(max)),
                "voice" => log_uniform(rng, 2_000, 200_000.min(max)),
                "emotion" => log_uniform(rng, 5_000, 1_000_000.min(max)),
                "video" => log_uniform(rng, 300_000.min(max / 2), max),
                _ => log_uniform(rng, 1_000, max),
            },
        };
        let md5 = media_md5(&sdkfileid, size);
        let expired = file_fraction(&sdkfileid, 0x5eed) < self.spec.expired_rate;
        self.refs.push(MediaRef {
            sdkfileid: sdkfileid.clone(),
            size,
            md5: md5.clone(),
            kind: kind.to_string(),
            expired,
            md5_stated: kind != "meeting_voice_call",
        });
        (sdkfileid, size, md5)
    }
}

fn sentence(rng: &mut ChaCha8Rng) -> String {
    SENTENCES[rng.gen_range(0..SENTENCES.len())].to_string()
}

/// The payload of one msgtype (and extra top-level fields).
fn payload(
    rng: &mut ChaCha8Rng,
    msgtype: &str,
    msgtime: i64,
    cast: &Cast,
    store: &mut MediaStore<'_>,
) -> (Value, Vec<(&'static str, Value)>) {
    let user = cast.staff[rng.gen_range(0..cast.staff.len())].clone();
    let mut extra = Vec::new();
    let value = match msgtype {
        "text" => json!({ "content": sentence(rng) }),
        "image" => {
            let (id, size, md5) = store.add(rng, "image");
            json!({ "md5sum": md5, "filesize": size, "sdkfileid": id })
        }
        "agree" => json!({ "userid": cast.external[0], "agree_time": msgtime }),
        "disagree" => json!({ "userid": cast.external[1], "disagree_time": msgtime }),
        "voice" => {
            let (id, size, md5) = store.add(rng, "voice");
            json!({ "md5sum": md5, "voice_size": size, "play_length": rng.gen_range(1..60), "sdkfileid": id })
        }
        "video" => {
            let (id, size, md5) = store.add(rng, "video");
            json!({ "md5sum": md5, "filesize": size, "play_length": rng.gen_range(1..300), "sdkfileid": id })
        }
        "card" => json!({ "corpname": "腾讯科技", "userid": user }),
        "location" => json!({
            "longitude": 113.93 + rng.gen_range(-0.1..0.1), "latitude": 22.53 + rng.gen_range(-0.1..0.1),
            "address": "广东省深圳市南山区科技园", "title": "腾讯大厦", "zoom": 15 }),
        "emotion" => {
            let (id, size, md5) = store.add(rng, "emotion");
            json!({ "type": 1, "width": 100, "height": 100, "imagesize": size, "md5sum": md5, "sdkfileid": id })
        }
        "file" => {
            let (id, size, md5) = store.add(rng, "file");
            let (name, ext) = [
                ("资料.docx", "docx"),
                ("季度报告.pdf", "pdf"),
                ("报价单.xlsx", "xlsx"),
            ][rng.gen_range(0..3)];
            json!({ "md5sum": md5, "filename": name, "fileext": ext, "filesize": size, "sdkfileid": id })
        }
        "link" => json!({ "title": "企业微信会话存档介绍", "description": sentence(rng),
            "link_url": "https://work.weixin.qq.com/", "image_url": "https://example.com/a.png" }),
        "weapp" => {
            json!({ "title": "报销小程序", "description": "提交报销单", "username": "gh_abc@app", "displayname": "报销" })
        }
        "chatrecord" => {
            let items: Vec<Value> = (0..rng.gen_range(1..4))
                .map(|_| {
                    if rng.gen_bool(0.3) {
                        // A forwarded image: its content names the file like an image message.
                        let (id, size, md5) = store.add(rng, "image");
                        json!({ "type": "ChatRecordImage", "msgtime": msgtime / 1000,
                                "content": json!({ "md5sum": md5, "filesize": size, "sdkfileid": id }).to_string(),
                                "from_chatroom": false })
                    } else {
                        json!({ "type": "ChatRecordText", "msgtime": msgtime / 1000,
                                "content": json!({ "content": sentence(rng) }).to_string(),
                                "from_chatroom": false })
                    }
                })
                .collect();
            json!({ "title": "群聊的聊天记录", "item": items })
        }
        "todo" => json!({ "title": "待办", "content": sentence(rng) }),
        "vote" => {
            json!({ "votetitle": "团建去哪里？", "voteitem": ["爬山", "烧烤"], "votetype": 101, "voteid": alnum(rng, 16) })
        }
        "collect" => {
            json!({ "room_name": "项目群", "creator": user, "create_time": "2020-01-01 12:00:00",
            "title": "接龙", "details": [{ "id": 1, "ques": "参加人数", "type": "Text" }] })
        }
        "redpacket" | "external_redpacket" => {
            json!({ "type": 1, "wish": "恭喜发财，大吉大利", "totalcnt": 5, "totalamount": 8800 })
        }
        "meeting" => {
            json!({ "topic": "周会", "starttime": msgtime / 1000 + 3600, "endtime": msgtime / 1000 + 7200,
            "address": "会议室A", "remarks": "请准时", "meetingtype": 102, "meetingid": rng.gen_range(1..u32::MAX), "status": 1 })
        }
        "docmsg" => {
            json!({ "title": "需求文档", "doc_creator": user, "link_url": "https://doc.weixin.qq.com/" })
        }
        "markdown" => json!({ "content": format!("**通知** {}", sentence(rng)) }),
        "news" => json!({ "item": [{ "title": "公司新闻", "description": sentence(rng),
            "url": "https://example.com/news", "picurl": "https://example.com/p.png" }] }),
        "calendar" => {
            json!({ "title": "项目评审", "creatorname": user, "attendeename": [cast.staff[0]],
            "starttime": msgtime / 1000, "endtime": msgtime / 1000 + 3600, "place": "线上", "remarks": "" })
        }
        "mixed" => {
            let (id, size, md5) = store.add(rng, "image");
            json!({ "item": [
                { "type": "text", "content": json!({ "content": format!("{}\n", sentence(rng)) }).to_string() },
                { "type": "image", "content": json!({ "md5sum": md5, "filesize": size, "sdkfileid": id }).to_string() }
            ] })
        }
        "meeting_voice_call" => {
            extra.push(("voiceid", json!(alnum(rng, 20))));
            let (id, _, _) = store.add(rng, "meeting_voice_call");
            json!({ "endtime": msgtime / 1000 + 600, "sdkfileid": id,
                    "demofiledata": [{ "filename": "演示.pptx", "demooperator": user, "starttime": msgtime / 1000, "endtime": msgtime / 1000 + 60 }] })
        }
        "voip_doc_share" => {
            extra.push(("voipid", json!(alnum(rng, 20))));
            let (id, size, md5) = store.add(rng, "file");
            json!({ "filename": "共享文档.docx", "md5sum": md5, "filesize": size, "sdkfileid": id })
        }
        "sphfeed" => json!({ "feed_type": 4, "sph_name": "腾讯", "feed_desc": sentence(rng) }),
        "voiptext" => json!({ "callduration": rng.gen_range(1..600), "invitetype": 1 }),
        "qydiskfile" => json!({ "filename": "微盘文件.pdf" }),
        other => json!({ "unknown": other }),
    };
    (value, extra)
}

/// Settings of one generated corp feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSpec {
    pub corp_id: String,
    pub seed: u64,
    pub messages: u64,
    /// msgtime of the first message, UTC ms.
    pub start_ms: i64,
    /// Mean gap between messages, ms.
    pub spacing_ms: i64,
    /// Key versions in use, rotated evenly over the feed (e.g. [1, 2]: a rotation halfway).
    pub key_versions: Vec<u32>,
    /// The version used for UnknownKeyVersion faults; its private key is not exported with the
    /// others.
    pub withheld_key_version: u32,
    pub faults: FaultRates,
    /// The media files' sizes and faults.
    #[serde(default)]
    pub media: MediaSpec,
}

/// Generates the plaintext items of a feed, seq 1..=messages.
pub fn generate(spec: &FeedSpec) -> (Vec<PlainItem>, Vec<MediaRef>) {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let cast = Cast::new(&mut rng);
    let n = usize::try_from(spec.messages).unwrap_or(0);
    let mut media_store = MediaStore {
        spec: &spec.media,
        refs: Vec::new(),
    };

    // Times and ids first, so a recall can name a message that comes later.
    let mut times = Vec::with_capacity(n);
    let mut t = spec.start_ms;
    for _ in 0..n {
        t += rng.gen_range(0..=2 * spec.spacing_ms.max(1));
        times.push(t);
    }
    // Who talks where: a room, or a 1:1 pair.
    struct Shape {
        from: String,
        tolist: Vec<String>,
        roomid: String,
        external: bool,
    }
    let shapes: Vec<Shape> = (0..n)
        .map(|_| {
            if rng.gen_bool(0.6) {
                let (roomid, members) = &cast.rooms[rng.gen_range(0..cast.rooms.len())];
                let from = members[rng.gen_range(0..members.len())].clone();
                let tolist = members.iter().filter(|m| **m != from).cloned().collect();
                let external = members
                    .iter()
                    .any(|m| m.starts_with("wm") || m.starts_with("wo"));
                Shape {
                    from,
                    tolist,
                    roomid: roomid.clone(),
                    external,
                }
            } else {
                let a = cast.staff[rng.gen_range(0..cast.staff.len())].clone();
                let b = match rng.gen_range(0..10) {
                    0..=5 => cast.staff[rng.gen_range(0..cast.staff.len())].clone(),
                    6..=8 => cast.external[rng.gen_range(0..cast.external.len())].clone(),
                    _ => cast.robots[0].clone(),
                };
                let b = if a == b {
                    cast.staff[(STAFF.iter().position(|s| *s == a).unwrap_or(0) + 1) % STAFF.len()]
                        .clone()
                } else {
                    b
                };
                let external = b.starts_with("wm") || b.starts_with("wo");
                let (from, to) = if rng.gen_bool(0.5) { (a, b) } else { (b, a) };
                Shape {
                    from,
                    tolist: vec![to],
                    roomid: String::new(),
                    external,
                }
            }
        })
        .collect();
    let ids: Vec<String> = (0..n)
        .map(|i| msgid(&mut rng, times[i], shapes[i].external))
        .collect();

    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let seq = u64::try_from(i).unwrap_or(0) + 1;
        let version_index = i * spec.key_versions.len().max(1) / n.max(1);
        let mut key_version = spec.key_versions.get(version_index).copied().unwrap_or(1);
        let shape = &shapes[i];
        let kind: f64 = rng.r#gen();
        let (mut value, action, msgtype, group) = if kind < 0.005 {
            let user = shape.from.clone();
            (
                json!({ "msgid": ids[i], "action": "switch", "time": times[i], "user": user }),
                "switch",
                "switch".to_string(),
                format!("switch:{user}"),
            )
        } else {
            let (action, msgtype) = if kind < 0.025 && n > 1 {
                ("recall", "revoke")
            } else if kind < 0.5 {
                ("send", "text")
            } else {
                ("send", MSGTYPES[rng.gen_range(0..MSGTYPES.len())].0)
            };
            let msgtype = if msgtype == "revoke" && action == "send" {
                "text"
            } else {
                msgtype
            };
            let (payload_value, extra) = if action == "recall" {
                // Half the recalls name an earlier message, half one that arrives later.
                let j = if (rng.gen_bool(0.5) && i > 0) || i + 1 >= n {
                    rng.gen_range(0..i.max(1))
                } else {
                    rng.gen_range(i + 1..n)
                };
                (json!({ "pre_msgid": ids[j] }), Vec::new())
            } else {
                payload(&mut rng, msgtype, times[i], &cast, &mut media_store)
            };
            let key = MSGTYPES
                .iter()
                .find(|(t, _)| *t == msgtype)
                .map_or(msgtype, |(_, k)| *k);
            let mut object = json!({
                "msgid": ids[i], "action": action, "from": shape.from, "tolist": shape.tolist,
                "roomid": shape.roomid, "msgtime": times[i], "msgtype": msgtype,
            });
            object[key] = payload_value;
            for (k, v) in extra {
                object[k] = v;
            }
            let group = if shape.roomid.is_empty() {
                let mut pair = [shape.from.clone(), shape.tolist[0].clone()];
                pair.sort();
                format!("single:{}:{}", pair[0], pair[1])
            } else {
                shape.roomid.clone()
            };
            (object, action, msgtype.to_string(), group)
        };

        let roll: f64 = rng.r#gen();
        let f = &spec.faults;
        let mut fault = None;
        let mut acc = 0.0;
        for (rate, kind) in [
            (f.corrupt_ciphertext, ItemFault::CorruptCiphertext),
            (f.unknown_key_version, ItemFault::UnknownKeyVersion),
            (f.invalid_json, ItemFault::InvalidJson),
            (f.control_chars, ItemFault::ControlChars),
        ] {
            acc += rate;
            if roll < acc {
                fault = Some(kind);
                break;
            }
        }
        if fault == Some(ItemFault::ControlChars) && msgtype != "text" {
            fault = None;
        }
        let plaintext = match fault {
            Some(ItemFault::InvalidJson) => {
                let text = value.to_string();
                text.as_bytes()[..text.len() / 2].to_vec()
            }
            Some(ItemFault::ControlChars) => {
                value["text"]["content"] =
                    json!(format!("第一行\u{1}\u{8}\t第二行\n{}", sentence(&mut rng)));
                // serde_json escapes control characters; WeCom sends some of them raw.
                value
                    .to_string()
                    .replace("\\u0001", "\u{1}")
                    .replace("\\b", "\u{8}")
                    .replace("\\t", "\t")
                    .into_bytes()
            }
            _ => value.to_string().into_bytes(),
        };
        if fault == Some(ItemFault::UnknownKeyVersion) {
            key_version = spec.withheld_key_version;
        }
        items.push(PlainItem {
            truth: Truth {
                corp_id: spec.corp_id.clone(),
                seq,
                msgid: ids[i].clone(),
                action: action.to_string(),
                msgtype,
                group,
                msgtime: times[i],
                key_version,
                fault,
                poison: fault.is_some_and(ItemFault::is_poison),
            },
            plaintext,
        });
    }
    (items, media_store.refs)
}

/// Counts of a feed by msgtype (for tests and summaries).
pub fn count_by_msgtype(items: &[PlainItem]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item.truth.msgtype.clone()).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_of_a_file_is_the_same_bytes_as_the_whole_file_has_there() {
        let whole = media_bytes("CtsExample", 3_000_001);
        for (offset, len) in [(0, 10), (1, 7), (524_288, 524_288), (2_999_990, 11), (3, 1)] {
            assert_eq!(
                media_range("CtsExample", offset, len),
                whole[offset..offset + len],
                "range {offset}+{len}"
            );
        }
        use md5::Digest;
        assert_eq!(
            media_md5("CtsExample", whole.len()),
            format!("{:x}", md5::Md5::digest(&whole))
        );
    }

    #[test]
    fn realistic_sizes_span_kilobytes_to_the_cap_and_fixed_sizes_are_exact() {
        let spec = |sizes, max_bytes| MediaSpec {
            sizes,
            max_bytes,
            expired_rate: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let realistic = spec(MediaSizes::Realistic, 20 << 20);
        let mut store = MediaStore {
            spec: &realistic,
            refs: Vec::new(),
        };
        for _ in 0..200 {
            store.add(&mut rng, "file");
        }
        let sizes: Vec<usize> = store.refs.iter().map(|r| r.size).collect();
        assert!(sizes.iter().all(|&s| (1_000..20 << 20).contains(&s)));
        assert!(sizes.iter().any(|&s| s < 100_000), "some small files");
        assert!(
            sizes.iter().any(|&s| s > 5 << 20),
            "some files over one part"
        );
        let fixed = spec(MediaSizes::Fixed, 12_345);
        let mut store = MediaStore {
            spec: &fixed,
            refs: Vec::new(),
        };
        store.add(&mut rng, "video");
        assert_eq!(store.refs[0].size, 12_345);
    }
}
