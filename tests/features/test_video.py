import numpy as np
import pytest

from tpwng.features.video import VideoError, probe_video, read_frames
from tpwng.grid import sample_indices, snippet_count


def _independent_indices(n, stride, mode):
    out = []
    k = 0
    while k * stride < n:
        frames = list(range(k * stride, min((k + 1) * stride, n)))
        out.append(frames[len(frames) // 2] if mode == "center" else frames[0])
        k += 1
    return out


@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 100, 1000])
@pytest.mark.parametrize("stride", [1, 4, 16])
@pytest.mark.parametrize("mode", ["center", "start"])
def test_sample_indices_match_independent(n, stride, mode):
    got = sample_indices(n, stride, mode)
    assert got.tolist() == _independent_indices(n, stride, mode)
    assert len(got) == snippet_count(n, stride)
    assert got.max() < n


def test_sample_indices_default_is_snippet_centre():
    assert sample_indices(40).tolist() == [8, 24, 36]


def test_bad_sample_mode():
    with pytest.raises(ValueError, match="sample mode"):
        sample_indices(10, 16, "middle")


def test_probe_real_samples(sample_videos):
    info = probe_video(sample_videos["bikes"])
    assert (info.width, info.height) == (640, 272)
    assert info.frames > 100 and info.fps > 0
    assert probe_video(sample_videos["carphone_pristine"]).width == 176
    assert probe_video(sample_videos["bigbuckbunny"]).width == 1280


def test_read_frames_in_chunks_equals_one_read(sample_videos):
    import decord

    path = sample_videos["carphone_pristine"]
    idx = sample_indices(probe_video(path).frames)
    chunks = list(read_frames(path, idx, chunk=3))
    assert [off for off, _ in chunks] == list(range(0, len(idx), 3))
    got = np.concatenate([f for _, f in chunks])
    ref = decord.VideoReader(str(path)).get_batch(idx.tolist()).asnumpy()
    assert got.shape == (len(idx), 144, 176, 3)
    np.testing.assert_array_equal(got, ref)


def test_chunk_budget_bounds_memory(sample_videos):
    path = sample_videos["bigbuckbunny"]
    idx = sample_indices(probe_video(path).frames)
    sizes = [f.shape[0] for _, f in read_frames(path, idx, chunk=64, budget_bytes=10 << 20)]
    assert max(sizes) == (10 << 20) // (1280 * 720 * 3)


def test_unreadable_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    for path, msg in [(empty, "empty"), (junk, "cannot be decoded"),
                      (tmp_path / "missing.mp4", "no such")]:
        with pytest.raises(VideoError, match=msg) as e:
            probe_video(path)
        assert path.name in str(e.value)
