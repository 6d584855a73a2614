//! Passes what nginx-sys learned about the target nginx to the crate:
//! `ngx_feature="..."` cfgs (e.g. `http_gzip`) and the build directory,
//! which the integration tests use to find the vendored nginx binary.
//!
//! nginx-sys must be a direct dependency for its `DEP_NGINX_*` variables to
//! reach this script (cargo#3544).

use std::env;

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    let known = env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_else(|_| "any()".to_string());
    println!("cargo::rustc-check-cfg=cfg(ngx_feature, values({known}))");

    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    if let Ok(features) = env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').map(str::trim) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }

    // Round-robin peers are reference-counted since nginx 1.27.3 (`server ... resolve`).
    println!("cargo::rustc-check-cfg=cfg(ngx_rr_peer_refs)");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    if let Ok(version) = env::var("DEP_NGINX_VERSION_NUMBER") {
        if version.parse::<u64>().is_ok_and(|v| v >= 1_027_003) {
            println!("cargo::rustc-cfg=ngx_rr_peer_refs");
        }
    }

    println!("cargo::rerun-if-env-changed=DEP_NGINX_BUILD_DIR");
    if let Ok(dir) = env::var("DEP_NGINX_BUILD_DIR") {
        println!("cargo::rustc-env=DEP_NGINX_BUILD_DIR={dir}");
    }
}
