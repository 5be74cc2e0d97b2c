//! The dashboard: one self-contained page embedded in the binary (no CDN: edge machines are
//! often offline). It reads the same JSON API with the same token.

use actix_web::HttpResponse;

const INDEX: &str = include_str!("assets/index.html");

pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(INDEX)
}
