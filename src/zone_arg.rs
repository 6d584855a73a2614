//! `NAME:SIZE`, the argument of rcache's zone directives (`rcache_front_zone`,
//! `rcache_metrics_zone`), and sizes as nginx parses them.

use ngx::ffi::*;
use ngx::ngx_conf_log_error;

/// The zone directive `directive`'s argument, split into its name and a positive size;
/// `None` (said, naming the directive) when it is not `NAME:SIZE`.
pub fn parse(cf: &mut ngx_conf_t, directive: &str) -> Option<(ngx_str_t, usize)> {
    // SAFETY: a zone directive takes one argument, in cf->args after its name.
    let arg = unsafe { (*cf.args).as_slice::<ngx_str_t>()[1] };
    let text = arg.as_bytes();
    let (name, size) = match text.iter().rposition(|&b| b == b':') {
        Some(colon) if colon > 0 => (&text[..colon], parse_size(&text[colon + 1..])),
        _ => (&text[..0], None),
    };
    let Some(size) = size.filter(|&s| s > 0 && !name.is_empty()) else {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "invalid zone \"{}\" in the \"{}\" directive, it must be NAME:SIZE",
            arg,
            directive
        );
        return None;
    };
    let name = ngx_str_t {
        len: name.len(),
        data: arg.data,
    };
    Some((name, size))
}

/// A size (`64k`, `1m`), as nginx parses sizes.
pub fn parse_size(text: &[u8]) -> Option<usize> {
    let mut s = ngx_str_t {
        len: text.len(),
        data: text.as_ptr().cast_mut(),
    };
    // SAFETY: nginx only reads the string.
    let size = unsafe { ngx_parse_size(&mut s) };
    usize::try_from(size).ok()
}
