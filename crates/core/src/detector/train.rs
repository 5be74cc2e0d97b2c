//! Reading audit data for `train` and `score`: NDJSON of AuditEvents or FHIR Bundle JSON
//! (auto-detected), and turning it into feature rows in input order.

use std::io::BufRead;
use std::path::Path;

use super::features::{Context, N_FEATURES};
use crate::fhir::{parse_audit_event, parse_page, AuditRecord};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
}

impl InputError {
    pub fn kind(&self) -> &'static str {
        match self {
            InputError::Read { .. } => "input_unreadable",
            InputError::Format { .. } => "input_format",
        }
    }
}

/// Events read from a file, and entries skipped with the reason (id, reason).
#[derive(Debug, Default)]
pub struct Input {
    pub records: Vec<AuditRecord>,
    pub skipped: Vec<(String, String)>,
}

/// Read NDJSON (one AuditEvent per line) or a Bundle / single AuditEvent JSON document.
pub fn read_events(path: &Path) -> Result<Input, InputError> {
    read_events_with(path, |_, _| {})
}

/// As `read_events`, calling `progress(bytes read, events read)` every 10,000 lines of
/// NDJSON (a Bundle is read whole).
pub fn read_events_with(
    path: &Path,
    mut progress: impl FnMut(u64, usize),
) -> Result<Input, InputError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| InputError::Read {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut first_line = String::new();
    reader
        .read_line(&mut first_line)
        .map_err(|e| InputError::Read {
            path: p.clone(),
            reason: e.to_string(),
        })?;
    let trimmed = first_line.trim();
    let is_ndjson =
        trimmed.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok();
    let mut input = Input::default();
    if is_ndjson {
        let handle = |line: &str, n: usize, input: &mut Input| {
            let line = line.trim();
            if line.is_empty() {
                return;
            }
            match serde_json::from_str::<Box<serde_json::value::RawValue>>(line)
                .map_err(|e| e.to_string())
                .and_then(|raw| parse_audit_event(&raw))
            {
                Ok(r) => input.records.push(r),
                Err(e) => input.skipped.push((format!("line {n}"), e)),
            }
        };
        handle(&first_line, 1, &mut input);
        let mut bytes = first_line.len() as u64;
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| InputError::Read {
                path: p.clone(),
                reason: e.to_string(),
            })?;
            bytes += line.len() as u64 + 1;
            handle(&line, i + 2, &mut input);
            if i % 10_000 == 0 {
                progress(bytes, input.records.len());
            }
        }
        progress(bytes, input.records.len());
    } else {
        let mut body = first_line.into_bytes();
        std::io::Read::read_to_end(&mut reader, &mut body).map_err(|e| InputError::Read {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        match crate::fhir::parse_push(&body) {
            Ok(page) => {
                input.records = page.events.into_iter().map(|f| f.record).collect();
                input.skipped = page.skipped;
            }
            Err(e) => {
                // Maybe a searchset of another resource type: report plainly.
                let _ = parse_page(&body, "AuditEvent");
                return Err(InputError::Format {
                    path: p,
                    reason: format!("neither NDJSON nor a Bundle/AuditEvent: {e}"),
                });
            }
        }
    }
    Ok(input)
}

/// Feature rows for records in order, updating `ctx` as it goes (causal).
pub fn feature_rows(ctx: &mut Context, records: &[AuditRecord]) -> Vec<[f32; N_FEATURES]> {
    records.iter().map(|r| ctx.observe(r).0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ndjson_and_bundle() {
        let d = tempfile::tempdir().unwrap();
        let fx =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/fhir-r4/hl7-r4-core");
        let ev = std::fs::read_to_string(fx.join("AuditEvent-example-rest.json")).unwrap();
        let one_line: serde_json::Value = serde_json::from_str(&ev).unwrap();
        let nd = d.path().join("e.ndjson");
        std::fs::write(&nd, format!("{}\nnot json\n{}\n", one_line, one_line)).unwrap();
        let i = read_events(&nd).unwrap();
        assert_eq!(i.records.len(), 2);
        assert_eq!(i.skipped.len(), 1);
        let single = read_events(&fx.join("AuditEvent-example-rest.json")).unwrap();
        assert_eq!(single.records.len(), 1);
        let bundle = d.path().join("b.json");
        std::fs::write(
            &bundle,
            format!(
                r#"{{"resourceType":"Bundle","type":"collection","entry":[{{"resource":{ev}}}]}}"#
            ),
        )
        .unwrap();
        assert_eq!(read_events(&bundle).unwrap().records.len(), 1);
    }
}
