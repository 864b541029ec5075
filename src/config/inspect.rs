//! The inspector's settings (`inspect:`): plain data; `crate::inspect` keeps the callbacks.

use serde::{Deserialize, Serialize};

/// The inspector's settings (`inspect:`); live, a reload applies them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InspectConfig {
    /// How many recent callbacks are kept (0: none).
    pub keep: usize,
    /// Keep each callback's request body and `?key=` (redacted unless `log.redact: false`).
    pub capture_bodies: bool,
}

impl Default for InspectConfig {
    fn default() -> Self {
        Self {
            keep: 300,
            capture_bodies: false,
        }
    }
}
