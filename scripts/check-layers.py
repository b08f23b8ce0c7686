#!/usr/bin/env python3
"""Checks the layering of src/: every file imports only its own layer and the layers below, no files import
each other in a circle, and a file over 800 lines says why at its top.

    python3 scripts/check-layers.py           checks src/ and prints what is wrong (exit 1), or a one-line summary
    python3 scripts/check-layers.py --graph   also prints each file's imports
    python3 scripts/check-layers.py --src DIR checks another source tree
    python3 scripts/check-layers.py --self-test  checks that a small tree with a cycle, an upward import and
                                                 a file outside the layers fails, and a clean one passes

What counts as an import: a `use` of a `crate::`, `super::`, `self::` or child-module path, and such a path
written inline in code, docs excluded. Names a module re-exports (`pub use`, `pub(crate) use`) count as imports
of the file that defines them, and `#[path]` modules sit where they are declared. Test modules and files are
checked like any other: a test of a lower layer may not reach up either. A file's own child modules declared in
it are not imports.

The layers, lowest first, are LAYERS below; a folder's files belong to the folder's layer. A new top-level file or
folder must be given a layer here, or the check fails.
"""

import os
import re
import sys

# A file longer than this says why at its top, with these words in its first comment lines.
MAX_LINES = 800
REASON = "Longer than 800 lines"

# Lowest first. A file may import files of its own layer and of the layers before it.
LAYERS = [
    ("error", "the error type every layer returns"),
    ("config", "what the user asked for: connection strings, the builder, environment, pgpass"),
    ("proto", "the sans-IO protocol core: messages, state machines, rows and statements; no I/O"),
    ("sans_io", "the public face of proto for hosts that bring their own I/O"),
    ("transport", "byte streams (tokio, wasi:sockets) and timers"),
    ("tls", "TLS over any transport"),
    ("conn", "one session: connect, the poll driver, the request queue, cancellation"),
    ("client", "the query API: Client, statements, rows, streams, portals, pipelines, COPY, notifications"),
    ("pool", "the connection pool"),
    ("fuzzing", "fuzz and test drivers over the whole crate (test builds only)"),
    ("lib", "the crate root: module list and re-exports"),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def strip(text):
    """Source without comments and literals, so paths in docs and strings are not imports."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"b?r(#*)\".*?\"\1", '""', text, flags=re.S)
    text = re.sub(r"b?\"(\\.|[^\"\\])*\"", '""', text)
    text = re.sub(r"b?'(\\.|[^'\\])'", "' '", text)
    return text


def expand(tree):
    """`a::{b, c::{d, e}}` as ['a::b', 'a::c::d', 'a::c::e']."""
    tree = tree.strip()
    i = tree.find("{")
    if i < 0:
        return [tree]
    prefix, body = tree[:i], tree[i + 1 : tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [prefix + x for part in parts if part.strip() for x in expand(part)]


def segments(path):
    return [s.strip() for s in path.replace("\n", " ").split("::") if s.strip()]


class Crate:
    def __init__(self, root):
        self.root = root
        self.files = {}  # module path (tuple) -> file path
        self.sources = {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                if name.endswith(".rs"):
                    path = os.path.join(dirpath, name)
                    self.sources[path] = strip(open(path, encoding="utf-8").read())
        for path in self.sources:
            rel = os.path.relpath(path, root)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib"):
                rel = rel[:-1]
            self.files.setdefault(tuple(rel), path)
        # `#[path = "x.rs"] mod name;`: the file is module `name` of the declaring module.
        for module, path in list(self.files.items()):
            raw = open(path, encoding="utf-8").read()
            for m in re.finditer(
                r"#\[path\s*=\s*\"([^\"]+)\"\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;", raw
            ):
                target = os.path.normpath(os.path.join(os.path.dirname(path), m.group(1)))
                for other, other_path in list(self.files.items()):
                    if os.path.normpath(other_path) == target and other != module + (m.group(2),):
                        del self.files[other]
                        self.files[module + (m.group(2),)] = other_path
        self.module_of = {path: module for module, path in self.files.items()}
        self.roots = {}  # name re-exported at the crate root -> module path
        self.reexports = {}  # (module, name) -> module that defines it
        for _ in range(3):  # re-exports of re-exports
            for module, path in self.files.items():
                for use in re.finditer(
                    r"\bpub(?:\([a-z]+\))?\s+use\s+(\w+::[^;]*);", self.sources[path]
                ):
                    for item in expand(use.group(1)):
                        segs = segments(item)
                        name = segs[-1].split(" as ")[-1].strip()
                        segs[-1] = segs[-1].split(" as ")[0].strip()
                        target = self.resolve(segs, list(module), module)
                        if target is not None and target != module:
                            self.reexports[(module, name)] = target
                            if module == ():
                                self.roots[name] = target

    def resolve(self, segs, here, file_module):
        """The file a path names, or None for paths outside the crate."""
        if not segs:
            return None
        if segs[0] == "crate":
            full = segs[1:]
        elif segs[0] in ("super", "self"):
            base = list(here)
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
            full = base + segs
        elif tuple(here) + (segs[0],) in self.files:
            full = list(here) + segs
        else:
            return None
        for k in range(len(full), -1, -1):
            module = tuple(full[:k])
            if module in self.files:
                hops = 0
                while k < len(full) and (module, full[k]) in self.reexports and hops < 8:
                    module = self.reexports[(module, full[k])]
                    k += 1
                    hops += 1
                if module == () and k < len(full) and full[k] in self.roots:
                    module = self.roots[full[k]]
                return module
        return None

    def imports(self, module):
        source = self.sources[self.files[module]]
        inline = []  # (start, end, name) of `mod name { ... }` blocks
        for m in re.finditer(r"\bmod\s+(\w+)\s*\{", source):
            k, depth = m.end(), 1
            while depth and k < len(source):
                depth += source[k] == "{"
                depth -= source[k] == "}"
                k += 1
            inline.append((m.start(), k, m.group(1)))

        def here_at(pos):
            return list(module) + [name for start, end, name in inline if start < pos < end]

        found = {}
        for use in re.finditer(r"\buse\s+(\w+::[^;]*);", source):
            for item in expand(use.group(1)):
                segs = [s.split(" as ")[0].strip() for s in segments(item)]
                target = self.resolve(segs, here_at(use.start()), module)
                if target is not None:
                    found.setdefault(target, item.strip())
        for path in re.finditer(r"(?<![\w:])((?:\w+)(?:::\w+)+)", source):
            target = self.resolve(path.group(1).split("::"), here_at(path.start()), module)
            if target is not None:
                found.setdefault(target, path.group(1))
        found.pop(module, None)
        found.pop((), None)
        # A module's own children are declared by it, not imported (the child importing its parent is).
        return found


def layer(module):
    return "lib" if module == () else module[0]


def cycles(graph):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(module):
    return "/".join(module) or "lib"


def self_test():
    """The check must fail on what it exists to catch, or it could pass everything unnoticed."""
    import tempfile

    def tree(files):
        root = tempfile.mkdtemp(prefix="check-layers-")
        for path, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
            with open(os.path.join(root, path), "w", encoding="utf-8") as f:
                f.write(text)
        return root

    clean = {
        "lib.rs": "mod conn;\nmod client;\npub use client::Client;\n",
        "conn/mod.rs": "pub(crate) mod a;\npub(crate) mod b;\n",
        "conn/a.rs": "use super::b::B; // use crate::client::Client;\npub struct A(B);\n",
        "conn/b.rs": "pub struct B;\n",
        "client/mod.rs": "mod ops;\nuse crate::conn::a::A;\npub struct Client(A);\n",
        "client/ops.rs": "use super::Client;\nimpl Client { fn f(&self) { let _ = \"crate::conn::b\"; } }\n",
    }
    broken = dict(clean)
    broken["conn/b.rs"] = "use crate::conn::{a::A};\npub struct B;\nfn f() -> crate::Client { todo!() }\n"
    broken["stray.rs"] = "pub struct S;\n"
    broken["client/long.rs"] = "//! No reason given.\n" + "fn f() {}\n" * (MAX_LINES + 5)
    results = []
    for files, expected in ((clean, []), (broken, ["not in a layer", "a higher layer", "import cycle", "without a reason"])):
        problems, _ = check(Crate(tree(files)))
        if not expected and problems:
            results.append(f"a clean tree failed: {problems}")
        for words in expected:
            if not any(words in p for p in problems):
                results.append(f"a tree with `{words}` passed: {problems}")
    if results:
        print("check-layers self-test FAILED:\n  " + "\n  ".join(results))
        return 1
    print("check-layers self-test: a cycle, an upward import, a stray file and a long file without a reason are caught; a clean tree passes")
    return 0


def check(crate):
    """The problems of a tree, and its import graph."""
    graph, problems = {}, []
    for module in sorted(crate.files):
        found = crate.imports(module)
        graph[module] = set(found)
        if layer(module) not in RANK:
            problems.append(f"{name(module)}: not in a layer (add its folder to LAYERS in {__file__})")
            continue
        for target, path in sorted(found.items()):
            if layer(target) in RANK and RANK[layer(target)] > RANK[layer(module)]:
                problems.append(
                    f"{name(module)} ({layer(module)}) imports {name(target)} ({layer(target)}, a higher layer)"
                    f" through `{path}`"
                )
    for module, path in sorted(crate.files.items()):
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        head = "\n".join(lines[:40])
        if len(lines) > MAX_LINES + 1 and REASON not in head:
            problems.append(
                f"{name(module)}: {len(lines) - 1} lines, over {MAX_LINES} without a reason at its top "
                f"(\"{REASON} ...\" in its first comment lines), or split it"
            )
    # A file's imports of the modules that contain it (its folder's mod.rs, the crate root) are not links of a
    # cycle: the parent declares the child and the child is part of it, as a type's impl blocks in several files.
    peers = {m: {t for t in targets if t != m[: len(t)]} for m, targets in graph.items()}
    for component in cycles(peers):
        inside = set(component)
        links = [
            f"{name(a)} -> {name(b)}" for a in component for b in sorted(peers[a]) if b in inside
        ]
        problems.append("import cycle: " + "; ".join(links))
    return problems, graph


def main():
    if "--self-test" in sys.argv:
        return self_test()
    root = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else ROOT
    crate = Crate(root)
    problems, graph = check(crate)
    if "--graph" in sys.argv:
        for module in sorted(graph):
            print(name(module), "->", " ".join(name(t) for t in sorted(graph[module])))
    if problems:
        print("check-layers: %d problem(s) in src/:" % len(problems))
        for problem in problems:
            print("  " + problem)
        return 1
    edges = sum(len(v) for v in graph.values())
    print(f"check-layers: {len(graph)} files, {edges} imports, layers respected, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
