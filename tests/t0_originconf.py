"""The bucket origin document: parsing, validation, rendering, rule matching, origin URLs."""

import pytest

from cosfs import errors
from cosfs.originconf import (OriginConfig, origin_path, parse_origin, render_origin,
                              simple_config)

FULL = b"""<?xml version="1.0" encoding="UTF-8"?>
<OriginConfiguration xmlns="http://www.qcloud.com/document/product/436/7751">
  <OriginRule>
    <RulePriority>2</RulePriority>
    <OriginType>Mirror</OriginType>
    <OriginCondition><HTTPStatusCode>404</HTTPStatusCode><Prefix>img/</Prefix>
      <Suffix>.jpg</Suffix></OriginCondition>
    <OriginParameter>
      <Protocol>HTTPS</Protocol>
      <FollowQueryString>true</FollowQueryString>
      <FollowRedirection>false</FollowRedirection>
      <HttpHeader><NewHttpHeaders>
        <Header><Key>Referer</Key><Value>https://example.com/</Value></Header>
      </NewHttpHeaders></HttpHeader>
    </OriginParameter>
    <OriginInfo>
      <HostInfo><HostName>a.example.com</HostName><Weight>5</Weight>
        <StandbyHostName_1>b.example.com:8080</StandbyHostName_1></HostInfo>
      <HostInfo><HostName>10.0.0.1:81</HostName><Weight>50</Weight></HostInfo>
      <FileInfo>
        <PrefixConfiguration><Prefix>img/</Prefix><ReplacedWithPrefix>static/</ReplacedWithPrefix>
        </PrefixConfiguration>
        <SuffixConfiguration><Suffix>.jpg</Suffix><ReplacedWithSuffix>.jpeg</ReplacedWithSuffix>
        </SuffixConfiguration>
      </FileInfo>
    </OriginInfo>
  </OriginRule>
  <OriginRule>
    <RulePriority>1</RulePriority>
    <OriginType>Mirror</OriginType>
    <OriginCondition><Prefix>docs/</Prefix></OriginCondition>
    <OriginInfo><HostInfo><HostName>[::1]:8000</HostName></HostInfo></OriginInfo>
  </OriginRule>
</OriginConfiguration>
"""


def _rule(body, extra_rule=""):
    return ("<OriginConfiguration><OriginRule><RulePriority>1</RulePriority>"
            "<OriginType>Mirror</OriginType>%s<OriginInfo>%s</OriginInfo></OriginRule>"
            "</OriginConfiguration>" % (extra_rule, body))


HOST = "<HostInfo><HostName>o.example.com</HostName></HostInfo>"


def test_full_document_parses_and_sorts_by_priority():
    cfg = parse_origin(FULL)
    assert [r.priority for r in cfg.rules] == [1, 2]
    docs, img = cfg.rules
    assert docs.prefix == "docs/" and docs.protocol == "HTTP" and docs.follow_redirection
    assert img.protocol == "HTTPS" and not img.follow_redirection
    assert img.new_headers == (("Referer", "https://example.com/"),)
    # heavier host first, each main host followed by its standby hosts
    assert img.candidates() == ["10.0.0.1:81", "a.example.com", "b.example.com:8080"]
    assert img.url("a.example.com", "img/cat.jpg") == "https://a.example.com/static/cat.jpeg"
    assert docs.url("[::1]:8000", "docs/a b.txt") == "http://[::1]:8000/docs/a%20b.txt"


def test_render_round_trips():
    cfg = parse_origin(FULL)
    doc = render_origin(cfg)
    assert parse_origin(doc) == cfg
    assert render_origin(parse_origin(doc)) == doc


def test_rule_for_matches_prefix_and_suffix_by_priority():
    cfg = parse_origin(FULL)
    assert cfg.rule_for("docs/x").priority == 1
    assert cfg.rule_for("img/a.jpg").priority == 2
    assert cfg.rule_for("img/a.png") is None
    assert cfg.rule_for("other") is None
    every = parse_origin(_rule(HOST))
    assert every.rule_for("anything/at/all").priority == 1


def test_origin_path_rewriting():
    def rule(file_info):
        return parse_origin(_rule(HOST + "<FileInfo>%s</FileInfo>" % file_info)).rules[0]
    added = rule("<PrefixConfiguration><Prefix>mirror/</Prefix></PrefixConfiguration>"
                 "<SuffixConfiguration><Suffix>?raw</Suffix></SuffixConfiguration>")
    assert origin_path(added, "a/b") == "mirror/a/b?raw"
    fixed = rule("<FixedFileConfiguration><FixedFilePath>/index.html</FixedFilePath>"
                 "</FixedFileConfiguration>")
    assert origin_path(fixed, "whatever") == "index.html"
    replaced = rule("<PrefixConfiguration><Prefix>a/</Prefix>"
                    "<ReplacedWithPrefix></ReplacedWithPrefix></PrefixConfiguration>")
    assert origin_path(replaced, "a/x") == "x"
    assert origin_path(replaced, "b/x") == "b/x"


def test_setfattr_trailing_nul_is_accepted():
    assert parse_origin(_rule(HOST).encode() + b"\x00").rules[0].hosts[0].host == "o.example.com"


@pytest.mark.parametrize("doc, words", [
    ("<OriginConfiguration/>", "at least one OriginRule"),
    ("<Other/>", "root element"),
    (_rule(HOST).replace("Mirror", "Proxy"), "OriginType must be Mirror"),
    (_rule(HOST).replace("<RulePriority>1<", "<RulePriority>0<"), "RulePriority"),
    (_rule(HOST).replace("<RulePriority>1<", "<RulePriority>x<"), "RulePriority"),
    (_rule(""), "at least one HostInfo"),
    (_rule("<HostInfo><HostName>http://o.example.com</HostName></HostInfo>"), "HostName"),
    (_rule("<HostInfo><HostName>o.example.com/path</HostName></HostInfo>"), "HostName"),
    (_rule("<HostInfo><HostName>o.example.com:99999</HostName></HostInfo>"), "HostName"),
    (_rule("<HostInfo><HostName>a</HostName><Weight>0</Weight></HostInfo>"), "Weight"),
    (_rule(HOST, "<OriginCondition><HTTPStatusCode>403</HTTPStatusCode></OriginCondition>"),
     "404"),
    (_rule(HOST, "<OriginParameter><Protocol>FTP</Protocol></OriginParameter>"), "Protocol"),
    (_rule(HOST, "<OriginParameter><FollowRedirection>yes</FollowRedirection>"
                 "</OriginParameter>"), "true or false"),
    (_rule(HOST, "<OriginParameter><HttpHeader><NewHttpHeaders><Header><Key>Host</Key>"
                 "<Value>x</Value></Header></NewHttpHeaders></HttpHeader></OriginParameter>"),
     "cannot be sent"),
    (_rule(HOST, "<Surprise/>"), "unknown element"),
    (_rule(HOST + "<FileInfo><FixedFileConfiguration><FixedFilePath>/</FixedFilePath>"
                  "</FixedFileConfiguration></FileInfo>"), "FixedFilePath"),
    ("<OriginConfiguration>" + 2 * _rule(HOST)[len("<OriginConfiguration>"):
                                               -len("</OriginConfiguration>")]
     + "</OriginConfiguration>", "two origin rules"),
    ("<!DOCTYPE x><OriginConfiguration/>", "DOCTYPE"),
    ("not xml", "malformed"),
])
def test_invalid_documents_are_refused(doc, words):
    with pytest.raises(errors.MalformedXML) as info:
        parse_origin(doc)
    assert words.lower() in str(info.value).lower()


def test_simple_config_from_flags():
    cfg = simple_config(["127.0.0.1:8000", "mirror.example.com"], prefix="p/", suffix=".bin",
                        standby=["backup.example.com"], follow_redirection=False)
    assert isinstance(cfg, OriginConfig)
    (rule,) = cfg.rules
    assert rule.candidates() == ["127.0.0.1:8000", "backup.example.com", "mirror.example.com"]
    assert rule.matches("p/x.bin") and not rule.matches("p/x.txt")
    assert not rule.follow_redirection
    with pytest.raises(errors.MalformedXML):
        simple_config([])
    with pytest.raises(errors.MalformedXML):
        simple_config(["https://x"])


def test_missing_configuration_error_code():
    exc = errors.OriginConfigurationNotFoundError("none")
    assert exc.http_status == 404 and exc.code == "OriginConfigurationNotFoundError"
    assert errors.OriginFailed("x").http_status == 424
