"""Video in, video out with PyAV (FFmpeg's libraries, shipped in its wheels): frame rate, size
and frame count kept, the audio stream copied as it is, and decoding, the network and encoding
overlapped in three stages joined by bounded queues."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.atomic import AtomicPath
from nstjax.errors import NstjaxError

AV_HINT = "install it with `pip install 'nstjax[video]'` (PyAV, which ships FFmpeg)"
_END = object()


def _av(what: str) -> Any:
    try:
        import av
    except ImportError:
        raise NstjaxError(f"{what}: video needs PyAV, which is not installed; {AV_HINT}") from None
    return av


@dataclass
class VideoInfo:
    fps: Fraction
    frames: int | None  # from the container; None when it does not say
    width: int
    height: int
    has_audio: bool
    duration: float | None  # seconds


def probe(path: Path) -> VideoInfo:
    """What the file holds; one line if it is not a readable video."""
    av = _av(f"input {str(path)!r}")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise NstjaxError(f"input {str(path)!r}: has no video stream")
            v = c.streams.video[0]
            fps = v.average_rate or v.guessed_rate or Fraction(25)
            dur = float(c.duration / 1e6) if c.duration else None
            return VideoInfo(Fraction(fps), int(v.frames) or None, v.codec_context.width, v.codec_context.height,
                             bool(c.streams.audio), dur)
    except NstjaxError:
        raise
    except Exception as e:  # av.error.InvalidDataError and friends
        raise NstjaxError(f"input {str(path)!r}: not a readable video ({type(e).__name__}: {e})") from None


def _in_window(t: float | None, start: float, end: float | None) -> bool:
    return t is not None and t >= start - 1e-6 and (end is None or t < end - 1e-6)


def stylize_video(src: Path, dst: Path, stylize_batch: Callable[[np.ndarray], np.ndarray], *, batch: int,
                  start: float = 0.0, duration: float | None = None, queue_size: int = 8,
                  on_frame: Callable[[], None] | None = None) -> dict[str, Any]:
    """Decode `src`, run `stylize_batch` on (B, H, W, 3) float32 frames, encode to `dst` (H.264,
    yuv420p, the source's frame rate) with the source's audio stream copied. Written atomically.

    Three stages: a decoder thread (frames -> queue, audio packets -> the writer), the calling
    thread (batches through the network), and an encoder thread; each queue holds at most
    `queue_size` items, so memory stays bounded whatever the video's length.
    """
    av = _av(f"input {str(src)!r}")
    info = probe(src)
    end = start + duration if duration is not None else None
    frames_q: queue.Queue = queue.Queue(queue_size)
    out_q: queue.Queue = queue.Queue(queue_size)
    errors: list[BaseException] = []
    target = AtomicPath(dst, suffix=dst.suffix)
    counts = {"in": 0, "out": 0, "audio_packets": 0}

    inp = av.open(str(src))
    out = av.open(str(target.tmp), mode="w")
    vin = inp.streams.video[0]
    vout = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=info.fps)
    vout.width, vout.height = info.width + info.width % 2, info.height + info.height % 2  # yuv420p: even sides
    vout.pix_fmt = "yuv420p"
    vout.options = {"crf": "18"}
    ain = inp.streams.audio[0] if inp.streams.audio else None
    aout = out.add_stream_from_template(ain) if ain is not None else None
    offset = {}  # per stream: the first kept timestamp, so a cut clip starts at 0

    def decode() -> None:
        try:
            streams = [vin] + ([ain] if ain is not None else [])
            for packet in inp.demux(*streams):
                if packet.stream is ain:
                    if packet.pts is None or packet.size == 0:
                        continue
                    t = float(packet.pts * ain.time_base)
                    if _in_window(t, start, end):
                        offset.setdefault("a", packet.pts)
                        packet.pts -= offset["a"]
                        if packet.dts is not None:
                            packet.dts -= offset["a"]
                        out_q.put(("audio", packet))
                    continue
                for frame in packet.decode():
                    t = frame.time
                    if end is not None and t is not None and t >= end - 1e-6:
                        return
                    if _in_window(t, start, end):
                        frames_q.put(frame.to_ndarray(format="rgb24"))
                        counts["in"] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
        finally:
            frames_q.put(_END)

    def encode() -> None:
        try:
            while (item := out_q.get()) is not _END:
                kind, payload = item
                if kind == "audio":
                    payload.stream = aout
                    out.mux(payload)
                    counts["audio_packets"] += 1
                    continue
                rgb = payload
                if rgb.shape[:2] != (vout.height, vout.width):
                    rgb = np.pad(rgb, ((0, vout.height - rgb.shape[0]), (0, vout.width - rgb.shape[1]), (0, 0)),
                                 mode="edge")
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = counts["out"]
                frame.time_base = Fraction(1, 1) / info.fps
                out.mux(vout.encode(frame))
                counts["out"] += 1
            out.mux(vout.encode())  # flush
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            while out_q.get() is not _END:  # keep draining so the producer never blocks
                pass

    reader = threading.Thread(target=decode, name="nstjax-video-decode", daemon=True)
    writer = threading.Thread(target=encode, name="nstjax-video-encode", daemon=True)
    reader.start()
    writer.start()
    ok = False
    try:
        pending: list[np.ndarray] = []

        def flush() -> None:
            n = len(pending)
            x = np.stack(pending + pending[-1:] * (batch - n)).astype(np.float32) / 255.0  # one shape: one compile
            ys = stylize_batch(x)[:n]
            for y in ys:
                out_q.put(("video", np.asarray(np.clip(y, 0.0, 1.0) * 255.0 + 0.5, np.uint8)))
                if on_frame is not None:
                    on_frame()
            pending.clear()

        while (rgb := frames_q.get()) is not _END:
            pending.append(rgb)
            if len(pending) == batch:
                flush()
        if pending:
            flush()
        ok = not errors
    finally:
        out_q.put(_END)
        writer.join()
        reader.join(timeout=5)
        inp.close()
        try:
            out.close()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        if ok and not errors:
            target.commit()
        else:
            target.abort()
    if errors:
        e = errors[0]
        if isinstance(e, NstjaxError):
            raise e
        raise NstjaxError(f"video {str(src)!r} -> {str(dst)!r}: {type(e).__name__}: {e}") from None
    if counts["in"] == 0:
        raise NstjaxError(f"input {str(src)!r}: no frames between start={start} and duration={duration}")
    return {"frames": counts["out"], "fps": float(info.fps), "audio_packets": counts["audio_packets"],
            "has_audio": info.has_audio, "size": [info.width, info.height]}


def read_frames(path: Path) -> Iterator[np.ndarray]:
    """Every frame of a video as uint8 RGB (tests, tools)."""
    av = _av(f"input {str(path)!r}")
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
