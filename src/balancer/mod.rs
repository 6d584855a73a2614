//! `rcache_hash`: looking a key up on the server its writer put it on.
//!
//! The pure part — which server a key belongs to, computed exactly as the client
//! libraries compute it — is `ring.rs`, on `rendezvous.rs`, `ketama.rs`, `modula.rs` (with
//! the server names of `servers.rs`). `hash_peer.rs` is the nginx balancer built on them.

mod hash_peer;
pub mod ketama;
pub mod modula;
pub mod peers;
pub mod rendezvous;
pub mod ring;
pub mod servers;

pub use hash_peer::{create_srv_conf, set_hash, store_peer, HashConf};
