"""Finding the files a payload refers to (mirror.media_refs), and the URL policy and
address check every download passes (mirror.media_net)."""

from __future__ import annotations

import httpcore
import pytest

from mirror.errors import ConfigError
from mirror.media_net import GuardedBackend, Refused, UrlPolicy, address_allowed, parse_hosts
from mirror.media_refs import MAX_REFS, FileRef, extract

FAL = UrlPolicy()


def test_file_objects_at_any_depth_and_in_lists_with_their_paths():
    payload = {
        "images": [
            {"url": "https://v3.fal.media/files/a.png", "content_type": "image/png",
             "file_name": "a.png", "file_size": 10},
            {"url": "https://v3.fal.media/files/b.png", "width": 5, "file_size": 20},
        ],
        "result": {"my video": {"url": "https://fal.media/v.mp4", "content_type": "video/mp4"}},
        "timings": {"inference": 1.5},
    }  # fmt: skip
    assert extract(payload, "output", FAL.bare_host) == [
        FileRef("output", "$.images[0]", "https://v3.fal.media/files/a.png", "image/png", "a.png", 10),
        FileRef("output", "$.images[1]", "https://v3.fal.media/files/b.png", None, None, 20),
        FileRef("output", '$.result["my video"]', "https://fal.media/v.mp4", "video/mp4"),
    ]  # fmt: skip


def test_bare_urls_count_only_on_media_hosts():
    payload = {
        "image_url": "https://v3b.fal.media/files/in.png",
        "lora": "https://huggingface.co/acme/w.safetensors",
        "prompt": "see https://v3.fal.media is nice",
        "evil": "https://v3.fal.media.evil.com/x.png",
    }
    assert extract(payload, "input", FAL.bare_host) == [
        FileRef("input", "$.image_url", "https://v3b.fal.media/files/in.png")
    ]


def test_declared_fields_that_are_not_what_fal_sends_are_unknown():
    obj = {"url": "https://fal.media/a", "file_size": -1, "content_type": "x" * 300,
           "file_name": "line\nbreak"}  # fmt: skip
    assert extract([obj, {**obj, "file_size": True}], "output", FAL.bare_host) == [
        FileRef("output", "$[0]", "https://fal.media/a"),
        FileRef("output", "$[1]", "https://fal.media/a"),
    ]


def test_a_url_alone_or_a_non_web_url_is_not_a_file_object():
    payload = {"a": {"url": "https://example.com/page"}, "b": {"url": "ftp://x/y", "file_size": 1}}
    assert extract(payload, "output", FAL.bare_host) == []


def test_a_payload_with_endless_references_is_cut():
    payload = [{"url": f"https://fal.media/{k}", "file_size": 1} for k in range(MAX_REFS + 50)]
    assert len(extract(payload, "output", FAL.bare_host)) == MAX_REFS


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://v3.fal.media/a.png", "is not https"),
        ("https://evil.com/a.png", "not a media host"),
        ("https://v3.fal.media.evil.com/a.png", "not a media host"),
        ("https://169.254.169.254/latest", "not a media host"),
        ("https://fal.media:8443/a.png", "port 8443"),
        ("https://user:pw@fal.media/a.png", "credentials"),
        ("https://fal.media\\@evil.com/a.png", "backslash"),
        ("https://fal.media/a b.png", "whitespace"),
        ("https://fal.media/files/../../etc/passwd", "'..' segment"),
        ("https://fal.media/files/%2E%2E/x", "'..' segment"),
        ("https://fal.media/files/a%2Fb", "encoded"),
        ("https://fal.media/files/a%00.png", "encoded"),
        ("https://[::1/a", "cannot be parsed"),
    ],
)
def test_the_policy_refuses_unsafe_urls_naming_why(url, reason):
    with pytest.raises(Refused, match=reason):
        FAL.check(url)


def test_the_policy_takes_fal_hosts_and_added_ones():
    policy = UrlPolicy.build(["cdn.example.org"], {"MIRROR_MEDIA_HOSTS": "*.acme.io"},
                             base_url="https://api.fal.ai/v1")  # fmt: skip
    for url in ("https://fal.media/a", "https://v3.fal.media/a", "https://cdn.example.org/x",
                "https://a.b.acme.io/x"):  # fmt: skip
        assert policy.check(url) == url
    with pytest.raises(Refused):
        policy.check("https://acme.io/x")  # *.acme.io is its subdomains only
    assert not policy.simulated


def test_against_the_simulator_only_loopback_is_fetched():
    policy = UrlPolicy.build([], {}, base_url="http://127.0.0.1:8765/v1")
    assert policy.simulated
    assert policy.check("http://127.0.0.1:9000/files/a.png")
    with pytest.raises(Refused, match="not the simulated CDN"):
        policy.check("https://v3.fal.media/files/a.png")


@pytest.mark.parametrize("bad", ["bad host", "*.com", "a/b", "-x.com", "*"])
def test_bad_host_patterns_are_config_errors(bad):
    with pytest.raises(ConfigError, match="not a host name"):
        parse_hosts([bad])


@pytest.mark.parametrize(
    ("address", "loopback_ok", "allowed"),
    [
        ("8.8.8.8", False, True),
        ("2606:4700::1111", False, True),
        ("127.0.0.1", False, False),
        ("127.0.0.1", True, True),
        ("::1", False, False),
        ("::ffff:127.0.0.1", False, False),
        ("10.1.2.3", True, False),
        ("192.168.1.1", False, False),
        ("172.16.0.1", False, False),
        ("169.254.169.254", True, False),
        ("fe80::1", False, False),
        ("100.64.0.1", False, False),
        ("0.0.0.0", False, False),
        ("224.0.0.1", False, False),
        ("not-an-ip", False, False),
    ],
)
def test_addresses_allowed(address, loopback_ok, allowed):
    assert address_allowed(address, allow_loopback=loopback_ok) is allowed


class _NeverConnects(httpcore.NetworkBackend):
    def connect_tcp(self, *args, **kwargs):
        raise AssertionError("a connection was opened")


def test_a_name_resolving_to_loopback_is_refused_before_any_connection():
    backend = GuardedBackend(_NeverConnects(), allow_loopback=False)
    with pytest.raises(Refused, match=r"localhost resolves to .*loopback"):
        backend.connect_tcp("localhost", 443)
