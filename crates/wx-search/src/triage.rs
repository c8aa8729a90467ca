//! Reading a bulk reply item by item (pure, table-tested): what was written, what to retry and
//! what is permanently refused. A replay's version conflict (the document already exists: we
//! write with `create` and `_id` = msgid) counts as written.

use serde_json::Value;

/// Statuses that say the endpoint (or its configuration) is failing, not the document: auth,
/// blocks, a missing index it will not create, timeouts, throttling, server errors.
pub fn is_store_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 404 | 408 | 429) || status >= 500
}

/// Whether an item's error is the document's own: it cannot be parsed or mapped, whatever the
/// cluster's state (`mapper_parsing_exception`, `document_parsing_exception`, an immense term,
/// an id too long). Every other item error is the store's, whatever its status: a closed index
/// (`index_closed_exception`), a shard limit reached when a month's index is created
/// (`validation_exception`), a missing pipeline or alias (`illegal_argument_exception`), a
/// strict mapping from an older template (`strict_dynamic_mapping_exception`), a block. Parking
/// good documents while the cluster is misconfigured would move them out of search for good.
pub fn is_document_error(kind: &str, reason: &str) -> bool {
    match kind {
        "mapper_parsing_exception" | "document_parsing_exception" => true,
        "illegal_argument_exception" => {
            reason.contains("immense term")
                || (reason.contains("id [") && reason.contains("too long"))
        }
        _ => false,
    }
}

/// The verdict on one bulk item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemVerdict {
    /// Written now, or already there (409 on `create`).
    Written,
    /// The store is unwell or misconfigured for this item (401/403 auth or an index write
    /// block, 404 an index it will not create, 408, 429, 5xx): send again after a pause.
    Retry { status: u16, reason: String },
    /// The document itself is refused (it cannot be parsed or mapped: [`is_document_error`]):
    /// dead-letter with the item's error.
    Refused { status: u16, reason: String },
}

/// A bulk reply that cannot be read item by item (everything is retried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("bulk reply without items")]
    NoItems,
    #[error("bulk reply has {found} items for {expected} requests")]
    ItemCount { found: usize, expected: usize },
}

/// One verdict per item of `reply`, in request order. A reply that does not have one item per
/// request is an error (everything is retried).
pub fn triage(reply: &Value, expected: usize) -> Result<Vec<ItemVerdict>, ReplyError> {
    let items = reply
        .get("items")
        .and_then(Value::as_array)
        .ok_or(ReplyError::NoItems)?;
    if items.len() != expected {
        return Err(ReplyError::ItemCount {
            found: items.len(),
            expected,
        });
    }
    Ok(items
        .iter()
        .map(|item| {
            let result = item
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or(Value::Null);
            let status = result
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(500);
            if matches!(status, 200..=299 | 409) {
                return ItemVerdict::Written;
            }
            let error = result.get("error").cloned().unwrap_or(Value::Null);
            let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
            let why = error.get("reason").and_then(Value::as_str).unwrap_or("");
            // The reason can quote the offending value; keep it short.
            let reason: String = format!("{kind}: {why}").chars().take(300).collect();
            if !is_store_status(status) && is_document_error(kind, why) {
                ItemVerdict::Refused { status, reason }
            } else {
                ItemVerdict::Retry { status, reason }
            }
        })
        .collect())
}

/// Splits `sizes` (bytes of each item's two NDJSON lines) into consecutive requests of at most
/// `max_items` items and `max_bytes` bytes (an item larger than `max_bytes` goes alone).
pub fn chunks(sizes: &[usize], max_items: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let full = i > start && (i - start >= max_items.max(1) || bytes + size > max_bytes);
        if full {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_item_gets_its_verdict() {
        let reply = json!({"errors": true, "items": [
            {"create": {"_id": "a", "status": 201}},
            {"create": {"_id": "b", "status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"create": {"_id": "c", "status": 429, "error": {"type": "es_rejected_execution_exception"}}},
            {"create": {"_id": "d", "status": 503}},
            {"create": {"_id": "e", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [msgtime]"}}},
            {"create": {"_id": "f", "status": 403, "error": {"type": "cluster_block_exception", "reason": "index [x] blocked by: [FORBIDDEN/8/index write (api)];"}}},
            {"create": {"_id": "g", "status": 404, "error": {"type": "index_not_found_exception", "reason": "no such index [x]"}}},
            {"create": {"_id": "h", "status": 400, "error": {"type": "index_closed_exception", "reason": "closed"}}},
            {"create": {"_id": "i", "status": 400, "error": {"type": "validation_exception", "reason": "this action would add [2] shards, but this cluster currently has [1000]/[1000] maximum normal shards open"}}},
            {"create": {"_id": "j", "status": 400, "error": {"type": "illegal_argument_exception", "reason": "pipeline with id [nope] does not exist"}}},
            {"create": {"_id": "k", "status": 400, "error": {"type": "strict_dynamic_mapping_exception", "reason": "mapping set to strict, dynamic introduction of [file_name] within [_doc] is not allowed"}}},
            {"create": {"_id": "l", "status": 400, "error": {"type": "illegal_argument_exception", "reason": "Document contains at least one immense term in field=\"text\""}}},
            {"create": {"_id": "m", "status": 400, "error": {"type": "document_parsing_exception", "reason": "failed to parse"}}},
        ]});
        let verdicts = triage(&reply, 13).expect("triage");
        assert_eq!(
            verdicts,
            vec![
                ItemVerdict::Written,
                ItemVerdict::Written,
                ItemVerdict::Retry {
                    status: 429,
                    reason: "es_rejected_execution_exception: ".into()
                },
                ItemVerdict::Retry {
                    status: 503,
                    reason: "error: ".into()
                },
                ItemVerdict::Refused {
                    status: 400,
                    reason: "mapper_parsing_exception: failed to parse field [msgtime]".into()
                },
                // A write block or a missing index is the store's state, not the document's.
                ItemVerdict::Retry {
                    status: 403,
                    reason: "cluster_block_exception: index [x] blocked by: [FORBIDDEN/8/index write (api)];".into()
                },
                ItemVerdict::Retry {
                    status: 404,
                    reason: "index_not_found_exception: no such index [x]".into()
                },
                // A 400 about the index or the cluster is the store's too.
                ItemVerdict::Retry {
                    status: 400,
                    reason: "index_closed_exception: closed".into()
                },
                ItemVerdict::Retry {
                    status: 400,
                    reason: "validation_exception: this action would add [2] shards, but this cluster currently has [1000]/[1000] maximum normal shards open".into()
                },
                ItemVerdict::Retry {
                    status: 400,
                    reason: "illegal_argument_exception: pipeline with id [nope] does not exist".into()
                },
                ItemVerdict::Retry {
                    status: 400,
                    reason: "strict_dynamic_mapping_exception: mapping set to strict, dynamic introduction of [file_name] within [_doc] is not allowed".into()
                },
                ItemVerdict::Refused {
                    status: 400,
                    reason: "illegal_argument_exception: Document contains at least one immense term in field=\"text\"".into()
                },
                ItemVerdict::Refused {
                    status: 400,
                    reason: "document_parsing_exception: failed to parse".into()
                },
            ]
        );
        assert!(
            triage(&reply, 4).is_err(),
            "a count mismatch retries everything"
        );
        assert!(triage(&json!({"error": "x"}), 1).is_err());
    }

    #[test]
    fn requests_are_bounded_by_count_and_bytes() {
        assert_eq!(chunks(&[10; 5], 2, 1000), vec![0..2, 2..4, 4..5]);
        assert_eq!(chunks(&[60, 60, 60], 10, 100), vec![0..1, 1..2, 2..3]);
        assert_eq!(chunks(&[500, 10, 10], 10, 100), vec![0..1, 1..3]);
        assert_eq!(chunks(&[], 10, 100), Vec::<std::ops::Range<usize>>::new());
    }
}
