"""Units under the server: the SQLite store and queue (numbering, recovery, trimming) and A1111's image rules."""

from __future__ import annotations

import numpy as np
from PIL import Image

from darkroom.server import sdapi_images as imgs
from darkroom.server.queue import JobQueue
from darkroom.server.store import CRASH_REASON, JobStore


def test_queue_numbers_order_and_restart(tmp_path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    q = JobQueue(store, max_history=2)
    a = q.submit({"1": {}})
    b = q.submit({"2": {}})
    c = q.submit({"3": {}}, front=True)
    assert (a.number, b.number, c.number) == (1, 2, -3)
    assert [j.prompt_id for j in q.pending()] == [c.prompt_id, a.prompt_id, b.prompt_id]
    first = q.take(timeout=0)
    assert first.prompt_id == c.prompt_id and q.running.prompt_id == c.prompt_id and q.remaining() == 3
    store.close()
    # the process dies here; a new one recovers
    store = JobStore(tmp_path / "q.sqlite3")
    assert store.recover() == [c.prompt_id]
    failed = store.get(c.prompt_id)
    assert failed.status == "error" and failed.error == CRASH_REASON
    q = JobQueue(store, max_history=2)
    assert q.submit({"4": {}}).number == 4  # numbering continues
    assert q.delete([b.prompt_id, "unknown"]) == [b.prompt_id]
    for _ in range(2):
        job = q.take(timeout=0)
        job.status = "success"
        q.done(job)
    assert q.take(timeout=0) is None and q.remaining() == 0
    hist = store.history()
    assert [j.status for j in hist] == ["success", "success"]  # the crashed one was trimmed: newest two kept
    assert [j.prompt_id for j in store.history(max_items=1)] == [hist[-1].prompt_id]


def test_crop_region_grows_to_the_output_aspect_inside_the_image() -> None:
    mask = Image.new("L", (100, 80), 0)
    mask.paste(255, (70, 10, 90, 20))  # 20×10 box near the right edge
    box = imgs.crop_region(mask, 4)
    assert box == (66, 6, 94, 24)
    x1, y1, x2, y2 = imgs.expand_to_aspect(box, 64, 64, 100, 80)
    assert (x2 - x1) == (y2 - y1) and 0 <= x1 and x2 <= 100 and 0 <= y1 and y2 <= 80
    assert x1 <= 66 and x2 >= 94 and y1 <= 6 and y2 >= 24
    assert imgs.crop_region(Image.new("L", (8, 8), 0), 2) is None


def test_fill_keeps_unmasked_pixels_and_fills_the_hole() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    arr[8:24, 8:24] = (255, 0, 0)
    image = Image.fromarray(arr)
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    out = np.asarray(imgs.fill_masked(image, mask))
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], arr[keep])
    assert np.abs(out[12:20, 12:20].astype(int) - (255, 0, 0)).max() > 50  # the red square is gone


def test_grid_and_binary_mask() -> None:
    tiles = [Image.new("RGB", (4, 2), (i * 40, 0, 0)) for i in range(3)]
    grid = imgs.image_grid(tiles)
    assert grid.size == (8, 4)  # round(√3) = 2 rows, 2 columns
    assert grid.getpixel((5, 0)) == (40, 0, 0) and grid.getpixel((0, 3)) == (80, 0, 0)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 200))
    m = imgs.binary_mask(rgba)
    assert m.getpixel((1, 1)) == 255 and m.getpixel((0, 0)) == 0
    assert imgs.prepare_mask(Image.new("L", (4, 4), 255), invert=True, blur_x=0, blur_y=0,
                             round_mask=True).getextrema() == (0, 0)
