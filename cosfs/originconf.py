"""The bucket origin document (PUT / GET / DELETE bucket origin, "back-to-origin").

Document, with the element names COS uses (``docs/api.md``, "Origin pull")::

    <OriginConfiguration>
      <OriginRule>                                   1 to 100 rules
        <RulePriority>1</RulePriority>               1..10000, unique; 1 is tried first
        <OriginType>Mirror</OriginType>              Mirror (the only type a file system can serve)
        <OriginCondition>
          <HTTPStatusCode>404</HTTPStatusCode>       optional; 404 only
          <Prefix>images/</Prefix>                   optional; empty: every key
          <Suffix>.jpg</Suffix>                      optional
        </OriginCondition>
        <OriginParameter>                            optional
          <Protocol>HTTP</Protocol>                  HTTP | HTTPS | FOLLOW (= HTTP); default HTTP
          <FollowQueryString>true</FollowQueryString>        accepted, no effect (no query)
          <FollowRedirection>true</FollowRedirection>        default true
          <HttpHeader><NewHttpHeaders>                       optional, at most 10
            <Header><Key>Referer</Key><Value>...</Value></Header>
          </NewHttpHeaders></HttpHeader>
        </OriginParameter>
        <OriginInfo>
          <HostInfo>                                 1 to 10
            <HostName>origin.example.com:8080</HostName>     host or IP, optional :port
            <Weight>10</Weight>                      optional 1..100: heavier hosts first
            <StandbyHostName_1>...</StandbyHostName_1>       up to _10, tried in order
          </HostInfo>
          <FileInfo>                                 optional
            <PrefixConfiguration><Prefix>p/</Prefix><ReplacedWithPrefix>q/</ReplacedWithPrefix>
            </PrefixConfiguration>
            <SuffixConfiguration><Suffix>s</Suffix><ReplacedWithSuffix>t</ReplacedWithSuffix>
            </SuffixConfiguration>
            <FixedFileConfiguration><FixedFilePath>f</FixedFilePath></FixedFileConfiguration>
          </FileInfo>
        </OriginInfo>
      </OriginRule>
    </OriginConfiguration>

Anything else (unknown elements, other origin types, bad host names, duplicate
priorities) is :class:`errors.MalformedXML` with a message saying what. The
origin path of a key (:func:`origin_path`): the key; a ``PrefixConfiguration``
with only ``Prefix`` puts that prefix before it, with ``ReplacedWithPrefix``
it replaces ``Prefix`` at the start of a key that has it (likewise for
suffixes); a ``FixedFilePath`` replaces the whole path.

Pure: no I/O, no trio; safe on any thread.
"""

import logging
import re
from dataclasses import dataclass
from urllib.parse import quote

from . import errors, xmldoc

log = logging.getLogger(__name__)

ROOT = "OriginConfiguration"
MAX_RULES = 100
MAX_HOSTS = 10
MAX_STANDBY = 10
MAX_NEW_HEADERS = 10
PROTOCOLS = ("HTTP", "HTTPS", "FOLLOW")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"|\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"(?::([0-9]{1,5}))?\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]{0,1024}\Z")
#: request headers the fetch sets itself: a rule may not replace them
_RESERVED_HEADERS = ("host", "content-length", "transfer-encoding", "connection", "range")
_STANDBY = ["StandbyHostName_%d" % i for i in range(1, MAX_STANDBY + 1)]
_BOOL = {"true": True, "false": False}


@dataclass(frozen=True)
class HostInfo:
    """An origin host (``name[:port]``), its weight, and its standby hosts in order."""

    host: str
    weight: "int | None" = None
    standby: "tuple[str, ...]" = ()


@dataclass(frozen=True)
class OriginRule:
    """One ``OriginRule``; see the module docstring for each field's element."""

    priority: int
    hosts: "tuple[HostInfo, ...]"
    prefix: str = ""
    suffix: str = ""
    protocol: str = "HTTP"
    follow_redirection: bool = True
    follow_query_string: "bool | None" = None
    new_headers: "tuple[tuple[str, str], ...]" = ()
    file_prefix: "str | None" = None
    replaced_prefix: "str | None" = None
    file_suffix: "str | None" = None
    replaced_suffix: "str | None" = None
    fixed_path: "str | None" = None
    status_code: "str | None" = None

    @property
    def scheme(self):
        """``http`` or ``https`` (FOLLOW: a miss on the mount has no request to follow)."""
        return "https" if self.protocol == "HTTPS" else "http"

    def matches(self, key):
        """True when the missing ``key`` (text) triggers this rule."""
        return key.startswith(self.prefix) and key.endswith(self.suffix) and \
            len(key) >= len(self.prefix) + len(self.suffix)

    def candidates(self):
        """Host names to try, in order: heavier hosts first (document order for equal
        weights), each followed by its standby hosts."""
        order = sorted(range(len(self.hosts)), key=lambda i: (-(self.hosts[i].weight or 0), i))
        out = []
        for i in order:
            h = self.hosts[i]
            out.append(h.host)
            out.extend(h.standby)
        return out

    def url(self, host, key):
        """The origin URL of ``key`` on ``host``."""
        return "%s://%s/%s" % (self.scheme, host, quote(origin_path(self, key),
                                                        safe="/~!$&'()*+,;=:@"))


@dataclass(frozen=True)
class OriginConfig:
    """A bucket's origin rules, sorted by priority."""

    rules: "tuple[OriginRule, ...]"

    def rule_for(self, key):
        """The first rule (by priority) that ``key`` (text) triggers, or None."""
        for rule in self.rules:
            if rule.matches(key):
                return rule
        return None


def origin_path(rule, key):
    """The path (without the leading ``/``) the origin is asked for in place of ``key``."""
    if rule.fixed_path is not None:
        return rule.fixed_path.lstrip("/")
    path = key
    if rule.file_prefix is not None:
        if rule.replaced_prefix is None:
            path = rule.file_prefix + path
        elif path.startswith(rule.file_prefix):
            path = rule.replaced_prefix + path[len(rule.file_prefix):]
    if rule.file_suffix is not None:
        if rule.replaced_suffix is None:
            path = path + rule.file_suffix
        elif path.endswith(rule.file_suffix) and rule.file_suffix:
            path = path[:len(path) - len(rule.file_suffix)] + rule.replaced_suffix
    return path.lstrip("/")


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _host(value, where):
    text = (value or "").strip()
    m = _HOST.match(text)
    port = _PORT.match(text, m.end()) if m else None
    if not m or not port or (port.group(1) and not 0 < int(port.group(1)) < 65536):
        raise errors.MalformedXML("%s must be a host name or IP address with an optional "
                                  ":port (no scheme, no path), found %s" % (where, _short(text)))
    return text


def _int(text, where, low, high):
    if not re.fullmatch(r"[0-9]{1,6}", text or "") or not low <= int(text) <= high:
        raise errors.MalformedXML("%s must be a whole number from %d to %d, found %s"
                                  % (where, low, high, _short(text)))
    return int(text)


def _bool(elem, name):
    text = xmldoc.text(elem, name, required=False)
    if text is None:
        return None
    if text.lower() not in _BOOL:
        raise errors.MalformedXML("%s must be true or false, found %s" % (name, _short(text)))
    return _BOOL[text.lower()]


def _path_text(elem, name, required=False):
    text = xmldoc.text(elem, name, required=required)
    if text is not None and (len(text.encode("utf-8")) > 1024 or "\x00" in text):
        raise errors.MalformedXML("%s must be at most 1024 bytes without NUL" % name)
    return text


def parse_origin(doc):
    """Parse a PUT bucket origin body (bytes or str) into an :class:`OriginConfig`.

    Raises :class:`errors.MalformedXML` for anything outside the module's schema.
    """
    if isinstance(doc, (bytes, bytearray, memoryview)):
        doc = bytes(doc).rstrip(b"\x00")  # setfattr -v may add a NUL
    elif isinstance(doc, str):
        doc = doc.rstrip("\x00")
    root = xmldoc.parse(doc, ROOT)
    xmldoc.check_children(root, ("OriginRule",), repeatable=("OriginRule",))
    elems = root.findall("OriginRule")
    if not elems:
        raise errors.MalformedXML("an OriginConfiguration needs at least one OriginRule")
    if len(elems) > MAX_RULES:
        raise errors.MalformedXML("at most %d origin rules are allowed" % MAX_RULES)
    rules = [_rule(e) for e in elems]
    seen = set()
    for r in rules:
        if r.priority in seen:
            raise errors.MalformedXML("two origin rules have RulePriority %d" % r.priority)
        seen.add(r.priority)
    return OriginConfig(tuple(sorted(rules, key=lambda r: r.priority)))


def _rule(elem):
    xmldoc.check_children(elem, ("RulePriority", "OriginType", "OriginCondition",
                                 "OriginParameter", "OriginInfo"))
    priority = _int(xmldoc.text(elem, "RulePriority"), "RulePriority", 1, 10000)
    kind = xmldoc.text(elem, "OriginType")
    if kind != "Mirror":
        raise errors.MalformedXML("OriginType must be Mirror (a file system cannot answer a "
                                  "miss with a redirect), found %s" % _short(kind))
    fields = {}
    cond = xmldoc.find_one(elem, "OriginCondition", required=False)
    if cond is not None:
        xmldoc.check_children(cond, ("HTTPStatusCode", "Prefix", "Suffix"))
        code = xmldoc.text(cond, "HTTPStatusCode", required=False)
        if code not in (None, "404"):
            raise errors.MalformedXML("HTTPStatusCode of a Mirror rule must be 404, found %s"
                                      % _short(code))
        fields.update(status_code=code, prefix=_path_text(cond, "Prefix") or "",
                      suffix=_path_text(cond, "Suffix") or "")
    param = xmldoc.find_one(elem, "OriginParameter", required=False)
    if param is not None:
        fields.update(_parameter(param))
    info = xmldoc.find_one(elem, "OriginInfo")
    xmldoc.check_children(info, ("HostInfo", "FileInfo"), repeatable=("HostInfo",))
    host_elems = info.findall("HostInfo")
    if not host_elems:
        raise errors.MalformedXML("OriginInfo needs at least one HostInfo")
    if len(host_elems) > MAX_HOSTS:
        raise errors.MalformedXML("at most %d HostInfo are allowed in a rule" % MAX_HOSTS)
    hosts = tuple(_host_info(h) for h in host_elems)
    file_info = xmldoc.find_one(info, "FileInfo", required=False)
    if file_info is not None:
        fields.update(_file_info(file_info))
    return OriginRule(priority=priority, hosts=hosts, **fields)


def _parameter(param):
    xmldoc.check_children(param, ("Protocol", "FollowQueryString", "FollowRedirection",
                                  "HttpHeader"))
    out = {}
    protocol = xmldoc.text(param, "Protocol", required=False)
    if protocol is not None:
        if protocol not in PROTOCOLS:
            raise errors.MalformedXML("Protocol must be HTTP, HTTPS or FOLLOW, found %s"
                                      % _short(protocol))
        out["protocol"] = protocol
    follow = _bool(param, "FollowRedirection")
    if follow is not None:
        out["follow_redirection"] = follow
    out["follow_query_string"] = _bool(param, "FollowQueryString")
    header = xmldoc.find_one(param, "HttpHeader", required=False)
    if header is not None:
        xmldoc.check_children(header, ("NewHttpHeaders",))
        new = xmldoc.find_one(header, "NewHttpHeaders", required=False)
        pairs = []
        if new is not None:
            xmldoc.check_children(new, ("Header",), repeatable=("Header",))
            for h in new.findall("Header"):
                xmldoc.check_children(h, ("Key", "Value"))
                key, value = xmldoc.text(h, "Key"), xmldoc.text(h, "Value")
                if not _HEADER_NAME.match(key) or key.lower() in _RESERVED_HEADERS:
                    raise errors.MalformedXML("%s cannot be sent as a header to the origin"
                                              % _short(key))
                if not _HEADER_VALUE.match(value):
                    raise errors.MalformedXML("the value of header %s must be printable ASCII "
                                              "(at most 1024 characters)" % key)
                pairs.append((key, value))
        if len(pairs) > MAX_NEW_HEADERS:
            raise errors.MalformedXML("at most %d NewHttpHeaders are allowed"
                                      % MAX_NEW_HEADERS)
        out["new_headers"] = tuple(pairs)
    return out


def _host_info(elem):
    xmldoc.check_children(elem, ["HostName", "Weight"] + _STANDBY)
    host = _host(xmldoc.text(elem, "HostName"), "HostName")
    weight = xmldoc.text(elem, "Weight", required=False)
    weight = None if weight is None else _int(weight, "Weight", 1, 100)
    standby = []
    for name in _STANDBY:
        text = xmldoc.text(elem, name, required=False)
        if text is not None:
            standby.append(_host(text, name))
    return HostInfo(host, weight, tuple(standby))


def _file_info(elem):
    xmldoc.check_children(elem, ("PrefixConfiguration", "SuffixConfiguration",
                                 "FixedFileConfiguration"))
    out = {}
    pre = xmldoc.find_one(elem, "PrefixConfiguration", required=False)
    if pre is not None:
        xmldoc.check_children(pre, ("Prefix", "ReplacedWithPrefix"))
        out["file_prefix"] = _path_text(pre, "Prefix", required=True)
        out["replaced_prefix"] = _path_text(pre, "ReplacedWithPrefix")
    suf = xmldoc.find_one(elem, "SuffixConfiguration", required=False)
    if suf is not None:
        xmldoc.check_children(suf, ("Suffix", "ReplacedWithSuffix"))
        out["file_suffix"] = _path_text(suf, "Suffix", required=True)
        out["replaced_suffix"] = _path_text(suf, "ReplacedWithSuffix")
    fixed = xmldoc.find_one(elem, "FixedFileConfiguration", required=False)
    if fixed is not None:
        xmldoc.check_children(fixed, ("FixedFilePath",))
        path = _path_text(fixed, "FixedFilePath", required=True)
        if not path.strip("/"):
            raise errors.MalformedXML("FixedFilePath must name a file")
        out["fixed_path"] = path
    return out


def _leaf(tag, value):
    return xmldoc.element(tag, value)


def render_origin(cfg):
    """The canonical document for ``cfg`` as UTF-8 bytes; ``parse_origin`` of it gives
    ``cfg`` back."""
    rules = []
    for r in cfg.rules:
        cond = []
        if r.status_code is not None:
            cond.append(_leaf("HTTPStatusCode", r.status_code))
        cond += [_leaf("Prefix", r.prefix)] + ([_leaf("Suffix", r.suffix)] if r.suffix else [])
        param = [_leaf("Protocol", r.protocol)]
        if r.follow_query_string is not None:
            param.append(_leaf("FollowQueryString", str(r.follow_query_string).lower()))
        param.append(_leaf("FollowRedirection", str(r.follow_redirection).lower()))
        if r.new_headers:
            headers = [xmldoc.element("Header", children=[_leaf("Key", k), _leaf("Value", v)])
                       for k, v in r.new_headers]
            param.append(xmldoc.element("HttpHeader", children=[
                xmldoc.element("NewHttpHeaders", children=headers)]))
        info = []
        for h in r.hosts:
            leaves = [_leaf("HostName", h.host)]
            if h.weight is not None:
                leaves.append(_leaf("Weight", str(h.weight)))
            leaves += [_leaf(_STANDBY[i], s) for i, s in enumerate(h.standby)]
            info.append(xmldoc.element("HostInfo", children=leaves))
        file_info = []
        if r.file_prefix is not None:
            leaves = [_leaf("Prefix", r.file_prefix)]
            if r.replaced_prefix is not None:
                leaves.append(_leaf("ReplacedWithPrefix", r.replaced_prefix))
            file_info.append(xmldoc.element("PrefixConfiguration", children=leaves))
        if r.file_suffix is not None:
            leaves = [_leaf("Suffix", r.file_suffix)]
            if r.replaced_suffix is not None:
                leaves.append(_leaf("ReplacedWithSuffix", r.replaced_suffix))
            file_info.append(xmldoc.element("SuffixConfiguration", children=leaves))
        if r.fixed_path is not None:
            file_info.append(xmldoc.element("FixedFileConfiguration",
                                            children=[_leaf("FixedFilePath", r.fixed_path)]))
        if file_info:
            info.append(xmldoc.element("FileInfo", children=file_info))
        rules.append(xmldoc.element("OriginRule", children=[
            _leaf("RulePriority", str(r.priority)), _leaf("OriginType", "Mirror"),
            xmldoc.element("OriginCondition", children=cond),
            xmldoc.element("OriginParameter", children=param),
            xmldoc.element("OriginInfo", children=info)]))
    return xmldoc.render(xmldoc.element(ROOT, children=rules))


def simple_config(hosts, *, prefix="", suffix="", protocol="HTTP", follow_redirection=True,
                  standby=()):
    """A one-rule configuration from flags (``cosfs bucket-origin --host ...``): the first
    of ``hosts`` weighs most; ``standby`` are tried after the first host fails. Raises
    :class:`errors.MalformedXML` like a document would."""
    if not hosts:
        raise errors.MalformedXML("give at least one origin host")
    if protocol not in PROTOCOLS:
        raise errors.MalformedXML("Protocol must be HTTP, HTTPS or FOLLOW, found %s"
                                  % _short(protocol))
    if len(hosts) > MAX_HOSTS or len(standby) > MAX_STANDBY:
        raise errors.MalformedXML("at most %d hosts and %d standby hosts"
                                  % (MAX_HOSTS, MAX_STANDBY))
    infos = []
    for i, h in enumerate(hosts):
        infos.append(HostInfo(_host(h, "host"), None,
                              tuple(_host(s, "standby host") for s in standby) if i == 0 else ()))
    rule = OriginRule(priority=1, hosts=tuple(infos), prefix=prefix, suffix=suffix,
                      protocol=protocol, follow_redirection=follow_redirection,
                      status_code="404")
    # round trip through the document: one set of checks for flags and XML
    return parse_origin(render_origin(OriginConfig((rule,))))
