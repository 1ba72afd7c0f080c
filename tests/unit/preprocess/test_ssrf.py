"""The SSRF classifier, as pure functions: nothing here connects anywhere."""

import ipaddress

import pytest

from serving.preprocess.ssrf import blocked_reason, parse_host_address, parse_networks


def check(host: str, allowed=()):
    addr = parse_host_address(host)
    assert addr is not None, host
    return blocked_reason(addr, parse_networks(allowed))


@pytest.mark.parametrize("host,reason", [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("[::1]", "loopback"),
    ("10.0.0.1", "private"), ("10.255.1.2", "private"),
    ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.0.1", "private"), ("192.168.255.255", "private"),
    ("169.254.169.254", "link-local"), ("[fe80::1]", "link-local"), ("[fe80::1%25eth0]", None),
    ("224.0.0.1", "multicast"), ("[ff02::1]", "multicast"),
    ("0.0.0.0", "unspecified"), ("[::]", "unspecified"),
    ("240.0.0.1", None), ("100.64.0.1", None), ("198.18.0.1", None),
    ("[fc00::1]", "private"), ("[fd12:3456::1]", "private"),
])
def test_blocked_addresses(host, reason):
    got = check(host)
    assert got is not None, host
    if reason:
        assert reason in got


@pytest.mark.parametrize("spelling", [
    "2130706433",        # decimal
    "0x7f000001",        # hex
    "0177.0.0.1",        # octal octet
    "017700000001",      # octal whole
    "127.1",             # short form
    "0x7f.1",
    "127.0.0.1.",        # trailing dot
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",     # deprecated IPv4-compatible
    "[64:ff9b::7f00:1]",  # NAT64 of loopback
    "[2002:7f00:1::]",   # 6to4 of loopback
])
def test_loopback_spellings(spelling):
    assert parse_host_address(spelling) is not None
    assert "loopback" in check(spelling)


@pytest.mark.parametrize("spelling,expected", [
    ("167772161", "10.0.0.1"), ("012.0.0.1", "10.0.0.1"), ("0xa9fea9fe", "169.254.169.254"),
    ("2852039166", "169.254.169.254"), ("0251.0376.0251.0376", "169.254.169.254"),
    ("192.168.1", "192.168.0.1"), ("[::ffff:10.0.0.1]", "::ffff:a00:1"),
])
def test_private_spellings(spelling, expected):
    assert parse_host_address(spelling) == ipaddress.ip_address(expected)
    assert check(spelling) is not None


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "[2606:4700::1111]",
                                  "[2001:4860:4860::8888]"])
def test_public_addresses_pass(host):
    assert check(host) is None


@pytest.mark.parametrize("name", ["example.com", "localhost", "1.2.3.4.5", "256.1.1.1",
                                  "0x1ffffffff", "08.1.1.1", "a.b", ""])
def test_names_are_not_addresses(name):
    assert parse_host_address(name) is None


def test_allowlist_exempts_only_its_network():
    assert check("127.0.0.1", ["127.0.0.1/32"]) is None
    assert "loopback" in check("127.0.0.2", ["127.0.0.1/32"])
    assert check("[::ffff:127.0.0.1]", ["127.0.0.1/32"]) is None
    assert "private" in check("10.0.0.1", ["127.0.0.0/8"])
