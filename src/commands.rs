//! The module's directives: each one's name, where it may appear, and which
//! function parses it. Location directives live in `conf.rs` (with their
//! merging), `rcache_pass` in `handler.rs` (it installs the content handler),
//! the front cache's in `front.rs`, `rcache_hash` in `balancer/`.

use core::ffi::{c_char, c_void};
use core::mem::offset_of;
use core::ptr;

use ngx::ffi::*;
use ngx::ngx_string;

use crate::conf::{self, LocConf};
use crate::{balancer, front, handler, metrics_conf, metrics_endpoint};

const ANY: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;
const LOC_OFFSET: ngx_uint_t = NGX_HTTP_LOC_CONF_OFFSET;

const fn command(
    name: ngx_str_t,
    type_: u32,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
    offset: usize,
    post: *mut c_void,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: LOC_OFFSET,
        offset,
        post,
    }
}

/// An http-level directive whose handler finds its configuration itself (zones).
const fn main_command(
    name: ngx_str_t,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    }
}

/// The module's directives.
pub static mut COMMANDS: [ngx_command_t; 29] = [
    command(
        ngx_string!("rcache_pass"),
        NGX_HTTP_LOC_CONF | NGX_HTTP_LIF_CONF | NGX_CONF_TAKE1,
        handler::set_pass,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_key"),
        ANY | NGX_CONF_TAKE1,
        ngx_http_set_complex_value_slot,
        offset_of!(LocConf, key),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_fallback"),
        ANY | NGX_CONF_TAKE1,
        conf::set_fallback,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_bypass"),
        ANY | NGX_CONF_1MORE,
        ngx_http_set_predicate_slot,
        offset_of!(LocConf, bypass),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_methods"),
        ANY | NGX_CONF_1MORE,
        conf::set_methods,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_connect_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(LocConf, upstream.connect_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_send_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(LocConf, upstream.send_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_read_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(LocConf, upstream.read_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_keepalive"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_num_slot,
        offset_of!(LocConf, keepalive),
        ptr::addr_of_mut!(conf::KEEPALIVE_POST).cast(),
    ),
    command(
        ngx_string!("rcache_max_size"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        offset_of!(LocConf, max_size),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_gzip_flag"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_num_slot,
        offset_of!(LocConf, gzip_flag),
        ptr::addr_of_mut!(conf::GZIP_FLAG_POST).cast(),
    ),
    command(
        ngx_string!("rcache_store"),
        ANY | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(LocConf, store),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_statuses"),
        ANY | NGX_CONF_1MORE,
        conf::set_store_statuses,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_max_size"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_size_slot,
        offset_of!(LocConf, store_max_size),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_ttl"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_sec_slot,
        offset_of!(LocConf, store_ttl),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_bypass"),
        ANY | NGX_CONF_1MORE,
        ngx_http_set_predicate_slot,
        offset_of!(LocConf, store_bypass),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_store_args"),
        ANY | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(LocConf, store_args),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_purge"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1,
        conf::set_purge,
        0,
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_stale"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_sec_slot,
        offset_of!(LocConf, stale),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_lock"),
        ANY | NGX_CONF_FLAG,
        ngx_conf_set_flag_slot,
        offset_of!(LocConf, lock),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_lock_timeout"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_msec_slot,
        offset_of!(LocConf, lock_timeout),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_lock_age"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_sec_slot,
        offset_of!(LocConf, lock_age),
        ptr::null_mut(),
    ),
    command(
        ngx_string!("rcache_hit_for_pass"),
        ANY | NGX_CONF_TAKE1,
        ngx_conf_set_sec_slot,
        offset_of!(LocConf, hit_for_pass),
        ptr::null_mut(),
    ),
    main_command(ngx_string!("rcache_metrics_zone"), metrics_conf::set_zone),
    command(
        ngx_string!("rcache_metrics"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        metrics_endpoint::set_metrics,
        0,
        ptr::null_mut(),
    ),
    main_command(ngx_string!("rcache_front_zone"), front::set_zone),
    command(
        ngx_string!("rcache_front"),
        ANY | NGX_CONF_TAKE123,
        front::set_front,
        offset_of!(LocConf, front),
        ptr::null_mut(),
    ),
    ngx_command_t {
        name: ngx_string!("rcache_hash"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_TAKE12) as ngx_uint_t,
        set: Some(balancer::set_hash),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];
