//! The sink's targets: which stores it writes into, in order, by name (`targets` in its
//! settings; `[mysql, search]` unless configured). A target is built by its factory from the
//! sink's settings, its own options and the stage's context. The built-in ones are the MySQL and
//! search adapters'; another crate (a test, a distribution) registers more with
//! [`register_target`] before the stage is built, and configuration alone then names them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use wx_runtime::StageContext;
use wx_runtime::settings::SettingsError;
use wx_runtime::target::{Target, TargetFuture};

use crate::{BuildError, SinkSettings};

/// One entry of `targets`: a name, or a name with its options (`{clickhouse: {url: ...}}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    Name(String),
    WithOptions(BTreeMap<String, serde_json::Value>),
}

impl TargetSpec {
    /// The target's name and options (`null` when none are given).
    pub fn parts(&self) -> (&str, serde_json::Value) {
        match self {
            TargetSpec::Name(name) => (name, serde_json::Value::Null),
            TargetSpec::WithOptions(map) => map
                .iter()
                .next()
                .map(|(name, options)| (name.as_str(), options.clone()))
                .unwrap_or(("", serde_json::Value::Null)),
        }
    }
}

/// What a factory builds a target from.
#[derive(Debug)]
pub struct TargetBuild<'a> {
    pub settings: &'a SinkSettings,
    /// The target's own options from its `targets` entry (`null` when none).
    pub options: serde_json::Value,
    pub context: &'a StageContext,
}

/// A target's constructor. It connects and prepares the store (migrations, templates); its
/// error stops the stage visibly.
pub type TargetFactory =
    for<'a> fn(&'a TargetBuild<'a>) -> TargetFuture<'a, Result<Arc<dyn Target>, BuildError>>;

/// The targets the sink writes into unless `targets` says otherwise.
pub fn default_targets() -> Vec<TargetSpec> {
    vec![
        TargetSpec::Name("mysql".into()),
        TargetSpec::Name("search".into()),
    ]
}

fn registered() -> &'static Mutex<BTreeMap<String, TargetFactory>> {
    static REGISTERED: std::sync::OnceLock<Mutex<BTreeMap<String, TargetFactory>>> =
        std::sync::OnceLock::new();
    REGISTERED.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Makes `name` a target that `targets` can name (a built-in name cannot be replaced).
pub fn register_target(name: &str, factory: TargetFactory) {
    if built_in(name).is_none() {
        registered()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), factory);
    }
}

/// The built-in targets: one line per adapter.
fn built_in(name: &str) -> Option<TargetFactory> {
    match name {
        "mysql" => Some(mysql),
        "search" => Some(search),
        _ => None,
    }
}

fn factory(name: &str) -> Option<TargetFactory> {
    built_in(name).or_else(|| {
        registered()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    })
}

/// `targets` names known targets, each once, at least one.
pub(crate) fn check(specs: &[TargetSpec]) -> Result<(), SettingsError> {
    let wrong = |why: String| SettingsError::new(crate::STAGE, "targets", why);
    if specs.is_empty() {
        return Err(wrong("names no target".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs {
        let (name, _) = spec.parts();
        if matches!(spec, TargetSpec::WithOptions(map) if map.len() != 1) {
            return Err(wrong("an entry with options names one target".into()));
        }
        if factory(name).is_none() {
            return Err(wrong(format!("unknown target `{name}`")));
        }
        if !seen.insert(name.to_string()) {
            return Err(wrong(format!("target `{name}` is named twice")));
        }
    }
    Ok(())
}

/// Builds every configured target, in order.
pub(crate) async fn build(
    settings: &SinkSettings,
    context: &StageContext,
) -> Result<Vec<Arc<dyn Target>>, BuildError> {
    let mut targets = Vec::with_capacity(settings.targets.len());
    for spec in &settings.targets {
        let (name, options) = spec.parts();
        let make = factory(name).ok_or_else(|| {
            SettingsError::new(crate::STAGE, "targets", format!("unknown target `{name}`"))
        })?;
        let build = TargetBuild {
            settings,
            options,
            context,
        };
        let target = make(&build).await?;
        metrics::describe_counter!(
            format!("wxstream_sink_{}_written_total", target.unit()),
            format!(
                "Records written to the {} target, by partition.",
                target.name()
            )
        );
        targets.push(target);
    }
    Ok(targets)
}

fn mysql<'a>(build: &'a TargetBuild<'a>) -> TargetFuture<'a, Result<Arc<dyn Target>, BuildError>> {
    Box::pin(async move {
        let settings = build.settings;
        let url = settings.mysql_url.resolve()?;
        let store = wx_mysql::MessageStore::connect(
            url.expose(),
            &settings.database,
            settings.store_timeout,
        )
        .await?;
        let (target, created) = wx_mysql::MysqlTarget::prepare(
            store,
            build.context.clock.now_ms(),
            settings.partitions_ahead,
            settings.partition_maintenance_interval,
        )
        .await?;
        tracing::info!(database = %settings.database, partitions = ?created, "MySQL ready.");
        Ok(Arc::new(target) as Arc<dyn Target>)
    })
}

fn search<'a>(build: &'a TargetBuild<'a>) -> TargetFuture<'a, Result<Arc<dyn Target>, BuildError>> {
    Box::pin(async move {
        let settings = build.settings;
        let index = wx_search::SearchIndex::new(
            &settings.search_endpoint()?,
            &settings.index_prefix,
            settings.store_timeout,
        )?
        .with_layout(wx_search::Layout {
            shards: settings.index_shards,
            replicas: settings.index_replicas,
        });
        let target = wx_search::SearchTarget::connect(
            index,
            build.context.clock,
            settings.batch_max,
            settings.bulk_max_bytes,
        )
        .await?;
        Ok(Arc::new(target) as Arc<dyn Target>)
    })
}
