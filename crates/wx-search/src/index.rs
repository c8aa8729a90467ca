//! The index template (explicit mappings, CJK analyzer, the alias), monthly indices by msgtime,
//! and bulk `create` requests whose replies are triaged item by item (`triage`). The only module
//! that uses the Elasticsearch client.

use elasticsearch::http::StatusCode;
use elasticsearch::indices::{IndicesPutIndexTemplateParts, IndicesPutMappingParts};
use elasticsearch::{BulkOperation, BulkParts, Elasticsearch};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use wx_codec::ChatMessage;

use wx_codec::months::Month;

use crate::endpoint::Endpoint;
use crate::triage::{ItemVerdict, triage};

/// Errors of a whole request (items have their own verdicts).
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search endpoint {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("search endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
}

/// What a failed bulk request calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The endpoint is unwell or misconfigured (unreachable, no answer within the deadline,
    /// auth, blocks, a missing index, throttling, 5xx, and any other refusal of a whole request:
    /// a bulk request wxstream builds is well-formed, so a 400/405/406 for all of it comes from
    /// the cluster's or a proxy's configuration): retry with backoff, park nothing.
    Store,
    /// 413: the request is larger than the endpoint accepts; split it (a document alone over
    /// the limit is parked as `too_large`).
    TooLarge,
}

impl SearchError {
    pub fn failure(&self) -> Failure {
        match self {
            SearchError::Status { status: 413, .. } => Failure::TooLarge,
            SearchError::Transport { .. } | SearchError::Status { .. } => Failure::Store,
        }
    }
}

/// The searchable document of a message (what people search; MySQL keeps the full record).
/// Borrowed from the message and serialized once, straight into the bulk request.
#[derive(serde::Serialize)]
struct Document<'a> {
    msgid: &'a str,
    corp_id: &'a str,
    conversation_id: &'a str,
    from: &'a str,
    tolist: &'a [String],
    roomid: &'a str,
    msgtype: &'a str,
    action: &'a str,
    msgtime: i64,
    text: Option<&'a str>,
    is_external: bool,
    recalled_msgid: Option<&'a str>,
    ingested_at: i64,
    has_media: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_ext: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_size: Option<u64>,
}

/// A message's document as one bulk `create` writes it: the index, the id
/// ([`wx_codec::message_identity`]) and the JSON source, serialized once.
#[derive(Debug, Clone)]
pub struct IndexedDoc {
    pub index: String,
    pub id: String,
    pub source: Box<RawValue>,
}

impl IndexedDoc {
    /// The document of `m` in `index`, stamped `ingested_at` = `written_at_ms`: when the sink
    /// wrote it (after the message's row was committed), as MySQL's `ingested_at` stamps the
    /// row.
    pub fn new(index: String, m: &ChatMessage, written_at_ms: i64) -> IndexedDoc {
        let media = m.media_items();
        // Where the message names them (a file's name and extension; the first item's size).
        let doc = Document {
            msgid: &m.msgid,
            corp_id: &m.corp_id,
            conversation_id: &m.conversation_id,
            from: &m.from,
            tolist: &m.tolist,
            roomid: &m.roomid,
            msgtype: &m.msgtype,
            action: &m.action,
            msgtime: m.msgtime,
            text: m.text.as_deref(),
            is_external: m.is_external,
            recalled_msgid: m.recalled_msgid.as_deref(),
            ingested_at: written_at_ms,
            has_media: !media.is_empty(),
            file_name: media.iter().find_map(|i| i.file_name.clone()),
            file_ext: media
                .iter()
                .find_map(|i| i.file_ext.as_ref().map(|e| e.to_ascii_lowercase())),
            file_size: media.iter().find_map(|i| i.size),
        };
        // A struct of strings, numbers and booleans always serializes.
        let source = serde_json::value::to_raw_value(&doc)
            .unwrap_or_else(|_| RawValue::from_string("{}".to_string()).expect("valid JSON"));
        IndexedDoc {
            index,
            id: wx_codec::message_identity(&m.corp_id, &m.msgid),
            source,
        }
    }

    /// The document's source as a JSON value (tests and tools).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.source.get()).unwrap_or(Value::Null)
    }

    /// About how many bytes it adds to a bulk request: its source and its action line.
    pub fn request_bytes(&self) -> usize {
        self.source.get().len() + 96
    }
}

/// The fields a later version added to the template, put into the mappings of indices that an
/// earlier template created (a strict mapping would refuse their documents otherwise).
fn added_fields() -> Value {
    json!({"properties": {
        "ingested_at": {"type": "date", "format": "epoch_millis"},
        "has_media": {"type": "boolean"},
        "file_name": {"type": "keyword"},
        "file_ext": {"type": "keyword"},
        "file_size": {"type": "long"}
    }})
}

/// How each monthly index is laid out on the cluster (the sink's `index_shards` and
/// `index_replicas`). A shard holds at most about 2.1 billion documents (Lucene's limit), and
/// keeps well under 200 million: size `shards` by a month's messages (README, "Scale on
/// paper").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub shards: u32,
    pub replicas: u32,
}

impl Default for Layout {
    /// One primary shard and one replica (a replica stays unassigned on a one-node cluster,
    /// which still takes writes).
    fn default() -> Layout {
        Layout {
            shards: 1,
            replicas: 1,
        }
    }
}

/// The index template: explicit mappings (`dynamic: strict`, so a document that does not fit
/// is refused rather than silently widening the mapping), the `cjk` analyzer on `text`, the
/// alias every monthly index joins, and the `layout` of each new monthly index.
pub fn template(prefix: &str, layout: Layout) -> Value {
    let keyword = json!({"type": "keyword"});
    json!({
        "index_patterns": [format!("{prefix}-*")],
        "template": {
            "settings": {
                "number_of_shards": layout.shards,
                "number_of_replicas": layout.replicas,
            },
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "msgid": keyword, "corp_id": keyword, "conversation_id": keyword,
                    "from": keyword, "tolist": keyword, "roomid": keyword, "msgtype": keyword,
                    "action": keyword, "recalled_msgid": keyword,
                    "msgtime": {"type": "date", "format": "epoch_millis"},
                    "ingested_at": {"type": "date", "format": "epoch_millis"},
                    "text": {"type": "text", "analyzer": "cjk"},
                    "is_external": {"type": "boolean"},
                    "has_media": {"type": "boolean"},
                    "file_name": {"type": "keyword"},
                    "file_ext": {"type": "keyword"},
                    "file_size": {"type": "long"}
                }
            },
            "aliases": {prefix: {}}
        }
    })
}

/// The monthly index of a message.
pub fn index_for(prefix: &str, msgtime: i64) -> String {
    format!("{prefix}-{}", Month::of_ms(msgtime).index_suffix())
}

/// A client of one search endpoint.
#[derive(Debug, Clone)]
pub struct SearchIndex {
    client: Elasticsearch,
    url: String,
    prefix: String,
    layout: Layout,
}

impl SearchIndex {
    /// A client of `endpoint` whose every request has `timeout` as its deadline (an endpoint
    /// that does not answer within it fails the request, as an unreachable one does).
    pub fn new(
        endpoint: &Endpoint,
        prefix: &str,
        timeout: Duration,
    ) -> Result<SearchIndex, SearchError> {
        // What errors and logs show: the URLs without credentials.
        let shown = endpoint.shown();
        let transport = endpoint
            .transport(timeout)
            .map_err(|reason| SearchError::Transport {
                url: shown.clone(),
                reason,
            })?;
        Ok(SearchIndex {
            client: Elasticsearch::new(transport),
            url: shown,
            prefix: prefix.to_string(),
            layout: Layout::default(),
        })
    }

    /// The same client, putting `layout` into the template of new monthly indices.
    pub fn with_layout(self, layout: Layout) -> SearchIndex {
        SearchIndex { layout, ..self }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn transport(&self, e: elasticsearch::Error) -> SearchError {
        SearchError::Transport {
            url: self.url.clone(),
            reason: wx_runtime::settings::redact_urls(&e.to_string()),
        }
    }

    /// Creates or updates the index template, and adds the fields it gained since to the
    /// indices an earlier template created (idempotent).
    pub async fn ensure_template(&self) -> Result<(), SearchError> {
        let reply = self
            .client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(&self.prefix))
            .body(template(&self.prefix, self.layout))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.success(reply).await?;
        let pattern = format!("{}-*", self.prefix);
        let reply = self
            .client
            .indices()
            .put_mapping(IndicesPutMappingParts::Index(&[&pattern]))
            .allow_no_indices(true)
            .body(added_fields())
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.success(reply).await
    }

    /// Ok for a 2xx reply, else its status and body.
    async fn success(
        &self,
        reply: elasticsearch::http::response::Response,
    ) -> Result<(), SearchError> {
        let status = reply.status_code();
        if status.is_success() {
            return Ok(());
        }
        let body = reply.text().await.unwrap_or_default();
        Err(SearchError::Status {
            status: status.as_u16(),
            body,
        })
    }

    /// Sends one bulk request of `ops`.
    async fn bulk<B: serde::Serialize>(
        &self,
        ops: Vec<BulkOperation<B>>,
    ) -> Result<elasticsearch::http::response::Response, SearchError> {
        self.client
            .bulk(BulkParts::None)
            .body(ops)
            .send()
            .await
            .map_err(|e| self.transport(e))
    }

    /// Sends one bulk request of `create` operations (`_id` = `<corp>/<msgid>`,
    /// [`wx_codec::message_identity`]) and returns each item's verdict, in order.
    pub async fn bulk_create(&self, docs: &[IndexedDoc]) -> Result<Vec<ItemVerdict>, SearchError> {
        let ops: Vec<BulkOperation<&RawValue>> = docs
            .iter()
            .map(|doc| {
                BulkOperation::create(&*doc.source)
                    .id(doc.id.as_str())
                    .index(doc.index.as_str())
                    .into()
            })
            .collect();
        let reply = self.bulk(ops).await?;
        let status = reply.status_code();
        if status != StatusCode::OK {
            let body: String = reply
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(SearchError::Status {
                status: status.as_u16(),
                body,
            });
        }
        let body: Value = reply.json().await.map_err(|e| self.transport(e))?;
        triage(&body, docs.len()).map_err(|reason| SearchError::Status {
            status: 502,
            body: reason.to_string(),
        })
    }

    /// Makes every document written so far searchable (best effort: a failure shows in the
    /// read that follows).
    async fn refresh(&self) {
        let _ = self
            .client
            .indices()
            .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[
                &self.prefix
            ]))
            .send()
            .await;
    }

    /// When each document was written: (corp_id, msgid, `ingested_at` in ms), every document
    /// under the alias, after a refresh (the pipeline benchmark's pull-to-stored latency).
    pub async fn written_at(&self) -> Result<Vec<(String, String, i64)>, SearchError> {
        self.refresh().await;
        let mut out = Vec::new();
        let mut after: Option<Value> = None;
        loop {
            let mut body = json!({
                "size": 10_000,
                "sort": ["_doc"],
                "_source": ["corp_id", "msgid", "ingested_at"],
                "query": {"match_all": {}}
            });
            if let Some(after) = &after {
                body["search_after"] = after.clone();
            }
            let reply = self
                .client
                .search(elasticsearch::SearchParts::Index(&[&self.prefix]))
                .body(body)
                .send()
                .await
                .map_err(|e| self.transport(e))?;
            let reply: Value = reply.json().await.map_err(|e| self.transport(e))?;
            let hits = reply["hits"]["hits"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let Some(last) = hits.last() else {
                return Ok(out);
            };
            after = Some(last["sort"].clone());
            for hit in &hits {
                let source = &hit["_source"];
                out.push((
                    source["corp_id"].as_str().unwrap_or_default().to_string(),
                    source["msgid"].as_str().unwrap_or_default().to_string(),
                    source["ingested_at"].as_i64().unwrap_or(0),
                ));
            }
        }
    }

    /// Deletes documents by (index, `_id`) in one bulk request; the number that existed. A
    /// document already gone counts as deleted (retention and erasure run again idempotently);
    /// any other item error fails the call.
    pub async fn delete_docs(&self, docs: &[(String, String)]) -> Result<u64, SearchError> {
        if docs.is_empty() {
            return Ok(0);
        }
        let ops: Vec<BulkOperation<()>> = docs
            .iter()
            .map(|(index, id)| {
                BulkOperation::delete(id.as_str())
                    .index(index.as_str())
                    .into()
            })
            .collect();
        let reply = self.bulk(ops).await?;
        let status = reply.status_code();
        let body: Value = reply.json().await.map_err(|e| self.transport(e))?;
        if status != StatusCode::OK {
            return Err(SearchError::Status {
                status: status.as_u16(),
                body: body.to_string().chars().take(300).collect(),
            });
        }
        let mut deleted = 0;
        for item in body["items"].as_array().into_iter().flatten() {
            let item = &item["delete"];
            match item["status"].as_u64() {
                Some(200) => deleted += 1,
                // Not there: gone already, or its monthly index is.
                Some(404) => {}
                other => {
                    return Err(SearchError::Status {
                        status: other.and_then(|s| u16::try_from(s).ok()).unwrap_or(502),
                        body: item["error"].to_string().chars().take(300).collect(),
                    });
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes the documents of `index` that `query` matches (conflicts proceed, the call
    /// waits for the end); how many.
    pub async fn delete_by_query(&self, index: &str, query: Value) -> Result<u64, SearchError> {
        let reply = self
            .client
            .delete_by_query(elasticsearch::DeleteByQueryParts::Index(&[index]))
            .conflicts(elasticsearch::params::Conflicts::Proceed)
            .refresh(true)
            .body(json!({"query": query}))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = reply.status_code();
        let body: Value = reply.json().await.map_err(|e| self.transport(e))?;
        match status.as_u16() {
            200 => Ok(body["deleted"].as_u64().unwrap_or(0)),
            404 => Ok(0),
            status => Err(SearchError::Status {
                status,
                body: body.to_string().chars().take(300).collect(),
            }),
        }
    }

    /// The monthly indices under the alias, with their document counts.
    pub async fn monthly_indices(&self) -> Result<Vec<(String, u64)>, SearchError> {
        self.refresh().await;
        let reply = self
            .client
            .cat()
            .indices(elasticsearch::cat::CatIndicesParts::Index(&[&format!(
                "{}-*",
                self.prefix
            )]))
            .format("json")
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let body: Value = reply.json().await.map_err(|e| self.transport(e))?;
        Ok(body
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let name = i["index"].as_str()?.to_string();
                let count = i["docs.count"].as_str()?.parse().ok()?;
                Some((name, count))
            })
            .collect())
    }

    /// Deletes a whole index; whether it existed.
    pub async fn delete_index(&self, name: &str) -> Result<bool, SearchError> {
        let reply = self
            .client
            .indices()
            .delete(elasticsearch::indices::IndicesDeleteParts::Index(&[name]))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        match reply.status_code().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(SearchError::Status {
                status,
                body: reply
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect(),
            }),
        }
    }

    /// Documents under the alias (tests and the demo's reconciliation), after a refresh.
    pub async fn count(&self) -> Result<u64, SearchError> {
        self.refresh().await;
        let reply = self
            .client
            .count(elasticsearch::CountParts::Index(&[&self.prefix]))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let body: Value = reply.json().await.map_err(|e| self.transport(e))?;
        Ok(body["count"].as_u64().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wx_codec::SourceCoordinates;

    fn message(msgtype: &str, payload_json: &str) -> ChatMessage {
        ChatMessage {
            msgid: "m1".into(),
            corp_id: "corp".into(),
            action: "send".into(),
            from: "alice".into(),
            tolist: vec!["bob".into()],
            roomid: String::new(),
            msgtime: 1_700_000_000_000,
            msgtype: msgtype.into(),
            payload_json: payload_json.into(),
            extra_json: None,
            text: Some("hi".into()),
            recalled_msgid: None,
            conversation_id: "alice|bob".into(),
            is_external: false,
            publickey_ver: Some(1),
            source: SourceCoordinates {
                topic: "wxstream.raw".into(),
                partition: 0,
                offset: 1,
                seq: Some(1),
            },
            decrypted_at: 1_700_000_000_100,
        }
    }

    #[test]
    fn a_document_holds_the_searchable_fields_and_a_files_name_extension_and_size() {
        let text = IndexedDoc::new("idx".into(), &message("text", r#"{"content":"hi"}"#), 7);
        assert_eq!(text.id, wx_codec::message_identity("corp", "m1"));
        assert_eq!(
            text.value(),
            json!({"msgid": "m1", "corp_id": "corp", "conversation_id": "alice|bob",
                   "from": "alice", "tolist": ["bob"], "roomid": "", "msgtype": "text",
                   "action": "send", "msgtime": 1_700_000_000_000_i64, "text": "hi",
                   "is_external": false, "recalled_msgid": null, "ingested_at": 7,
                   "has_media": false})
        );
        let file = IndexedDoc::new(
            "idx".into(),
            &message(
                "file",
                r#"{"sdkfileid":"f","filename":"Q3.PDF","filesize":1234,"md5sum":"AB"}"#,
            ),
            7,
        );
        let doc = file.value();
        assert_eq!(doc["has_media"], json!(true));
        assert_eq!(doc["file_name"], json!("Q3.PDF"));
        assert_eq!(doc["file_ext"], json!("pdf"));
        assert_eq!(doc["file_size"], json!(1234));
        assert_eq!(file.request_bytes(), file.source.get().len() + 96);
    }
}
