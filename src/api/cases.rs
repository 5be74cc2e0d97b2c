//! `/api/cases`: the privacy officer's queue. Reads go straight to the database on a
//! blocking thread; a decision goes through the `StateActor` like every write.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{err_json, page_limit, parse_name, parse_time, state_err, with_reader, ApiState};
use crate::detector::actor::UserCard;
use crate::pipeline::AllowListChanged;
use crate::state::actor::SetCaseStatus;
use fhir_edge_core::cases::{CaseDecision, CaseFilter, CaseScope, CaseStatus};

#[derive(Deserialize)]
pub(super) struct CaseQuery {
    since: Option<String>,
    status: Option<String>,
    severity: Option<String>,
    user: Option<String>,
    limit: Option<u32>,
    cursor: Option<i64>,
}

impl CaseQuery {
    fn filter(&self) -> Result<CaseFilter, String> {
        let (scope, status) =
            CaseScope::parse(self.status.as_deref()).map_err(|e| e.to_string())?;
        Ok(CaseFilter {
            since_ms: self
                .since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            status,
            scope,
            min_severity: parse_name(&self.severity)?,
            user: self.user.clone(),
            before_id: self.cursor,
            limit: page_limit(self.limit)?,
        })
    }
}

/// `GET /api/cases`: newest first; `since` (the case's last access at or after),
/// `status` (a status, `open` for the queue — new and in review —, or `any`; without it
/// every case but the watched ones, see `CaseScope::Reviewable`), `severity` (the minimum),
/// `user`, `limit`, `cursor`.
pub(super) async fn list(s: web::Data<ApiState>, q: web::Query<CaseQuery>) -> HttpResponse {
    let f = match q.filter() {
        Ok(f) => f,
        Err(m) => return err_json(StatusCode::BAD_REQUEST, m),
    };
    let limit = f.limit as usize;
    match with_reader(s.readers.clone(), move |r| {
        Ok((r.cases(&f)?, r.case_counts()?))
    })
    .await
    {
        Ok((cases, counts)) => {
            let next = (cases.len() == limit)
                .then(|| cases.last().map(|c| c.id))
                .flatten();
            HttpResponse::Ok().json(json!({"cases": cases, "counts": counts, "next_cursor": next}))
        }
        Err(r) => r,
    }
}

/// `GET /api/cases/{id}`: the case, its alerts (oldest first) and the AuditEvent ids.
pub(super) async fn get(s: web::Data<ApiState>, id: web::Path<i64>) -> HttpResponse {
    let id = id.into_inner();
    match with_reader(s.readers.clone(), move |r| r.case(id)).await {
        Ok((case, alerts)) => {
            let event_ids: Vec<&str> = alerts.iter().map(|a| a.event_id.as_str()).collect();
            let mut body = serde_json::to_value(&case).unwrap_or_default();
            body["event_ids"] = json!(event_ids);
            body["alerts"] = json!(alerts);
            HttpResponse::Ok().json(body)
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CaseStatusBody {
    status: String,
    #[serde(default)]
    resolution: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    by: Option<String>,
    /// Add the allow-list rules the decision implies (closing as appropriate or false
    /// positive); without it they are only returned, as `implied_rules`.
    #[serde(default)]
    allow: bool,
}

/// `POST /api/cases/{id}/status`: `in_review`, or `closed` with a `resolution`.
pub(super) async fn set_status(
    s: web::Data<ApiState>,
    id: web::Path<i64>,
    body: web::Json<CaseStatusBody>,
) -> HttpResponse {
    let id = id.into_inner();
    let body = body.into_inner();
    let status: CaseStatus = match parse_name(&Some(body.status)) {
        Ok(Some(st)) => st,
        Ok(None) => unreachable!("a status was given"),
        Err(m) => return err_json(StatusCode::BAD_REQUEST, m),
    };
    let decision = CaseDecision {
        status,
        resolution: match parse_name(&body.resolution) {
            Ok(r) => r,
            Err(m) => return err_json(StatusCode::BAD_REQUEST, m),
        },
        note: body.note,
        by: body.by,
    };
    if let Err(e) = decision.check() {
        return err_json(StatusCode::BAD_REQUEST, e.to_string());
    }
    let msg = SetCaseStatus {
        id,
        decision,
        apply: body.allow,
    };
    match s.set_case_status.send(msg).await {
        Ok(Ok(d)) => {
            if let Some(rules) = d.allowlist {
                s.rules_changed.do_send(AllowListChanged(rules));
            }
            HttpResponse::Ok().json(json!({
                "case": d.case,
                "implied_rules": d.implied,
                "rules_added": body.allow && !d.implied.is_empty(),
            }))
        }
        Ok(Err(e)) => state_err(e),
        Err(e) => err_json(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
pub(super) struct UserQuery {
    #[serde(rename = "ref")]
    user: String,
}

/// Cases the user card lists; `more_cases_cursor` pages on through `/api/cases?user=`.
const CARD_CASES: u32 = 100;
/// Newest alerted events whose departments the card names.
const CARD_EVENTS: u32 = 50;

/// `GET /api/user?ref=Practitioner/123`: the user card beside a case — what the detector
/// has learned of the user (their department, usual hours, addresses and applications,
/// usual patients per hour, how often they open new patients and other departments'
/// patients), the departments their newest `CARD_EVENTS` alerted events named, and their
/// newest `CARD_CASES` cases (with `more_cases_cursor` when there are more).
pub(super) async fn user(s: web::Data<ApiState>, q: web::Query<UserQuery>) -> HttpResponse {
    let user = q.into_inner().user;
    let learned = s
        .user_card
        .send(UserCard(user.clone()))
        .await
        .ok()
        .flatten();
    let u = user.clone();
    let stored = with_reader(s.readers.clone(), move |r| {
        let mut cases = r.cases(&CaseFilter {
            user: Some(u.clone()),
            limit: CARD_CASES + 1,
            ..Default::default()
        })?;
        let more = (cases.len() > CARD_CASES as usize).then(|| {
            cases.truncate(CARD_CASES as usize);
            cases.last().map(|c| c.id)
        });
        let alerts = r.alerts(&fhir_edge_core::alerts::AlertFilter {
            user: Some(u),
            limit: CARD_EVENTS,
            ..Default::default()
        })?;
        // The departments the user's events named (their agent's location or role).
        let mut departments: Vec<String> = Vec::new();
        for a in &alerts {
            let raw = r.alert(a.id)?.event.unwrap_or_default();
            let dept = serde_json::value::to_raw_value(&raw)
                .ok()
                .and_then(|raw| fhir_edge_core::fhir::parse_audit_event(&raw).ok())
                .and_then(|rec| rec.department);
            if let Some(d) = dept.filter(|d| !departments.contains(d)) {
                departments.push(d);
            }
        }
        Ok((cases, more.flatten(), departments))
    })
    .await;
    match stored {
        Ok((cases, more, departments)) => HttpResponse::Ok().json(json!({
            "user": user,
            "learned": learned,
            "departments": departments,
            "cases": cases,
            "more_cases_cursor": more,
        })),
        Err(r) => r,
    }
}
