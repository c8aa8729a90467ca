//! The search adapter (Elasticsearch 8; OpenSearch 2 on the local stack): what people search of
//! each message, in monthly indices behind one alias. Stages depend on this crate, never on each
//! other.
//!
//! # Layout
//! - `triage`: a bulk reply read item by item (written / retry / refused) and bulk requests
//!   bounded by count and bytes. Pure, table-tested.
//! - `endpoint`: the cluster's node URLs, CA and credentials.
//! - `index`: the index template, monthly indices, the documents, bulk `create`, counts. The
//!   only user of the Elasticsearch client.
//! - here: [`SearchTarget`], the search endpoint as a sink target (`wx_runtime::target`).
//!
//! # Invariants
//! Documents are written with `create` and `_id` = `<corp>/<msgid>`: a replay's version
//! conflict counts as written, so writes are idempotent. A request's or item's failure that is
//! the endpoint's (auth, a write block, a missing index, 408, 429, 5xx, unreachable) is never
//! the record's: nothing is parked for it.

pub mod endpoint;
pub mod index;
pub mod triage;

use std::collections::VecDeque;

use wx_codec::ChatMessage;
use wx_runtime::Clock;
use wx_runtime::target::{Target, TargetFuture, Verdict};

pub use endpoint::{Auth, Endpoint};
pub use index::{Failure, IndexedDoc, Layout, SearchError, SearchIndex, index_for, template};
pub use triage::ItemVerdict;

/// The dead-letter class of a document the endpoint refuses as such (a mapping or parse error).
pub const MAPPING: &str = "mapping";

/// The dead-letter class of a document alone over the endpoint's request size limit (the
/// runtime's, shared by every stage).
pub use wx_runtime::TOO_LARGE;

/// The search endpoint as a sink target: bulk `create` bounded by count and bytes; a request
/// over the endpoint's size limit is halved until it fits; only documents refused as such (400
/// mapping, or one document alone over the limit) are the record's fault.
#[derive(Debug, Clone)]
pub struct SearchTarget {
    index: SearchIndex,
    clock: Clock,
    max_items: usize,
    max_bytes: usize,
}

impl SearchTarget {
    /// The endpoint's index template ensured; requests of at most `max_items` documents and
    /// `max_bytes` bytes.
    pub async fn connect(
        index: SearchIndex,
        clock: Clock,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<SearchTarget, SearchError> {
        index.ensure_template().await?;
        Ok(SearchTarget {
            index,
            clock,
            max_items,
            max_bytes,
        })
    }

    async fn write_all(&self, batch: &[ChatMessage]) -> Vec<Verdict> {
        let prefix = self.index.prefix();
        // Stamped when written: after the message's row was committed by the targets before.
        let written_at = self.clock.now_ms();
        let docs: Vec<IndexedDoc> = batch
            .iter()
            .map(|m| IndexedDoc::new(index_for(prefix, m.msgtime), m, written_at))
            .collect();
        let sizes: Vec<usize> = docs.iter().map(IndexedDoc::request_bytes).collect();
        let mut verdicts = vec![Verdict::Written; batch.len()];
        let mut requests: VecDeque<_> =
            triage::chunks(&sizes, self.max_items, self.max_bytes).into();
        while let Some(range) = requests.pop_front() {
            match self.index.bulk_create(&docs[range.clone()]).await {
                Ok(items) => {
                    for (verdict, item) in verdicts[range].iter_mut().zip(items) {
                        *verdict = match item {
                            ItemVerdict::Written => Verdict::Written,
                            ItemVerdict::Retry { status, reason } => Verdict::Unwell {
                                cause: format!("bulk items answered {status}: {reason}"),
                            },
                            ItemVerdict::Refused { status, reason } => Verdict::Refused {
                                class: MAPPING,
                                cause: format!("{status}: {reason}"),
                            },
                        };
                    }
                }
                Err(e) if e.failure() == Failure::TooLarge && range.len() > 1 => {
                    // Larger than the endpoint accepts (`http.max_content_length`): halve it.
                    let middle = range.start + range.len() / 2;
                    requests.push_front(middle..range.end);
                    requests.push_front(range.start..middle);
                }
                Err(e) => {
                    let verdict = match e.failure() {
                        Failure::Store => Verdict::Unwell {
                            cause: e.to_string(),
                        },
                        // A document alone over the request limit.
                        Failure::TooLarge => Verdict::Refused {
                            class: TOO_LARGE,
                            cause: e.to_string(),
                        },
                    };
                    verdicts[range].fill(verdict);
                }
            }
        }
        verdicts
    }
}

impl Target for SearchTarget {
    fn name(&self) -> &'static str {
        "search"
    }

    fn label(&self) -> &'static str {
        "The search endpoint"
    }

    fn unit(&self) -> &'static str {
        "documents"
    }

    fn write<'a>(&'a self, batch: &'a [ChatMessage]) -> TargetFuture<'a, Vec<Verdict>> {
        Box::pin(self.write_all(batch))
    }
}
