//! `rcache_store`: the fallback's cacheable responses to a MISS are written to memcached,
//! so an application is cached without writing pages itself.
//!
//! `policy.rs` decides what is cacheable and for how long, `page.rs` is the stored form,
//! `capture.rs` copies the response on its way to the client, `client.rs` writes it to
//! memcached.

pub mod capture;
pub mod client;
pub mod page;
pub mod policy;
