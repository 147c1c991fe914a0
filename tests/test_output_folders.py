"""Output folders: only a folder that is really a Layercake output is replaced, a symlinked folder is followed and
the link kept, and every problem with the folder is found before anything is rendered, in one line."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layers import pipeline
from layers.backends import get_backend
from layers.cli import main
from layers.pipeline import GenerateOptions, generate, load_result, write_outputs

PROMPT = "a lighthouse on a cliff at dusk, a keeper with a lantern, gulls close to the glass"
SIZE = ["--width", "96", "--height", "160"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stack") / "scene"
    write_outputs(generate(PROMPT, get_backend("draft"), seed=3, width=96, height=160,
                           options=GenerateOptions(video=False)), out)
    return out


@pytest.fixture
def no_render(monkeypatch):
    """Rendering fails loudly (exit 1, not 2): a refusal must come before any of it."""
    def refuse(*args, **kwargs):
        raise AssertionError("rendered before the output folder was checked")

    monkeypatch.setattr(pipeline, "build_stack", refuse)
    monkeypatch.setattr(pipeline, "decompose_picture", refuse)


def everything_under(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def generate_into(out, capsys, *extra) -> tuple[int, list[str]]:
    code = main(["generate", "--prompt", PROMPT, "--out", str(out), "--backend", "draft", "--no-video", *SIZE,
                 *extra])
    return code, capsys.readouterr().err.strip().splitlines()


# --- whose folder it is --------------------------------------------------------------------------------------

def _web_app(folder: Path, stack: Path) -> None:
    """A web app's folder: its own manifest.json, and layers/ and depth/ folders of its own."""
    (folder / "layers").mkdir(parents=True)
    (folder / "depth").mkdir()
    (folder / "manifest.json").write_text(json.dumps({"name": "Sketchbook", "start_url": "/",
                                                      "icons": [{"src": "layers/icon.png", "sizes": "192x192"}]}))
    Image.new("RGBA", (192, 192), (200, 40, 40, 255)).save(folder / "layers" / "icon.png")
    (folder / "depth" / "scan.bin").write_bytes(b"\x00\x01" * 500)


def _manifest_only(folder: Path, stack: Path) -> None:
    """Our manifest copied into a folder of other things: the files it names are not there."""
    folder.mkdir(parents=True)
    shutil.copy(stack / "manifest.json", folder / "manifest.json")
    (folder / "layers").mkdir()
    (folder / "layers" / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")


def _user_file_in_layers(folder: Path, stack: Path) -> None:
    """A real stack, with a file of the user's put inside its layers/ folder (a replacement would delete it)."""
    shutil.copytree(stack, folder)
    (folder / "layers" / "retouched.psd").write_bytes(b"8BPS hours of retouching")


def _broken_manifest(folder: Path, stack: Path) -> None:
    shutil.copytree(stack, folder)
    (folder / "manifest.json").write_text('{"layers": "not a list", "options": {}}')


NOT_OURS = {
    "a web app's manifest": (_web_app, "is not a Layercake output: manifest has no 'options'"),
    "our manifest, none of its files": (_manifest_only, "holds layers/holiday.jpg, which Layercake did not write"),
    "a user's file inside layers/": (_user_file_in_layers, "layers/retouched.psd"),
    "a manifest that is not ours": (_broken_manifest, "'layers' must be a list"),
}


@pytest.mark.parametrize("case", list(NOT_OURS))
def test_a_folder_that_is_not_ours_is_refused_before_any_work_and_nothing_is_deleted(case, stack, tmp_path, capsys,
                                                                                      no_render):
    make, needle = NOT_OURS[case]
    folder = tmp_path / "site"
    make(folder, stack)
    before = everything_under(tmp_path)
    code, lines = generate_into(folder, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: output folder {folder} ") and needle in lines[0], lines[0]
    assert "choose a new or empty folder" in lines[0]
    assert everything_under(tmp_path) == before, "nothing deleted, nothing written"

    picture = tmp_path.parent / f"{tmp_path.name}-pic.png"
    Image.new("RGB", (64, 48), (90, 120, 200)).save(picture)
    code = main(["decompose", "--image", str(picture), "--out", str(folder), "--backend", "draft"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    with pytest.raises(ValueError, match="choose a new or empty folder"):
        write_outputs(load_result(stack), folder)  # the studio's and the batch's way in
    assert everything_under(tmp_path) == before


def test_a_real_output_folder_is_replaced_and_the_users_own_files_beside_it_kept(stack, tmp_path, capsys):
    folder = tmp_path / "scene"
    shutil.copytree(stack, folder)
    (folder / "notes.txt").write_text("mine")
    code, lines = generate_into(folder, capsys, "--seed", "8")
    assert code == 0, lines
    assert json.loads((folder / "manifest.json").read_text())["seed"] == 8
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_batch_job_folder_that_is_not_ours_fails_that_job_before_it_renders(stack, tmp_path):
    from layers.batch import BatchSettings, read_attempts, run_batch
    from layers.jobs import read_jobs

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": PROMPT, "name": "site", "width": 96, "height": 160}) + "\n"
                    + json.dumps({"prompt": PROMPT, "name": "fresh", "width": 96, "height": 160}) + "\n")
    out = tmp_path / "out"
    _web_app(out / "site", stack)
    before = everything_under(out / "site")
    summary = run_batch(read_jobs(jobs), out, BatchSettings(backend="draft", options={"video": False}))
    site, fresh = summary.outcomes
    assert (site.status, fresh.status) == ("failed", "done")
    assert "is not a Layercake output: manifest has no 'options'" in site.reason and "\n" not in site.reason
    assert everything_under(out / "site") == before
    assert ("failed", "site") in [(e["event"], e["job"]) for e in read_attempts(out)]
    assert site.seconds < fresh.seconds, "refused before rendering"


# --- symbolic links, other file systems, the current folder ---------------------------------------------------

def test_a_symlinked_output_folder_is_followed_and_the_link_kept(stack, tmp_path, capsys):
    target = tmp_path / "disk" / "scene"
    shutil.copytree(stack, target)
    (tmp_path / "work").mkdir()
    link = tmp_path / "work" / "scene"
    link.symlink_to(target, target_is_directory=True)
    code, lines = generate_into(link, capsys, "--seed", "5")
    assert code == 0, lines
    assert link.is_symlink() and os.readlink(link) == str(target), "the link is kept"
    assert json.loads((target / "manifest.json").read_text())["seed"] == 5, "the folder it points to is replaced"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["scene"], "nothing staged beside the link"
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["scene"], "no staging left beside the target"

    code = main(["regenerate", "--from", str(link), "--layer", "midground", "--seed", "11", "--backend", "draft"])
    assert code == 0, capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == str(target)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["layers"][1]["seed"] == 11


def test_a_link_to_another_file_system_is_written_there_whole(stack, tmp_path, capsys):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system to point at")
    other = Path(tempfile.mkdtemp(dir=shm, prefix="layercake-test-"))
    try:
        target = other / "scene"
        shutil.copytree(stack, target)
        link = tmp_path / "scene"
        link.symlink_to(target, target_is_directory=True)
        code, lines = generate_into(link, capsys, "--seed", "6")
        assert code == 0, lines
        assert link.is_symlink() and json.loads((target / "manifest.json").read_text())["seed"] == 6
        assert sorted(p.name for p in other.iterdir()) == ["scene"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]
        # A new folder through a link to a folder on the other file system: made there.
        (tmp_path / "far").symlink_to(other, target_is_directory=True)
        code, lines = generate_into(tmp_path / "far" / "new", capsys)
        assert code == 0, lines
        assert (other / "new" / "manifest.json").is_file()
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_a_dangling_link_is_refused_before_any_work_and_nothing_made_where_it_points(tmp_path, capsys, no_render):
    link = tmp_path / "out"
    nowhere = tmp_path / "elsewhere" / "deep" / "scene"
    link.symlink_to(nowhere)
    code, lines = generate_into(link, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"output folder {link} is a link to {nowhere}, which does not exist" in lines[0]
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_current_folder_is_refused_before_any_work(stack, tmp_path, capsys, monkeypatch, no_render):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    code, lines = generate_into(".", capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "output folder . is the current folder" in lines[0]
    assert list(empty.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]

    here = tmp_path / "scene"
    shutil.copytree(stack, here)
    before = everything_under(tmp_path)
    monkeypatch.chdir(here / "layers")  # a folder holding the current one is the same trouble
    code = main(["regenerate", "--from", "..", "--layer", "midground", "--backend", "draft"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "output folder .. holds the current folder" in err[0], err
    monkeypatch.chdir(here)
    code = main(["regenerate", "--from", ".", "--layer", "midground", "--backend", "draft"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "output folder . is the current folder" in err[0], err
    assert everything_under(tmp_path) == before


def test_a_mount_point_is_refused_before_any_work(tmp_path, capsys, no_render):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a file system here")
    try:
        code, lines = generate_into(mnt, capsys)
        assert code == 2 and len(lines) == 1, lines
        assert f"output folder {mnt} is a mount point" in lines[0]
        assert list(mnt.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["mnt"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_folder_that_is_ours_is_recognised_by_its_manifest_and_files(stack, tmp_path):
    from layers.pipeline import check_output_folder

    damaged = tmp_path / "damaged"  # ours, a file short: a run redoes it
    shutil.copytree(stack, damaged)
    (damaged / "layers" / "midground.png").unlink()
    assert check_output_folder(damaged) == damaged.resolve()
    (damaged / "layers" / "midground.png").mkdir()  # in its place, something that is not a file of ours
    with pytest.raises(ValueError, match="is missing or not a file"):
        check_output_folder(damaged)

    assert check_output_folder(stack) == stack.resolve()
    assert check_output_folder(tmp_path / "new") == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty") == (tmp_path / "empty").resolve()
    grown = tmp_path / "grown"
    shutil.copytree(stack, grown)
    (grown / "preview").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(grown / "preview" / "midground.jpg")  # the studio's
    assert check_output_folder(grown) == grown.resolve()


def test_a_job_folder_behind_an_fsspec_url_is_checked_the_same_way(tmp_path):
    import fsspec

    from layers.batch import BatchSettings, run_batch
    from layers.jobs import read_jobs

    fs = fsspec.filesystem("memory")
    root = f"/layercake-owned-{os.getpid()}"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"prompt": PROMPT, "name": n, "width": 96, "height": 160}) + "\n"
                            for n in ("site", "notes", "cut-short")))
    fs.pipe_file(f"{root}/site/manifest.json", json.dumps({"name": "Sketchbook", "icons": []}).encode())
    fs.pipe_file(f"{root}/notes/layers/todo.txt", b"mine")
    fs.pipe_file(f"{root}/cut-short/layers/background.png", b"\x89PNG half an upload")  # no manifest yet
    try:
        summary = run_batch(read_jobs(jobs), f"memory://{root}", BatchSettings(backend="draft",
                                                                             options={"video": False}))
        site, notes, cut = summary.outcomes
        assert (site.status, notes.status, cut.status) == ("failed", "failed", "done")
        assert "its manifest.json is not ours" in site.reason
        assert "holds layers/todo.txt, which Layercake did not write" in notes.reason
        assert fs.cat_file(f"{root}/notes/layers/todo.txt") == b"mine"
        assert json.loads(fs.cat_file(f"{root}/site/manifest.json")) == {"name": "Sketchbook", "icons": []}
    finally:
        fs.rm(root, recursive=True)
