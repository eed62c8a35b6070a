//! Everything that touches the outside: the fold of `PORTAL` ([`fold`]),
//! sealing provider secrets ([`seal`]), calls to providers ([`providers`]),
//! provider syncs ([`syncer`]) and the relay of changes to the public
//! stream ([`relay`]).

pub mod fold;
pub mod providers;
pub mod relay;
pub mod seal;
pub mod syncer;
