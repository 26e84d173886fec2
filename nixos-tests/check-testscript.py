#!/usr/bin/env python3
"""Check a generated NixOS testScript against what the NixOS test driver provides.

usage: check-testscript.py --machines server,client1,... FILE...

The test driver (nixpkgs nixos/lib/test-driver, Driver.test_symbols) runs the
script with the machines and a few helpers as globals. This checks, without
running anything, that a script: compiles; reads only names the driver
provides, Python's builtins, or names the script binds itself; calls only
known Machine methods on the machines; imports only the standard modules it
uses (the driver's own lint, pyflakes, fails a test on an unused import).
Exit 0 when every file passes, 1 otherwise, with one line per problem.
"""

import argparse
import ast
import builtins
import sys

# Driver.test_symbols() in every nixpkgs release since 23.05 (newer ones add more).
DRIVER_SYMBOLS = {
    "start_all",
    "test_script",
    "machines",
    "vlans",
    "driver",
    "log",
    "os",
    "create_machine",
    "subtest",
    "run_tests",
    "join_all",
    "retry",
    "serial_stdout_off",
    "serial_stdout_on",
    "polling_condition",
}

# Methods of the driver's Machine (QemuMachine in newer releases).
MACHINE_METHODS = {
    "block",
    "copy_from_host",
    "copy_from_vm",
    "crash",
    "execute",
    "fail",
    "get_unit_info",
    "reboot",
    "require_unit_state",
    "send_chars",
    "send_key",
    "shutdown",
    "sleep",
    "start",
    "succeed",
    "systemctl",
    "unblock",
    "wait_for_closed_port",
    "wait_for_console_text",
    "wait_for_file",
    "wait_for_open_port",
    "wait_for_shutdown",
    "wait_for_unit",
    "wait_until_fails",
    "wait_until_succeeds",
}

ALLOWED_IMPORTS = {"json", "re", "shlex"}


def bound_names(tree: ast.AST) -> set[str]:
    """Every name the script binds: assignments, loop and with targets, imports, defs."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def check(path: str, machines: set[str]) -> list[str]:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
        compile(tree, path, "exec")
    except SyntaxError as e:
        return [f"{path}:{e.lineno}: does not compile: {e.msg}"]

    problems = []
    known = DRIVER_SYMBOLS | machines | set(dir(builtins)) | bound_names(tree)
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    for node in loads:
        if node.id not in known:
            problems.append(f"{path}:{node.lineno}: {node.id!r} is neither a machine, nor provided by the test driver, nor bound by the script")

    used = {n.id for n in loads}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] not in ALLOWED_IMPORTS:
                    problems.append(f"{path}:{node.lineno}: import of {module!r}; allowed: {sorted(ALLOWED_IMPORTS)}")
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                if name not in used:
                    problems.append(f"{path}:{node.lineno}: {name!r} is imported but unused (the driver's pyflakes lint fails on it)")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in machines
            and node.attr not in MACHINE_METHODS
        ):
            problems.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr} is not a Machine method the driver has")
    # subtest() is a context manager: a bare call would do nothing.
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Name) and func.id == "subtest":
                problems.append(f"{path}:{node.lineno}: subtest(...) must be used as `with subtest(...):`")
    if not any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "start_all" for n in ast.walk(tree)
    ):
        problems.append(f"{path}: never calls start_all()")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", required=True, help="comma-separated machine names, as in the test's nodes")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    machines = {m.replace("-", "_") for m in args.machines.split(",") if m}
    problems = [p for f in args.files for p in check(f, machines)]
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
