"""The bucket replication document (PUT / GET / DELETE Bucket replication). Pure.

Document, with the element names COS uses::

    <ReplicationConfiguration>
      <Role>qcs::cam::uin/100000000001:uin/100000000001</Role>
      <Rule>                                          1 to 1000 rules
        <ID>rule-1</ID>                               optional, at most 255 characters
        <Status>Enabled</Status>                      Enabled | Disabled
        <Priority>1</Priority>                        optional integer
        <Prefix>docs/</Prefix>                        optional ("" = every key);
                                                      or <Filter><Prefix>...</Prefix></Filter>
        <Destination>
          <Bucket>qcs::cos:ap-shanghai::backup-1250000000</Bucket>
          <StorageClass>STANDARD</StorageClass>       optional
        </Destination>
        <DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>  optional
      </Rule>
    </ReplicationConfiguration>

Rules COS states and cosfs checks here: every rule names the same destination
bucket, rule IDs are unique, and no rule's prefix is a prefix of another's (so a
key matches at most one rule). Whether the destination exists, differs from the
source and has versioning enabled is checked by the core, which knows the
buckets. Anything else is :class:`errors.MalformedXML` (or
:class:`errors.InvalidArgument` for a bad destination name). Safe on any thread.
"""

import logging
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from . import errors, names, xmldoc

log = logging.getLogger(__name__)

ROOT = "ReplicationConfiguration"
MAX_RULES = 1000
STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING", "ARCHIVE",
                   "DEEP_ARCHIVE", "MAZ_STANDARD", "MAZ_STANDARD_IA", "MAZ_INTELLIGENT_TIERING")
_DEST = re.compile(r"qcs::cos:([a-z0-9-]+)::([a-z0-9-]+)\Z")
_RULE_CHILDREN = ("ID", "Status", "Priority", "Prefix", "Filter", "Destination",
                  "DeleteMarkerReplication")


@dataclass(frozen=True)
class Rule:
    """One rule: objects whose key starts with ``prefix`` go to ``dest_bucket`` in
    ``dest_region`` while ``status`` is Enabled; ``delete_markers``: deletes without a
    version id are replicated as delete markers."""

    id: str
    status: str
    prefix: str
    dest_region: str
    dest_bucket: str
    storage_class: Optional[str] = None
    delete_markers: bool = True
    priority: Optional[int] = None

    @property
    def enabled(self):
        return self.status == "Enabled"

    @property
    def destination(self):
        return "qcs::cos:%s::%s" % (self.dest_region, self.dest_bucket)


@dataclass(frozen=True)
class ReplicationConfig:
    role: str
    rules: Tuple[Rule, ...]

    @property
    def dest_bucket(self):
        return self.rules[0].dest_bucket

    @property
    def dest_region(self):
        return self.rules[0].dest_region

    def rule_for(self, key: bytes) -> Optional[Rule]:
        """The enabled rule that replicates ``key`` (bytes, UTF-8), or None."""
        for rule in self.rules:
            if rule.enabled and key.startswith(rule.prefix.encode("utf-8")):
                return rule
        return None


def parse_destination(text):
    """(region, bucket) of ``qcs::cos:<region>::<bucket>``; InvalidArgument otherwise."""
    m = _DEST.match(text or "")
    if m is None:
        raise errors.InvalidArgument("destination bucket must be qcs::cos:<region>::<bucket>, "
                                     "found %s" % names.short(text))
    region, bucket = m.groups()
    names.validate_region(region)
    names.validate_bucket_name(bucket, region)
    return region, bucket


def parse_replication(doc) -> ReplicationConfig:
    """Parse a PUT Bucket replication body (bytes or str) into a :class:`ReplicationConfig`."""
    root = xmldoc.parse(doc, ROOT)
    xmldoc.check_children(root, ("Role", "Rule"), repeatable=("Rule",))
    role = xmldoc.text(root, "Role", required=False) or ""
    elems = root.findall("Rule")
    if not elems:
        raise errors.MalformedXML("a replication configuration needs at least one Rule")
    if len(elems) > MAX_RULES:
        raise errors.MalformedXML("at most %d replication rules, found %d"
                                  % (MAX_RULES, len(elems)))
    rules = tuple(_rule(e, i) for i, e in enumerate(elems))
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise errors.MalformedXML("replication rule IDs must be unique")
    if len({(r.dest_region, r.dest_bucket) for r in rules}) != 1:
        raise errors.MalformedXML("every replication rule must name the same destination bucket")
    prefixes = sorted(r.prefix for r in rules)
    for a, b in zip(prefixes, prefixes[1:]):
        if b.startswith(a):
            raise errors.MalformedXML("replication rule prefixes overlap: %s and %s"
                                      % (names.short(a or "(every key)"), names.short(b)))
    return ReplicationConfig(role, rules)


def _rule(elem, index):
    xmldoc.check_children(elem, _RULE_CHILDREN)
    rule_id = xmldoc.text(elem, "ID", required=False) or "rule-%d" % (index + 1)
    if len(rule_id) > 255:
        raise errors.MalformedXML("a replication rule ID has at most 255 characters")
    status = xmldoc.text(elem, "Status")
    if status not in ("Enabled", "Disabled"):
        raise errors.MalformedXML("rule Status must be Enabled or Disabled, found %s"
                                  % names.short(status))
    priority = xmldoc.text(elem, "Priority", required=False)
    if priority is not None:
        if not priority.isdigit():
            raise errors.MalformedXML("rule Priority must be a whole number")
        priority = int(priority)
    prefix = xmldoc.text(elem, "Prefix", required=False)
    filt = xmldoc.find_one(elem, "Filter", required=False)
    if filt is not None:
        if prefix is not None:
            raise errors.MalformedXML("a rule has either Prefix or Filter, not both")
        xmldoc.check_children(filt, ("Prefix",))
        prefix = xmldoc.text(filt, "Prefix", required=False)
    prefix = prefix or ""
    dest = xmldoc.find_one(elem, "Destination")
    xmldoc.check_children(dest, ("Bucket", "StorageClass"))
    region, bucket = parse_destination(xmldoc.text(dest, "Bucket"))
    storage = xmldoc.text(dest, "StorageClass", required=False) or None
    if storage is not None and storage not in STORAGE_CLASSES:
        raise errors.MalformedXML("unknown StorageClass %s" % names.short(storage))
    markers = True
    dmr = xmldoc.find_one(elem, "DeleteMarkerReplication", required=False)
    if dmr is not None:
        xmldoc.check_children(dmr, ("Status",))
        value = xmldoc.text(dmr, "Status")
        if value not in ("Enabled", "Disabled"):
            raise errors.MalformedXML("DeleteMarkerReplication Status must be Enabled or "
                                      "Disabled")
        markers = value == "Enabled"
    return Rule(rule_id, status, prefix, region, bucket, storage, markers, priority)


def render_replication(cfg) -> bytes:
    """The canonical document for ``cfg``; :func:`parse_replication` of it gives ``cfg``."""
    rules = []
    for r in cfg.rules:
        children = [xmldoc.element("ID", r.id), xmldoc.element("Status", r.status)]
        if r.priority is not None:
            children.append(xmldoc.element("Priority", str(r.priority)))
        children.append(xmldoc.element("Prefix", r.prefix))
        dest = [xmldoc.element("Bucket", r.destination)]
        if r.storage_class:
            dest.append(xmldoc.element("StorageClass", r.storage_class))
        children.append(xmldoc.element("Destination", children=dest))
        children.append(xmldoc.element("DeleteMarkerReplication", children=[
            xmldoc.element("Status", "Enabled" if r.delete_markers else "Disabled")]))
        rules.append(xmldoc.element("Rule", children=children))
    top = ([xmldoc.element("Role", cfg.role)] if cfg.role else []) + rules
    return xmldoc.render(xmldoc.element(ROOT, children=top))
