//! The syslog lane: RFC 5424 messages (`fhir_edge_core::export::syslog`) over one TCP
//! connection, optionally TLS (RFC 5425), octet-counted (RFC 6587), kept open between
//! batches and opened again after any error. A batch counts as sent once written and
//! flushed to the socket, on a connection the receiver had not closed: syslog has no
//! acknowledgement, so an item written just before a crash may arrive twice (its `msg_id`
//! tells the SIEM), and what a receiver had read but not kept when it died is its loss.
//!
//! Field mapping, for SIEMs: the structured data `[fhir-edge@32473 …]` carries `schema`,
//! `site`, `type`, `id`, `msg_id` and per type the fields a rule routes on (alert:
//! `event_id severity score status user patient recorded case_id`; case: `severity score
//! status resolution user alerts patients first last`; status: `of status resolution by`);
//! MSGID is the type; MSG is the whole JSON message. Splunk: sourcetype `syslog` with
//! `KV_MODE = json` on MSG, or the RFC 5424 add-on's structured-data extraction; Elastic:
//! the `syslog` input or Filebeat's syslog input (format `rfc5424`) then a `json`
//! processor on `message`; Wazuh: `<remote><connection>syslog</connection>` and its JSON
//! decoder on the message after the structured data. With `format = "cef"` MSG is one CEF
//! line instead and there is no structured data (`fhir_edge_core::export::cef`); with
//! `format = "ocsf"` an OCSF Detection Finding's JSON (`fhir_edge_core::export::ocsf`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::{Delivered, ExportError};
use crate::config::SyslogExportConfig;
use fhir_edge_core::export::syslog::{format, frame, Facility};
use fhir_edge_core::export::Item;

/// Debian's bundle of the system's trusted CA certificates (package ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One open connection to the receiver.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(t) => t,
            Conn::Tls(t) => t.get_ref().0,
        }
    }

    /// Whether the receiver closed its side (a write to it would vanish in the kernel's
    /// buffer): a peek that returns at once with nothing, or an error.
    fn closed(&self) -> bool {
        use futures_util::FutureExt;
        let mut b = [0u8; 1];
        matches!(self.tcp().peek(&mut b).now_or_never(), Some(Ok(0) | Err(_)))
    }

    async fn write_flush(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(t) => {
                t.write_all(buf).await?;
                t.flush().await
            }
            Conn::Tls(t) => {
                t.write_all(buf).await?;
                t.flush().await
            }
        }
    }
}

pub(crate) struct SyslogSink {
    cfg: SyslogExportConfig,
    facility: Facility,
    host: String,
    pid: u32,
    timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<Conn>,
}

fn tls_connector(cfg: &SyslogExportConfig) -> Result<tokio_rustls::TlsConnector, ExportError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let path = cfg
        .ca_file
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(SYSTEM_CAS));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| ExportError::Setup(format!("CA file {}: {e}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| ExportError::Setup(format!("CA file {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| ExportError::Setup(format!("CA file {}: {e}", path.display())))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ExportError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl SyslogSink {
    pub(crate) fn new(cfg: &SyslogExportConfig) -> Result<SyslogSink, ExportError> {
        let facility = Facility::parse(&cfg.facility)
            .ok_or_else(|| ExportError::Setup(format!("facility {:?}", cfg.facility)))?;
        let tls = cfg.tls.then(|| tls_connector(cfg)).transpose()?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Ok(SyslogSink {
            cfg: cfg.clone(),
            facility,
            host,
            pid: std::process::id(),
            timeout: Duration::from_secs(cfg.timeout_secs),
            tls,
            conn: None,
        })
    }

    async fn connect(&self) -> Result<Conn, ExportError> {
        let err = |reason: String| ExportError::Connect {
            what: format!("syslog receiver {}", self.cfg.address),
            reason,
        };
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&self.cfg.address))
            .await
            .map_err(|_| err(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Conn::Tcp(tcp));
        };
        let host = self
            .cfg
            .address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']'))
            .unwrap_or(&self.cfg.address);
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| err(format!("{host} is not a server name: {e}")))?;
        let stream = tokio::time::timeout(self.timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| err("TLS handshake timed out".into()))?
            .map_err(|e| err(format!("TLS: {e}")))?;
        Ok(Conn::Tls(Box::new(stream)))
    }

    /// Write `items` as one buffer of frames; the position of the last one once flushed.
    pub(crate) async fn send(&mut self, items: &[Item]) -> Result<Delivered, ExportError> {
        let mut buf = Vec::new();
        for item in items {
            let msg = format(
                item,
                self.facility,
                self.cfg.format,
                &self.host,
                &self.cfg.app_name,
                self.pid,
            );
            buf.extend(frame(&msg));
        }
        let mut conn = match self.conn.take().filter(|c| !c.closed()) {
            Some(c) => c,
            None => self.connect().await?,
        };
        match tokio::time::timeout(self.timeout, conn.write_flush(&buf)).await {
            Ok(Ok(())) => {
                self.conn = Some(conn);
                let upto = items
                    .last()
                    .map(|i| i.seq)
                    .ok_or_else(|| ExportError::Write("an empty batch".into()))?;
                Ok(Delivered {
                    upto,
                    duplicates: 0,
                })
            }
            Ok(Err(e)) => Err(ExportError::Write(e.to_string())),
            Err(_) => Err(ExportError::Timeout(self.timeout)),
        }
    }
}
