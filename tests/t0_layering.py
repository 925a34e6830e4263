"""The layering rule of docs/design: a module imports only layers below it.

Every ``cosfs/*.py`` is parsed with :mod:`ast`; every import it makes, at the
top or inside a function, is checked against the table below. Third-party
imports with a single owner (pyfuse3, yaml) and trio's absence from the pure
layers are checked as well.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "cosfs"

# Rank of each module: a module may import modules of a strictly lower rank,
# and helper modules of the same rank group listed in SAME_RANK_OK.
LAYERS = [
    ["errors", "durable"],
    # counters of the core, exported in the Prometheus format (imports no cosfs module)
    ["metrics"],
    # progress of long CLI jobs: a tqdm bar on a terminal, log lines otherwise (no cosfs import)
    ["progress"],
    ["config", "names", "xmldoc", "credentials"],
    ["keys"],
    ["cipher"],
    ["resolver"],
    # The bucket encryption document is parsed into the resolver's EncryptionSpec,
    # so it sits directly above the resolver rather than with config.
    ["bucketconf"],
    # the other bucket configuration documents (pure, like bucketconf)
    ["versioning", "replicationconf", "inventoryconf", "originconf"],
    # chunk stores: a local folder, or an S3-compatible service (same interface)
    ["store"],
    ["s3store"],
    ["catalog"],
    # what lets an S3 store outlive its machine: sealed catalog snapshots, the lease
    ["snapshots", "lease"],
    # which version a change of a key makes, what replicates (bookkeeping in the catalog)
    ["versions"],
    # The data path's parts: blob I/O helpers and partial write buffers, then the read
    # path and the collector.
    ["chunkio", "chunkbuf"],
    ["reader", "collector"],
    ["objects"],
    ["xattrs"],
    ["filesystem"],
    # COS object semantics by key, for every front-end (XML API, console)
    ["keyspace"],
    # the daemon's services, over the key-level core; front-ends never import them
    ["services.replication", "services.inventory", "services.origin"],
    # the kernel page-cache stores and the request loop's wait of the FUSE adapter, then
    # the adapter
    ["fuse.protocol"],
    ["fuse.pagefill", "fuse.loop"],
    # the FUSE session of cosfs's own (the protocol spoken over /dev/fuse)
    ["fuse.session"],
    ["fuse.ops"],
    ["fsck"],
    # the XML API's request authentication and body decoding (pure)
    ["api.chunked"],
    ["api.auth"],
    # the XML API front-end: documents, header conventions, the ASGI app, the HTTP server
    ["api.xmlout"],
    ["api.headers"],
    ["api.app"],
    ["api.server"],
    # the web console front-end: logins and sessions, form bodies, pages, its HTTP server
    ["console.sessions", "console.forms"],
    ["console.app"],
    ["console.server"],
    # mount(8) options, systemd notification, log files and the status text
    ["service"],
    # the control socket's place and access rule (the client is control)
    ["controlsocket"],
    ["mount", "cli", "control"],
]
RANK = {m: i for i, group in enumerate(LAYERS) for m in group}

# Imports between modules of one rank that are part of the design.
SAME_RANK_OK = {
    ("config", "names"),   # config validates bucket names in the YAML
    ("cli", "mount"),      # the command line starts mounts and opens stores
    ("cli", "control"),    # cosfs versions talks to the daemon's control socket
    ("control", "mount"),  # ... or opens the store itself when no daemon runs
}

# Third-party modules with a single owner: module -> {allowed importers: lazily only?}
OWNED = {
    "pyfuse3": {"fuse.ops": False, "fuse.loop": False, "fuse.session": False, "mount": True},
    "yaml": {"config": False},
    "hypercorn": {"api.server": True, "console.server": True},
    "prometheus_client": {"metrics": False},
    "tqdm": {"progress": True},
    "jinja2": {"console.app": False},
    "python_multipart": {"console.forms": False},
    "boto3": {"s3store": False},
    "botocore": {"s3store": False},
}
NO_TRIO = {"errors", "durable", "config", "names", "xmldoc", "keys", "cipher", "resolver", "bucketconf",
           "credentials", "api.chunked", "api.auth", "originconf", "inventoryconf", "metrics",
           "progress", "fuse.protocol",
           "console.sessions", "console.forms"}


def _modules():
    """Every module of the package by dotted name below ``cosfs`` (``api.auth``)."""
    found = []
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).with_suffix("")
        if rel.name == "__init__":
            continue
        found.append(".".join(rel.parts))
    return sorted(found)


def _path(module):
    return PKG.joinpath(*module.split(".")).with_suffix(".py")


def _resolve(dotted):
    """The cosfs module a dotted name refers to, or None for a package or a non-module."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if _path(name).exists():
            return name
    return None


def _imports(module):
    """[(imported name, lineno, lazy)] of one module; cosfs modules by dotted short name."""
    tree = ast.parse(_path(module).read_text(), filename=module + ".py")
    package = module.split(".")[:-1]
    found = []

    def add(dotted, line, lazy):
        target = _resolve(dotted)
        if target is not None:
            found.append((target, line, lazy))

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    top = alias.name.split(".")
                    if top[0] == "cosfs" and len(top) > 1:
                        add(".".join(top[1:]), child.lineno, lazy)
                    else:
                        found.append((top[0], child.lineno, lazy))
            elif isinstance(child, ast.ImportFrom):
                mod = child.module or ""
                if child.level >= 1 or mod.split(".")[0] == "cosfs":
                    if child.level >= 1:
                        base = package[:len(package) - (child.level - 1)]
                        parts = base + (mod.split(".") if mod else [])
                    else:
                        parts = mod.split(".")[1:]
                    for alias in child.names:  # "from . import a" names modules
                        dotted = ".".join(parts + [alias.name])
                        if _path(dotted).exists():
                            found.append((dotted, child.lineno, lazy))
                        elif parts:
                            add(".".join(parts), child.lineno, lazy)
                else:
                    found.append((mod.split(".")[0], child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def test_table_covers_every_module():
    missing = [m for m in _modules() if m not in RANK]
    assert not missing, "add these modules to the layer table: %s" % missing
    stale = [m for m in RANK if m not in _modules()]
    assert not stale, "layer table names modules that do not exist: %s" % stale


@pytest.mark.parametrize("module", _modules())
def test_imports_only_lower_layers(module):
    bad = []
    for name, line, _lazy in _imports(module):
        if name not in RANK:
            continue
        if name == module:
            continue
        if RANK[name] < RANK[module] or (module, name) in SAME_RANK_OK:
            continue
        bad.append("%s.py:%d imports %s (layer %d >= %d)" % (module, line, name, RANK[name],
                                                              RANK[module]))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", _modules())
def test_owned_third_party_imports(module):
    bad = []
    for name, line, lazy in _imports(module):
        owners = OWNED.get(name)
        if owners is None:
            continue
        if module not in owners:
            bad.append("%s.py:%d imports %s (only %s may)" % (module, line, name,
                                                               ", ".join(sorted(owners))))
        elif owners[module] and not lazy:
            bad.append("%s.py:%d imports %s at module level (must be lazy)" % (module, line, name))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(NO_TRIO))
def test_pure_layers_do_not_use_trio(module):
    bad = [line for name, line, _ in _imports(module) if name == "trio"]
    assert not bad, "%s.py imports trio at line(s) %s" % (module, bad)


def test_every_module_has_docstring_and_logger():
    for module in _modules():
        text = _path(module).read_text()
        tree = ast.parse(text)
        assert ast.get_docstring(tree), "%s.py lacks a module docstring" % module
        if module != "errors":  # the exception tree logs nothing
            assert "log = logging.getLogger(__name__)" in text, "%s.py lacks its logger" % module


def test_parser_sees_lazy_and_relative_imports():
    found = {(n, lazy) for n, _, lazy in _imports("mount")}
    assert ("pyfuse3", True) in found
    assert ("catalog", False) in found
    assert ("objects", True) in found


def _front_end(module):
    """The front-end a module belongs to (fuse, api, console) or None for the core."""
    if module.startswith("fuse."):
        return "fuse"
    head = module.split(".")[0]
    return head if head in ("api", "console") and "." in module else None


@pytest.mark.parametrize("module", _modules())
def test_front_ends_do_not_import_each_other(module):
    mine = _front_end(module)
    if mine is None:
        return
    bad = ["%s line %d imports %s" % (module, line, name) for name, line, _ in _imports(module)
           if _front_end(name) not in (None, mine)]
    assert not bad, "\n".join(bad)


def test_parser_resolves_subpackage_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "cosfs"
    (pkg / "api").mkdir(parents=True)
    for name in ("catalog.py", "api/__init__.py", "api/auth.py"):
        (pkg / name).write_text('"""x"""\n')
    (pkg / "api" / "app.py").write_text(
        "from . import auth\nfrom ..catalog import Catalog\nimport cosfs.api.auth\n"
        "def f():\n    from .auth import verify\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    assert _modules() == ["api.app", "api.auth", "catalog"]
    assert sorted(_imports("api.app")) == [("api.auth", 1, False), ("api.auth", 3, False),
                                           ("api.auth", 5, True), ("catalog", 2, False)]
