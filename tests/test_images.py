import io
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from tokenlearner import ModelConfig, build_model
from tokenlearner.images import ImageError, read_clip, read_image, to_model_input
from tokenlearner.overlay import colorize, dominant_token_image, overlay, overlay_grid
from tokenlearner.runs import RunDirectory

RNG = np.random.default_rng(0)


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


PICTURE = Image.fromarray(RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8))
INPUTS = {
    "png": encode(PICTURE, "PNG"),
    "jpeg": encode(PICTURE, "JPEG"),
    "grayscale": encode(PICTURE.convert("L"), "PNG"),
    "palette": encode(PICTURE.convert("P"), "PNG"),
    "rgba": encode(PICTURE.convert("RGBA"), "PNG"),
    "16-bit": encode(Image.fromarray(RNG.integers(0, 65536, (40, 40), dtype=np.uint16)), "PNG"),
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_kind_becomes_a_32x32_rgb_input(kind):
    image = read_image(INPUTS[kind])
    assert image.mode == "RGB"
    array = to_model_input(image)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8


def test_transparent_pixels_are_composited_on_white():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert read_image(encode(clear, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_centre_crop_keeps_the_middle_square():
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255  # a white centre square between black sides
    assert to_model_input(Image.fromarray(wide)).min() > 200


@pytest.mark.parametrize(
    "content, message",
    [
        (b"GIF89a not allowed", "is not a PNG or JPEG image"),
        (b"hello", "is not a PNG or JPEG image"),
        (INPUTS["jpeg"][: len(INPUTS["jpeg"]) // 2], "is truncated or corrupt"),
    ],
)
def test_bad_uploads(content, message):
    with pytest.raises(ImageError, match=message):
        read_image(content)


def test_a_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 megapixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="declares 10000x10000 pixels \\(100 MP\\); the limit is 16 MP"):
        read_image(bomb)


def test_overlays_cover_only_the_patch_region():
    image = np.full((32, 32, 3), 128, np.uint8)
    token_map = np.linspace(0, 1, 64).reshape(8, 8)
    drawn = np.asarray(overlay(image, token_map, (0.0, 0.0, 0.5, 0.5), scale=2, opacity=1.0))
    assert drawn.shape == (64, 64, 3)
    assert np.all(drawn[40:, 40:] == 128)  # outside the region: untouched
    assert not np.all(drawn[:32, :32] == 128)
    grid = overlay_grid(image, np.stack([token_map] * 3), (0, 0, 1, 1), scale=1, gap=2)
    assert grid.size == (4 * 32 + 3 * 2, 32)
    assert np.asarray(dominant_token_image(image, np.stack([token_map, 1 - token_map]), (0, 0, 1, 1))).shape == (
        256, 256, 3)
    assert colorize(np.array([0.0, 1.0])).tolist() == [[68, 1, 84], [253, 231, 37]]


def test_a_highlighted_token_colours_only_its_own_patches():
    image = np.full((32, 32, 3), 128, np.uint8)
    left = np.zeros((8, 8))
    left[:, :4] = 1  # token 0 weights the left half most, token 1 the right half
    maps = np.stack([left, 1 - left])
    every = np.asarray(dominant_token_image(image, maps, (0, 0, 1, 1), scale=1))
    second = np.asarray(dominant_token_image(image, maps, (0, 0, 1, 1), scale=1, highlight=1))
    inner = (slice(1, -1), slice(1, -1))  # inside the white frame
    assert not np.array_equal(every[inner], second[inner])
    assert second[inner][:, :14].max() < 128, "the other token's patches are darkened"
    assert np.array_equal(second[inner][:, 17:], np.asarray(
        dominant_token_image(image, maps, (0, 0, 1, 1), scale=1, opacity=0.7))[inner][:, 17:])


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    config = ModelConfig(fuser=True, placement=2)
    run = RunDirectory(tmp_path_factory.mktemp("runs") / "run").create({"model": config.to_dict()})
    run.save_model(build_model(config))
    return run


@pytest.mark.parametrize("kind", ["png", "jpeg", "grayscale", "rgba"])
def test_predict_command(kind, untrained_run, tmp_path, capsys):
    from tokenlearner.cli import main

    path = tmp_path / f"input.{'jpg' if kind == 'jpeg' else 'png'}"
    path.write_bytes(INPUTS[kind])
    out = tmp_path / "overlay.png"
    # in this process, which has TensorFlow loaded already; the bomb test below runs the real command
    assert main(["predict", str(untrained_run.path), "--image", str(path), "--overlay", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["top5"]) == 5 and sum(entry["probability"] for entry in report["top5"]) <= 1.0001
    assert report["maps"] == {"token_learner_2": [4, 8, 8], "token_fuser_2": [4, 8, 8],
                              "token_learner_3": [4, 8, 8], "token_fuser_3": [4, 8, 8]}
    with Image.open(out) as sheet:
        assert sheet.size == (5 * 256 + 4 * 4, 4 * 256 + 3 * 4)  # image + 4 maps, one row per layer


def test_predict_refuses_a_bomb_in_one_line(untrained_run, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(encode(Image.new("1", (10_000, 10_000)), "PNG"))
    result = subprocess.run([sys.executable, "-m", "tokenlearner", "predict", str(untrained_run.path), "--image",
                             str(path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path} declares 10000x10000 pixels (100 MP); the limit is 16 MP: use a smaller image"]


def test_predict_names_an_overlay_path_it_cannot_write(untrained_run, tmp_path, capsys):
    from tokenlearner.cli import main

    path = tmp_path / "input.png"
    path.write_bytes(INPUTS["png"])
    assert main(["predict", str(untrained_run.path), "--image", str(path), "--overlay", str(tmp_path)]) == 2
    assert f"error: --overlay {tmp_path} cannot be written (Is a directory)" in capsys.readouterr().err
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*")), "a temporary file was left behind"


def numbered_frames(count: int, side: int = 40) -> list[Image.Image]:
    """Frames of one flat grey each, 20 levels apart, so a frame's number can be read back."""
    return [Image.new("RGB", (side, side), (20 * index,) * 3) for index in range(count)]


def gif_of(frames: list[Image.Image]) -> bytes:
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def frame_numbers(clip: np.ndarray) -> list[int]:
    return [round(float(frame.mean()) / 20) for frame in clip]


def test_a_clip_takes_evenly_spaced_frames_of_a_gif_or_a_folder(tmp_path):
    clip = read_clip(gif_of(numbered_frames(12)), 4)
    assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8
    assert frame_numbers(clip) == [0, 4, 7, 11]
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(numbered_frames(6)):
        frame.save(folder / f"frame_{index:02d}.png")
    (folder / "notes.txt").write_text("not a frame")
    assert frame_numbers(read_clip(folder, 6, size=16)) == [0, 1, 2, 3, 4, 5]
    assert frame_numbers(read_clip(folder, 3)) == [0, 2, 5]
    path = tmp_path / "clip.gif"
    path.write_bytes(gif_of(numbered_frames(5)))
    assert frame_numbers(read_clip(path, 5)) == [0, 1, 2, 3, 4]


def test_bad_clips_are_refused_by_name(tmp_path):
    with pytest.raises(ImageError, match="has 3 frame\\(s\\) and the model takes 8: use a clip of at least 8"):
        read_clip(gif_of(numbered_frames(3)), 8)
    with pytest.raises(ImageError, match="the upload is not a GIF: a clip is an animated GIF or a folder"):
        read_clip(INPUTS["png"], 4)
    with pytest.raises(ImageError, match="the upload has more than 5 frames of 40x40: the limit is 0 MP over all"):
        read_clip(gif_of(numbered_frames(12)), 4, max_pixels=5 * 40 * 40)
    tiny = [Image.new("RGB", (1, 1), (index % 256, index // 256, 0)) for index in range(1001)]  # all distinct
    with pytest.raises(ImageError, match="the upload has more than 1000 frames: use a shorter GIF"):
        read_clip(gif_of(tiny), 4)
    assert len(read_clip(gif_of(tiny[:1000]), 4)) == 4  # exactly the most it takes
    whole = gif_of(numbered_frames(12))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        read_clip(whole[: len(whole) // 2], 4)
    folder = tmp_path / "frames"
    folder.mkdir()
    with pytest.raises(ImageError, match="frames, has 0 frame\\(s\\)"):
        read_clip(folder, 4)
    for index in range(4):
        (folder / f"{index}.png").write_bytes(INPUTS["png"] if index else b"not a png")
    with pytest.raises(ImageError, match="0.png is not a PNG or JPEG image"):
        read_clip(folder, 4)


@pytest.fixture(scope="module")
def untrained_video_run(tmp_path_factory):
    config = ModelConfig(frames=4, tubelet_frames=2, depth=2, placement=1, num_classes=4)
    run = RunDirectory(tmp_path_factory.mktemp("runs") / "video").create({"model": config.to_dict()})
    run.save_model(build_model(config))
    return run


def test_predict_command_on_a_clip(untrained_video_run, tmp_path, capsys):
    from tokenlearner.cli import main

    path = tmp_path / "clip.gif"
    path.write_bytes(gif_of(numbered_frames(9)))
    out = tmp_path / "overlay.png"
    assert main(["predict", str(untrained_video_run.path), "--image", str(path), "--overlay", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["top5"]) == 4
    assert report["maps"] == {"token_learner": [2, 4, 8, 8]}  # 2 slices of 4 tokens
    with Image.open(out) as sheet:
        assert sheet.size == (5 * 256 + 4 * 4 + 4 + 256, 2 * 256 + 2)  # a row per slice, then its dominant tokens
    assert main(["predict", str(untrained_video_run.path), "--image", str(tmp_path / "missing.gif")]) == 2
    assert "missing.gif cannot be opened (No such file or directory)" in capsys.readouterr().err
