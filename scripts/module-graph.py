#!/usr/bin/env python3
"""Module dependency graph of the crate, and the cycles in it.

Every src/**/*.rs file is a module (src/lib.rs is `crate`, src/foo.rs and
src/foo/mod.rs are `foo`, src/foo/bar.rs is `foo::bar`). A module depends on
another when it names it in a path: `crate::...`, `super::...`, `self::...`,
a child module (`hash_peer::x` in balancer/mod.rs) or a name it imported with
`use` (use groups included, `pub use` re-exports count). A path resolves to
the longest prefix that is a module file (`crate::store::page::decode` is
`store::page`). Comments, string/char literals, `mod x;` declarations and
`#[cfg(test)]` items (unit tests) are ignored. Paths to items of lib.rs
(`crate::module()`) are listed separately and left out of the cycles: lib.rs
is the root that wires everything together.

Prints one line per module (`module -> deps`), then every strongly connected
component of more than one module, with one concrete cycle through it.
Exit status 1 when a component has more than --max-cycle modules (default 1:
no cycles at all), 2 on usage errors.

usage: module-graph.py [-h] [--allow A->B] [--max-cycle N] [-v] [--self-test] [ROOT]
"""

import argparse
import collections
import contextlib
import io
import os
import sys
import tempfile

ROOT_NAME = "crate"


# --------------------------------------------------------------------- lexer


def _is_ident_start(c):
    return c == "_" or c.isalpha()


def _is_ident_char(c):
    return c == "_" or c.isalnum()


def _skip_quoted(text, j):
    """Index just past the closing `"` of a string whose body starts at j."""
    n = len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
        elif c == '"':
            return j + 1
        else:
            j += 1
    return n


def _skip_char_or_lifetime(text, i):
    """At a `'`: (end, is_literal) of a char literal, or of a lifetime/label."""
    n = len(text)
    if i + 1 < n and text[i + 1] == "\\":
        # '\n', '\'', '\\', '\u{1F600}': the closing quote comes after the escape
        end = text.find("'", i + 3)
        return (n if end < 0 else end + 1), True
    if i + 2 < n and text[i + 2] == "'":
        return i + 3, True  # 'x', including '"'
    j = i + 1
    while j < n and _is_ident_char(text[j]):
        j += 1
    return j, False  # 'a, 'static, 'outer:


def lex(text):
    """Tokens of Rust source as (kind, value, line): kind is id, p (punct), lit, life.

    Comments vanish; string, raw string, byte string and char literals become
    one `lit` token whose value is not kept.
    """
    toks = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c.isspace():
            i += 1
            continue
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            line += text.count("\n", i, j)
            i = j
            continue
        if c == '"':
            j = _skip_quoted(text, i + 1)
            toks.append(("lit", "", line))
            line += text.count("\n", i, j)
            i = j
            continue
        if c == "'":
            j, is_lit = _skip_char_or_lifetime(text, i)
            toks.append(("lit" if is_lit else "life", text[i:j], line))
            i = j
            continue
        if _is_ident_start(c):
            j = i + 1
            while j < n and _is_ident_char(text[j]):
                j += 1
            word = text[i:j]
            if word in ("r", "br", "cr") and j < n and text[j] in '"#':
                k = j
                while k < n and text[k] == "#":
                    k += 1
                if k < n and text[k] == '"':  # r"..", r#".."#, br##".."##
                    close = '"' + "#" * (k - j)
                    end = text.find(close, k + 1)
                    end = n if end < 0 else end + len(close)
                    toks.append(("lit", "", line))
                    line += text.count("\n", i, end)
                    i = end
                    continue
                if word == "r" and k == j + 1 and k < n and _is_ident_start(text[k]):
                    m = k + 1  # raw identifier r#type
                    while m < n and _is_ident_char(text[m]):
                        m += 1
                    toks.append(("id", text[k:m], line))
                    i = m
                    continue
            if word in ("b", "c") and j < n and text[j] == '"':  # b"..", c".."
                end = _skip_quoted(text, j + 1)
                toks.append(("lit", "", line))
                line += text.count("\n", i, end)
                i = end
                continue
            if word == "b" and j < n and text[j] == "'":  # b'x'
                end, _ = _skip_char_or_lifetime(text, j)
                toks.append(("lit", "", line))
                i = end
                continue
            toks.append(("id", word, line))
            i = j
            continue
        if c.isdigit():
            j = i + 1
            while j < n and _is_ident_char(text[j]):
                j += 1
            toks.append(("lit", text[i:j], line))
            i = j
            continue
        if text.startswith("::", i):
            toks.append(("p", "::", line))
            i += 2
            continue
        toks.append(("p", c, line))
        i += 1
    return toks


# -------------------------------------------------------------------- parser

Ref = collections.namedtuple("Ref", "ctx segs line use alias glob")

_OPEN, _CLOSE = "([{", ")]}"
_BRACE_ITEMS = {"fn", "mod", "impl", "trait", "enum", "struct", "union", "macro_rules"}
_QUALIFIERS = {"pub", "crate", "in", "self", "super", "unsafe", "async", "extern", "default"}


def _is(tok, value):
    return tok[0] == "p" and tok[1] == value


def _match(toks, i):
    """Index just past the delimiter closing the one at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j][0] != "p":
            continue
        if toks[j][1] in _OPEN:
            depth += 1
        elif toks[j][1] in _CLOSE:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(toks)


def _split_args(toks):
    """The comma-separated arguments of a token list, as lists of values."""
    args, cur, depth = [], [], 0
    for t in toks:
        if t[0] == "p" and t[1] in _OPEN:
            depth += 1
        elif t[0] == "p" and t[1] in _CLOSE:
            depth -= 1
        if depth == 0 and _is(t, ","):
            args.append(cur)
            cur = []
        else:
            cur.append(t[1])
    if cur:
        args.append(cur)
    return args


def _is_test_cfg(toks):
    """Whether attribute content is cfg(test) or cfg(all(.., test, ..))."""
    vals = [t[1] for t in toks]
    if vals == ["cfg", "(", "test", ")"]:
        return True
    if vals[:4] == ["cfg", "(", "all", "("] and vals[-2:] == [")", ")"]:
        return ["test"] in _split_args(toks[4:-2])
    return False


def _skip_item(toks, i):
    """Index just past the item starting at i (its attributes included)."""
    n = len(toks)
    while i + 1 < n and _is(toks[i], "#") and _is(toks[i + 1], "["):
        i = _match(toks, i + 1)
    j, brace_kind = i, False
    while j < n:  # past `pub(crate) unsafe extern "C"` to the item's keyword
        kind, val = toks[j][:2]
        if kind == "p" and val == "{":
            brace_kind = True
            break
        if kind == "lit" or (kind == "id" and val in _QUALIFIERS):
            j = _match(toks, j + 1) if j + 1 < n and _is(toks[j + 1], "(") else j + 1
            continue
        if kind == "id" and val == "const" and j + 1 < n and toks[j + 1][1] in (
                "fn", "unsafe", "async", "extern"):
            j += 1
            continue
        brace_kind = kind == "id" and (val in _BRACE_ITEMS or (j + 1 < n and _is(toks[j + 1], "!")))
        break
    depth = 0
    for j in range(i, n):
        kind, val = toks[j][:2]
        if kind != "p":
            continue
        if val in _OPEN:
            depth += 1
        elif val in _CLOSE:
            if depth == 0:
                return j  # end of the enclosing block: not ours
            depth -= 1
            if depth == 0 and val == "}" and brace_kind:
                return j + 1
        elif depth == 0 and (val == ";" or (val == "," and not brace_kind)):
            return j + 1
    return n


def _skip_to_block_end(toks, i):
    """Index of the `}` closing the block that toks[i] is in."""
    depth = 0
    for j in range(i, len(toks)):
        if _is(toks[j], "{"):
            depth += 1
        elif _is(toks[j], "}"):
            if depth == 0:
                return j
            depth -= 1
    return len(toks)


def _parse_tree(toks, i, prefix, leaves):
    """Parses a use tree at i; appends (segs, alias, glob, line); returns the next index."""
    n = len(toks)
    if i >= n:
        return i
    if _is(toks[i], "{"):
        return _parse_group(toks, i, prefix, leaves)
    if _is(toks[i], "*"):
        leaves.append((list(prefix), None, True, toks[i][2]))
        return i + 1
    if toks[i][0] != "id":
        return i
    segs, line = list(prefix) + [toks[i][1]], toks[i][2]
    i += 1
    while i + 1 < n and _is(toks[i], "::"):
        nxt = toks[i + 1]
        if _is(nxt, "{"):
            return _parse_group(toks, i + 1, segs, leaves)
        if _is(nxt, "*"):
            leaves.append((segs, None, True, nxt[2]))
            return i + 2
        if nxt[0] != "id":
            break
        segs.append(nxt[1])
        i += 2
    alias = None
    if i + 1 < n and toks[i][:2] == ("id", "as") and toks[i + 1][0] == "id":
        alias = toks[i + 1][1]
        i += 2
    if len(segs) > 1 and segs[-1] == "self":  # `page::{self}` is `page`
        segs.pop()
    leaves.append((segs, alias, False, line))
    return i


def _parse_group(toks, i, prefix, leaves):
    """Parses `{ tree, tree, .. }` at i; returns the index past the `}`."""
    i += 1
    while i < len(toks) and not _is(toks[i], "}"):
        if _is(toks[i], ","):
            i += 1
            continue
        j = _parse_tree(toks, i, prefix, leaves)
        i = j if j > i else i + 1
    return i + 1


def scan(text, module):
    """(refs, test_mods): the paths `text` (module `module`) uses, and its
    `#[cfg(test)] mod x;` children (test-only module files)."""
    toks = lex(text)
    refs, test_mods, stack = [], set(), []  # stack: inline module name or None per `{`
    n, i = len(toks), 0

    def ctx():
        return tuple(module) + tuple(s for s in stack if s is not None)

    while i < n:
        kind, val, line = toks[i]
        if kind == "p" and val == "#":
            j, inner = i + 1, False
            if j < n and _is(toks[j], "!"):
                j, inner = j + 1, True
            if j < n and _is(toks[j], "["):
                end = _match(toks, j)
                if _is_test_cfg(toks[j + 1:end - 1]):
                    if inner:
                        if not stack:
                            return [], test_mods  # #![cfg(test)]: the whole file
                        i = _skip_to_block_end(toks, end)
                        continue
                    k = end
                    while k + 1 < n and _is(toks[k], "#") and _is(toks[k + 1], "["):
                        k = _match(toks, k + 1)
                    while k < n and toks[k][:2] == ("id", "pub"):
                        k = _match(toks, k + 1) if k + 1 < n and _is(toks[k + 1], "(") else k + 1
                    if (k + 2 < n and toks[k][:2] == ("id", "mod")
                            and toks[k + 1][0] == "id" and _is(toks[k + 2], ";")):
                        test_mods.add(ctx() + (toks[k + 1][1],))
                    i = _skip_item(toks, end)
                    continue
            i += 1
            continue
        if kind == "id" and val == "mod" and i + 2 < n and toks[i + 1][0] == "id":
            if _is(toks[i + 2], ";"):  # structure, not a dependency
                i += 3
                continue
            if _is(toks[i + 2], "{"):
                stack.append(toks[i + 1][1])
                i += 3
                continue
        if kind == "p" and val == "{":
            stack.append(None)
        elif kind == "p" and val == "}":
            if stack:
                stack.pop()
        elif kind == "id" and val == "use" and i + 1 < n:
            if _is(toks[i + 1], "::"):  # `use ::ext::x`: another crate
                i += 2
                continue
            leaves = []
            j = _parse_tree(toks, i + 1, [], leaves)
            for segs, alias, glob, ln in leaves:
                refs.append(Ref(ctx(), tuple(segs), ln, True, alias, glob))
            i = max(j, i + 1)
            continue
        elif (kind == "id" and i + 1 < n and _is(toks[i + 1], "::")
              and not (i > 0 and toks[i - 1][1] in ("::", "."))
              and not (i > 2 and toks[i - 1][1] == "in" and _is(toks[i - 2], "(")
                       and toks[i - 3][1] == "pub")):  # pub(in crate::x) is visibility
            segs, j = [val], i + 1
            while j + 1 < n and _is(toks[j], "::") and toks[j + 1][0] == "id":
                segs.append(toks[j + 1][1])
                j += 2
            refs.append(Ref(ctx(), tuple(segs), line, False, None, False))
            i = j
            continue
        i += 1
    return refs, test_mods


# ------------------------------------------------------------------ analysis


def module_files(root):
    """{module tuple: path relative to root} for root/src/**/*.rs."""
    src = os.path.join(root, "src")
    mods = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        parts = () if rel_dir == "." else tuple(rel_dir.split(os.sep))
        if parts[:1] == ("bin",):  # separate binary crates
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            if not name.endswith(".rs"):
                continue
            stem = name[:-3]
            if not parts and stem in ("lib", "main"):
                mod = ()
            elif stem == "mod":
                mod = parts
            else:
                mod = parts + (stem,)
            path = os.path.relpath(os.path.join(dirpath, name), root)
            if mod in mods and not (mod == () and stem == "main"):
                if stem != "main":
                    print(f"module-graph: {path} and {mods[mod]} are both {show(mod)}",
                          file=sys.stderr)
                continue
            mods[mod] = path
    return mods


def show(mod):
    return "::".join(mod) if mod else ROOT_NAME


def _absolute(ref, aliases, modules):
    """The crate-absolute segments of a path, or None if it leaves the crate."""
    segs = list(ref.segs)
    head = segs[0]
    if head == "crate":
        return segs[1:]
    if head in ("super", "self"):
        base, k = list(ref.ctx), 0
        while k < len(segs) and segs[k] in ("super", "self"):
            if segs[k] == "super":
                if not base:
                    return None
                base.pop()
            k += 1
        return base + segs[k:]
    if tuple(ref.ctx) + (head,) in modules:  # a child module
        return list(ref.ctx) + segs
    if head in aliases:  # a name imported with `use`
        return aliases[head] + segs[1:]
    return None


def _resolve(abs_segs, modules):
    """The longest prefix of abs_segs that is a module file; () for lib.rs items."""
    for k in range(len(abs_segs), 0, -1):
        if tuple(abs_segs[:k]) in modules:
            return tuple(abs_segs[:k])
    return ()


def analyze(root):
    """(modules, deps, root_users): modules {mod: path}; deps {mod: {dep: [(path, line)]}}
    without lib.rs items; root_users {mod: [(path, line)]} for paths to lib.rs items."""
    modules = module_files(root)
    scanned, test_only = {}, set()
    for mod, path in modules.items():
        with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
            refs, test_mods = scan(f.read(), mod)
        scanned[mod] = refs
        test_only |= test_mods
    for mod in list(modules):  # files of `#[cfg(test)] mod x;`
        if any(mod[:len(t)] == t for t in test_only):
            del modules[mod]
            del scanned[mod]

    deps = {mod: collections.defaultdict(list) for mod in modules}
    root_users = collections.defaultdict(list)
    for mod, refs in scanned.items():
        aliases = {}
        for _ in range(2):  # twice: a `use` may build on one further down
            for ref in refs:
                if not ref.use or ref.glob:
                    continue
                abs_segs = _absolute(ref, aliases, modules)
                name = ref.alias or (ref.segs[-1] if ref.segs[-1] not in ("self", "super", "crate")
                                     else None)
                if abs_segs is not None and name and name != "_":
                    aliases[name] = abs_segs
        for ref in refs:
            abs_segs = _absolute(ref, aliases, modules)
            if abs_segs is None:
                continue
            target = _resolve(abs_segs, modules)
            where = (modules[mod], ref.line)
            if target == mod:
                continue
            if target == ():
                root_users[mod].append(where)
            else:
                deps[mod][target].append(where)
    return modules, deps, root_users


def tarjan(nodes, edges):
    """Strongly connected components (iterative Tarjan)."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                sccs.append(comp)
    return sccs


def _shortest_cycle(start, members, edges):
    """A shortest cycle start -> .. -> start inside members."""
    parent, queue, seen = {}, collections.deque([start]), {start}
    while queue:
        node = queue.popleft()
        for nxt in sorted(edges.get(node, ()), key=show):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return list(reversed(path)) + [start]
            if nxt in members and nxt not in seen:
                seen.add(nxt)
                parent[nxt] = node
                queue.append(nxt)
    return [start]


def cycle_in(comp, edges, budget=200000):
    """One concrete simple cycle of a component: the longest one found within
    `budget` search steps (all of them for small components), at least a
    shortest one through its first module."""
    rank = {m: k for k, m in enumerate(comp)}
    best = _shortest_cycle(comp[0], set(comp), edges)
    steps = 0
    for start in comp:  # cycles whose lowest-ranked module is start
        path, on_path = [start], {start}
        work = [iter(sorted((t for t in edges.get(start, ()) if t in rank
                             and rank[t] >= rank[start]), key=rank.get))]
        while work and steps < budget and len(best) <= len(comp):
            steps += 1
            nxt = next(work[-1], None)
            if nxt is None:
                work.pop()
                on_path.discard(path.pop())
                continue
            if nxt == start:
                if len(path) + 1 > len(best):
                    best = path + [start]
                continue
            if nxt in on_path:
                continue
            path.append(nxt)
            on_path.add(nxt)
            work.append(iter(sorted((t for t in edges.get(nxt, ()) if t in rank
                                     and rank[t] >= rank[start]), key=rank.get)))
        if steps >= budget or len(best) > len(comp):
            break
    return best


def parse_module(name):
    name = name.strip()
    if name in (ROOT_NAME, "lib", ""):
        return ()
    if name.startswith("crate::"):
        name = name[len("crate::"):]
    return tuple(name.split("::"))


def run(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(
        prog="module-graph.py",
        description="Module dependency graph of the crate under ROOT/src, and its cycles.")
    ap.add_argument("root", nargs="?", metavar="ROOT", default=os.path.dirname(here),
                    help="crate directory containing src/ (default: %(default)s)")
    ap.add_argument("--allow", action="append", default=[], metavar="A->B",
                    help="leave the edge A -> B out of the cycle computation (repeatable)")
    ap.add_argument("--max-cycle", type=int, default=1, metavar="N",
                    help="exit 1 when a cycle has more than N modules (default: 1, no cycles)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show where each dependency is (file:line)")
    ap.add_argument("--self-test", action="store_true", help="check the parser and exit")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()

    root = args.root
    if not os.path.isdir(os.path.join(root, "src")) and os.path.basename(
            os.path.normpath(root)) == "src":
        root = os.path.dirname(os.path.normpath(root))
    if not os.path.isdir(os.path.join(root, "src")):
        ap.error(f"{root}: no src/ directory")
    modules, deps, root_users = analyze(root)

    allowed = set()
    for spec in args.allow:
        if "->" not in spec:
            ap.error(f"--allow {spec!r}: expected A->B")
        a, b = (parse_module(s) for s in spec.split("->", 1))
        for m in (a, b):
            if m not in modules:
                ap.error(f"--allow {spec!r}: no module {show(m)}")
        allowed.add((a, b))

    def where(locs):
        return ", ".join(f"{p}:{ln}" for p, ln in locs)

    order = sorted(modules, key=lambda m: (m != (), show(m)))
    n_edges = 0
    for mod in order:
        targets = sorted(deps[mod], key=show)
        n_edges += len(targets)
        print(f"{show(mod)} -> {', '.join(show(t) for t in targets) or '(none)'}")
        if args.verbose:
            for t in targets:
                print(f"    {show(t)}: {where(deps[mod][t])}")
    users = sorted(root_users, key=show)
    print(f"{ROOT_NAME} (lib.rs items, not in cycles) <- "
          f"{', '.join(show(u) for u in users) or '(none)'}")
    if args.verbose:
        for u in users:
            print(f"    {show(u)}: {where(root_users[u])}")

    for a, b in sorted(allowed, key=lambda e: (show(e[0]), show(e[1]))):
        if b in deps.get(a, {}):
            print(f"allowed: {show(a)} -> {show(b)}")
        else:
            print(f"allowed: {show(a)} -> {show(b)} (no such edge: stale --allow?)")

    edges = {m: {t for t in deps[m] if (m, t) not in allowed}
             for m in modules if m != ()}
    sccs = [sorted(c, key=show) for c in tarjan(sorted(edges, key=show), edges) if len(c) > 1]
    sccs.sort(key=lambda c: (-len(c), show(c[0])))
    worst = 0
    for comp in sccs:
        worst = max(worst, len(comp))
        members = set(comp)
        print(f"cycle ({len(comp)} modules): {', '.join(show(m) for m in comp)}")
        print(f"    {' -> '.join(show(m) for m in cycle_in(comp, edges))}")
        if args.verbose:
            for m in comp:
                for t in sorted(edges[m] & members, key=show):
                    print(f"    {show(m)} -> {show(t)}: {where(deps[m][t])}")
    print(f"module-graph: {len(modules)} modules, {n_edges} edges, {len(sccs)} cycles")
    if worst > args.max_cycle:
        sys.stdout.flush()
        print(f"module-graph: a cycle of {worst} modules, more than --max-cycle {args.max_cycle}",
              file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------- self-test

_FIXTURE = {
    "src/lib.rs": r'''//! crate::e::in_inner_doc
mod a;
mod b;
mod e;
mod f;
#[cfg(test)]
mod t;
pub(crate) fn helper() {}
fn init() { a::start(); }
''',
    "src/a.rs": r'''// crate::e::line_comment
/* crate::e::block /* nested crate::e */ still crate::e */
/// crate::e::doc
use crate::{b::{self, c::{Thing, deep::{Inner, Other as O}}}, b::d::f as g};
use std::collections::HashMap;

pub(crate) fn start<'a>(x: &'a str) -> &'a str {
    let s = "crate::e::in_string \" crate::e::still";
    let r = r#"crate::e "quoted" crate::e"#;
    let rr = r##"crate::e "# crate::e"##;
    let bs = b"crate::e";
    let br = br"crate::e";
    let q = '"'; let _ = crate::b::d::f(); let q2 = '"';
    let esc = '\''; let bc = b'\''; crate::helper();
    let l: &'static str = "crate::e";
    x
}
#[cfg(test)]
fn only_for_tests() { crate::e::t(); }
#[cfg(test)]
mod tests {
    use super::*;
    use crate::e;
    fn nested() { if true { crate::e::x(); } }
}
''',
    "src/b/mod.rs": r'''//! b
mod c;
pub mod d;
pub use c::Thing;
''',
    "src/b/c.rs": r'''use super::d;
pub struct Thing;
pub fn g() { super::super::a::start(""); d::f(); }
pub mod deep { pub struct Inner; pub struct Other; }
''',
    "src/b/d.rs": r'''use crate::e::E;
pub fn f() {}
pub(in crate::b) fn vis() {}
pub fn t<'a>(x: &'a str) -> &'a str { x } // crate::a
''',
    "src/e.rs": r'''pub struct E;
pub fn use_root() { super::helper(); }
#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn t() { crate::a::start(""); }
}
''',
    "src/f.rs": r'''use crate::b as bb;
pub fn h() { bb::d::f(); }
''',
    "src/t.rs": r'''use crate::a;
''',
}

_EXPECTED = {
    "crate": ["a"],
    "a": ["b", "b::c", "b::d"],
    "b": ["b::c"],
    "b::c": ["a", "b::d"],
    "b::d": ["e"],
    "e": [],
    "f": ["b", "b::d"],
}
_EXPECTED_ROOT_USERS = ["a", "e"]


def self_test():
    failures = []

    def check(what, got, want):
        if got != want:
            failures.append(f"{what}: got {got!r}, want {want!r}")

    # the lexer on its own
    toks = lex(r"""let c = '"'; crate::x; r#"crate::y"# 'a "crate::z" b'\'' '\u{1F600}' r#type""")
    check("lex ids", [t[1] for t in toks if t[0] == "id"],
          ["let", "c", "crate", "x", "type"])
    check("lex lifetime", [t[1] for t in toks if t[0] == "life"], ["'a"])

    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in _FIXTURE.items():
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        modules, deps, root_users = analyze(tmp)
        check("modules", sorted(show(m) for m in modules), sorted(_EXPECTED))
        for mod in modules:
            check(f"deps of {show(mod)}", sorted(show(t) for t in deps[mod]),
                  _EXPECTED.get(show(mod)))
        check("lib.rs users", sorted(show(m) for m in root_users), _EXPECTED_ROOT_USERS)

        def exit_and_output(*argv):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                status = run([tmp, *argv])
            return status, out.getvalue()

        status, out = exit_and_output()
        check("exit with a cycle", status, 1)
        check("cycle line", "cycle (3 modules): a, b, b::c" in out, True)
        check("cycle path", "    a -> b -> b::c -> a\n" in out, True)
        check("summary", out.splitlines()[-1], "module-graph: 7 modules, 10 edges, 1 cycles")
        status, out = exit_and_output("--max-cycle", "3")
        check("exit with --max-cycle 3", status, 0)
        status, out = exit_and_output("--allow", "b::c->a")
        check("exit with --allow b::c->a", status, 0)
        check("allowed line", "allowed: b::c -> a\n" in out, True)
        check("summary with --allow", out.splitlines()[-1],
              "module-graph: 7 modules, 10 edges, 0 cycles")

    sys.stdout.flush()
    for f in failures:
        print(f"self-test FAILED: {f}", file=sys.stderr)
    print(f"module-graph self-test: {'FAILED' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
