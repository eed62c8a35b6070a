//! The scheduler's adapters: the folds of its three streams, and the firing
//! loop that claims due times and pushes sync requests.

pub mod firing;
pub mod folds;
