"""Deterministic, realistic request history for the simulated API.

The point is to reproduce what makes mirroring fal's history hard, not to look pretty:
ties on `ended_at` to the microsecond (one group larger than a page), failures without a
runner, payloads with non-ASCII text and nested objects or none at all, billing that lands
late or never, late-recorded rows, requests still running at `now`, and requests that
arrive while a sync pages. Everything is drawn from one seeded `random.Random`, so a seed
names a history.

Cost matters because benchmarks generate a million requests: rows are built as plain lists
of integers (microseconds) and shared payload objects from small pools, and turned into
`SimRequest`s once at the end.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

from mirror.simulator.world import EPOCH, NEVER_US, SimRequest, World, WorldConfig, to_us

__all__ = [
    "DEFAULT_ENDPOINTS",
    "DEMO_MODELS",
    "MODEL_ENDPOINTS",
    "billing_unit",
    "demo_world",
    "generate_world",
    "make_requests",
]

#: The default apps of the simulated account, with traffic weights: an image app with a
#: route (so bare-app-id matching matters), an upscaler and a speech model.
DEFAULT_ENDPOINTS: Mapping[str, float] = {
    "acme/flux-lora": 0.42,
    "acme/flux-lora/turbo": 0.2,
    "acme/upscaler": 0.22,
    "acme/whisper-v3": 0.16,
}

#: Hosted models a key may call (the model-API history): no account owns them, so they are
#: billed per request (``mirror.simulator.billing``), with traffic weights.
MODEL_ENDPOINTS: Mapping[str, float] = {
    "fal-ai/flux/dev": 0.5,
    "fal-ai/flux/schnell": 0.3,
    "fal-ai/whisper": 0.2,
}

#: The two hosted models `demo_world` has the key call, with traffic weights.
DEMO_MODELS: Mapping[str, float] = {"fal-ai/flux/dev": 0.6, "fal-ai/flux/schnell": 0.4}
#: added to `demo_world`'s seed for its model calls: their own draws, not the account's
_MODELS_SEED = 1_000_003

_S = 1_000_000  # microseconds per second
_HOUR = 3600 * _S
_PAYLOAD_RETENTION = (
    30 * 24 * _HOUR
)  # fal keeps payload JSON 30 days (docs/fal-api.md, late records)
_POOL = 48
_EPOCH = EPOCH
_NEVER = NEVER_US
_td = timedelta

PROMPTS = (
    "a cup of café au lait on a rainy Paris windowsill, soft morning light",
    "東京の夜景, neon reflections on wet asphalt, cinematic",
    "Сибирь зимой: тайга под снегом, рассвет",
    "🦊 a fox astronaut floating above Earth 🚀✨",
    "crème brûlée macro photo, shallow depth of field",
    "a naïve watercolor of Zürich's old-town façades",
    "مدينة قديمة عند الغروب، ألوان دافئة",
    "Ελληνικό νησί, λευκά σπίτια και μπλε τρούλοι",
    "서울의 봄, 벚꽃이 흩날리는 거리",
    "a corgi wearing a tiny crown 👑, studio lighting, 85mm",
    "family portrait 👩‍👩‍👧‍👦 in a sunflower field, Kodak Portra 400",
    'a shop sign that says "OPEN 24/7" \\ neon\nsecond line\twith a tab',
    "São Paulo skyline at dusk, drone shot, volumetric fog",
    "ein gemütliches Holzhaus im Schwarzwald, Nebel, Herbst",
    "isometric pixel-art coffee shop, cozy, 16-bit palette",
    "photorealistic red panda reading a newspaper on a bench",
    "line drawing of a bicycle, minimalism, white background",
    "mountain lake at dawn, mist, reflections, ultra detailed",
)
TRANSCRIPTS = (
    "Bonjour, je voudrais un café au lait et un croissant, s'il vous plaît.",
    "東京の夜景はとても綺麗ですね。また来たいです。",
    "В Сибири зимой очень холодно, но очень красиво.",
    "Thanks for calling — your order #4521 ships tomorrow 📦.",
    "Die Straße ist nass; fahr bitte vorsichtig!",
    "¿Dónde está la estación de tren más cercana?",
)
_LANGS = ("fr", "ja", "ru", "en", "de", "es")
_IMAGE_SIZES = ((1024, 768), (768, 1024), (1024, 1024), (1344, 768), (512, 512))


@dataclass(frozen=True, slots=True)
class _Profile:
    """How one endpoint behaves: payload kind, and the lognormal duration of successes."""

    kind: str
    median_s: float
    sigma: float


def _profile(endpoint_id: str) -> _Profile:
    name = endpoint_id.lower()
    if "turbo" in name or "fast" in name or "schnell" in name:
        return _Profile("image-fast", 1.6, 0.5)
    if "upscal" in name:
        return _Profile("upscale", 14.0, 0.6)
    if "whisper" in name or "audio" in name or "speech" in name:
        return _Profile("audio", 35.0, 0.9)
    if "flux" in name or "sdxl" in name or "image" in name or "lora" in name:
        return _Profile("image", 6.5, 0.55)
    return _Profile("generic", 4.0, 0.8)


#: what one of a request's ``billable_units`` counts, by the kind of endpoint
_UNIT_OF_KIND = {
    "image": "image",
    "image-fast": "image",
    "upscale": "megapixel",
    "audio": "minute",
    "generic": "gpu_second",
}


def billing_unit(endpoint_id: str) -> str:
    """What the ``billable_units`` generated for this endpoint count (images, audio minutes,
    GPU seconds...): the ``unit`` its price is quoted in."""
    return _UNIT_OF_KIND[_profile(endpoint_id).kind]


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _inputs(kind: str, rng: random.Random) -> list[Any]:
    out: list[Any] = []
    for k in range(_POOL):
        prompt = PROMPTS[k % len(PROMPTS)]
        if kind in ("image", "image-fast"):
            w, h = _IMAGE_SIZES[rng.randrange(len(_IMAGE_SIZES))]
            inp: dict[str, Any] = {
                "prompt": prompt,
                "image_size": {"width": w, "height": h},
                "num_inference_steps": 4 if kind == "image-fast" else rng.choice((20, 28, 40)),
                "guidance_scale": rng.choice((3.5, 5.0, 7.5)),
                "num_images": rng.choice((1, 1, 1, 2, 4)),
                "seed": rng.getrandbits(31),
                "enable_safety_checker": rng.random() < 0.9,
                "output_format": rng.choice(("jpeg", "png")),
            }
            if kind == "image":
                inp["loras"] = [
                    {
                        "path": f"https://huggingface.co/acme/lora-{_hex(rng, 6)}/resolve/main/w.safetensors",
                        "scale": round(rng.uniform(0.4, 1.2), 2),
                    }
                    for _ in range(rng.choice((0, 1, 1, 2)))
                ]
        elif kind == "upscale":
            inp = {
                "image_url": f"https://v3.fal.media/files/koala/{_hex(rng, 20)}_input.png",
                "scale": rng.choice((2, 4)),
                "face_enhance": rng.random() < 0.3,
                "metadata": {"source": "batch-job", "tags": ["upscale", prompt[:12]]},
            }
        elif kind == "audio":
            inp = {
                "audio_url": f"https://v3.fal.media/files/rabbit/{_hex(rng, 20)}.mp3",
                "task": rng.choice(("transcribe", "transcribe", "translate")),
                "language": rng.choice((*_LANGS, None)),
                "chunk_level": "segment",
                "diarize": rng.random() < 0.25,
            }
        else:
            inp = {"text": prompt, "options": {"temperature": round(rng.random(), 2), "stop": None}}
        out.append(inp)
    return out


def _outputs(kind: str, rng: random.Random) -> list[Any]:
    out: list[Any] = []
    for k in range(_POOL):
        if kind in ("image", "image-fast"):
            w, h = _IMAGE_SIZES[rng.randrange(len(_IMAGE_SIZES))]
            out.append(
                {
                    "images": [
                        {
                            "url": f"https://v3.fal.media/files/panda/{_hex(rng, 22)}.jpeg",
                            "width": w,
                            "height": h,
                            "content_type": "image/jpeg",
                        }
                        for _ in range(rng.choice((1, 1, 2)))
                    ],
                    "timings": {"inference": round(rng.uniform(0.8, 9.0), 3)},
                    "seed": rng.getrandbits(31),
                    "has_nsfw_concepts": [False],
                    "prompt": PROMPTS[k % len(PROMPTS)],
                }
            )
        elif kind == "upscale":
            w, h = _IMAGE_SIZES[rng.randrange(len(_IMAGE_SIZES))]
            out.append(
                {
                    "image": {
                        "url": f"https://v3.fal.media/files/lion/{_hex(rng, 22)}.png",
                        "width": w * 4,
                        "height": h * 4,
                        "content_type": "image/png",
                        "file_size": rng.randrange(2_000_000, 30_000_000),
                    },
                    "timings": {"inference": round(rng.uniform(5, 30), 3)},
                }
            )
        elif kind == "audio":
            text = TRANSCRIPTS[k % len(TRANSCRIPTS)]
            t = 0.0
            chunks = []
            for piece in text.split(" ")[: rng.randint(1, 4)]:
                step = round(rng.uniform(0.4, 3.0), 2)
                chunks.append(
                    {"timestamp": [round(t, 2), round(t + step, 2)], "text": piece, "speaker": None}
                )
                t += step
            out.append(
                {"text": text, "chunks": chunks, "inferred_languages": [_LANGS[k % len(_LANGS)]]}
            )
        else:
            out.append({"result": PROMPTS[k % len(PROMPTS)][::-1], "tokens": rng.randrange(5, 500)})
    return out


_ERROR_OUTPUTS: dict[int, tuple[Any, ...]] = {
    400: (
        {"detail": "Could not download the file at image_url: HTTP 403"},
        {"detail": "Unsupported audio format: .m4b"},
    ),
    404: ({"detail": "LoRA weights not found at the given path"},),
    413: ({"detail": "Request body larger than 50 MB"},),
    422: (
        {"detail": [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]},
        {
            "detail": [
                {
                    "loc": ["body", "image_size", "width"],
                    "msg": "Input should be less than or equal to 14142",
                    "type": "less_than_equal",
                    "ctx": {"le": 14142},
                }
            ]
        },
    ),
    500: ({"detail": "Internal Server Error"}, None),
    503: ({"detail": "No runner available, try again later"}, None),
    504: ({"detail": "Request timed out after 300 seconds"},),
}

# Row layout (a list, mutable until materialised); times are integer microseconds.
_RID, _EP, _RUNNER, _SENT, _STARTED, _ENDED, _CODE, _UNITS, _BILL_LAG, _IN, _OUT, _LATE = range(12)


class _Factory:
    """Draws rows for a set of endpoints from one RNG; shared by the generator and backdate."""

    def __init__(self, endpoints: Mapping[str, float], rng: random.Random) -> None:
        self.rng = rng
        self.endpoints = list(endpoints)
        self.cum = list(accumulate(endpoints.values()))
        self.profiles = [_profile(e) for e in self.endpoints]
        self.inputs = [_inputs(p.kind, rng) for p in self.profiles]
        self.outputs = [_outputs(p.kind, rng) for p in self.profiles]
        self.runners = [[self._uuid4() for _ in range(8)] for _ in self.endpoints]

    def _uuid4(self) -> str:
        v = self.rng.getrandbits(128)
        v = (v & ~(0xF << 76)) | (4 << 76)
        v = (v & ~(0x3 << 62)) | (0x2 << 62)
        h = f"{v:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def pick_endpoint(self) -> int:
        return bisect_right(self.cum, self.rng.random() * self.cum[-1])

    def row(self, ep: int, sent: int) -> list[Any]:
        """One request sent at `sent` (µs) to endpoint number `ep`, with eventual outcome."""
        rng = self.rng
        r = rng.random()
        runner_assigned = True
        if r < 0.90:
            code = 200
        elif r < 0.91:
            code = 201
        elif r < 0.97:
            code = (400, 404, 422, 422, 413)[int((r - 0.91) / 0.012)]
            runner_assigned = code not in (413, 422) or rng.random() < 0.5
        else:
            code = (500, 500, 503, 504)[min(3, int((r - 0.97) / 0.0075))]
            runner_assigned = code != 503 or rng.random() < 0.2

        if not runner_assigned:  # failed before dispatch: fast, no runner, no queue
            queue = 200 + int(rng.random() * 19_800)
            dur = 500 + int(rng.random() * 49_500)
        else:
            queue = int(rng.lognormvariate(-1.9, 1.0) * _S) + 1  # median 0.15 s
            if rng.random() < 0.02:  # cold start
                queue += int(rng.uniform(5, 45) * _S)
            prof = self.profiles[ep]
            if code < 300:
                if rng.random() < 0.002:  # the few long jobs, 20-40 minutes
                    dur = int(rng.uniform(1200, 2400) * _S)
                else:
                    dur = int(rng.lognormvariate(math.log(prof.median_s), prof.sigma) * _S)
            elif code == 504:
                dur = int(rng.uniform(300, 330) * _S)
            elif code >= 500:
                dur = int(rng.lognormvariate(math.log(prof.median_s / 2), 1.0) * _S)
            else:
                dur = int(rng.uniform(0.05, 2.0) * _S)
        started = sent + max(1, queue)
        ended = started + max(1, dur)

        units: float | None = None
        lag: int | None = None
        if code < 300:
            units = self._units(ep, ended - started)
            b = rng.random()
            if b < 0.94:
                lag = int(rng.uniform(0.3, 20) * _S)
            elif b < 0.995:
                lag = int(rng.uniform(60, 1800) * _S)  # billing pipeline behind
            # else: the billing event never lands (lag None, units known)

        if rng.random() < 0.03:  # caller sent X-Fal-Store-IO: 0
            inp = out = None
        else:
            inp = self.inputs[ep][int(rng.random() * _POOL)]
            if code < 300:
                out = self.outputs[ep][int(rng.random() * _POOL)]
            else:
                choices = _ERROR_OUTPUTS[code]
                out = choices[int(rng.random() * len(choices))]

        rid = self._uuid7(sent)
        runner = self.runners[ep][int(rng.random() * 8)] if runner_assigned else None
        return [rid, ep, runner, sent, started, ended, code, units, lag, inp, out, 0]

    def _units(self, ep: int, dur_us: int) -> float:
        kind = self.profiles[ep].kind
        rng = self.rng
        if kind == "image":
            return rng.choice((1.0, 1.0, 0.75, 1.5, 2.0))
        if kind == "image-fast":
            return rng.choice((0.5, 1.0))
        if kind == "upscale":
            return rng.choice((4.0, 16.0))
        if kind == "audio":
            return round(dur_us / _S * rng.uniform(2, 6) / 60, 3)  # audio minutes
        return round(dur_us / _S, 3)  # GPU seconds

    def _uuid7(self, sent_us: int) -> str:
        """A UUIDv7-shaped id: millisecond time prefix (so ids sort by `sent_at`, as third
        parties observe), version and variant bits, the rest from the seeded RNG."""
        rand = self.rng.getrandbits(74)
        v = (
            ((sent_us // 1000) << 80)
            | (0x7 << 76)
            | ((rand >> 62) << 64)
            | (0x2 << 62)
            | (rand & 0x3FFF_FFFF_FFFF_FFFF)
        )
        h = f"{v:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def materialize(
        self, row: list[Any], now_us: int | None
    ) -> tuple[SimRequest, tuple[int, int, int, int, int]]:
        """Turn a row into a `SimRequest` plus the integer columns `World._extend` takes.

        Payloads past retention (relative to the generation's `now`) come back null, as
        they would from fal.
        """
        sent, started, ended = row[_SENT], row[_STARTED], row[_ENDED]
        sent_dt = _EPOCH + _td(microseconds=sent)
        lag = row[_BILL_LAG]
        late = row[_LATE] or sent
        inp, out = row[_IN], row[_OUT]
        if now_us is not None and ended < now_us - _PAYLOAD_RETENTION:
            inp = out = None
        billing = _NEVER if lag is None else ended + lag
        req = SimRequest(
            request_id=row[_RID],
            endpoint_id=self.endpoints[row[_EP]],
            runner_id=row[_RUNNER],
            sent_at=sent_dt,
            started_at=_EPOCH + _td(microseconds=started),
            ended_at=_EPOCH + _td(microseconds=ended),
            status_code=row[_CODE],
            duration=(ended - started) / _S,
            billable_units=row[_UNITS],
            billing_at=None if lag is None else _EPOCH + _td(microseconds=billing),
            json_input=inp,
            json_output=out,
            recorded_at=sent_dt if late == sent else _EPOCH + _td(microseconds=late),
        )
        return req, (sent, started, ended, late, billing)


def _diurnal(hour_us: int) -> float:
    """Traffic multiplier by UTC hour: quiet at night (Americas and Europe), busy afternoons."""
    hour = (hour_us // _HOUR) % 24
    return 1.0 + 0.55 * math.sin(2 * math.pi * (hour - 9) / 24)


def _arrivals(rng: random.Random, start: int, end: int, per_hour: float) -> list[int]:
    """Sorted send times in [start, end) with hourly diurnal rates and some noise."""
    times: list[int] = []
    hour = start - start % _HOUR
    while hour < end:
        lo, hi = max(hour, start), min(hour + _HOUR, end)
        expected = per_hour * _diurnal(hour) * (hi - lo) / _HOUR * rng.uniform(0.85, 1.15)
        n = int(expected + rng.random())
        span = hi - lo
        times.extend(sorted(lo + int(rng.random() * span) for _ in range(n)))
        hour += _HOUR
    return times


def _tie_groups(rows: list[list[Any]], rng: random.Random, p_start: float = 0.004) -> None:
    """Make small groups of consecutive requests end at the same microsecond.

    Batch completions do this on real platforms; for a mirror it means `ended_at` alone
    is not a key and offset pages can cut through a tie.
    """
    k = 0
    n = len(rows)
    while k < n:
        if rng.random() < p_start:
            group = [
                r for r in rows[k : k + rng.randint(2, 8)] if r[_ENDED] - r[_STARTED] < 300 * _S
            ]
            if len(group) > 1:
                common = max(r[_ENDED] for r in group)
                for r in group:
                    r[_ENDED] = common
            k += 8
        else:
            k += 1


def generate_world(
    config: WorldConfig | None = None,
    *,
    seed: int,
    now: datetime,
    days: float = 3,
    endpoints: Sequence[str] | Mapping[str, float] | None = None,
    requests_per_hour: float = 100.0,
    dense_hour: tuple[datetime, int] | None = None,
    future_minutes: float = 0,
    running: int = 10,
    big_tie_group: int = 150,
    late_fraction: float = 0.005,
    huge_outputs: tuple[int, int] | None = None,
) -> World:
    """A realistic, deterministic history of `days` days up to `now`.

    `requests_per_hour` is the average over all endpoints (diurnal: about 0.45x at night,
    1.55x in the afternoon); 1,000,000 requests over 3 days is about 13,900. `endpoints`
    are ids (equal weights) or ids with weights; default `DEFAULT_ENDPOINTS`.
    `dense_hour=(start, count)` adds `count` requests in the hour from `start`.
    `running` requests are in flight at `now`; `future_minutes` adds requests sent after
    `now` at the normal rate, which appear while a sync pages as the clock passes them.
    `big_tie_group` requests (0: none) end at one microsecond about five hours before `now`,
    with identical durations too, so ties straddle a page boundary in either sort.
    `late_fraction` of the history is recorded minutes to hours after it ended.
    `huge_outputs=(count, size)` gives `count` successful requests of the history (drawn
    apart, so the rest of the world is what the seed always gave) a `json_output` with a
    text of `size` bytes: long LLM answers, so pages and single requests can be made larger
    than a client's cap on a page.
    """
    if endpoints is None:
        weights: Mapping[str, float] = DEFAULT_ENDPOINTS
    elif isinstance(endpoints, Mapping):
        weights = dict(endpoints)
    else:
        weights = dict.fromkeys(endpoints, 1.0)
    if not weights:
        raise ValueError("generate_world needs at least one endpoint")
    rng = random.Random(seed)
    factory = _Factory(weights, rng)
    now_us = to_us(now)
    start_us = now_us - int(days * 24 * _HOUR)
    row = factory.row
    pick = factory.pick_endpoint

    rows = [row(pick(), t) for t in _arrivals(rng, start_us, now_us, requests_per_hour)]
    _tie_groups(rows, rng)
    for r in rows:
        if rng.random() < late_fraction:  # ingestion lag: recorded well after it ended
            r[_LATE] = r[_ENDED] + int(rng.uniform(60, 6 * 3600) * _S)

    if dense_hour is not None:
        dense_start, count = dense_hour
        d0 = to_us(dense_start)
        rows.extend(row(pick(), d0 + int(rng.random() * _HOUR)) for _ in range(count))

    if big_tie_group > 0:
        rows.extend(_big_tie_group(factory, big_tie_group, now_us, start_us))

    if huge_outputs is not None:
        _huge_outputs(rows, *huge_outputs, random.Random(f"{seed}-huge"), now_us)

    for _ in range(running):
        r = row(pick(), now_us - int(rng.uniform(1, 480) * _S))
        r[_STARTED] = min(r[_STARTED], now_us - 1)
        r[_ENDED] = now_us + int(rng.uniform(5, 1200) * _S)
        if r[_RUNNER] is None:
            r[_RUNNER] = factory.runners[r[_EP]][0]
        rows.append(r)

    if future_minutes > 0:
        future_end = now_us + int(future_minutes * 60 * _S)
        rows.extend(
            row(pick(), t) for t in _arrivals(rng, now_us + 1, future_end, requests_per_hour)
        )

    world = World(config)
    mat = factory.materialize
    world._extend(mat(r, now_us) for r in rows)
    return world


#: what the long answers of `huge_outputs` are written with
_WORDS = ("the", "model", "answer", "token", "context", "window", "long", "text", "über",
          "naïve", "日本語", "mirror", "page", "request", "output", "stream")  # fmt: skip


def _huge_outputs(
    rows: list[list[Any]], count: int, size: int, rng: random.Random, now_us: int
) -> None:
    """`count` successful requests of `rows` that ended by `now_us`, within payload
    retention, get an output text of `size` bytes (UTF-8)."""
    kept = now_us - _PAYLOAD_RETENTION
    done = [r for r in rows if r[_CODE] < 300 and kept <= r[_ENDED] <= now_us]
    for r in rng.sample(done, min(count, len(done))):
        words: list[str] = []
        n = 0
        while n < size:
            w = rng.choice(_WORDS)
            words.append(w)
            n += len(w.encode()) + 1
        text = " ".join(words).encode()[:size].decode(errors="ignore")
        r[_OUT] = {"text": text, "finish_reason": "length"}
        r[_IN] = r[_IN] or {"prompt": "write at length"}


def _big_tie_group(factory: _Factory, size: int, now_us: int, start_us: int) -> list[list[Any]]:
    """`size` successful upscaler-like requests from one batch: same start, same end."""
    rng = factory.rng
    anchor = now_us - 5 * _HOUR if now_us - start_us > 6 * _HOUR else (now_us + start_us) // 2
    ep = next(
        (k for k, p in enumerate(factory.profiles) if p.kind == "upscale"),
        len(factory.endpoints) - 1,
    )
    sends = sorted(anchor + int(rng.random() * 60 * _S) for _ in range(size))
    started = sends[-1] + 800_123
    ended = started + 42_123_456
    group = []
    for t in sends:
        r = factory.row(ep, t)
        r[_STARTED], r[_ENDED], r[_CODE] = started, ended, 200
        r[_RUNNER] = r[_RUNNER] or factory.runners[ep][0]
        r[_UNITS] = r[_UNITS] if r[_UNITS] is not None else 4.0
        r[_BILL_LAG] = r[_BILL_LAG] if r[_BILL_LAG] is not None else 2 * _S
        if r[_IN] is not None:
            r[_OUT] = factory.outputs[ep][rng.randrange(_POOL)]
        group.append(r)
    return group


def make_requests(
    n: int,
    *,
    endpoint_id: str,
    around: datetime,
    spread: timedelta,
    seed: int | str,
    recorded_at: datetime | None = None,
    not_after: datetime | None = None,
) -> list[SimRequest]:
    """`n` requests to one endpoint, sent within `spread` around `around`.

    With `recorded_at` they become visible only then (late arrivals); with `not_after`
    every one has ended by that instant (so a backfill never invents running requests).
    """
    rng = random.Random(seed)
    factory = _Factory({endpoint_id: 1.0}, rng)
    center = to_us(around)
    half = int(spread / timedelta(microseconds=1)) // 2
    limit = None if not_after is None else to_us(not_after)
    late = 0 if recorded_at is None else to_us(recorded_at)
    out = []
    for _ in range(n):
        sent = center - half + int(rng.random() * 2 * half) if half else center
        r = factory.row(0, sent)
        if limit is not None:
            if r[_SENT] > limit - 2:
                r[_SENT] = limit - 2
            r[_STARTED] = min(max(r[_STARTED], r[_SENT] + 1), limit - 1)
            r[_ENDED] = min(max(r[_ENDED], r[_STARTED] + 1), limit)
        if late:
            r[_LATE] = max(late, r[_SENT])
        out.append(factory.materialize(r, None)[0])
    return out


def demo_world(now: datetime, seed: int = 1, config: WorldConfig | None = None) -> World:
    """A pleasant preset for `mirror demo` and `mirror fake-api`: about 17,000 requests.

    Three days over four endpoints of the account (one a route of another app), a dense
    hour of 3,000 requests yesterday, a handful running now, and an hour of future arrivals
    trickling in so a live sync sees new rows appear; and the same three days of the key's
    calls to two hosted models (`DEMO_MODELS`), billed per request. The models' calls are
    drawn apart from the account's, so the account's history is the one a seed always gave.
    """
    dense_start = (now - timedelta(hours=30)).replace(minute=0, second=0, microsecond=0)
    world = generate_world(
        config,
        seed=seed,
        now=now.astimezone(UTC),
        days=3,
        requests_per_hour=150,
        dense_hour=(dense_start, 3000),
        future_minutes=60,
        running=8,
    )
    models = generate_world(
        seed=seed + _MODELS_SEED,
        now=now.astimezone(UTC),
        days=3,
        endpoints=DEMO_MODELS,
        requests_per_hour=30,
        future_minutes=60,
        running=2,
        big_tie_group=0,
    )
    world.add_many(models)
    return world
