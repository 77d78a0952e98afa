#!/usr/bin/env python3
"""The house rules `make lint` checks on the Rust sources:

- no import cycle between source files of a crate (a `mod.rs` that only
  declares and re-exports its children is a folder's front door, not a
  file with logic: its re-exports do not count as imports);
- no import from a lower layer of the appliance to a higher one (LAYERS);
- no non-test source file over 600 lines, no function over 80 lines, in
  the shipped crates (the softhsm-tests fixtures are test code).

Prints every breach and exits 1 if there is one.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {
    "appliance/src": "lib.rs",
    "pkcs11-shim/src": "lib.rs",
    "policies/src": "lib.rs",
    "softhsm-tests/src": "lib.rs",
    # The operator tool is a crate of its own modules (one per command group).
    "appliance/src/bin/dojangctl": "main.rs",
}
# Appliance modules by layer, lowest first: a file may import its own
# layer and those below, never above. A name with `::` places one part of
# a folder apart from the rest (the longest match wins): the pure audit
# and key logic sits below the store, the owners that use the store above.
LAYERS = [
    ["config", "refusal", "metrics"],
    ["pki"],
    ["credential", "devtls"],
    ["audit", "keys", "status::changes"],
    ["store"],
    ["node", "errors", "cli"],
    ["policy", "audit::log", "audit::tiles", "audit::integrity"],
    ["keys::manager", "keys::view"],
    ["status", "audit::trail", "audit::auditor", "audit::witnessing", "audit::witness_client"],
    ["issuance"],
    ["officers", "wallet"],
    ["service"],
    ["http", "officer_client"],
    ["api"],
    ["daemon", "mirror"],
]
MAX_FILE_LINES = 600
MAX_FN_LINES = 80


def module_files(src, root_file):
    """Module path (tuple) -> file, for one crate."""
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[0] == "bin":
                continue
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel == [root_file[:-3]]:
                rel = []
            mods[tuple(rel)] = path
    return mods


def strip_tests(text):
    """The file without its `#[cfg(test)]` items (test code is exempt)."""
    out, i = [], 0
    lines = text.split("\n")
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]":
            depth, started = 0, False
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                started = started or "{" in lines[i] or lines[i].rstrip().endswith(";")
                i += 1
                if started and depth <= 0:
                    break
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def use_paths(text):
    """Every path a file names: `use` trees expanded, and inline paths."""
    text = re.sub(r"//[^\n]*", "", text)
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths.extend(expand(m.group(1).replace("\n", " ").replace(" ", "")))
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        paths.append(m.group(1))
    return paths


def expand(tree):
    """`a::{b, c::{d}}` -> [a::b, a::c::d]."""
    m = re.match(r"^(.*?)::\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in filter(None, parts):
        out.extend(expand(p) if p != "self" else [""])
    return [f"{prefix}::{p}" if p else prefix for p in out]


def resolve(path, here, mods, is_mod_file):
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    elif parts[0] in ("super", "self"):
        base = list(here) if is_mod_file else list(here[:-1]) if parts[0] == "super" else list(here)
        if parts[0] == "super" and is_mod_file:
            base = list(here[:-1])
        if parts[0] == "self" and not is_mod_file:
            base = list(here)
        parts = parts[1:]
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    elif tuple(here) + (parts[0],) in mods:
        # A path from a child module of this one (`use child::Item`).
        base = list(here)
    else:
        return None
    target = base + parts
    while tuple(target) not in mods and target:
        target = target[:-1]
    return tuple(target)


def is_front_door(text):
    """A mod.rs/lib.rs that only declares modules and re-exports."""
    body = re.sub(r"//[^\n]*", "", strip_tests(text))
    body = re.sub(r"#!?\[[^\]]*\]", "", body)
    body = re.sub(r"\b(pub(\([^)]*\))?\s+)?mod\s+\w+\s*;", "", body)
    body = re.sub(r"\b(pub(\([^)]*\))?\s+)?use\s+[^;]+;", "", body)
    return body.strip() == ""


def check_crate(src, root_file, problems):
    mods = module_files(src, root_file)
    graph = {}
    for mod, path in mods.items():
        text = strip_tests(open(path).read())
        is_mod_file = path.endswith("mod.rs") or mod == ()
        edges = set()
        front = is_front_door(open(path).read())
        for p in use_paths(text):
            t = resolve(p, mod, mods, is_mod_file)
            if t is None or t == mod:
                continue
            # A front door re-exporting its own children imports nothing.
            if front and t[: len(mod)] == mod:
                continue
            edges.add(t)
        graph[mod] = edges
        if os.path.relpath(src, ROOT) == os.path.join("appliance", "src"):
            check_layers(mod, edges, path, problems)
    for cycle in cycles(graph):
        names = " -> ".join(os.path.relpath(mods[m], ROOT) for m in cycle)
        problems.append(f"import cycle: {names}")


def layer(mod):
    best, best_len = None, 0
    for rank, names in enumerate(LAYERS):
        for name in names:
            parts = tuple(name.split("::"))
            if mod[: len(parts)] == parts and len(parts) > best_len:
                best, best_len = rank, len(parts)
    return best


def check_layers(mod, edges, path, problems):
    mine = layer(mod)
    if mine is None:
        if mod:
            problems.append(f"{os.path.relpath(path, ROOT)}: module {'::'.join(mod)} has no layer in .ci/layers.py")
        return
    for t in edges:
        theirs = layer(t)
        if theirs is not None and theirs > mine:
            problems.append(
                f"{os.path.relpath(path, ROOT)} (layer {mine}) imports {'::'.join(t)} (layer {theirs})"
            )


def cycles(graph):
    """Strongly connected components with more than one file."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


# Sizes are checked in shipped code; the test-fixture crate is test code.
SIZED = ["appliance/src", "pkcs11-shim/src", "policies/src"]


def check_sizes(problems):
    for src in SIZED:
        for dirpath, _, files in os.walk(os.path.join(ROOT, src)):
            for f in files:
                if not f.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, f)
                text = strip_tests(open(path).read())
                rel = os.path.relpath(path, ROOT)
                n = text.count("\n")
                if n > MAX_FILE_LINES:
                    problems.append(f"{rel}: {n} lines (non-test) over {MAX_FILE_LINES}")
                for name, length in functions(text):
                    if length > MAX_FN_LINES:
                        problems.append(f"{rel}: fn {name} is {length} lines, over {MAX_FN_LINES}")


def functions(text):
    """(name, lines) of every fn with a body."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)", line)
        if not m:
            continue
        depth, j, opened = 0, i, False
        while j < len(lines):
            code = re.sub(r"//.*", "", lines[j])
            code = re.sub(r'"(\\.|[^"\\])*"', '""', code)
            code = re.sub(r"'(\\.|[^'\\])'", "''", code)
            if not opened and ";" in code and "{" not in code:
                break
            depth += code.count("{") - code.count("}")
            opened = opened or "{" in code
            if opened and depth <= 0:
                out.append((m.group(6), j - i + 1))
                break
            j += 1
    return out


def main():
    problems = []
    for src, root_file in CRATES.items():
        check_crate(os.path.join(ROOT, src), root_file, problems)
    check_sizes(problems)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} breach(es) of the house rules (.ci/layers.py)")
        return 1
    print("house rules: no import cycle, layers point down, files and functions within size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
