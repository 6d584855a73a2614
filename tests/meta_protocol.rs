//! The memcached side of stale pages and the regeneration lock, checked against the real
//! server (Debian 12's memcached 1.6.18), not against a reading of `protocol.txt`: what
//! `mg` returns with vivify (`N`) and recache (`R`), when it hands out the win (`W`) and
//! when it says someone else has it (`Z`), what `md ... I` (invalidate) does to an item
//! and to the win, and how `ms` with a CAS (`C`) and mode add (`ME`) answer. The replies
//! are in the format `src/meta.rs` parses (its unit tests use these same lines).
//!
//! Each behaviour here is one rcache's stale pages rely on; if a memcached version
//! changes one, this test says which.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use common::*;

/// One connection to memcached, speaking meta commands.
struct Meta {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Meta {
    fn connect(mc: &Memcached) -> Meta {
        let s = TcpStream::connect(mc.socket_addr()).expect("connect to memcached");
        s.set_read_timeout(Some(5 * SECOND))
            .expect("set_read_timeout");
        Meta {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    /// Sends `line` (and `data`, for `ms`); returns the reply line without CRLF and, for a
    /// `VA` reply, the value.
    fn send(&mut self, line: &str, data: Option<&[u8]>) -> (String, Option<Vec<u8>>) {
        let mut out = format!("{line}\r\n").into_bytes();
        if let Some(data) = data {
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out).expect("write");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("read reply line");
        let reply = reply.strip_suffix("\r\n").unwrap_or(&reply).to_string();
        let value = reply.strip_prefix("VA ").map(|rest| {
            let len: usize = rest.split(' ').next().unwrap().parse().unwrap();
            let mut value = vec![0; len + 2];
            self.reader.read_exact(&mut value).expect("read value");
            assert!(
                value.ends_with(b"\r\n"),
                "{reply}: value not followed by CRLF"
            );
            value.truncate(len);
            value
        });
        (reply, value)
    }

    fn line(&mut self, line: &str) -> String {
        self.send(line, None).0
    }
}

/// The return flags of a reply line (after the code and, for `VA`, the length), sorted, so
/// that an order change between versions does not matter.
fn flags(reply: &str) -> Vec<String> {
    let mut words: Vec<&str> = reply.split(' ').skip(1).collect();
    if reply.starts_with("VA ") {
        words.remove(0);
    }
    let mut flags: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    flags.sort();
    flags
}

fn has(reply: &str, flag: &str) -> bool {
    flags(reply).iter().any(|f| f == flag)
}

fn token(reply: &str, flag: char) -> Option<&str> {
    reply.split(' ').skip(1).find_map(|w| w.strip_prefix(flag))
}

#[test]
fn vivify_creates_an_empty_placeholder_that_one_client_wins() {
    let mc = Memcached::start();
    let mut a = Meta::connect(&mc);
    let mut b = Meta::connect(&mc);
    assert_eq!(a.line("mg /cold v f t c"), "EN", "no vivify: a plain miss");

    let (first, value) = a.send("mg /cold v f t c N30", None);
    assert!(first.starts_with("VA 0 "), "{first}");
    assert_eq!(value.as_deref(), Some(&b""[..]), "the placeholder is empty");
    assert!(
        has(&first, "W") && !has(&first, "Z"),
        "{first}: the first client wins"
    );
    assert_eq!(token(&first, 'f'), Some("0"), "{first}");

    for c in [&mut a, &mut b] {
        let (next, value) = c.send("mg /cold v f t c N30", None);
        assert!(next.starts_with("VA 0 "), "{next}");
        assert_eq!(value.as_deref(), Some(&b""[..]));
        assert!(
            has(&next, "Z") && !has(&next, "W"),
            "{next}: the others see it won"
        );
    }
    // The placeholder lives for the vivify TTL (the lock's age).
    let ttl: i64 = token(&a.line("mg /cold t"), 't').unwrap().parse().unwrap();
    assert!((28..=30).contains(&ttl), "ttl {ttl}");

    // The winner's page replaces it (CAS of the placeholder); nobody has won the new one.
    let cas = token(&first, 'c').unwrap().to_string();
    assert_eq!(
        a.send(&format!("ms /cold 4 F16 T60 C{cas}"), Some(b"page"))
            .0,
        "HD"
    );
    let (after, value) = b.send("mg /cold v f t c N30", None);
    assert_eq!(value.as_deref(), Some(&b"page"[..]));
    assert!(
        !has(&after, "W") && !has(&after, "Z") && !has(&after, "X"),
        "{after}"
    );
}

#[test]
fn recache_hands_one_win_once_fewer_seconds_than_the_token_are_left() {
    let mc = Memcached::start();
    let mut a = Meta::connect(&mc);
    let mut b = Meta::connect(&mc);
    assert_eq!(a.send("ms /hot 5 F16 T100", Some(b"hello")).0, "HD");

    // 100 s left, threshold 50: fresh, nobody wins.
    let (fresh, _) = a.send("mg /hot v f t c R50", None);
    assert!(!has(&fresh, "W") && !has(&fresh, "Z"), "{fresh}");
    assert_eq!(token(&fresh, 'f'), Some("16"));

    // Threshold 200: past it. One win, then Z for everyone, value always returned.
    let (win, value) = a.send("mg /hot v f t c R200", None);
    assert!(
        has(&win, "W") && !has(&win, "Z") && !has(&win, "X"),
        "{win}"
    );
    assert_eq!(value.as_deref(), Some(&b"hello"[..]));
    for c in [&mut a, &mut b] {
        let (other, value) = c.send("mg /hot v f t c R200", None);
        assert!(has(&other, "Z") && !has(&other, "W"), "{other}");
        assert_eq!(value.as_deref(), Some(&b"hello"[..]));
    }
    // Without R the win still shows as taken.
    assert!(has(&b.line("mg /hot c"), "Z"));

    // A new value (the winner's store) clears the win.
    let cas = token(&win, 'c').unwrap().to_string();
    assert_eq!(
        a.send(&format!("ms /hot 5 F16 T100 C{cas}"), Some(b"fresh"))
            .0,
        "HD"
    );
    let (after, value) = b.send("mg /hot v f t c R50", None);
    assert!(!has(&after, "W") && !has(&after, "Z"), "{after}");
    assert_eq!(value.as_deref(), Some(&b"fresh"[..]));
}

#[test]
fn invalidate_marks_stale_and_hands_out_a_new_win() {
    let mc = Memcached::start();
    let mut a = Meta::connect(&mc);
    // A page the app wrote itself, with the classic protocol.
    mc.set_raw(b"/post", b"old comments", 0, 300);

    assert_eq!(a.line("md /post I T30"), "HD");
    let (first, value) = a.send("mg /post v f t c", None);
    assert!(
        has(&first, "X") && has(&first, "W"),
        "{first}: stale, and this one regenerates"
    );
    assert_eq!(
        value.as_deref(),
        Some(&b"old comments"[..]),
        "the stale page is still there"
    );
    let ttl: i64 = token(&first, 't').unwrap().parse().unwrap();
    assert!(
        (28..=30).contains(&ttl),
        "md's T sets the stale page's lifetime: {ttl}"
    );
    let (second, _) = a.send("mg /post v f t c", None);
    assert!(
        has(&second, "X") && has(&second, "Z") && !has(&second, "W"),
        "{second}"
    );

    // Invalidating again re-arms the win (a failed regeneration can be retried).
    assert_eq!(a.line("md /post I T30"), "HD");
    let (again, _) = a.send("mg /post v f t c", None);
    assert!(has(&again, "X") && has(&again, "W"), "{again}");

    // The winner's CAS is the stale item's: its store goes through and is fresh.
    let cas = token(&again, 'c').unwrap().to_string();
    assert_eq!(
        a.send(
            &format!("ms /post 12 F0 T300 C{cas}"),
            Some(b"new comments")
        )
        .0,
        "HD"
    );
    let (fresh, value) = a.send("mg /post v f t c R30", None);
    assert!(
        !has(&fresh, "X") && !has(&fresh, "W") && !has(&fresh, "Z"),
        "{fresh}"
    );
    assert_eq!(value.as_deref(), Some(&b"new comments"[..]));

    // md I on a missing key.
    assert_eq!(a.line("md /nothing I T30"), "NF");
}

#[test]
fn cas_and_add_mode_never_overwrite_what_the_app_wrote() {
    let mc = Memcached::start();
    let mut a = Meta::connect(&mc);
    assert_eq!(a.send("ms /p 3 F0 T60", Some(b"one")).0, "HD");
    let (got, _) = a.send("mg /p v c R100", None);
    let cas = token(&got, 'c').unwrap().to_string();

    // The app writes meanwhile (classic set): the winner's CAS no longer matches.
    mc.set_raw(b"/p", b"app's", 0, 60);
    assert_eq!(
        a.send(&format!("ms /p 4 F16 T60 C{cas}"), Some(b"mine")).0,
        "EX"
    );
    assert_eq!(mc.get_raw("/p").unwrap().0, b"app's");

    // Deleted meanwhile (a hard purge): NF, nothing stored.
    let (got, _) = a.send("mg /p v c R100", None);
    let cas = token(&got, 'c').unwrap().to_string();
    assert_eq!(a.line("md /p"), "HD");
    assert_eq!(
        a.send(&format!("ms /p 4 F16 T60 C{cas}"), Some(b"mine")).0,
        "NF"
    );
    assert_eq!(mc.get_raw("/p"), None);

    // Add mode (a MISS's store): stores once, then NS.
    assert_eq!(a.send("ms /q 3 F16 T60 ME", Some(b"new")).0, "HD");
    assert_eq!(a.send("ms /q 5 F16 T60 ME", Some(b"other")).0, "NS");
    assert_eq!(mc.get_raw("/q").unwrap(), (b"new".to_vec(), 16));
}
