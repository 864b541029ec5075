#![allow(missing_docs)]
pub fn router(_s: super::Spool) -> axum::Router {
    axum::Router::new()
}
