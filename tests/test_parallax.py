"""Parallax frames (camera paths, layer motion by nearness, no black borders) and video files."""
import time

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from helpers import DEBRIS_RGB, FIGURE_RGB, colour_mask, make_test_stack
from layers.parallax import CAMERA_PATHS, iter_parallax_frames, render_parallax_frames, write_video
from layers.stack import StackLayer, with_alpha

W, H = 96, 144


def marker_stack(width=W, height=H):
    """The test stack with the debris replaced by one blue disc inside the frame, easy to track."""
    stack = make_test_stack(width, height)
    y, x = np.mgrid[0:height, 0:width]
    disc = (((x - 0.25 * width) ** 2 + (y - 0.2 * height) ** 2) < (0.08 * width) ** 2).astype(np.float32)
    fg = StackLayer("foreground", with_alpha(Image.new("RGB", (width, height), DEBRIS_RGB), disc),
                    np.full((height, width), 0.9, np.float32), 0.9)
    return stack.replace(fg)


def x_centre(frame, colour, rows=slice(None)):
    mask = colour_mask(frame[rows], colour, 30)
    assert mask.any()
    return np.nonzero(mask)[1].mean()


def pillar_x(frame, rows=slice(None)):
    """Sub-pixel x of the background's red pillar: its redness-weighted centre (the pillar is 2 px wide)."""
    f = frame[rows].astype(float)
    weight = np.clip(f[..., 0] - f[..., 1] - 60.0, 0.0, None)
    assert weight.sum() > 0
    return (weight * np.arange(frame.shape[1])).sum() / weight.sum()


def y_centre(frame, colour):
    return np.nonzero(colour_mask(frame, colour, 30))[0].mean()


def test_frames_have_the_requested_count_size_and_type():
    frames = render_parallax_frames(make_test_stack(W, H), "sway", frames=12)
    assert frames.shape == (12, H, W, 3) and frames.dtype == np.uint8


@pytest.mark.parametrize("path", CAMERA_PATHS)
def test_every_path_moves_the_view_and_loops(path):
    frames = render_parallax_frames(make_test_stack(W, H), path, frames=16)
    diffs = [np.abs(frames[k].astype(int) - frames[0]).mean() for k in range(16)]
    assert max(diffs) > 1.0                           # the camera moves
    assert len({frames[k].tobytes() for k in range(16)}) >= 8
    # Frame N would be frame 0 again: the last frame is one step away from the first.
    step = np.abs(frames[-1].astype(int) - frames[0]).mean()
    assert step < max(diffs) / 2


def test_sway_moves_the_foreground_most_and_the_background_least():
    stack = marker_stack()
    amount = 0.1
    frames = render_parallax_frames(stack, "sway", frames=24, amount=amount)
    top = slice(0, int(0.08 * H))  # only the background pillar is there
    bg = [pillar_x(f, top) for f in frames]
    mid = [x_centre(f, FIGURE_RGB) for f in frames]
    fg = [x_centre(f, DEBRIS_RGB) for f in frames]
    travel = {name: max(v) - min(v) for name, v in (("bg", bg), ("mid", mid), ("fg", fg))}
    assert 0 < travel["bg"] < travel["mid"] < travel["fg"]
    # In proportion to nearness (0.2 : 0.5 : 0.9), within the half-pixel sampling.
    assert travel["fg"] / travel["mid"] == pytest.approx(0.9 / 0.5, rel=0.15)
    assert travel["mid"] / travel["bg"] == pytest.approx(0.5 / 0.2, rel=0.25)
    # `amount` moves a nearness-1 layer that fraction of the width each way.
    assert travel["fg"] == pytest.approx(2 * amount * W * 0.9, rel=0.1)
    # Sway is sideways only.
    assert np.ptp([y_centre(f, FIGURE_RGB) for f in frames]) < 0.6


def test_circle_moves_layers_both_ways():
    frames = render_parallax_frames(marker_stack(), "circle", frames=24)
    xs = [x_centre(f, DEBRIS_RGB) for f in frames]
    ys = [y_centre(f, DEBRIS_RGB) for f in frames]
    assert np.ptp(xs) > 3 and np.ptp(ys) > 3
    assert np.ptp(xs) == pytest.approx(np.ptp(ys), rel=0.25)


def test_zoom_grows_near_layers_and_keeps_the_middle_one():
    frames = render_parallax_frames(marker_stack(), "zoom", frames=24)
    disc = [colour_mask(f, DEBRIS_RGB, 30).sum() for f in frames]
    figure = [colour_mask(f, FIGURE_RGB, 30).sum() for f in frames]
    assert disc[12] > disc[0] * 1.08               # the near disc grows toward mid-clip ...
    assert figure[12] == pytest.approx(figure[0], rel=0.03)  # ... the middle layer keeps its size
    pillar_top = [pillar_x(f, slice(0, 10)) for f in frames]
    assert np.ptp(pillar_top) < 1.0                # scaling about the centre keeps the centre line still


@pytest.mark.parametrize("path", CAMERA_PATHS)
@pytest.mark.parametrize("amount", [0.04, 0.2])
def test_no_black_borders_appear(path, amount):
    frames = render_parallax_frames(make_test_stack(W, H), path, frames=12, amount=amount)
    # Nothing in the stack is darker than 30: a dark pixel can only be a hole or a border.
    assert frames.max(axis=-1).min() > 30
    # The frame edge keeps showing the picture, not a smear: the top row keeps its gradient colour.
    assert np.abs(frames[:, 0].astype(int) - frames[0, 0]).mean() < 40


def test_displacement_bends_each_layer_by_its_own_depth():
    stack = make_test_stack(W, H)  # background depth: 0.05 at the top .. 0.35 at the bottom
    flat = render_parallax_frames(stack, "sway", frames=8)
    bent = render_parallax_frames(stack, "sway", frames=8, displacement=1.0)
    peak = 2  # sin(2 pi 2/8) = 1: the right-most camera position
    rows_top, rows_bottom = slice(0, 8), slice(H - 8, H)
    lean_flat = pillar_x(flat[peak], rows_bottom) - pillar_x(flat[peak], rows_top)
    lean_bent = pillar_x(bent[peak], rows_bottom) - pillar_x(bent[peak], rows_top)
    assert abs(lean_flat) < 0.6
    assert lean_bent > 0.5          # the nearer bottom of the pillar moves further than its far top
    assert bent.max(axis=-1).min() > 30


def test_sixty_full_size_frames_render_fast():
    stack = make_test_stack(512, 768)
    start = time.perf_counter()
    frames = render_parallax_frames(stack, "sway", frames=60)
    elapsed = time.perf_counter() - start
    assert frames.shape == (60, 768, 512, 3)
    assert elapsed < 2.0, f"60 frames at 512x768 took {elapsed:.2f}s"


@pytest.mark.parametrize("kwargs, message", [
    ({"path": "spiral"}, "spiral"),
    ({"frames": 0}, "frames"),
    ({"amount": 0.0}, "amount"),
    ({"amount": 2.0}, "amount"),
    ({"displacement": -0.1}, "displacement"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_parallax_frames(make_test_stack(16, 24), **kwargs)


# --------------------------------------------------------------------------------------------- video

@pytest.fixture(scope="module")
def clip():
    return render_parallax_frames(make_test_stack(W, H), "sway", frames=10)


def test_mp4_reads_back_with_the_right_frames(clip, tmp_path):
    path = write_video(clip, tmp_path / "clip.mp4", fps=10)
    assert path == tmp_path / "clip.mp4"
    n_frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert n_frames == 10 and seconds == pytest.approx(1.0, abs=0.15)
    reader = imageio.get_reader(str(path), format="FFMPEG")
    first = reader.get_data(0)
    meta = reader.get_meta_data()
    reader.close()
    assert first.shape == clip[0].shape
    assert np.abs(first.astype(int) - clip[0]).mean() < 6
    assert "h264" in meta.get("codec", "") and meta.get("pix_fmt", "").startswith("yuv420p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_mp4_streams_frames_as_they_are_rendered(tmp_path):
    stack = make_test_stack(W, H)
    frames = iter_parallax_frames(stack, "circle", frames=9)
    path = write_video(frames, tmp_path / "stream.mp4", fps=9)
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 9
    reader = imageio.get_reader(str(path), format="FFMPEG")
    last = reader.get_data(8)
    reader.close()
    expected = render_parallax_frames(stack, "circle", frames=9)
    assert np.abs(last.astype(int) - expected[8]).mean() < 6


def test_iter_parallax_frames_checks_arguments_before_the_first_frame():
    with pytest.raises(ValueError, match="spiral"):
        iter_parallax_frames(make_test_stack(16, 24), "spiral")


def test_a_bad_frame_mid_stream_leaves_no_video(tmp_path):
    good = np.zeros((24, 16, 3), np.uint8)

    def frames():
        yield good
        yield good
        yield np.zeros((20, 16, 3), np.uint8)

    with pytest.raises(ValueError, match="frame 2"):
        write_video(frames(), tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="frame 1"):
        write_video([good, good.astype(np.float32)], tmp_path / "bad.gif")
    with pytest.raises(ValueError, match="none"):
        write_video(iter([]), tmp_path / "bad.webp")
    assert list(tmp_path.iterdir()) == []


def test_mp4_of_odd_size_is_padded_to_even(tmp_path):
    frames = render_parallax_frames(make_test_stack(45, 67), "circle", frames=4)
    path = write_video(frames, tmp_path / "odd.mp4")
    reader = imageio.get_reader(str(path), format="FFMPEG")
    first = reader.get_data(0)
    reader.close()
    assert first.shape == (68, 46, 3)
    assert np.abs(first[:67, :45].astype(int) - frames[0]).mean() < 8


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_gif_and_webp_are_animated_loops(clip, tmp_path, suffix):
    path = write_video(clip, tmp_path / f"clip{suffix}", fps=20)
    with Image.open(path) as im:
        assert im.is_animated and im.size == (W, H)
        assert im.info.get("loop") == 0
        shown = []
        for k in range(im.n_frames):
            im.seek(k)
            shown.append((np.asarray(im.convert("RGB")).astype(int), im.info["duration"]))
    # Pillow folds a frame identical to the one before into it (longer duration): the clip plays the
    # same frames for the same total time.
    expected = [clip[0]] + [clip[k] for k in range(1, len(clip)) if not np.array_equal(clip[k], clip[k - 1])]
    assert len(shown) == len(expected)
    assert sum(duration for _, duration in shown) == pytest.approx(len(clip) * 50, abs=len(clip))
    for (frame, _), want in zip(shown, expected):
        assert np.abs(frame - want).mean() < 8


def test_unknown_video_type_is_refused_and_nothing_is_written(clip, tmp_path):
    with pytest.raises(ValueError, match=r"\.avi"):
        write_video(clip, tmp_path / "clip.avi")
    assert list(tmp_path.iterdir()) == []


def test_bad_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((3, 8, 8, 3), np.float32), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "x.mp4")


def test_failed_video_write_leaves_the_old_file_and_no_temp(clip, tmp_path, monkeypatch):
    target = tmp_path / "clip.gif"
    target.write_bytes(b"old")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setitem(Image.SAVE_ALL, "GIF", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_video(clip, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]
