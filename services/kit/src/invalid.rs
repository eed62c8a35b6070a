//! A refused write: which field, and why. The one type every service's
//! domain answers a bad field with, mapped to a 400 at the edge.

/// A refused write: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field at fault (`access_rights.api1.limit.rate`, `keyID`, ...).
    pub field: String,
    /// Why.
    pub message: String,
}

impl Invalid {
    /// `field` is refused because of `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
