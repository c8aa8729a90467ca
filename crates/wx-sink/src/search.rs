//! Elasticsearch: the index template (explicit mappings, CJK analyzer, the alias), monthly
//! indices by msgtime, and bulk requests whose replies are triaged item by item: `create` for
//! each message, and a partial `update` that marks an already indexed message as recalled.
//! The only module that uses the Elasticsearch client.

use elasticsearch::http::StatusCode;
use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{IndicesPutIndexTemplateParts, IndicesPutMappingParts};
use elasticsearch::{BulkOperation, BulkParts, Elasticsearch};
use serde_json::{Value, json};
use wx_codec::ChatMessage;

use crate::months::Month;
use crate::triage::{ItemVerdict, triage};

/// Errors of a whole request (items have their own verdicts).
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search endpoint {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("search endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl SearchError {
    /// True unless the server refused the request as such (4xx other than 429).
    pub fn is_retryable(&self) -> bool {
        match self {
            SearchError::Transport { .. } => true,
            SearchError::Status { status, .. } => *status == 429 || *status >= 500,
        }
    }
}

/// One item of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchOp {
    /// Index a message's document (`create`: an existing one is left as it is).
    Create(Value),
    /// Mark an indexed message as recalled by this recall's msgid (a partial `update`; a
    /// document not there yet counts as done: it is created with the mark).
    MarkRecalled(String),
}

impl SearchOp {
    fn bulk(&self, index: &str, id: &str) -> BulkOperation<Value> {
        match self {
            SearchOp::Create(doc) => BulkOperation::create(doc.clone())
                .id(id)
                .index(index)
                .into(),
            SearchOp::MarkRecalled(by) => {
                BulkOperation::update(id, json!({"doc": {"recalled_by": by}}))
                    .index(index)
                    .into()
            }
        }
    }

    /// Roughly the bytes of the item's two NDJSON lines.
    pub fn size(&self) -> usize {
        match self {
            SearchOp::Create(doc) => doc.to_string().len() + 96,
            SearchOp::MarkRecalled(by) => by.len() + 128,
        }
    }
}

/// The searchable document of a message (what people search; MySQL keeps the full record),
/// with the recall that recalled it, when MySQL knows one.
pub fn document(m: &ChatMessage, recalled_by: Option<&str>) -> Value {
    json!({
        "msgid": m.msgid,
        "corp_id": m.corp_id,
        "conversation_id": m.conversation_id,
        "from": m.from,
        "tolist": m.tolist,
        "roomid": m.roomid,
        "msgtype": m.msgtype,
        "action": m.action,
        "msgtime": m.msgtime,
        "text": m.text,
        "is_external": m.is_external,
        "recalled_msgid": m.recalled_msgid,
        "recalled_by": recalled_by,
    })
}

/// The index template: explicit mappings (`dynamic: strict`, so a document that does not fit
/// is refused rather than silently widening the mapping), the `cjk` analyzer on `text`, and
/// the alias every monthly index joins.
pub fn template(prefix: &str) -> Value {
    let keyword = json!({"type": "keyword"});
    json!({
        "index_patterns": [format!("{prefix}-*")],
        "template": {
            "settings": {"number_of_shards": 1},
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "msgid": keyword, "corp_id": keyword, "conversation_id": keyword,
                    "from": keyword, "tolist": keyword, "roomid": keyword, "msgtype": keyword,
                    "action": keyword, "recalled_msgid": keyword, "recalled_by": keyword,
                    "msgtime": {"type": "date", "format": "epoch_millis"},
                    "text": {"type": "text", "analyzer": "cjk"},
                    "is_external": {"type": "boolean"}
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
}

impl SearchIndex {
    pub fn new(url: &str, prefix: &str) -> Result<SearchIndex, SearchError> {
        let transport = Transport::single_node(url).map_err(|e| SearchError::Transport {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        Ok(SearchIndex {
            client: Elasticsearch::new(transport),
            url: url.to_string(),
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn transport(&self, e: elasticsearch::Error) -> SearchError {
        SearchError::Transport {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Creates or updates the index template (idempotent), and adds the template's fields to
    /// the monthly indices that already exist (adding a field is the only mapping change
    /// Elasticsearch allows in place; an index created before `recalled_by` existed gets it).
    pub async fn ensure_template(&self) -> Result<(), SearchError> {
        let template = template(&self.prefix);
        let reply = self
            .client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(&self.prefix))
            .body(template.clone())
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.acknowledged(reply, false).await?;
        let pattern = format!("{}-*", self.prefix);
        let reply = self
            .client
            .indices()
            .put_mapping(IndicesPutMappingParts::Index(&[&pattern]))
            .body(json!({"properties": template["template"]["mappings"]["properties"]}))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        // 404: no monthly index yet (some servers say so for a pattern that matches none).
        self.acknowledged(reply, true).await
    }

    async fn acknowledged(
        &self,
        reply: elasticsearch::http::response::Response,
        not_found_is_ok: bool,
    ) -> Result<(), SearchError> {
        let status = reply.status_code();
        if status.is_success() || (not_found_is_ok && status == StatusCode::NOT_FOUND) {
            return Ok(());
        }
        let body = reply.text().await.unwrap_or_default();
        Err(SearchError::Status {
            status: status.as_u16(),
            body,
        })
    }

    /// Sends one bulk request, an item per `(index, _id = msgid, op)`, and returns each item's
    /// verdict, in order.
    pub async fn bulk(
        &self,
        items: &[(String, String, SearchOp)],
    ) -> Result<Vec<ItemVerdict>, SearchError> {
        let ops: Vec<BulkOperation<Value>> = items
            .iter()
            .map(|(index, id, op)| op.bulk(index, id))
            .collect();
        let reply = self
            .client
            .bulk(BulkParts::None)
            .body(ops)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
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
        triage(&body, items.len()).map_err(|reason| SearchError::Status {
            status: 502,
            body: reason,
        })
    }

    /// Documents under the alias (tests and the demo's reconciliation), after a refresh.
    pub async fn count(&self) -> Result<u64, SearchError> {
        let _ = self
            .client
            .indices()
            .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[
                &self.prefix
            ]))
            .send()
            .await;
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
