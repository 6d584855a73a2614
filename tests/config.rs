//! Configuration handling, through the real `nginx -t` and, where only behaviour can
//! prove it (inheritance, defaults), a real start with memcached and the fallback app.
//!
//! * Rejections: every bad form must fail `nginx -t` with an `[emerg]` line that names the
//!   directive (the README's promise: config errors are caught by `nginx -t` with a message
//!   naming the directive) and points at the config file and line.
//! * Acceptances: every valid form of the README's directive table at every level it allows.
//! * Inheritance and merging: values set at http / server level reach a location that only
//!   has `rcache_pass`; a location's own value wins.
//! * Defaults: what the README's directive table promises when nothing is set.
//!
//! Works with the vendored nginx and with Debian's (`RCACHE_NGINX=/usr/sbin/nginx`).

mod common;

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{self, Response};
use common::nginx::NginxBuilder;
use common::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An address for `nginx -t` only: nothing ever connects to it.
const MC: &str = "127.0.0.1:11211";

fn builder(http: &str) -> NginxBuilder {
    Nginx::builder().http(http)
}

fn check(http: &str) -> ConfigCheck {
    builder(http).check_config()
}

/// A server whose `location /` passes to [`MC`] and also has `directives`.
fn in_location(directives: &str) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{{port}};\n    location / {{\n        rcache_pass {MC};\n        {directives}\n    }}\n    location @app {{ return 200; }}\n}}"
    )
}

/// A server with `directives` at server level and a `location /` that passes to [`MC`].
fn in_server(directives: &str) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{{port}};\n    {directives}\n    location / {{\n        rcache_pass {MC};\n    }}\n    location @app {{ return 200; }}\n}}"
    )
}

/// A server whose `location /` holds exactly `body`.
fn location(body: &str) -> String {
    format!("server {{ listen 127.0.0.1:{{port}}; location / {{ {body} }} }}")
}

/// `directives` at http level, then a server like [`in_server`] without extra directives.
fn in_http(directives: &str) -> String {
    format!("{directives}\n{}", in_server(""))
}

/// The first `[emerg]` line of nginx's output (nginx stops at the first error).
fn emerg_line(c: &ConfigCheck) -> &str {
    c.output
        .lines()
        .find(|l| l.contains("[emerg]"))
        .unwrap_or_else(|| panic!("no [emerg] line in nginx -t output:\n{}", c.output))
}

/// `nginx -t` must fail; its `[emerg]` line must name `directive` (quoted, as nginx quotes
/// directive names), contain `phrase`, and point at the config file.
#[track_caller]
fn assert_rejected(http: &str, directive: &str, phrase: &str) -> ConfigCheck {
    let c = check(http);
    assert!(
        !c.ok,
        "nginx -t accepted an invalid config:\n{http}\n--- nginx -t ---\n{}",
        c.output
    );
    assert!(
        c.output.contains("test failed"),
        "nginx -t failed without saying so:\n{}",
        c.output
    );
    let line = emerg_line(&c);
    let quoted = format!("\"{directive}\"");
    assert!(
        line.contains(&quoted),
        "the error does not name the directive {quoted}:\n  {line}\nconfig:\n{http}"
    );
    assert!(
        line.contains(phrase),
        "the error does not say {phrase:?}:\n  {line}\nconfig:\n{http}"
    );
    assert!(
        line.contains("/nginx.conf:"),
        "the error does not point at the config file and line:\n  {line}"
    );
    c
}

/// `nginx -t` must succeed.
#[track_caller]
fn assert_accepted(http: &str) {
    let c = check(http);
    assert!(
        c.ok,
        "nginx -t rejected a valid config:\n{http}\n--- nginx -t ---\n{}",
        c.output
    );
    assert!(
        c.output.contains("syntax is ok") && c.output.contains("test is successful"),
        "nginx -t succeeded without saying so:\n{}",
        c.output
    );
}

/// The 1-based line of the rendered nginx.conf that contains `needle` (exactly one).
fn line_of(b: &NginxBuilder, needle: &str) -> usize {
    let conf = b.render(Path::new("/nonexistent-prefix"), 8080);
    let hits: Vec<usize> = conf
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{needle:?} must be on exactly one line:\n{conf}"
    );
    hits[0]
}

/// Defines one `#[test]` per rejected form.
macro_rules! rejects {
    ($($name:ident: $conf:expr => $directive:literal, $phrase:literal;)*) => {
        $(
            #[test]
            fn $name() {
                assert_rejected(&$conf, $directive, $phrase);
            }
        )*
    };
}

/// Defines one `#[test]` per accepted form.
macro_rules! accepts {
    ($($name:ident: $conf:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_accepted(&$conf);
            }
        )*
    };
}

/// A running nginx + memcached + app; requests go out one at a time and each returns its
/// access-log entry with it (`$rcache_status` as logged for the main request).
struct Stack<M> {
    nginx: Nginx,
    app: App,
    mc: M,
    logged: Cell<usize>,
}

/// `location @app` proxying to the app.
const APP_LOCATION: &str = "location @app { proxy_pass http://127.0.0.1:{app}; }";

impl<M> Stack<M> {
    /// Starts nginx with `http` (placeholders `{mc}` = `mc_port`, `{app}`).
    fn start(mc: M, mc_port: u16, http: &str) -> Stack<M> {
        let app = App::start();
        let nginx = Nginx::builder()
            .var("mc", mc_port)
            .var("app", app.port())
            .http(http)
            .start();
        Stack {
            nginx,
            app,
            mc,
            logged: Cell::new(0),
        }
    }

    fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (Response, AccessEntry) {
        let r = http::request(self.nginx.port(), method, target, headers, body);
        let n = self.logged.get() + 1;
        self.logged.set(n);
        let entries = self.nginx.wait_access_entries(n, 5 * SECOND);
        let entry = entries[n - 1].clone();
        assert_eq!(
            (entry.method.as_str(), entry.uri.as_str()),
            (method, target),
            "access log out of step"
        );
        (r, entry)
    }

    fn get(&self, target: &str) -> (Response, AccessEntry) {
        self.request("GET", target, &[], None)
    }

    /// GET that must be a HIT with `body`.
    #[track_caller]
    fn assert_hit(&self, target: &str, body: &str) {
        let (r, e) = self.get(target);
        assert_eq!(
            (r.status, r.text().as_str(), e.rcache.as_str()),
            (200, body, "HIT"),
            "GET {target}\n{}",
            self.nginx.diagnostics()
        );
    }

    /// Request that must reach the app (via the fallback) as `app_uri`, with `status`
    /// logged as `$rcache_status`.
    #[track_caller]
    fn assert_app(&self, method: &str, target: &str, app_uri: &str, status: &str) {
        let before = self.app.requests();
        let (r, e) = self.request(method, target, &[], None);
        assert_eq!(r.status, 200, "{method} {target}: {}", r.text());
        assert_eq!(
            self.app.requests(),
            before + 1,
            "{method} {target}: app not reached"
        );
        let last = self.app.last().expect("the app saw a request");
        assert_eq!(
            (
                last.method.as_str(),
                last.target.as_str(),
                e.rcache.as_str()
            ),
            (method, app_uri, status),
            "{method} {target}"
        );
    }
}

/// A worker that crashed (`[alert] ... exited on signal`) fails the test, even when every
/// response looked right. (`[emerg]` is left out: a refused reload logs one on purpose.)
impl<M> Drop for Stack<M> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let alerts: Vec<String> = self
                .nginx
                .alerts()
                .into_iter()
                .filter(|l| l.contains("[alert]"))
                .collect();
            assert!(
                alerts.is_empty(),
                "nginx logged alerts:\n{}",
                alerts.join("\n")
            );
        }
    }
}

impl Stack<Memcached> {
    fn with_memcached(mc: Memcached, http: &str) -> Stack<Memcached> {
        let port = mc.port();
        Stack::start(mc, port, http)
    }

    fn set(&self, key: &str, value: &[u8]) {
        self.mc.set_raw(key.as_bytes(), value, 0, 0);
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// A fake memcached that accepts, reads the `get` and never answers.
fn silent_memcached() -> FakeMemcached {
    FakeMemcached::start(|_| vec![Step::Stall])
}

// ---------------------------------------------------------------------------------------
// 1. nginx -t rejects, naming the directive
// ---------------------------------------------------------------------------------------

rejects! {
    connect_timeout_bad_unit:
        in_location("rcache_connect_timeout 10x;") => "rcache_connect_timeout", "directive invalid value";
    send_timeout_not_a_time:
        in_location("rcache_send_timeout abc;") => "rcache_send_timeout", "directive invalid value";
    read_timeout_negative:
        in_location("rcache_read_timeout -1;") => "rcache_read_timeout", "directive invalid value";
    read_timeout_at_http_level_bad:
        in_http("rcache_read_timeout 5 s;") => "rcache_read_timeout", "invalid number of arguments";
    timeout_twice_in_one_location:
        in_location("rcache_read_timeout 1s; rcache_read_timeout 2s;") => "rcache_read_timeout", "is duplicate";

    max_size_bad_unit:
        in_location("rcache_max_size 4q;") => "rcache_max_size", "directive invalid value";
    max_size_not_a_size:
        in_server("rcache_max_size lots;") => "rcache_max_size", "directive invalid value";

    gzip_flag_not_a_number:
        in_location("rcache_gzip_flag abc;") => "rcache_gzip_flag", "invalid number";
    gzip_flag_negative:
        in_location("rcache_gzip_flag -2;") => "rcache_gzip_flag", "invalid number";
    gzip_flag_hex_is_not_decimal:
        in_location("rcache_gzip_flag 0x2;") => "rcache_gzip_flag", "invalid number";
    // memcached flags are 32 bits: 2^32 cannot name a flag bit. The message must say which
    // directive and what the limit is.
    gzip_flag_over_32_bits:
        in_location("rcache_gzip_flag 4294967296;") => "rcache_gzip_flag", "4294967295";

    keepalive_negative:
        in_location("rcache_keepalive -1;") => "rcache_keepalive", "invalid number";
    keepalive_not_a_number:
        in_location("rcache_keepalive many;") => "rcache_keepalive", "invalid number";
    keepalive_out_of_range:
        in_location("rcache_keepalive 100000;") => "rcache_keepalive", "65535";

    pass_without_argument:
        in_location("rcache_pass;") => "rcache_pass", "invalid number of arguments";
    pass_with_two_arguments:
        location("rcache_pass a b;")
            => "rcache_pass", "invalid number of arguments";
    pass_twice_in_one_location:
        in_location("rcache_pass 127.0.0.1:11212;") => "rcache_pass", "is duplicate";
    pass_at_server_level:
        in_server("rcache_pass 127.0.0.1:11212;") => "rcache_pass", "is not allowed here";
    pass_at_http_level:
        in_http("rcache_pass 127.0.0.1:11212;") => "rcache_pass", "is not allowed here";
    pass_in_if_at_server_level:
        in_server("if ($arg_x) { rcache_pass 127.0.0.1:11212; }") => "rcache_pass", "is not allowed here";
    pass_in_limit_except:
        location(&format!("limit_except GET {{ rcache_pass {MC}; }}"))
            => "rcache_pass", "is not allowed here";
    pass_port_out_of_range:
        location("rcache_pass 127.0.0.1:99999;")
            => "rcache_pass", "invalid port in \"127.0.0.1:99999\"";
    pass_empty_port:
        location("rcache_pass 127.0.0.1:;")
            => "rcache_pass", "invalid port in \"127.0.0.1:\"";
    pass_unix_without_path:
        location("rcache_pass unix:;")
            => "rcache_pass", "\"unix:\"";

    methods_unknown:
        in_location("rcache_methods GET FETCH;") => "rcache_methods", "invalid method \"FETCH\"";
    methods_are_case_sensitive:
        in_location("rcache_methods get;") => "rcache_methods", "invalid method \"get\"";
    methods_without_argument:
        in_location("rcache_methods;") => "rcache_methods", "invalid number of arguments";
    methods_twice_in_one_location:
        in_location("rcache_methods GET; rcache_methods HEAD;") => "rcache_methods", "is duplicate";
    methods_twice_at_server_level:
        in_server("rcache_methods GET; rcache_methods HEAD;") => "rcache_methods", "is duplicate";

    fallback_without_argument:
        in_location("rcache_fallback;") => "rcache_fallback", "invalid number of arguments";
    fallback_twice:
        in_location("rcache_fallback /a; rcache_fallback @b;") => "rcache_fallback", "is duplicate";
    fallback_bare_word:
        in_location("rcache_fallback dynamic;") => "rcache_fallback", "\"dynamic\"";
    fallback_absolute_url:
        in_location("rcache_fallback http://x/;") => "rcache_fallback", "\"http://x/\"";
    fallback_empty:
        in_location("rcache_fallback \"\";") => "rcache_fallback", "named location";
    fallback_only_a_query:
        in_server("rcache_fallback ?from=cache;") => "rcache_fallback", "\"?from=cache\"";
    fallback_in_if:
        in_location("if ($arg_x) { rcache_fallback @app; }") => "rcache_fallback", "is not allowed here";

    key_twice:
        in_location("rcache_key $uri; rcache_key $host$uri;") => "rcache_key", "is duplicate";
    key_without_argument:
        in_location("rcache_key;") => "rcache_key", "invalid number of arguments";
    key_with_two_arguments:
        in_server("rcache_key $host $uri;") => "rcache_key", "invalid number of arguments";

    bypass_without_argument:
        in_location("rcache_bypass;") => "rcache_bypass", "invalid number of arguments";

    unknown_directive:
        in_location("rcache_frobnicate on;") => "rcache_frobnicate", "unknown directive";
    unknown_directive_at_http_level:
        in_http("rcache_frobnicate on;") => "rcache_frobnicate", "unknown directive";
}

#[test]
fn fallback_invalid_message_says_what_is_allowed() {
    let c = assert_rejected(
        &in_location("rcache_fallback dynamic;"),
        "rcache_fallback",
        "dynamic",
    );
    let line = emerg_line(&c);
    assert!(
        line.contains("\"/\"") && line.contains("\"@\""),
        "the error should say a URI starts with / and a named location with @: {line}"
    );
}

/// `rcache_fallback @name` must name a location of the server that uses it: caught by
/// `nginx -t` rather than at the first MISS (where nginx would answer 500).
#[test]
fn fallback_to_an_undefined_named_location() {
    let b = builder(
        "rcache_fallback @app;\nserver {\n listen 127.0.0.1:{port};\n location / { rcache_pass 127.0.0.1:11211; }\n location @app { return 200; }\n}\nserver {\n listen 127.0.0.1:{port};\n server_name other;\n location / { rcache_pass 127.0.0.1:11211; }\n}",
    );
    let c = b.check_config();
    assert!(!c.ok, "{}", c.output);
    let line = emerg_line(&c);
    assert!(line.contains("\"rcache_fallback\""), "{line}");
    assert!(line.contains("\"@app\""), "{line}");
    let n = line_of(&b, "rcache_fallback @app;");
    assert!(line.contains(&format!("/nginx.conf:{n}")), "{line}");
    // A location without rcache_pass does not need the named location.
    let ok = builder(
        "rcache_fallback @app;\nserver {\n listen 127.0.0.1:{port};\n location / { return 200; }\n}",
    )
    .check_config();
    assert!(ok.ok, "{}", ok.output);
}

/// nginx reports an unknown variable itself, after parsing, as for every directive
/// (`unknown "x" variable`, naming the variable but not the directive or line; README
/// says so): the config must not pass.
#[test]
fn key_with_unknown_variable_is_rejected() {
    for conf in [
        in_location("rcache_key $undefined_variable_xyz;"),
        in_server("rcache_key prefix:$undefined_variable_xyz;"),
        in_location("rcache_fallback /dynamic$undefined_variable_xyz;"),
        in_location("rcache_bypass $undefined_variable_xyz;"),
    ] {
        let c = check(&conf);
        assert!(!c.ok, "accepted:\n{conf}\n{}", c.output);
        assert!(
            emerg_line(&c).contains("unknown \"undefined_variable_xyz\" variable"),
            "{conf}\n{}",
            c.output
        );
    }
}

/// A port-less address that names no `upstream {}` is caught (by nginx's upstream module,
/// at the line of `rcache_pass`).
#[test]
fn pass_without_port_and_no_such_upstream() {
    let b = builder(
        "server {\n listen 127.0.0.1:{port};\n location / {\n  rcache_pass 127.0.0.1;\n }\n}",
    );
    let c = b.check_config();
    assert!(!c.ok, "{}", c.output);
    let line = emerg_line(&c);
    assert!(line.contains("\"127.0.0.1\""), "{line}");
    let n = line_of(&b, "rcache_pass 127.0.0.1;");
    assert!(line.contains(&format!("/nginx.conf:{n}")), "{line}");
}

/// The error points at the right file and line, at each level.
#[test]
fn errors_give_config_file_and_line() {
    let cases = [
        (
            format!(
                "rcache_keepalive 8;\nrcache_read_timeout 10x;\n{}",
                in_server("")
            ),
            "rcache_read_timeout 10x;",
            "\"rcache_read_timeout\" directive invalid value in ",
        ),
        (
            in_server("rcache_keepalive 4;\n    rcache_methods GET\n        FETCH;"),
            "FETCH;",
            "invalid method \"FETCH\" in the \"rcache_methods\" directive in ",
        ),
        (
            "server {\n    listen 127.0.0.1:{port};\n    location / {\n        rcache_key $uri;\n        rcache_pass unix:;\n    }\n}"
                .to_string(),
            "rcache_pass unix:;",
            "of the \"rcache_pass\" directive in ",
        ),
        (
            in_location("rcache_fallback /a;\n        rcache_fallback @b;"),
            "rcache_fallback @b;",
            "\"rcache_fallback\" directive is duplicate in ",
        ),
    ];
    for (conf, needle, message) in cases {
        let b = builder(&conf);
        let n = line_of(&b, needle);
        let c = b.check_config();
        assert!(!c.ok, "{conf}\n{}", c.output);
        let line = emerg_line(&c);
        assert!(line.contains(message), "{line}");
        assert!(
            line.ends_with(&format!("/nginx.conf:{n}")),
            "expected the error at nginx.conf:{n} (the line with {needle:?}):\n  {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. nginx -t accepts every valid form
// ---------------------------------------------------------------------------------------

/// Every directive except `rcache_pass`, with values that are valid at any level.
const ALL_BUT_PASS: &str = "rcache_key \"$host$uri\";
    rcache_fallback @app;
    rcache_bypass $cookie_sessionid $arg_nocache;
    rcache_methods GET HEAD POST PATCH;
    rcache_connect_timeout 150ms;
    rcache_send_timeout 1s;
    rcache_read_timeout 2s;
    rcache_keepalive 0;
    rcache_max_size 512k;
    rcache_gzip_flag 2;";

accepts! {
    every_directive_at_every_level: format!(
        "{ALL_BUT_PASS}
        server {{
            listen 127.0.0.1:{{port}};
            {ALL_BUT_PASS}
            location / {{
                rcache_pass {MC};
                {ALL_BUT_PASS}
                if ($arg_x) {{ rcache_pass unix:/tmp/rcache-test.sock; }}
                location /nested/ {{ rcache_pass 127.0.0.1:11212; {ALL_BUT_PASS} }}
            }}
            location = /exact {{ rcache_pass {MC}; }}
            location ~ ^/regex/ {{ rcache_pass {MC}; }}
            location @app {{ return 200; }}
        }}"
    );
    directives_at_http_level_only: in_http(ALL_BUT_PASS);
    directives_at_server_level_only: in_server(ALL_BUT_PASS);
    directives_at_location_level_only: in_location(ALL_BUT_PASS);
    pass_host_port: in_location("");
    pass_localhost_name: location("rcache_pass localhost:11211;");
    pass_unix_socket: location("rcache_pass unix:/tmp/x.sock;");
    pass_in_if_in_location: location(&format!("if ($arg_x) {{ rcache_pass {MC}; }}"));
    pass_upstream_defined_after_use: "server { listen 127.0.0.1:{port}; location / { rcache_pass mc_pool; } }
         upstream mc_pool { server 127.0.0.1:11211; }";
    pass_upstream_defined_before_use: "upstream mc_pool { server 127.0.0.1:11211; }
         server { listen 127.0.0.1:{port}; location / { rcache_pass mc_pool; } }";
    pass_upstream_with_several_servers: "server { listen 127.0.0.1:{port};
            location /a/ { rcache_pass mc_pool; }
            location /b/ { rcache_pass mc_pool; }
         }
         upstream mc_pool {
            server 127.0.0.1:11211 max_fails=3 fail_timeout=10s;
            server 127.0.0.1:11212 max_fails=1 fail_timeout=1s weight=2;
            server unix:/tmp/mc.sock;
            server 127.0.0.1:11213 backup;
         }";
    pass_same_address_in_several_locations_and_servers: format!(
        "server {{ listen 127.0.0.1:{{port}}; location /a/ {{ rcache_pass {MC}; }} location /b/ {{ rcache_pass {MC}; }} }}
         server {{ listen 127.0.0.1:{{port}}; server_name other; location / {{ rcache_pass {MC}; }} }}"
    );
    methods_get_head_post_patch: in_location("rcache_methods GET HEAD POST PATCH;");
    methods_every_known_method: in_location(
        "rcache_methods GET HEAD POST PUT DELETE MKCOL COPY MOVE OPTIONS PROPFIND PROPPATCH LOCK UNLOCK PATCH TRACE;"
    );
    methods_duplicates_in_one_line_are_harmless: in_location("rcache_methods GET GET HEAD;");
    times_with_units: in_location(
        "rcache_connect_timeout 150ms; rcache_send_timeout 1s; rcache_read_timeout 500;"
    );
    times_combined_units: in_server("rcache_read_timeout 1m30s;");
    sizes_k_and_m: in_server("rcache_max_size 512k;")
        .replace("rcache_pass 127.0.0.1:11211;", "rcache_pass 127.0.0.1:11211; rcache_max_size 1m;");
    size_in_bytes: in_location("rcache_max_size 1000;");
    keepalive_zero: in_location("rcache_keepalive 0;");
    keepalive_maximum: in_location("rcache_keepalive 65535;");
    gzip_flag_two: in_location("rcache_gzip_flag 2;");
    gzip_flag_zero: in_location("rcache_gzip_flag 0;");
    gzip_flag_all_32_bits: in_location("rcache_gzip_flag 4294967295;");
    fallback_uri_with_variable: in_location("rcache_fallback /dynamic$uri;");
    fallback_named_location: in_location("rcache_fallback @app;");
    fallback_uri_with_query: in_location("rcache_fallback /dynamic$uri?$args&from=cache;");
    fallback_starting_with_variable: in_location("rcache_fallback $uri;");
    key_quoted_variables: in_location("rcache_key \"$host$uri\";");
    key_with_literal_prefix: in_server("rcache_key page:$scheme://$host$request_uri;");
    key_with_map_variable: format!(
        "map $http_accept_language $lang {{ default en; ~^de de; }}\n{}",
        in_location("rcache_key \"$lang:$uri\";")
    );
    bypass_several_values: in_location("rcache_bypass $cookie_sessionid $arg_nocache;");
    bypass_repeated_lines_add_up: in_location("rcache_bypass $cookie_sessionid; rcache_bypass $arg_nocache;");
    bypass_at_http_and_location: format!("rcache_bypass $arg_a;\n{}", in_location("rcache_bypass $arg_b;"));
    same_directive_at_each_level_is_not_duplicate: format!(
        "rcache_methods GET;\nrcache_key a$uri;\nrcache_read_timeout 1s;\n{}",
        in_server("rcache_methods HEAD; rcache_key b$uri; rcache_read_timeout 2s;")
            .replace("rcache_pass 127.0.0.1:11211;", "rcache_pass 127.0.0.1:11211; rcache_methods POST; rcache_key c$uri; rcache_read_timeout 3s;")
    );
}

// ---------------------------------------------------------------------------------------
// 3. Inheritance and merging, by behaviour
// ---------------------------------------------------------------------------------------

/// key, fallback, bypass, max_size and gzip_flag set at http level apply in a location
/// that only has `rcache_pass`.
#[test]
fn http_level_settings_apply_in_a_pass_only_location() {
    // "hello gzip", gzip -9n
    const GZ: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9,
        0x57, 0x48, 0xaf, 0xca, 0x2c, 0x00, 0x00, 0x19, 0x6a, 0xd2, 0xdf, 0x0a, 0x00, 0x00, 0x00,
    ];
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "rcache_key http:$uri;
             rcache_fallback @app;
             rcache_bypass $arg_nocache;
             rcache_max_size 1k;
             rcache_gzip_flag 2;
             server {{
                 listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass 127.0.0.1:{{mc}}; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.set("/page", b"under the raw uri");
    s.set("http:/page", b"under the http-level key");
    s.assert_hit("/page", "under the http-level key");

    // fallback: a MISS goes to @app (not a 404)
    s.assert_app("GET", "/missing", "/missing", "MISS");

    // bypass: memcached is not asked
    let gets = s.mc.cmd_get();
    s.assert_app("GET", "/page?nocache=1", "/page?nocache=1", "BYPASS");
    assert_eq!(s.mc.cmd_get(), gets, "a BYPASS must not ask memcached");

    // max_size 1k: 1024 bytes are served, 1025 are a MISS
    let exact = "x".repeat(1024);
    s.set("http:/1k", exact.as_bytes());
    s.assert_hit("/1k", &exact);
    s.set("http:/1k1", "x".repeat(1025).as_bytes());
    s.assert_app("GET", "/1k1", "/1k1", "MISS");

    // gzip_flag 2: a value with flags 2 is a page (decompressed for this client)
    s.mc.set_raw(b"http:/gz", GZ, 2, 0);
    s.assert_hit("/gz", "hello gzip");
}

/// The same without any http-level setting: flags 2 is not a page and a 1025-byte value is
/// served, which shows the http-level values above were what made the difference.
#[test]
fn without_http_level_settings_the_same_values_behave_differently() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass 127.0.0.1:{{mc}}; rcache_fallback @app; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.mc.set_raw(b"/gz", b"\x1f\x8b\x08\x00", 2, 0);
    s.assert_app("GET", "/gz", "/gz", "MISS");
    let big = "y".repeat(1025);
    s.set("/1k1", big.as_bytes());
    s.assert_hit("/1k1", &big);
    s.set("/page", b"plain");
    s.assert_hit("/page?nocache=1", "plain");
}

/// Server-level key/fallback/bypass apply to a pass-only location; a location's own value
/// replaces the server's (for `rcache_bypass` too: replaced, not added to).
#[test]
fn location_values_override_server_values() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 rcache_key prefix:$uri;
                 rcache_fallback @app;
                 rcache_bypass $arg_a;
                 location /a/ {{ rcache_pass 127.0.0.1:{{mc}}; }}
                 location /b/ {{
                     rcache_pass 127.0.0.1:{{mc}};
                     rcache_key loc:$uri;
                     rcache_fallback /dynamic$uri?from=cache;
                     rcache_bypass $arg_b;
                 }}
                 location /dynamic/ {{ internal; proxy_pass http://127.0.0.1:{{app}}; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    for dir in ["a", "b"] {
        s.set(&format!("/{dir}/page"), format!("raw {dir}").as_bytes());
        s.set(
            &format!("prefix:/{dir}/page"),
            format!("prefix {dir}").as_bytes(),
        );
        s.set(&format!("loc:/{dir}/page"), format!("loc {dir}").as_bytes());
    }
    s.assert_hit("/a/page", "prefix a");
    s.assert_hit("/b/page", "loc b");

    // fallback: server's @app in /a/, the location's URI (with its own query) in /b/
    s.assert_app("GET", "/a/none?q=1", "/a/none?q=1", "MISS");
    s.assert_app("GET", "/b/none?q=1", "/dynamic/b/none?from=cache", "MISS");

    // bypass: /a/ has the server's $arg_a; /b/ only its own $arg_b
    s.assert_app("GET", "/a/page?a=1", "/a/page?a=1", "BYPASS");
    s.assert_hit("/a/page?b=1", "prefix a");
    s.assert_hit("/b/page?a=1", "loc b");
    s.assert_app("GET", "/b/page?b=1", "/dynamic/b/page?from=cache", "BYPASS");
}

/// `rcache_methods GET` at server level: HEAD is a BYPASS in a pass-only location; a
/// location with its own list serves HEAD from memcached.
#[test]
fn methods_at_server_level() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 rcache_methods GET;
                 rcache_fallback @app;
                 location /a/ {{ rcache_pass 127.0.0.1:{{mc}}; }}
                 location /b/ {{ rcache_pass 127.0.0.1:{{mc}}; rcache_methods GET HEAD; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.set("/a/page", b"page a");
    s.set("/b/page", b"page b");
    s.assert_hit("/a/page", "page a");

    let gets = s.mc.cmd_get();
    s.assert_app("HEAD", "/a/page", "/a/page", "BYPASS");
    assert_eq!(s.mc.cmd_get(), gets, "a BYPASS must not ask memcached");

    let before = s.app.requests();
    let (r, e) = s.request("HEAD", "/b/page", &[], None);
    assert_eq!((r.status, e.rcache.as_str()), (200, "HIT"));
    assert_eq!(r.header("content-length"), Some("6"));
    assert!(r.body.is_empty());
    assert_eq!(s.app.requests(), before, "a HIT must not reach the app");
}

/// `rcache_keepalive 0` at http level: no pooling in a pass-only location (a connection
/// per request); a location with its own value pools.
#[test]
fn keepalive_at_http_level() {
    let s = Stack::with_memcached(
        Memcached::start(),
        "rcache_keepalive 0;
         server {
             listen 127.0.0.1:{port};
             location /nopool/ { rcache_pass 127.0.0.1:{mc}; }
             location /pool/ { rcache_pass 127.0.0.1:{mc}; rcache_keepalive 4; }
         }",
    );
    s.set("/nopool/p", b"n");
    s.set("/pool/p", b"p");
    let start = s.mc.total_connections();
    for _ in 0..5 {
        s.assert_hit("/nopool/p", "n");
    }
    let unpooled = s.mc.total_connections() - start;
    assert_eq!(
        unpooled, 5,
        "keepalive 0 inherited: one connection per request"
    );

    let start = s.mc.total_connections();
    for _ in 0..5 {
        s.assert_hit("/pool/p", "p");
    }
    let pooled = s.mc.total_connections() - start;
    assert!(
        pooled <= 1,
        "keepalive 4: {pooled} connections for 5 requests"
    );
}

/// `rcache_read_timeout` at http level reaches a pass-only location; a location's own
/// value wins. (Lower bounds prove the value used; upper bounds are generous.)
#[test]
fn read_timeout_at_http_level() {
    let fake = silent_memcached();
    let port = fake.port();
    let s = Stack::start(
        fake,
        port,
        &format!(
            "rcache_read_timeout 1500ms;
             # Both requests must meet the silent server (not find it marked down).
             upstream silent {{ server 127.0.0.1:{{mc}} max_fails=0; }}
             server {{
                 listen 127.0.0.1:{{port}};
                 rcache_fallback @app;
                 location /inherit/ {{ rcache_pass silent; }}
                 location /own/ {{ rcache_pass silent; rcache_read_timeout 900ms; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    let (_, took) = timed(|| s.assert_app("GET", "/inherit/p", "/inherit/p", "ERROR"));
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "http-level 1500ms read timeout: the fallback came after {took:?}"
    );
    let (_, took) = timed(|| s.assert_app("GET", "/own/p", "/own/p", "ERROR"));
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_millis(1400),
        "location-level 900ms read timeout: the fallback came after {took:?}"
    );
    assert!(s.mc.requests().iter().all(|l| l.starts_with("get ")));
}

/// `rcache_connect_timeout` at server level reaches a pass-only location.
#[test]
fn connect_timeout_at_server_level() {
    let hole = Blackhole::start();
    let port = hole.port();
    let s = Stack::start(
        hole,
        port,
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 rcache_connect_timeout 1s;
                 rcache_fallback @app;
                 location / {{ rcache_pass 127.0.0.1:{{mc}}; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    let (_, took) = timed(|| s.assert_app("GET", "/p", "/p", "ERROR"));
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "server-level 1s connect timeout: the fallback came after {took:?}"
    );
}

/// `rcache_pass` inside `if ($arg_x)`: only requests with `x` are served by rcache; the
/// `if` block inherits the location's settings.
#[test]
fn pass_inside_if_in_location() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location / {{
                     rcache_key if:$uri;
                     rcache_fallback @app;
                     if ($arg_x) {{ rcache_pass 127.0.0.1:{{mc}}; }}
                     proxy_pass http://127.0.0.1:{{app}};
                 }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.set("if:/page", b"cached");
    s.assert_hit("/page?x=1", "cached");
    s.assert_app("GET", "/none?x=1", "/none?x=1", "MISS");

    // without x: proxied straight to the app, memcached not asked
    let gets = s.mc.cmd_get();
    let (r, e) = s.get("/page");
    assert_eq!(r.status, 200);
    assert_eq!(Echo::parse(&r.body).uri(), "/page");
    assert_ne!(e.rcache, "HIT");
    assert_eq!(s.mc.cmd_get(), gets, "without x rcache must not run");
}

/// An `if` without `rcache_pass` inside an rcache location keeps rcache as the handler,
/// with the location's settings.
#[test]
fn if_without_pass_inside_an_rcache_location() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location / {{
                     rcache_pass 127.0.0.1:{{mc}};
                     rcache_key k:$uri;
                     rcache_fallback @app;
                     if ($arg_x) {{ set $dummy 1; }}
                 }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.set("k:/page", b"cached");
    s.assert_hit("/page", "cached");
    s.assert_hit("/page?x=1", "cached");
    s.assert_app("GET", "/none?x=1", "/none?x=1", "MISS");
}

/// An upstream defined after the location that uses it (forward reference) is the one
/// rcache talks to.
#[test]
fn upstream_defined_after_use_serves() {
    let mc = Memcached::start();
    let s = Stack::with_memcached(
        mc,
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass mc_pool; rcache_fallback @app; }}
                 {APP_LOCATION}
             }}
             upstream mc_pool {{ server 127.0.0.1:{{mc}} max_fails=3 fail_timeout=10s; }}"
        ),
    );
    s.set("/page", b"via upstream");
    s.assert_hit("/page", "via upstream");
    s.assert_app("GET", "/none", "/none", "MISS");
}

// ---------------------------------------------------------------------------------------
// 4. Defaults
// ---------------------------------------------------------------------------------------

/// Default key `$uri` (decoded, normalised, no query string); default methods GET HEAD.
#[test]
fn default_key_is_uri_and_methods_are_get_head() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass 127.0.0.1:{{mc}}; rcache_fallback @app; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.set("/pageA", b"by uri");
    s.assert_hit("/pageA", "by uri");
    s.assert_hit("/x/../page%41?q=1", "by uri");

    let (r, e) = s.request("HEAD", "/pageA", &[], None);
    assert_eq!((r.status, e.rcache.as_str()), (200, "HIT"));
    assert!(r.body.is_empty());

    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let gets = s.mc.cmd_get();
        s.assert_app(method, "/pageA", "/pageA", "BYPASS");
        assert_eq!(s.mc.cmd_get(), gets, "{method} must not ask memcached");
    }
}

/// Without `rcache_fallback`, a MISS is a 404 that `error_page 404 = @app` catches (the
/// 2009 setup), and memcached being down is a 502.
#[test]
fn default_without_fallback_miss_is_404_and_error_is_502() {
    let down = free_port();
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location /plain/ {{ rcache_pass 127.0.0.1:{{mc}}; }}
                 location /caught/ {{ rcache_pass 127.0.0.1:{{mc}}; error_page 404 = @app; }}
                 location /down/ {{ rcache_pass 127.0.0.1:{down}; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.set("/plain/page", b"plain hit");
    s.assert_hit("/plain/page", "plain hit");

    let before = s.app.requests();
    let (r, e) = s.get("/plain/none");
    assert_eq!((r.status, e.rcache.as_str()), (404, "MISS"));
    assert_eq!(
        s.app.requests(),
        before,
        "no fallback: the app is not asked"
    );

    s.assert_app("GET", "/caught/none?a=1", "/caught/none?a=1", "MISS");

    let (r, e) = s.get("/down/page");
    assert_eq!((r.status, e.rcache.as_str()), (502, "ERROR"));
}

/// Default `rcache_max_size` is 4m: exactly 4 MiB is served, one byte more is a MISS
/// (logged at info).
#[test]
fn default_max_size_is_4m() {
    let s = Stack::with_memcached(
        Memcached::start_with_args(&["-I", "8m"]),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass 127.0.0.1:{{mc}}; rcache_fallback @app; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    const MIB4: usize = 4 * 1024 * 1024;
    let value: Vec<u8> = (0..MIB4 + 1).map(|i| b'a' + (i % 26) as u8).collect();
    s.set("/exact", &value[..MIB4]);
    s.set("/over", &value);
    assert_eq!(s.mc.get_raw("/over").map(|(v, _)| v.len()), Some(MIB4 + 1));

    let (r, e) = s.get("/exact");
    assert_eq!((r.status, e.rcache.as_str()), (200, "HIT"));
    assert_eq!(r.body.len(), MIB4);
    assert!(
        r.body == value[..MIB4],
        "4 MiB body differs from the stored value"
    );

    s.assert_app("GET", "/over", "/over", "MISS");
    let log = s.nginx.error_log();
    assert!(
        log.lines()
            .any(|l| l.contains("[info]") && l.contains(&(MIB4 + 1).to_string())),
        "no info line about the {}-byte value:\n{log}",
        MIB4 + 1
    );
}

/// Defaults: read timeout 500ms, connect timeout 200ms (a cache must fail fast). The
/// lower bounds are exact; the upper bounds leave 300 / 400 ms for a loaded machine, so
/// they catch a default of 1s or more, not one a little above the documented one.
#[test]
fn default_timeouts() {
    let fake = silent_memcached();
    let hole = Blackhole::start();
    let port = fake.port();
    let s = Stack::start(
        fake,
        port,
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 rcache_fallback @app;
                 location /read/ {{ rcache_pass 127.0.0.1:{{mc}}; }}
                 location /connect/ {{ rcache_pass {}; }}
                 {APP_LOCATION}
             }}",
            hole.addr()
        ),
    );
    let (_, took) = timed(|| s.assert_app("GET", "/read/p", "/read/p", "ERROR"));
    assert!(
        took >= Duration::from_millis(480) && took < Duration::from_millis(800),
        "default read timeout 500ms: the fallback came after {took:?}"
    );
    let (_, took) = timed(|| s.assert_app("GET", "/connect/p", "/connect/p", "ERROR"));
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(600),
        "default connect timeout 200ms: the fallback came after {took:?}"
    );
}

/// Default keepalive (64): sequential requests reuse one pooled connection.
#[test]
fn default_keepalive_pools() {
    let s = Stack::with_memcached(
        Memcached::start(),
        "server {
             listen 127.0.0.1:{port};
             location / { rcache_pass 127.0.0.1:{mc}; }
         }",
    );
    s.set("/p", b"pooled");
    let start = s.mc.total_connections();
    for _ in 0..10 {
        s.assert_hit("/p", "pooled");
    }
    let opened = s.mc.total_connections() - start;
    assert_eq!(opened, 1, "10 requests opened {opened} connections");
}

/// Default gzip_flag 0: flags 2 is not a page (MISS); flags 16 is (text).
#[test]
fn default_gzip_flag_is_off() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass 127.0.0.1:{{mc}}; rcache_fallback @app; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.mc.set_raw(b"/two", b"\x1f\x8b\x08\x00", 2, 0);
    s.mc.set_raw(b"/text", b"text", 16, 0);
    s.assert_app("GET", "/two", "/two", "MISS");
    s.assert_hit("/text", "text");
}

// ---------------------------------------------------------------------------------------
// 5. Configuration changes and shared upstreams, on a running nginx
// ---------------------------------------------------------------------------------------

/// A reload applies new rcache settings; a reload with a bad rcache directive is refused
/// (naming the directive) and the running configuration keeps serving.
#[test]
fn reload_applies_new_settings_and_refuses_bad_ones() {
    let site = |key: &str, extra: &str| {
        format!(
            "server {{
                 listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass 127.0.0.1:{{mc}}; rcache_key {key}; {extra} }}
             }}"
        )
    };
    let mut s = Stack::with_memcached(Memcached::start(), &site("one:$uri", ""));
    s.set("one:/p", b"first");
    s.set("two:/p", b"second");
    s.assert_hit("/p", "first");

    s.nginx.set_http(&site("two:$uri", "rcache_max_size 1k;"));
    s.nginx.reload();
    s.assert_hit("/p", "second");

    s.nginx
        .set_http(&site("one:$uri", "rcache_read_timeout 10x;"));
    let err = s
        .nginx
        .try_reload()
        .expect_err("a bad rcache_read_timeout was accepted");
    assert!(
        err.contains("\"rcache_read_timeout\" directive invalid value"),
        "{err}"
    );
    s.assert_hit("/p", "second");
}

/// One `upstream {}` used by `rcache_pass` and by stock `memcached_pass`: both work
/// (rcache wraps the upstream's balancer; memcached_pass requests must pass through).
#[test]
fn upstream_shared_with_stock_memcached_pass() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "upstream shared {{ server 127.0.0.1:{{mc}}; }}
             server {{
                 listen 127.0.0.1:{{port}};
                 location /r/ {{ rcache_pass shared; rcache_fallback @app; }}
                 location /stock/ {{ set $memcached_key $uri; memcached_pass shared; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.set("/r/p", b"by rcache");
    s.set("/stock/p", b"by memcached_pass");
    for _ in 0..3 {
        s.assert_hit("/r/p", "by rcache");
        let (r, _) = s.get("/stock/p");
        assert_eq!((r.status, r.text().as_str()), (200, "by memcached_pass"));
        let (r, _) = s.get("/stock/none");
        assert_eq!(r.status, 404);
        s.assert_app("GET", "/r/none", "/r/none", "MISS");
    }
}

/// An `upstream {}` with nginx's own `keepalive` (and a balancer other than round robin)
/// still serves rcache requests and falls back on a miss.
#[test]
fn upstream_with_keepalive_and_least_conn() {
    let s = Stack::with_memcached(
        Memcached::start(),
        &format!(
            "upstream mc_pool {{ least_conn; server 127.0.0.1:{{mc}}; keepalive 4; }}
             server {{
                 listen 127.0.0.1:{{port}};
                 location / {{ rcache_pass mc_pool; rcache_fallback @app; }}
                 {APP_LOCATION}
             }}"
        ),
    );
    s.set("/p", b"kept");
    for _ in 0..5 {
        s.assert_hit("/p", "kept");
        s.assert_app("GET", "/none", "/none", "MISS");
    }
}
