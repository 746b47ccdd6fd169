"""The simulated media CDN: its files, expiries, signatures, faults and log."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from support.sim import NOW, static_world

from mirror.simulator import CdnFile, ManualClock, MediaMix, SimulatedCDN, attach_media


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


def test_files_are_their_declared_bytes_and_images_are_real_pngs(clock):
    with SimulatedCDN(clock=clock) as cdn:
        cdn.add(CdnFile(name="p/a.png", size=200_000, seed=5))
        cdn.add(CdnFile(name="p/b.mp3", size=1000, content_type="audio/mpeg", seed=6))
        r = httpx.get(cdn.url("p/a.png"))
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/png"
        assert len(r.content) == 200_000 == int(r.headers["content-length"])
        assert r.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert hashlib.sha256(r.content).hexdigest() == cdn.sha256("p/a.png")
        assert httpx.get(cdn.url("p/b.mp3")).content == cdn.content("p/b.mp3")
        assert cdn.file_object("p/b.mp3") == {
            "url": f"{cdn.base_url}/files/p/b.mp3", "content_type": "audio/mpeg",
            "file_name": "b.mp3", "file_size": 1000,
        }  # fmt: skip


def test_a_file_expires_at_its_instant_of_the_clock(clock):
    with SimulatedCDN(clock=clock) as cdn:
        cdn.add(CdnFile(name="e.png", size=10, expires_at=NOW + timedelta(minutes=5)))
        assert httpx.get(cdn.url("e.png")).status_code == 200
        clock.advance(minutes=5)
        assert httpx.get(cdn.url("e.png")).status_code == 404
        assert httpx.get(f"{cdn.base_url}/files/nothing.png").status_code == 404


def test_private_files_need_a_valid_unexpired_signature(clock):
    with SimulatedCDN(clock=clock) as cdn:
        cdn.add(CdnFile(name="s.png", size=10, signed_until=NOW + timedelta(days=1)))
        url = cdn.url("s.png")
        assert "Expires=" in url and "Signature=" in url
        assert httpx.get(url).status_code == 200
        assert httpx.get(f"{cdn.base_url}/files/s.png").status_code == 403
        assert httpx.get(url.replace("Signature=", "Signature=0")).status_code == 403
        clock.advance(days=1)
        r = httpx.get(url)
        assert (r.status_code, r.text) == (403, "AccessDenied: Request has expired")
        assert r.headers["date"] == "Sun, 29 Nov 2026 12:00:00 GMT"


def test_truncated_bodies_break_off_the_first_times_only(clock):
    with SimulatedCDN(clock=clock) as cdn:
        cdn.add(CdnFile(name="t.bin", size=100_000, content_type="video/mp4", truncate_first=1))
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(cdn.url("t.bin"))
        assert len(httpx.get(cdn.url("t.bin")).content) == 100_000


def test_the_log_says_whether_a_canary_came_never_its_value(clock):
    with SimulatedCDN(clock=clock, canaries=("s3cret",)) as cdn:
        cdn.add(CdnFile(name="c.png", size=10))
        httpx.get(cdn.url("c.png"))
        httpx.get(cdn.url("c.png"), headers={"Authorization": "Key id:s3cret"})
        first, second = cdn.log
        assert (first.canary_seen, first.authorization_present) == (False, False)
        assert (second.canary_seen, second.authorization_present) == (True, True)
        assert "s3cret" not in repr(cdn.log)


def test_the_cdn_binds_to_loopback_only():
    with pytest.raises(ValueError, match="loopback only"):
        SimulatedCDN(host="0.0.0.0")


def test_attach_media_gives_recent_successes_files_and_leaves_the_rest():
    world = static_world(hours=2, per_hour=30)
    before = {r.request_id: r.json_output for r in world}
    with SimulatedCDN(clock=world.config.clock) as cdn:
        done = attach_media(
            world, cdn, seed=2, count=10, mix=MediaMix(p_expired=0, p_expiring=0, p_signed=1.0)
        )
        assert len(done.request_ids) == 10 and len(done.names) >= 10
        for r in world:
            if r.request_id in done.request_ids:
                assert r.status_code < 300 and r.ended_at >= done.since
                assert cdn.base_url in str(r.json_output)
            else:
                assert r.json_output == before[r.request_id]
        assert all(cdn.file(n).signed_until is not None for n in done.names)
        signed = {cdn.file(n).signed_until for n in done.names}
        assert signed <= {world.now() + timedelta(days=7), world.now() - timedelta(days=1)}
    assert datetime.now(UTC) > done.since
