//! The NATS JetStream lane: publishes each outbox item to `<prefix>.<type>` with
//! `Nats-Msg-Id` = its message id, and counts it sent only once JetStream has acknowledged
//! storing it. At connection the stream is looked up; missing, it is created (subjects
//! `<prefix>.>`, file storage, the configured duplicate window); existing without our
//! subjects, they are added to it. Where the account may not do either, the error says
//! the `nats` command that would.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;

use super::{Delivered, ExportError, Partial};
use crate::config::NatsExportConfig;
use fhir_edge_core::export::Item;

/// One connection to the servers, and the stream checked.
pub(crate) struct NatsSink {
    js: jetstream::Context,
    prefix: String,
    timeout: Duration,
}

/// Whether the subject pattern `pattern` (with `*` and `>` wildcards) takes `subject`.
pub(crate) fn covers(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The subjects the lane publishes to: `<prefix>.alert`, `.case`, `.status`.
pub(crate) fn subjects(prefix: &str) -> Vec<String> {
    fhir_edge_core::export::ItemKind::ALL
        .iter()
        .map(|k| format!("{prefix}.{}", k.as_str()))
        .collect()
}

/// The command an administrator runs when fhir-edge may not create the stream.
fn create_command(cfg: &NatsExportConfig, prefix: &str) -> String {
    format!(
        "nats stream add {} --subjects '{prefix}.>' --storage file --retention limits \
         --dupe-window {}s --defaults",
        cfg.stream, cfg.duplicate_window_secs
    )
}

impl NatsSink {
    /// Connect and make sure the stream takes our subjects.
    pub(crate) async fn connect(
        cfg: &NatsExportConfig,
        prefix: &str,
        site: &str,
    ) -> Result<NatsSink, ExportError> {
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let connect_err = |reason: String| ExportError::Connect {
            what: format!("NATS {}", cfg.servers.join(",")),
            reason,
        };
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("fhir-edge {site}"))
            .connection_timeout(timeout)
            .request_timeout(Some(timeout));
        if let Some(t) = &cfg.token_file {
            let token = crate::config::read_secret(t).map_err(|e| connect_err(e.to_string()))?;
            opts = opts.token(token);
        }
        if let Some(c) = &cfg.credentials_file {
            let path =
                crate::config::resolve_secret_path(c).map_err(|e| connect_err(e.to_string()))?;
            opts = opts
                .credentials_file(&path)
                .await
                .map_err(|e| connect_err(format!("credentials {}: {e}", path.display())))?;
        }
        if let Some(ca) = &cfg.ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = tokio::time::timeout(timeout, opts.connect(cfg.servers.as_slice()))
            .await
            .map_err(|_| connect_err(format!("no answer within {timeout:?}")))?
            .map_err(|e| connect_err(e.to_string()))?;
        let mut js = jetstream::new(client);
        js.set_timeout(timeout);
        ensure_stream(&js, cfg, prefix).await?;
        Ok(NatsSink {
            js,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    /// Publish `items` in order and wait for every acknowledgement. On failure, the
    /// position of the last item acknowledged with all before it comes with the error (it
    /// is recorded, and the lane retries after it).
    pub(crate) async fn send(&self, items: &[Item]) -> Result<Delivered, Partial> {
        let mut acks = Vec::with_capacity(items.len());
        for item in items {
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, item.msg_id().as_str());
            let subject = format!("{}.{}", self.prefix, item.kind.as_str());
            let publish =
                self.js
                    .publish_with_headers(subject, headers, item.body_with_id().into());
            let ack = match tokio::time::timeout(self.timeout, publish).await {
                Ok(Ok(ack)) => ack,
                Ok(Err(e)) => {
                    // Published before this one but not yet acknowledged: not counted.
                    return Err(Partial::none(ExportError::Publish(e.to_string())));
                }
                Err(_) => return Err(Partial::none(ExportError::Timeout(self.timeout))),
            };
            acks.push((item.seq, ack));
        }
        let (mut upto, mut duplicates) = (None, 0);
        for (seq, ack) in acks {
            let error = match tokio::time::timeout(self.timeout, ack).await {
                Ok(Ok(a)) => {
                    upto = Some(seq);
                    duplicates += u64::from(a.duplicate);
                    continue;
                }
                Ok(Err(e)) => ExportError::Publish(e.to_string()),
                Err(_) => ExportError::Timeout(self.timeout),
            };
            return Err(Partial { upto, error });
        }
        let upto =
            upto.ok_or_else(|| Partial::none(ExportError::Publish("an empty batch".into())))?;
        Ok(Delivered { upto, duplicates })
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &NatsExportConfig,
    prefix: &str,
) -> Result<(), ExportError> {
    let wanted = format!("{prefix}.>");
    let no_stream = |reason: String| ExportError::NoStream {
        stream: cfg.stream.clone(),
        reason,
        command: create_command(cfg, prefix),
    };
    match js.get_stream(&cfg.stream).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| ExportError::Publish(e.to_string()))?;
            let mut config = info.config.clone();
            let ours = subjects(prefix);
            if ours
                .iter()
                .all(|s| config.subjects.iter().any(|p| covers(p, s)))
            {
                return Ok(());
            }
            config.subjects.push(wanted.clone());
            js.update_stream(&config).await.map_err(|e| {
                no_stream(format!(
                    "it exists without {wanted} and adding it failed: {e}; add the subject with \
                     `nats stream edit {} --subjects ...`",
                    cfg.stream
                ))
            })?;
            tracing::info!(
                actor = "export",
                exporter = "nats",
                stream = %cfg.stream,
                subjects = %wanted,
                "added this site's subjects to the stream"
            );
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.code() == 404
            ) =>
        {
            let config = jetstream::stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![wanted.clone()],
                storage: jetstream::stream::StorageType::File,
                duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
                ..Default::default()
            };
            js.create_stream(config)
                .await
                .map_err(|e| no_stream(e.to_string()))?;
            tracing::info!(
                actor = "export",
                exporter = "nats",
                stream = %cfg.stream,
                subjects = %wanted,
                duplicate_window_secs = cfg.duplicate_window_secs,
                "created the JetStream stream"
            );
            Ok(())
        }
        Err(e) => Err(ExportError::Connect {
            what: format!("JetStream (stream {})", cfg.stream),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns_cover_what_nats_would_route() {
        assert!(covers("fhir-edge.>", "fhir-edge.north.alert"));
        assert!(covers("fhir-edge.north.>", "fhir-edge.north.alert"));
        assert!(covers("fhir-edge.*.alert", "fhir-edge.north.alert"));
        assert!(!covers("fhir-edge.*.case", "fhir-edge.north.alert"));
        assert!(!covers("fhir-edge.south.>", "fhir-edge.north.alert"));
        assert!(!covers("fhir-edge.north.>", "fhir-edge.north"));
        assert!(covers("a.b", "a.b"));
        assert!(!covers("a.b", "a.b.c"));
        assert_eq!(subjects("x.y"), ["x.y.alert", "x.y.case", "x.y.status"]);
    }
}
