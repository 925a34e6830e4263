"""The console's pure parts: logins, sessions, CSRF tokens, the login throttle, form bodies."""

import pytest
import trio

from cosfs.console import forms
from cosfs.console.sessions import MAX_PENALTY, LoginThrottle, Sessions, check_login
from cosfs.credentials import READ_ONLY, Credential, Credentials

from helpers import trio_test

ID = "AKID" + "a" * 32
KEY = "k" * 40


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def creds():
    return Credentials([Credential(ID, KEY), Credential("AKID" + "r" * 32, "r" * 40, READ_ONLY)])


def test_check_login_matches_only_the_exact_pair():
    c = creds()
    assert check_login(c, ID, KEY).secret_id == ID
    assert check_login(c, ID, KEY[:-1] + "x") is None
    assert check_login(c, ID, "") is None
    assert check_login(c, "AKID" + "b" * 32, KEY) is None
    assert check_login(c, "", KEY) is None
    assert check_login(c, "AKID" + "r" * 32, "r" * 40).read_only


def test_sessions_expire_after_idle_timeout_and_renew_on_use():
    clock = Clock()
    s = Sessions(60, clock)
    a = s.create(ID)
    assert len(a.token) >= 40 and a.csrf and a.csrf != a.token
    clock.now += 50
    assert s.get(a.token) is a           # renewed
    clock.now += 50
    assert s.get(a.token) is a
    clock.now += 61
    assert s.get(a.token) is None        # expired and forgotten
    assert s.get(a.token) is None and len(s) == 0
    assert s.get("") is None and s.get(None) is None and s.get("forged") is None


def test_session_end_and_distinct_tokens():
    s = Sessions(60, Clock())
    a, b = s.create(ID), s.create(ID)
    assert a.token != b.token and a.csrf != b.csrf
    s.end(a.token)
    assert s.get(a.token) is None and s.get(b.token) is b


def test_sessions_have_a_maximum_age():
    clock = Clock()
    s = Sessions(3600, clock)
    a = s.create(ID)
    for _ in range(13):
        clock.now += 3500
        s.get(a.token)
    assert s.get(a.token) is None


def test_csrf_check():
    a = Sessions(60, Clock()).create(ID)
    assert a.csrf_ok(a.csrf)
    assert not a.csrf_ok(None) and not a.csrf_ok("") and not a.csrf_ok(a.csrf + "x")
    assert not a.csrf_ok("é")


def test_throttle_doubles_penalty_and_clears_on_success():
    clock = Clock()
    t = LoginThrottle(clock)
    assert t.wait("1.2.3.4") == 0
    assert t.failed("1.2.3.4") == 1
    assert t.wait("1.2.3.4") == 1 and t.wait("5.6.7.8") == 0
    clock.now += 1
    assert t.wait("1.2.3.4") == 0
    assert t.failed("1.2.3.4") == 2
    assert t.failed("1.2.3.4") == 4
    for _ in range(10):
        last = t.failed("1.2.3.4")
    assert last == MAX_PENALTY
    t.succeeded("1.2.3.4")
    assert t.wait("1.2.3.4") == 0


def test_throttle_is_bounded():
    t = LoginThrottle(Clock(), max_clients=3)
    for i in range(10):
        t.failed("10.0.0.%d" % i)
    assert t.wait("10.0.0.0") == 0 and t.wait("10.0.0.9") > 0


def test_urlencoded_forms():
    assert forms.parse_urlencoded(b"a=1&b=%3Cx%3E&b=2&c=") == {"a": "1", "b": "2", "c": ""}
    with pytest.raises(forms.FormError):
        forms.parse_urlencoded(b"a=" + b"x" * (forms.MAX_FORM_BYTES + 1))
    with pytest.raises(forms.FormError):
        forms.parse_urlencoded(b"a=\xff")


def _multipart(boundary, parts):
    out = b""
    for name, filename, data in parts:
        disp = 'form-data; name="%s"' % name
        if filename is not None:
            disp += '; filename="%s"' % filename
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n"
        out += data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


async def _pieces(data, size):
    for i in range(0, len(data), size):
        await trio.sleep(0)
        yield data[i:i + size]


@trio_test
async def test_multipart_streams_fields_and_files():
    boundary = b"----b0undary"
    payload = bytes(range(256)) * 100
    body = _multipart(boundary, [("csrf", None, b"tok"), ("file", "a.bin", payload),
                                 ("file", "b.txt", b"")])
    assert forms.boundary_of("multipart/form-data; boundary=----b0undary") == boundary
    assert forms.boundary_of("text/plain") is None
    for size in (1, 7, 1000, len(body)):
        events = forms.multipart_events(_pieces(body, size), boundary)
        got = []
        async for ev in events:
            if ev[0] == "part" and ev[2] is None:
                got.append((ev[1], await forms.field_value(events)))
            elif ev[0] == "part":
                data = b"".join([p async for p in forms.file_body(events)])
                got.append((ev[1], ev[2], data))
        assert got == [("csrf", "tok"), ("file", "a.bin", payload), ("file", "b.txt", b"")]


@trio_test
async def test_multipart_garbage_is_a_form_error():
    with pytest.raises(forms.FormError):
        async for _ in forms.multipart_events(_pieces(b"not multipart at all" * 10, 50), b"xyz"):
            pass


# -- the console: section of the configuration

def _load(tmp_path, extra):
    from cosfs import config
    path = tmp_path / "mount.yaml"
    path.write_text('store: ./data\nkeys: ./keys\nappid: "1250000000"\n' + extra)
    return config.load(path)


def test_console_config_defaults_and_values(tmp_path):
    cfg = _load(tmp_path, "")
    assert not cfg.console.enabled and cfg.console.listen == "127.0.0.1:8361"
    assert cfg.console.credentials == tmp_path / "data" / "credentials"
    cfg = _load(tmp_path, "api:\n  credentials: ./creds\nconsole:\n  enabled: true\n"
                          "  listen: '[::1]:9000'\n  session_timeout: 120\n")
    assert cfg.console.enabled and cfg.console.listen == "[::1]:9000"
    assert cfg.console.session_timeout == 120.0
    assert cfg.console.credentials == tmp_path / "creds"


@pytest.mark.parametrize("text, words", [
    ("console:\n  listen: 0.0.0.0:8361\n", "console.allow_remote"),
    ("console:\n  session_timeout: 10\n", "60 to 3600"),
    ("console:\n  nope: 1\n", "nope"),
    ("console: [1]\n", "mapping"),
])
def test_console_config_errors(tmp_path, text, words):
    from cosfs import errors
    with pytest.raises(errors.ConfigError) as info:
        _load(tmp_path, text)
    assert words in str(info.value)
