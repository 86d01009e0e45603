#!/usr/bin/env python3
"""Import cycles between the files of each Rust crate in a workspace.
A copy of the workplace tool shared/tools/rust_cycles.py, so that CI runs it too.

Usage: import_cycles.py [ROOT] [--allow a.rs:b.rs ...]
Reads `use crate::x`, `crate::x::` and `super::x` paths (tests and #[cfg(test)] modules
are skipped) and prints each strongly connected group of files with more than one file.
Exit status 1 when a group remains after removing allowed pairs (builder/product pairs).
"""
import os
import re
import sys


def crate_srcs(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "tests", "benches")]
        if os.path.basename(dirpath) == "src" and "Cargo.toml" in os.listdir(os.path.dirname(dirpath)):
            yield dirpath


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(text):
    # Drop `#[cfg(test)] mod x { ... }` blocks by brace matching.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def resolve(mods, start):
    # Longest known module prefix of `start`.
    for k in range(len(start), 0, -1):
        if tuple(start[:k]) in mods:
            return tuple(start[:k])
    return None


def edges_of(src):
    files = {}
    for dirpath, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(dirpath, n)
                files[module_of(src, p)] = p
    edges = {m: set() for m in files}
    for mod, path in files.items():
        text = strip_tests(open(path, encoding="utf-8", errors="replace").read())
        text = re.sub(r"//[^\n]*", "", text)
        paths = []
        for m in re.finditer(r"\bcrate((?:::\w+)+)", text):
            paths.append(list(m.group(1).split("::")[1:]))
        for m in re.finditer(r"\bsuper((?:::\w+)+)", text):
            base = list(mod[:-1]) if not path.endswith(("mod.rs",)) else list(mod[:-1])
            paths.append(base + m.group(1).split("::")[1:])
        # `use crate::{a, b::c}` groups
        for m in re.finditer(r"\bcrate::\{([^}]*)\}", text):
            for part in m.group(1).split(","):
                part = part.strip()
                if part:
                    paths.append(part.split("::"))
        for p in paths:
            target = resolve(files, p)
            if target is not None and target != mod and target != ():
                edges[mod].add(target)
    return files, edges


def sccs(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main():
    args = sys.argv[1:]
    root = "."
    allow = set()
    if args and not args[0].startswith("--"):
        root = args.pop(0)
    if args and args[0] == "--allow":
        for pair in args[1:]:
            a, b = pair.split(":")
            allow.add((a, b))
            allow.add((b, a))
    bad = 0
    for src in sorted(crate_srcs(root)):
        files, edges = edges_of(src)
        rel = lambda m: os.path.relpath(files[m], root)
        pruned = {m: {t for t in ts if (os.path.basename(files[m]), os.path.basename(files[t])) not in allow}
                  for m, ts in edges.items()}
        for comp in sccs(list(files), pruned):
            if len(comp) > 1:
                bad += 1
                print(f"cycle ({len(comp)} files): " + ", ".join(sorted(rel(m) for m in comp)))
    print(f"{bad} import cycles")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
