//! I/O around the domain: the folds of `APIS` and `KEYS` ([`fold`]), the
//! writer of `APIS` ([`writer`]), the replicas' announcements of what they
//! applied ([`replicas`]), the data plane ([`dataplane`]) and its kept
//! upstream connections ([`upstream`]).

pub mod dataplane;
pub mod fold;
pub mod replicas;
pub mod upstream;
pub mod writer;
